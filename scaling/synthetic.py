"""Results tables generated from a known law, with noise: for recovery tests, benchmarks and docs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from chinchax.compute import tokens_for_budget, training_flops
from chinchax.scaling.laws import ParametricLaw


def isoflop_table(
    law: ParametricLaw,
    budgets,
    sizes_per_budget: int = 9,
    spread: float = 1.0,
    noise: float = 0.005,
    seed: int = 0,
) -> pd.DataFrame:
    """For each budget C, `sizes_per_budget` models log-spaced within ±`spread` decades of the
    law's N_opt(C), trained on D = C/(6N); loss = L(N, D)·exp(noise·z)."""
    rng = np.random.default_rng(seed)
    alloc = law.allocation()
    rows = []
    for c in np.asarray(budgets, np.float64):
        n_opt = alloc.n_opt(c)
        for n in n_opt * np.logspace(-spread, spread, sizes_per_budget):
            n = float(np.round(n))
            d = float(tokens_for_budget(c, n))
            loss = float(law.loss(n, d) * np.exp(noise * rng.standard_normal()))
            rows.append({"run": f"C{c:.2e}_N{n:.3e}", "n_params": n, "n_tokens": d, "flops": training_flops(n, d),
                         "budget": c, "loss": loss})
    return pd.DataFrame(rows)


def loss_curves(
    law: ParametricLaw,
    sizes,
    max_flops: float,
    points_per_run: int = 60,
    noise: float = 0.002,
    seed: int = 0,
) -> pd.DataFrame:
    """One loss curve per model size, up to `max_flops`; each step's loss is the law's L(N, D_t)
    (as if every prefix of the run were its own compute-optimal schedule), with noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in np.asarray(sizes, np.float64):
        d_max = tokens_for_budget(max_flops, n)
        for step, d in enumerate(np.logspace(np.log10(d_max) - 2.5, np.log10(d_max), points_per_run)):
            loss = float(law.loss(n, d) * np.exp(noise * rng.standard_normal()))
            rows.append({"run": f"N{n:.3e}", "step": step, "n_params": n, "n_tokens": float(d),
                         "flops": training_flops(n, d), "loss": loss})
    return pd.DataFrame(rows)
