"""Paired comparisons of runs scored on the same evaluation rows.

Every run of a sweep is evaluated on the same rows (chinchax.train.trainer writes each row's loss sum and
token weight to eval_rows.json). The difference between two runs' mean losses is then a ratio of sums of
per-row differences, and its standard error leaves out how hard each row is, which both runs share: the
paired standard error is usually several times smaller than either run's own. Pure numerics.
"""

from __future__ import annotations

import numpy as np


def paired_difference(a: dict, b: dict) -> tuple[float, float]:
    """(mean loss of a - mean loss of b, its standard error) from two eval_rows.json dicts
    ({"loss_sum": [...], "weight": [...]}, rows in the same order). Ratio estimator, delta method."""
    sum_a, sum_b = np.asarray(a["loss_sum"], float), np.asarray(b["loss_sum"], float)
    w = np.asarray(a["weight"], float)
    if sum_a.shape != sum_b.shape or not np.array_equal(w, np.asarray(b["weight"], float)):
        raise ValueError("the two runs were not scored on the same evaluation rows")
    d = sum_a - sum_b
    total = w.sum()
    diff = d.sum() / total
    n = len(d)
    resid = d - diff * w
    stderr = float(np.sqrt(n / max(n - 1, 1) * np.sum(resid**2)) / total)
    return float(diff), stderr


def neighbour_differences(runs: list[dict]) -> list[dict]:
    """For each budget, every pair of neighbouring sizes: the paired loss difference, its standard error
    and their ratio. `runs`: dicts with budget, n_params, run and rows (an eval_rows.json dict)."""
    out = []
    for budget in sorted({r["budget"] for r in runs}):
        ladder = sorted((r for r in runs if r["budget"] == budget), key=lambda r: r["n_params"])
        for small, large in zip(ladder, ladder[1:], strict=False):
            diff, se = paired_difference(large["rows"], small["rows"])
            out.append({"budget": budget, "smaller": small["run"], "larger": large["run"],
                        "n_smaller": small["n_params"], "n_larger": large["n_params"], "difference": diff,
                        "stderr": se, "ratio": abs(diff) / se if se > 0 else float("inf")})
    return out
