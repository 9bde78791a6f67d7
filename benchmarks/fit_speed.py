"""Approach-3 fit speed: batched JAX L-BFGS vs a plain SciPy L-BFGS-B loop, and the full fit.

    python benchmarks/fit_speed.py [--runs 240] [--subset 30] [--bootstrap 200]

1. SciPy L-BFGS-B (default options, finite-difference gradients: the straightforward loop) over a
   subset of Chinchilla's 4,500-start grid, and our batched L-BFGS over the same subset (cold, with
   its compile, and warm); prints the ratio of our time to SciPy's.
2. The full fit as a user runs it: 4,500 starts + `--bootstrap` resamples, wall time (compile included).
One process, one run each; the machine is shared, so say how busy it was (load average is printed).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from chinchax.scaling.fit_parametric import HUBER_DELTA, approach3_objective, chinchilla_grid, fit_approach3
from chinchax.scaling.laws import CHINCHILLA_3
from chinchax.scaling.multistart import minimize_multistart
from chinchax.scaling.synthetic import isoflop_table


def scipy_objective(theta, log_n, log_d, log_loss):
    a, b, e, alpha, beta = theta
    pred = logsumexp([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
    return huber(HUBER_DELTA, pred - log_loss).sum()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=240)
    p.add_argument("--subset", type=int, default=30, help="grid starts for the SciPy comparison")
    p.add_argument("--bootstrap", type=int, default=200)
    args = p.parse_args()

    n_budgets = 8
    df = isoflop_table(CHINCHILLA_3, np.logspace(18, 21, n_budgets), args.runs // n_budgets, noise=0.01, seed=0)
    data = {"log_n": np.log(df["n_params"].to_numpy()), "log_d": np.log(df["n_tokens"].to_numpy()),
            "log_loss": np.log(df["loss"].to_numpy())}
    grid = chinchilla_grid()
    subset = grid[:: len(grid) // args.subset][: args.subset]
    print(f"{len(df)} runs, {len(grid)} grid starts, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    t = time.perf_counter()
    scipy_vals = [minimize(scipy_objective, s, args=tuple(data.values()), method="L-BFGS-B").fun for s in subset]
    t_scipy = time.perf_counter() - t
    t = time.perf_counter()
    ours = minimize_multistart(approach3_objective, subset, data)
    t_cold = time.perf_counter() - t
    t = time.perf_counter()
    ours = minimize_multistart(approach3_objective, subset, data)
    t_warm = time.perf_counter() - t
    print(f"subset of {len(subset)} starts: scipy {t_scipy:.2f} s ({t_scipy / len(subset):.3f} s/start, "
          f"full grid extrapolated {t_scipy / len(subset) * len(grid) / 60:.1f} min); "
          f"ours {t_cold:.2f} s cold (compile included), {t_warm:.2f} s warm")
    print(f"ratio ours/scipy: {t_cold / t_scipy:.3f} cold, {t_warm / t_scipy:.3f} warm; "
          f"best objective scipy {min(scipy_vals):.10g}, ours {ours.value_K.min():.10g}")

    t = time.perf_counter()
    result = fit_approach3(df, n_bootstrap=args.bootstrap, seed=0)
    t_full = time.perf_counter() - t
    print(f"full fit: {len(grid)} starts + {args.bootstrap} bootstrap resamples: {t_full:.1f} s wall "
          f"(grid {result.extra['seconds_grid']:.1f} s, bootstrap {result.extra['seconds_bootstrap']:.1f} s; "
          f"load average now {os.getloadavg()[0]:.1f})")
    print("  " + ", ".join(f"{k}={result.params[k]:.4g} [{result.intervals[k][0]:.4g}, {result.intervals[k][1]:.4g}]"
                           for k in ("E", "A", "B", "alpha", "beta", "a")))


if __name__ == "__main__":
    main()
