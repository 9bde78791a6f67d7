"""A law per model family and compute multipliers between families (`chinchax compare`). Pure numerics.

Per family, the envelope: at each budget the run with the lowest value of the measure (bits per byte of
a continuation given its prefix; any lower-is-better measure works). Through the envelope, Kaplan's L(C)
form, a power law in compute:

    L(C) = A · C^-alpha          (least squares in log-log, `fit_chinchilla.power_law`)

Two parameters on purpose: a comparison has 3-5 budgets per family, and the 3-parameter E + A·C^-alpha
passes through 3 points exactly (nothing left to test) and is poorly determined with 4-5.

The compute multiplier of family X against a reference family Y: the compute X needs, by its law, to
reach the loss Y's law gives at the top budget C_top, over C_top:

    m_X = L_X^-1(L_Y(C_top)) / C_top = (A_X / L_Y(C_top))^(1/alpha_X) / C_top

m < 1: X is the more compute-efficient. Intervals: a paired bootstrap over the held-out items: each
resample draws the items once and rescoring every run on the same draw (so the families' shared item
difficulty cancels), then redoes envelopes, laws and multipliers. It measures evaluation noise and the
fit's leverage, not training-seed noise (one seed per run); the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from chinchax.errors import UserError
from chinchax.scaling.fit_chinchilla import power_law

MIN_BUDGETS = 3


@dataclass(frozen=True)
class FamilyLaw:
    family: str
    coef: float  # A
    alpha: float  # L = A C^-alpha
    flops_min: float
    flops_max: float
    n_budgets: int

    def loss(self, flops):
        return self.coef * np.asarray(flops, np.float64) ** -self.alpha

    def compute_for(self, loss: float) -> float:
        """Compute at which this law reaches `loss` (nan when the law does not fall with compute)."""
        if not self.alpha > 0:
            return float("nan")
        log_c = (math.log(self.coef) - math.log(loss)) / self.alpha  # in logs: a flat law overflows floats
        return math.exp(log_c) if log_c < 709 else math.inf

    def to_json(self) -> dict:
        return {"family": self.family, "A": self.coef, "alpha": self.alpha, "flops_min": self.flops_min,
                "flops_max": self.flops_max, "n_budgets": self.n_budgets}


def envelope(table: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Per family and budget, the run with the lowest `measure`: family, budget, flops, value, run."""
    need = {"family", "budget", "flops", "run", measure}
    missing = need - set(table.columns)
    if missing:
        raise UserError(f"the comparison table lacks column(s) {sorted(missing)}")
    rows = table.dropna(subset=[measure])
    best = rows.loc[rows.groupby(["family", "budget"])[measure].idxmin()]
    return (best[["family", "budget", "flops", "run", measure]].rename(columns={measure: "value"})
            .sort_values(["family", "budget"]).reset_index(drop=True))


def fit_laws(env: pd.DataFrame, min_budgets: int = MIN_BUDGETS) -> tuple[dict[str, FamilyLaw], list[str]]:
    """A law per family with at least `min_budgets` budgets; notes for the families left out."""
    laws, notes = {}, []
    for family, g in env.groupby("family", sort=False):
        if len(g) < min_budgets:
            notes.append(f"{family}: {len(g)} budget(s) finished, a law needs {min_budgets}")
            continue
        flops, value = g["flops"].to_numpy(np.float64), g["value"].to_numpy(np.float64)
        coef, slope = power_law(flops, value)
        laws[family] = FamilyLaw(str(family), coef, -slope, float(flops.min()), float(flops.max()), len(g))
    return laws, notes


def multipliers(laws: Mapping[str, FamilyLaw], reference: str, top_flops: float) -> dict[str, float]:
    """m_X for every family X with a law (the reference's own is 1)."""
    if reference not in laws:
        raise UserError(f"reference family {reference!r} has no law (families with one: {sorted(laws)})")
    target = float(laws[reference].loss(top_flops))
    return {f: law.compute_for(target) / top_flops for f, law in laws.items()}


@dataclass
class Comparison:
    envelope: pd.DataFrame
    laws: dict[str, FamilyLaw]
    notes: list[str]
    reference: str
    top_flops: float
    multipliers: dict[str, float]
    intervals: dict[str, tuple[float, float]]  # family -> 95% bootstrap interval of the multiplier
    alpha_intervals: dict[str, tuple[float, float]]
    n_bootstrap: int
    leave_one_out: dict[str, tuple[float, float]]  # family -> (min, max) multiplier with one budget left out

    def extrapolated(self, family: str) -> bool:
        """The multiplier reads the family's law outside the compute its runs spanned."""
        c = self.multipliers[family] * self.top_flops
        law = self.laws[family]
        return not (law.flops_min * (1 - 1e-9) <= c <= law.flops_max * (1 + 1e-9))

    def to_json(self) -> dict:
        return {
            "reference": self.reference, "top_flops": self.top_flops, "n_bootstrap": self.n_bootstrap,
            "laws": {f: law.to_json() for f, law in self.laws.items()},
            "alpha_interval": {f: list(v) for f, v in self.alpha_intervals.items()},
            "multipliers": {f: {"value": m, "interval": list(self.intervals.get(f, (math.nan, math.nan))),
                                "leave_one_budget_out": list(self.leave_one_out.get(f, (math.nan, math.nan))),
                                "extrapolated": self.extrapolated(f) if math.isfinite(m) else None}
                            for f, m in self.multipliers.items()},
            "notes": self.notes,
        }


def compare(table: pd.DataFrame, measure: str, *, reference: str,
            resample: Callable[[np.ndarray], pd.Series] | None = None, n_items: int = 0,
            n_bootstrap: int = 200, seed: int = 0, min_budgets: int = MIN_BUDGETS) -> Comparison:
    """Envelope, laws and multipliers of `table` (one row per run: family, budget, flops, run, measure).

    `resample(idx_I)` gives every run's measure recomputed on the held-out items `idx_I` (a Series indexed
    like `table`); with it, `n_bootstrap` paired resamples of the `n_items` items give the intervals."""
    env = envelope(table, measure)
    laws, notes = fit_laws(env, min_budgets)
    if not laws:
        raise UserError("no family has a law: " + "; ".join(notes))
    if reference not in laws:
        raise UserError(f"reference family {reference!r} has no law (families with one: {sorted(laws)}); "
                        + "; ".join(notes))
    ref = env[env["family"] == reference]
    top_flops = float(ref.loc[ref["budget"].idxmax(), "flops"])  # the reference's run at the top budget
    mult = multipliers(laws, reference, top_flops)
    samples_m: dict[str, list[float]] = {f: [] for f in laws}
    samples_a: dict[str, list[float]] = {f: [] for f in laws}
    if resample is not None and n_bootstrap > 0:
        if n_items < 2:
            raise UserError(f"a bootstrap over held-out items needs n_items >= 2, not {n_items}")
        rng = np.random.default_rng(seed)
        for _ in range(n_bootstrap):
            boot = table.assign(**{measure: resample(rng.integers(0, n_items, n_items))})
            b_laws, _ = fit_laws(envelope(boot, measure), min_budgets)
            if reference not in b_laws:
                continue
            for f, m in multipliers(b_laws, reference, top_flops).items():
                samples_m[f].append(m)
                samples_a[f].append(b_laws[f].alpha)
    intervals = {f: _interval(v) for f, v in samples_m.items() if v}
    alpha_intervals = {f: _interval(v) for f, v in samples_a.items() if v}
    return Comparison(env, laws, notes, reference, top_flops, mult, intervals, alpha_intervals, n_bootstrap,
                      leave_one_budget_out(env, reference, top_flops, min_budgets))


def leave_one_budget_out(env: pd.DataFrame, reference: str, top_flops: float,
                         min_budgets: int = MIN_BUDGETS) -> dict[str, tuple[float, float]]:
    """The range of each multiplier when one budget at a time is dropped from every family (refitting the
    laws; the target stays the full reference law's loss at top_flops): how much one budget drives it.
    Only families that keep `min_budgets` budgets take part."""
    full_laws, _ = fit_laws(env, min_budgets)
    if reference not in full_laws:
        return {}
    target = float(full_laws[reference].loss(top_flops))
    values: dict[str, list[float]] = {}
    for budget in sorted(set(env["budget"])):
        laws, _ = fit_laws(env[env["budget"] != budget], min_budgets)
        for f, law in laws.items():
            m = law.compute_for(target) / top_flops
            values.setdefault(f, []).append(m if math.isfinite(m) else math.inf)  # a flat law: unbounded
    return {f: (float(min(v)), float(max(v))) for f, v in values.items()}


def _interval(values: list[float]) -> tuple[float, float]:
    """2.5th and 97.5th percentiles; a resample where the law did not fall (nan) counts as unbounded."""
    v = np.asarray(values, np.float64)
    v = np.where(np.isfinite(v), v, np.inf)
    # no interpolation between order statistics: an infinite one must stay infinite, not become nan
    return tuple(float(np.quantile(v, q, method="inverted_cdf")) for q in (0.025, 0.975))


def pair_resampler(table: pd.DataFrame, nll_RI: np.ndarray, bytes_RI: np.ndarray):
    """`resample` for `compare` when the measure is bits per byte over items: row r of the arrays is
    the run of table row r, column i its nats and bytes on item i."""
    if nll_RI.shape != bytes_RI.shape or nll_RI.shape[0] != len(table):
        raise UserError(f"per-item arrays {nll_RI.shape} / {bytes_RI.shape} do not match {len(table)} runs")

    def resample(idx_I: np.ndarray) -> pd.Series:
        bpb_R = nll_RI[:, idx_I].sum(axis=1) / math.log(2) / bytes_RI[:, idx_I].sum(axis=1)
        return pd.Series(bpb_R, index=table.index)

    return resample
