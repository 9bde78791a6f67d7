"""Several seeds per grid point: the demo fits seed means, and says how large the seed noise is.

A grid point is (family, budget, shape); its seeds differ in initialisation and data order only. The fits
see one row per grid point (the mean over its seeds, so the bootstrap resamples grid points), approach 1
one curve per grid point (the seeds' curves averaged step by step), and the noise table pairs grid points
on the same evaluation rows with the seeds' per-row losses averaged. Seed noise is reported beside it: the
pooled standard deviation between seeds of one grid point, and what it leaves in a mean of S seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

GROUP_KEYS = ("family", "budget", "d_model", "n_layers")


def grid_point(row: dict) -> tuple:
    return tuple(str(row.get(k)) if k == "family" else float(row[k]) for k in GROUP_KEYS)


def seed_means(rows: list[dict]) -> list[dict]:
    """One row per grid point: the first seed's row with loss, eval_loss and final_train_loss averaged over
    its seeds, plus n_seeds and loss_seed_sd (the seeds' standard deviation; NaN with one seed). `run`
    names the grid point by its first seed's run."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[grid_point(row)].append(row)
    out = []
    for members in groups.values():
        members = sorted(members, key=lambda r: int(r.get("seed") or 0))
        mean = dict(members[0])
        for key in ("loss", "eval_loss", "final_train_loss", "eval_bits_per_byte"):
            values = [float(r[key]) for r in members if r.get(key) not in (None, "")]
            if values:
                mean[key] = float(np.mean(values))
        losses = [float(r["loss"]) for r in members]
        mean["n_seeds"] = len(members)
        mean["loss_seed_sd"] = float(np.std(losses, ddof=1)) if len(losses) > 1 else float("nan")
        mean["seed"] = ""
        out.append(mean)
    return out


def mean_curves(curves: list[dict], rows: list[dict]) -> list[dict]:
    """Each grid point's seeds' training curves averaged at the steps they all logged, under the name the
    grid point has in seed_means (its first seed's run)."""
    point_of = {r["run"]: grid_point(r) for r in rows}
    name_of: dict[tuple, str] = {}
    for r in sorted(rows, key=lambda r: int(r.get("seed") or 0)):
        name_of.setdefault(point_of[r["run"]], r["run"])
    by_point: dict[tuple, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    seeds_of: dict[tuple, int] = defaultdict(int)
    for r in rows:
        seeds_of[point_of[r["run"]]] += 1
    for c in curves:
        point = point_of.get(c["run"])
        if point is not None:
            by_point[point][int(c["step"])].append(c)
    out = []
    for point, steps in by_point.items():
        for step in sorted(steps):
            members = steps[step]
            if len(members) < seeds_of[point]:
                continue  # a step some seed did not log
            row = dict(members[0], run=name_of[point])
            row["loss"] = float(np.mean([float(m["loss"]) for m in members]))
            out.append(row)
    return out


def mean_eval_rows(per_seed: list[dict]) -> dict:
    """eval_rows.json of a grid point: the seeds' per-row loss sums averaged (same rows, same weights)."""
    weights = np.asarray(per_seed[0]["weight"], float)
    for rows in per_seed[1:]:
        if not np.array_equal(weights, np.asarray(rows["weight"], float)):
            raise ValueError("the seeds of one grid point were not scored on the same evaluation rows")
    loss_sum = np.mean([np.asarray(r["loss_sum"], float) for r in per_seed], axis=0)
    return {"loss_sum": loss_sum.tolist(), "weight": weights.tolist()}


def seed_noise(rows: list[dict]) -> dict:
    """Pooled standard deviation of the loss between seeds of one grid point (degrees of freedom summed
    over grid points), the standard error it leaves in a grid point's mean, and the largest spread seen."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        groups[grid_point(row)].append(float(row["loss"]))
    squares, dof, spreads, seeds = 0.0, 0, [], []
    for losses in groups.values():
        if len(losses) > 1:
            x = np.asarray(losses)
            squares += float(np.sum((x - x.mean()) ** 2))
            dof += len(x) - 1
            spreads.append(float(x.max() - x.min()))
            seeds.append(len(x))
    if dof == 0:
        return {"seeds": 1, "pooled_sd": float("nan"), "sd_of_mean": float("nan"), "dof": 0,
                "max_spread": float("nan"), "grid_points": len(groups)}
    sd = math.sqrt(squares / dof)
    n_seeds = int(round(float(np.mean(seeds))))
    return {"seeds": n_seeds, "pooled_sd": sd, "sd_of_mean": sd / math.sqrt(n_seeds), "dof": dof,
            "max_spread": max(spreads), "grid_points": len(groups)}
