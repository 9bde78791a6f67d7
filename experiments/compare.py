"""`chinchax compare SWEEP.yaml`: architectures x objectives at equal compute, with a law per family.

1. plans every family of the sweep (experiments/arch_objective.yaml: causal decoder, prefix-LM decoder and
   encoder-decoder, each with the objectives it supports) on the same budgets, and trains them with the
   chosen executor (default: long-lived worker processes, chinchax.scaling.worker);
2. scores every finished run on one fixed held-out measure set (chinchax.evaluation.comparable):
   bits per byte of a continuation given its prefix, and next-line multiple choice zero- and few-shot;
3. per family, the envelope of each budget's best run and a law L(C) = A C^-alpha through it; compute
   multipliers against a reference family with a paired bootstrap over the held-out items
   (chinchax.scaling.compare_fit);
4. writes results.csv (a row per run), summary.json, report.md and the plots (experiments/compare_report.py).
Re-running skips finished runs and runs already measured on the same items; fits and the report are redone.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from chinchax.errors import UserError

# `--quick`: the same study at toy size for CI: 3 budgets x 1 size per family, fewer held-out items.
QUICK_OVERRIDES = ("name=compare_quick", "budgets=[1.0e+10,2.0e+10,4.0e+10]", "sizes.per_budget=1",
                   "sizes.min_steps=10")
# ...with three families: Wang et al.'s headline contrasts (causal decoder + full LM, non-causal decoder + prefix
# LM, encoder-decoder + span corruption); the first three of the sweep when it names others.
QUICK_FAMILIES = ("causal_decoder-causal_lm", "prefix_decoder-prefix_lm", "encoder_decoder-span")
QUICK_RUN_OVERRIDES = ("data.eval_batches=2", "trainer.checkpoint_every=0", "trainer.log_every=10")
MEASURES = {  # held-out items: continuation pairs (prefix, continuation tokens) and multiple-choice examples
    "full": dict(n_pairs=256, input_len=96, target_len=96, n_choice_examples=240, shots=(0, 2)),
    "quick": dict(n_pairs=48, input_len=64, target_len=64, n_choice_examples=48, shots=(0, 2)),
}
EXECUTORS = ("worker", "local", "ray")
MEASURE = "conditional_bpb"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="architectures x objectives at equal compute: train every family of a sweep, score them on the "
        "same held-out items, fit a law per family and compute multipliers (report.md)",
        description="Plan and train every family of SWEEP.yaml (e.g. experiments/arch_objective.yaml), score "
        "each run on one fixed held-out set (bits per byte of a continuation given its prefix; next-line "
        "multiple choice zero- and few-shot), fit L(C) = A C^-alpha per family through each budget's best "
        "run, and report how much compute each family needs to match the reference family at the top "
        "budget, with bootstrap intervals. Re-running resumes: finished and measured runs are skipped.",
    )
    p.add_argument("sweep", help="a sweep YAML with `families:` (e.g. experiments/arch_objective.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted sweep overrides, e.g. budgets=[1e11,3e11,1e12]")
    p.add_argument("--quick", action="store_true", help="toy budgets and fewer held-out items (CI, < 3 min)")
    p.add_argument("--out", default="compare", help="output directory (default ./compare)")
    p.add_argument("--executor", choices=EXECUTORS, default="worker",
                   help="worker: long-lived processes sharing compiled programs (fastest here); local: a "
                   "`chinchax train` process per run; ray: the sweep's ray settings")
    p.add_argument("--parallel", type=int, default=2, help="runs training at a time (worker/local)")
    p.add_argument("--reference", default=None, help="family the multipliers are against (default: the first)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 1000; 200 --quick)")
    p.add_argument("--max-retries", type=int, default=1)
    from chinchax.scaling.wandb_report import add_wandb_arguments

    add_wandb_arguments(p, "every training run in one group, then one analysis run with the results table, "
                        "each family's law and multiplier with intervals, and the plots")
    p.set_defaults(handler=_handle)


def _handle(args) -> int:
    result = run_compare(Path(args.sweep), Path(args.out), quick=args.quick, executor=args.executor,
                         parallel=args.parallel, reference=args.reference, overrides=args.overrides,
                         n_bootstrap=args.bootstrap or (200 if args.quick else 1000), max_retries=args.max_retries,
                         wandb_project=args.wandb_project, wandb_group=args.wandb_group, wandb_mode=args.wandb_mode)
    print(result["table"])
    print(f"\nreport: {Path(args.out) / 'report.md'}  ({result['summary']['wall_time_s']:.0f} s)")
    return 0


def _say(message: str) -> None:
    print(f"[chinchax compare] {message}", file=sys.stderr, flush=True)


def run_compare(sweep_path: Path, out: Path, *, quick: bool = False, executor: str = "worker", parallel: int = 2,
                reference: str | None = None, overrides=(), n_bootstrap: int = 1000, max_retries: int = 1,
                wandb_project: str | None = None, wandb_group: str | None = None, wandb_mode: str = "auto") -> dict:
    """The whole comparison as a function (the CLI and the tests call this); returns its summary. With a W&B
    project every run logs to one group (default: the sweep's name), then one analysis run."""
    from chinchax.scaling.plan import WandbSettings, load_sweep, plan_sweep
    from chinchax.scaling.results import SweepDir, collect

    t0 = time.time()
    if executor not in EXECUTORS:
        raise UserError(f"--executor={executor!r}: compare runs with {', '.join(EXECUTORS)} (its measures load "
                        "checkpoints from local run dirs; a TPU sweep's run dirs live on gs://)")
    if not Path(sweep_path).is_file():
        raise UserError(f"sweep file {sweep_path} does not exist (e.g. experiments/arch_objective.yaml)")
    cfg, base_dir = load_sweep(sweep_path, [*(QUICK_OVERRIDES if quick else ()), *overrides])
    if quick:
        keep = [f for f in QUICK_FAMILIES if f in cfg.families] or list(cfg.families)[:3]
        cfg = dataclasses.replace(cfg, overrides=[*cfg.overrides, *QUICK_RUN_OVERRIDES],
                                  families={f: cfg.families[f] for f in keep}).validate()
    if len(cfg.families) < 2:
        raise UserError(f"{sweep_path} has {len(cfg.families)} famil(ies); a comparison needs `families:` with "
                        "at least two entries")
    group = wandb_group or cfg.name
    cfg = dataclasses.replace(cfg, wandb=WandbSettings(wandb_project, wandb_mode, group, "train")).validate()
    reference = reference or next(iter(cfg.families))
    if reference not in cfg.families:
        raise UserError(f"--reference={reference!r} is not a family of the sweep ({', '.join(cfg.families)})")
    plan = plan_sweep(cfg, base_dir)
    _check_families(plan)
    out.mkdir(parents=True, exist_ok=True)
    sweep = SweepDir(out / ("sweep_quick" if quick else "sweep"))
    sweep.write_plan(plan)
    _say(f"plan ({len(plan.runs)} runs, {plan.flops_independent:.3g} FLOPs by 6ND):\n{plan.table()}")
    t_train = time.time()
    outcomes = _execute(plan, sweep, cfg, executor, parallel, max_retries, out, wandb_on=bool(wandb_project))
    train_wall = time.time() - t_train
    failed = [o.run_id for o in outcomes if o.status == "failed"]
    if failed:
        _say(f"{len(failed)} run(s) failed and are left out: {', '.join(failed)}")
    rows, _ = collect(sweep, plan)
    if not rows:
        raise UserError(f"no run of {sweep.root} finished; see `chinchax sweep status` and the sweep_train.log files")

    from chinchax.experiments import compare_measures

    t_measure = time.time()
    mset, corpus = compare_measures.measure_set(plan, MEASURES["quick" if quick else "full"])
    measured = compare_measures.measure_runs(rows, sweep, mset, out / ("measures_quick" if quick else "measures"), _say)
    measure_wall = time.time() - t_measure
    table, nll_RI, bytes_RI = compare_measures.results_table(rows, measured, plan, sweep)

    from chinchax.scaling.compare_fit import compare, pair_resampler

    _say(f"{len(table)} runs measured; fitting a law per family ({n_bootstrap} paired bootstrap resamples)")
    comparison = compare(table, MEASURE, reference=reference, resample=pair_resampler(table, nll_RI, bytes_RI),
                         n_items=nll_RI.shape[1], n_bootstrap=n_bootstrap)
    from chinchax.experiments import compare_report

    wall = time.time() - t0
    timing = {"wall_time_s": wall, "train_wall_s": train_wall, "measure_wall_s": measure_wall,
              "runs_trained": sum(o.status == "done" for o in outcomes)}
    result = compare_report.write(out, quick=quick, plan=plan, table=table, comparison=comparison, mset=mset,
                                  corpus=corpus, timing=timing, failed=failed, executor=executor)
    _log_analysis(out, result["summary"], table, wandb_project, group, wandb_mode)
    return result


def _log_analysis(out: Path, summary: dict, table, project: str | None, group: str, mode: str) -> None:
    """The W&B analysis run: the results table, each family's law and compute multiplier with their intervals
    (summary.json's families, by name, flattened: families/<name>/alpha_interval_lo, ...), and every plot."""
    from chinchax.scaling import wandb_report

    families = {f["family"]: f for f in summary["families"]}
    comparison = {k: summary["comparison"][k] for k in ("reference", "top_flops", "n_bootstrap")}
    numbers = {"wall_time_s": summary["wall_time_s"], "runs_measured": summary["runs_measured"],
               **wandb_report.flat_numbers(families, "families/"),
               **wandb_report.flat_numbers(comparison, "comparison/")}
    where = wandb_report.log_analysis(
        project, group=group, name=f"{group}-analysis", kind="compare", dir=out, mode=mode,
        config={"quick": summary["quick"], "measure": summary["measure"], "executor": summary["executor"]},
        tables={"results": table}, summary=numbers,
        images=wandb_report.pngs(*(out / p for paths in summary["plots"].values() for p in paths)))
    if where is not None:
        _say(f"W&B: group {group} of project {project}; analysis run in {where}")


def _check_families(plan) -> None:
    for run in plan.runs:
        if run.experiment.model.variant == "encoder_only":
            raise UserError(
                f"family {run.family!r} is encoder-only: a masked LM defines no likelihood of a continuation "
                "(only a pseudo-log-likelihood), so it cannot be scored on the same measures as decoders and "
                "encoder-decoders; drop it from `families:` and evaluate it with `chinchax eval`")


def _execute(plan, sweep, cfg, executor: str, parallel: int, max_retries: int, out: Path, wandb_on: bool = False):
    from chinchax.scaling import executors

    env = {
        # Only the first process compiles a shape; later workers (and re-runs) load it from disk.
        "JAX_COMPILATION_CACHE_DIR": str((out / "jax_cache").resolve()),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        **({} if wandb_on else {"WANDB_MODE": "disabled"}),  # W&B only when asked for
    }
    if executor == "ray":
        return executors.run_ray(plan, sweep, cfg.ray, max_retries=max_retries, env=env)
    return executors.run_local(plan, sweep, parallel=parallel, max_retries=max_retries, env=env,
                               workers=executor == "worker")
