"""Sweep efficiency: the FLOPs a whole sweep trains per second of its wall time, against `jnp.dot`'s peak.

    python benchmarks/sweep_throughput.py                    # a 2 x 3 slice of the demo sweep, worker executor
    python benchmarks/sweep_throughput.py --compare-local    # ...and the same plan with a subprocess per run
    python benchmarks/sweep_throughput.py budgets=[4.7e11,1.5e12] sizes.per_budget=4 --parallel 2

Prints, measured in this one run: the float32 `jnp.dot` peak (best of a few square sizes, as
benchmarks/train_step.py), the sweep's FLOPs (every matmul forward and backward, chinchax.model.counting's
`detailed`; and 6ND) over its whole wall time (process starts, compiles, data, evals and checkpoints
included), their ratio (the sweep efficiency `chinchax demo` reports), and with --compare-local the
speed-up of the worker executor over one `chinchax train` process per run on the same plan.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from importlib import resources
from pathlib import Path

from chinchax import jsonio

DEFAULT_OVERRIDES = ("name=throughput", "budgets=[4.7e+11,1.5e+12]", "sizes.per_budget=3")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help=f"dotted overrides of experiments/demo_sweep.yaml (default: "
                   f"{' '.join(DEFAULT_OVERRIDES)})")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--compare-local", action="store_true", help="also run the plan with a subprocess per run")
    p.add_argument("--out", help="keep the sweeps here (default: a temporary directory)")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    return p.parse_args(argv)


def run_sweep(plan, root: Path, parallel: int, workers: bool) -> dict:
    from chinchax.experiments.demo import Phases
    from chinchax.scaling import executors
    from chinchax.scaling.results import SweepDir

    sweep = SweepDir(root)
    sweep.write_plan(plan)
    env = {"WANDB_MODE": "disabled", "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    phases = Phases()
    t = time.time()
    outcomes = executors.run_local(plan, sweep, parallel=parallel, max_retries=0, env=env, workers=workers,
                                   progress=False)
    phases.add(time.time() - t, sweep, outcomes)
    failed = [o.run_id for o in outcomes if o.status != "done"]
    if failed:
        raise SystemExit(f"runs did not finish: {failed}")
    return {"wall_s": phases.wall_s, "flops_detailed": phases.flops_detailed, "flops_6nd": phases.flops_6nd,
            "runs": phases.runs_trained}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from chinchax.experiments.demo import measure_peak
    from chinchax.scaling.plan import load_sweep, plan_sweep

    sweep_yaml = Path(str(resources.files("chinchax.experiments").joinpath("demo_sweep.yaml")))
    cfg, base_dir = load_sweep(sweep_yaml, [*DEFAULT_OVERRIDES, *args.overrides])
    plan = plan_sweep(cfg, base_dir)
    peak = measure_peak()
    root = Path(args.out or tempfile.mkdtemp(prefix="chinchax-throughput-"))
    worker = run_sweep(plan, root / "worker", args.parallel, workers=True)
    result = {"runs": worker["runs"], "peak_flops": peak, "worker_wall_s": worker["wall_s"],
              "flops_detailed": worker["flops_detailed"], "flops_6nd": worker["flops_6nd"],
              "sweep_efficiency": worker["flops_detailed"] / worker["wall_s"] / peak,
              "sweep_efficiency_6nd": worker["flops_6nd"] / worker["wall_s"] / peak}
    if args.compare_local:
        local = run_sweep(plan, root / "local", args.parallel, workers=False)
        result.update(local_wall_s=local["wall_s"], local_sweep_efficiency=local["flops_detailed"] / local["wall_s"] / peak,
                      speedup_worker_vs_local=local["wall_s"] / worker["wall_s"])
    if args.json:
        print(jsonio.dumps(result))
    else:
        print(f"plan: {len(plan.runs)} runs, {plan.flops_independent:.3g} FLOPs (6ND); sweeps in {root}")
        print(f"jnp.dot peak (float32, best of 512/1024/2048): {peak / 1e9:.1f} GFLOP/s")
        print(f"worker executor, --parallel {args.parallel}: {worker['wall_s']:.1f} s, "
              f"{worker['flops_detailed'] / worker['wall_s'] / 1e9:.2f} GFLOP/s -> sweep efficiency "
              f"{result['sweep_efficiency']:.3f} (6ND: {result['sweep_efficiency_6nd']:.3f})")
        if args.compare_local:
            print(f"local executor (a process per run): {result['local_wall_s']:.1f} s -> sweep efficiency "
                  f"{result['local_sweep_efficiency']:.3f}; worker executor {result['speedup_worker_vs_local']:.2f}x faster")
    return result


if __name__ == "__main__":
    main()
