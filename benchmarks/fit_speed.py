"""Approach-3 fit speed: batched JAX L-BFGS vs a plain SciPy L-BFGS-B loop, and the full fit, in CPU seconds.

    python benchmarks/fit_speed.py [--runs 240] [--subset 30] [--bootstrap 200] [--jax-cache DIR]

1. The full fit as a user runs it, in a fresh Python process (so imports and compiles are counted):
   4,500 starts + `--bootstrap` resamples. CPU seconds are the child's user + sys
   (resource.getrusage(RUSAGE_CHILDREN)), which counts every thread XLA used; wall time beside.
   With `--jax-cache DIR` it runs twice more with JAX's persistent compilation cache in DIR (emptied
   first): once filling it, once reading it (what a second run on the same machine would see).
2. SciPy L-BFGS-B (default options, finite-difference gradients: the straightforward loop) over a
   subset of Chinchilla's 4,500-start grid, and our batched L-BFGS over the same subset (cold, with
   its compile, and warm), CPU seconds and wall; the ratios ours/SciPy per start, and the full fit's CPU
   time over SciPy's extrapolated to the same 4,500 starts (the bootstrap is extra work on our side).
One run each; the machine is shared, so say how busy it was (load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

from chinchax import jsonio

N_BUDGETS = 8


def _table(runs: int):
    from chinchax.scaling.laws import CHINCHILLA_3
    from chinchax.scaling.synthetic import isoflop_table

    return isoflop_table(CHINCHILLA_3, np.logspace(18, 21, N_BUDGETS), runs // N_BUDGETS, noise=0.01, seed=0)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def child_full_fit(runs: int, bootstrap: int) -> None:
    """Runs in a fresh process: imports, builds the table, fits; prints one JSON line."""
    cpu0 = _cpu()
    from chinchax.scaling.fit_parametric import fit_approach3

    df = _table(runs)
    cpu1, wall1 = _cpu(), time.perf_counter()
    result = fit_approach3(df, n_bootstrap=bootstrap, seed=0)
    print(jsonio.dumps({
        "import_cpu_s": cpu1 - cpu0, "fit_cpu_s": _cpu() - cpu1, "fit_wall_s": time.perf_counter() - wall1,
        "seconds_grid": result.extra["seconds_grid"], "seconds_bootstrap": result.extra["seconds_bootstrap"],
        "params": result.params, "intervals": result.intervals, "objective": result.extra["objective"],
    }))


def full_fit_in_fresh_process(runs: int, bootstrap: int, env: dict | None = None) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--runs", str(runs), "--bootstrap", str(bootstrap), "--child"],
                         check=True, capture_output=True, text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_cpu_s": cpu, "process_wall_s": wall}


def _describe(label: str, r: dict) -> str:
    return (f"{label}: {r['process_cpu_s']:.2f} s CPU (user + sys), {r['process_wall_s']:.2f} s wall for the whole "
            f"process; of which imports and table {r['import_cpu_s']:.2f} s CPU, fit {r['fit_cpu_s']:.2f} s CPU / "
            f"{r['fit_wall_s']:.2f} s wall (grid {r['seconds_grid']:.2f} s, bootstrap {r['seconds_bootstrap']:.2f} s wall)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=240)
    p.add_argument("--subset", type=int, default=30, help="grid starts for the SciPy comparison")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--jax-cache", metavar="DIR", help="also measure with JAX's persistent compilation cache in DIR")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child_full_fit(args.runs, args.bootstrap)
        return

    print(f"{args.runs} runs, 4500 grid starts, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    full = full_fit_in_fresh_process(args.runs, args.bootstrap)
    print(_describe(f"full fit, 4500 starts + {args.bootstrap} bootstrap resamples, cold process", full))
    print("  " + ", ".join(f"{k}={full['params'][k]:.6g} [{full['intervals'][k][0]:.4g}, {full['intervals'][k][1]:.4g}]"
                           for k in ("E", "A", "B", "alpha", "beta", "a")) + f"; objective {full['objective']:.10g}")
    if args.jax_cache:
        shutil.rmtree(args.jax_cache, ignore_errors=True)
        env = {"JAX_COMPILATION_CACHE_DIR": os.path.abspath(args.jax_cache),
               "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
        print(_describe("  with an empty persistent compilation cache (filling it)", full_fit_in_fresh_process(
            args.runs, args.bootstrap, env)))
        print(_describe("  with the cache filled", full_fit_in_fresh_process(args.runs, args.bootstrap, env)))

    from scipy.optimize import minimize
    from scipy.special import huber, logsumexp

    from chinchax.scaling.fit_parametric import HUBER_DELTA, approach3_objective, chinchilla_grid
    from chinchax.scaling.multistart import minimize_multistart

    def scipy_objective(theta, log_n, log_d, log_loss):
        a, b, e, alpha, beta = theta
        pred = logsumexp([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
        return huber(HUBER_DELTA, pred - log_loss).sum()

    df = _table(args.runs)
    data = {"log_n": np.log(df["n_params"].to_numpy()), "log_d": np.log(df["n_tokens"].to_numpy()),
            "log_loss": np.log(df["loss"].to_numpy())}
    grid = chinchilla_grid()
    subset = grid[:: len(grid) // args.subset][: args.subset]

    c, t = _cpu(), time.perf_counter()
    scipy_vals = [minimize(scipy_objective, s, args=tuple(data.values()), method="L-BFGS-B").fun for s in subset]
    scipy_cpu, scipy_wall = _cpu() - c, time.perf_counter() - t
    c, t = _cpu(), time.perf_counter()
    minimize_multistart(approach3_objective, subset, data)
    cold_cpu, cold_wall = _cpu() - c, time.perf_counter() - t
    c, t = _cpu(), time.perf_counter()
    ours = minimize_multistart(approach3_objective, subset, data)
    warm_cpu, warm_wall = _cpu() - c, time.perf_counter() - t
    scipy_grid_cpu = scipy_cpu / len(subset) * len(grid)
    print(f"subset of {len(subset)} starts: SciPy {scipy_cpu:.2f} s CPU / {scipy_wall:.2f} s wall "
          f"({scipy_cpu / len(subset):.3f} s CPU per start; the 4500-start grid extrapolates to "
          f"{scipy_grid_cpu:.0f} s CPU); ours {cold_cpu:.2f} s CPU / {cold_wall:.2f} s wall cold (compile included), "
          f"{warm_cpu:.3f} s CPU / {warm_wall:.3f} s wall warm")
    print(f"ratio ours/SciPy, CPU: {cold_cpu / scipy_cpu:.3f} cold, {warm_cpu / scipy_cpu:.4f} warm "
          f"(wall: {cold_wall / scipy_wall:.3f}, {warm_wall / scipy_wall:.4f}); best objective SciPy "
          f"{min(scipy_vals):.10g}, ours {ours.value_K.min():.10g}")
    print(f"full fit (cold process, grid + {args.bootstrap} bootstrap resamples) / SciPy loop over the grid alone, "
          f"CPU: {full['process_cpu_s']:.2f} s / {scipy_grid_cpu:.0f} s = {full['process_cpu_s'] / scipy_grid_cpu:.4f}; "
          f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
