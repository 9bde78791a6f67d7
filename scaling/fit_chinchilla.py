"""Chinchilla approaches 1 (envelope of loss curves) and 2 (isoFLOP parabolas); numpy only.

Both end in power laws N_opt = k·C^a fitted by least squares in log10 space, and D_opt = C/(6·N_opt).
Approach 3 (the parametric loss) lives in fit_parametric.py.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from chinchax.errors import UserError
from chinchax.scaling.fitresult import FitResult, resample_runs, summarise
from chinchax.scaling.table import budgets, final_rows, holdout_split, require_rows

ENVELOPE_POINTS = 250  # log-spaced FLOP values at which the envelope is read (Chinchilla used 1,500)
MIN_PER_BUDGET = 3  # a parabola needs three points
# Resampling runs within a budget keeps >= 3 distinct sizes often enough only when there are this many
# (with 4 sizes a third of the resamples lose the parabola); below it approach 2 bootstraps the losses.
MIN_SIZES_TO_RESAMPLE_RUNS = 6
BOOTSTRAP_METHODS = ("auto", "runs", "parametric")


def power_law(flops: np.ndarray, values: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, float]:
    """(coef, exponent) of values = coef·flops^exponent, least squares in log10."""
    x, y = np.log10(flops), np.log10(values)
    w = None if weights is None else np.sqrt(weights)
    slope, intercept = np.polyfit(x, y, 1, w=w)
    return float(10**intercept), float(slope)


# ---------------------------------------------------------------- approach 1
def envelope(curves: pd.DataFrame, n_points: int = ENVELOPE_POINTS) -> pd.DataFrame:
    """For each of `n_points` FLOP values, the run with the lowest loss there (curves interpolated
    linearly in log FLOPs, never extrapolated). Columns: flops, loss, n_params, run."""
    runs = {run: g.sort_values("flops") for run, g in curves.groupby("run")}
    lo = min(g["flops"].iloc[0] for g in runs.values())
    hi = max(g["flops"].iloc[-1] for g in runs.values())
    grid = np.logspace(np.log10(lo), np.log10(hi), n_points)
    best_loss = np.full(n_points, np.inf)
    best_run = np.full(n_points, None, dtype=object)
    best_n = np.full(n_points, np.nan)
    for run, g in runs.items():
        f = g["flops"].to_numpy()
        inside = (grid >= f[0]) & (grid <= f[-1])
        loss = np.interp(np.log(grid[inside]), np.log(f), g["loss"].to_numpy())
        better = loss < best_loss[inside]
        idx = np.nonzero(inside)[0][better]
        best_loss[idx], best_run[idx], best_n[idx] = loss[better], run, g["n_params"].iloc[-1]
    keep = np.isfinite(best_loss)
    return pd.DataFrame({"flops": grid[keep], "loss": best_loss[keep], "n_params": best_n[keep],
                         "run": best_run[keep]})


def _approach1_law(curves: pd.DataFrame) -> tuple[float, float, pd.DataFrame]:
    env = envelope(curves)
    coef, exp = power_law(env["flops"].to_numpy(), env["n_params"].to_numpy())
    return coef, exp, env


def fit_approach1(table: pd.DataFrame, *, n_bootstrap: int = 200, seed: int = 0,
                  holdout: str | None = None) -> FitResult:
    if holdout not in (None, "none"):
        raise UserError("--holdout is not defined for approach 1 (loss curves have no budgets); "
                        "use approach 2 or 3 for a held-out check")
    if "step" not in table.columns or table.groupby("run").size().max() < 2:
        raise UserError("approach 1 needs loss curves: a 'step' column and several rows per run")
    require_rows(table.drop_duplicates("run"), 3, "approach 1", "runs (loss curves)")
    coef, exp, env = _approach1_law(table)
    if env["n_params"].nunique() < 2:
        raise UserError("approach 1: a single model size wins everywhere on the envelope; add sizes")
    draws = []
    run_ids = table["run"].to_numpy()
    for w in resample_runs(run_ids, n_bootstrap, seed):
        sub = table[w > 0]
        e = envelope(sub)
        draws.append(power_law(e["flops"].to_numpy(), e["n_params"].to_numpy())
                     if e["n_params"].nunique() >= 2 else (np.nan, np.nan))
    return _allocation_result("chinchilla-1", coef, exp, np.array(draws), table, n_bootstrap, seed,
                              extra={"envelope": env[["flops", "loss", "n_params"]].to_dict("list")})


# ---------------------------------------------------------------- approach 2
def isoflop_minima(df: pd.DataFrame, weights: np.ndarray | None = None) -> pd.DataFrame:
    """Per budget: the parabola loss = p2·x² + p1·x + p0 in x = log10 N, and its minimum."""
    b = budgets(df)
    w = np.ones(len(df)) if weights is None else weights
    rows = []
    for budget in np.unique(b):
        m = (b == budget) & (w > 0)
        x, y = np.log10(df["n_params"].to_numpy()[m]), df["loss"].to_numpy()[m]
        if np.unique(x).size < MIN_PER_BUDGET:
            continue
        p2, p1, p0 = np.polyfit(x, y, 2, w=np.sqrt(w[m]))
        if p2 <= 0:  # not a valley: the budget's sizes do not bracket the optimum
            continue
        x_opt = -p1 / (2 * p2)
        rows.append({"budget": budget, "n_opt": 10**x_opt, "loss_opt": p0 - p1**2 / (4 * p2),
                     "p2": p2, "p1": p1, "p0": p0, "n_min": 10 ** x.min(), "n_max": 10 ** x.max()})
    return pd.DataFrame(rows)


def fit_approach2(table: pd.DataFrame, *, n_bootstrap: int = 200, seed: int = 0,
                  holdout: str | None = None, bootstrap: str = "auto") -> FitResult:
    """Approach 2 with a bootstrap interval for the allocation exponent.

    `bootstrap`: "runs" resamples runs within each budget (as approaches 1 and 3 do); "parametric" keeps the
    design and redraws every loss around its budget's fitted parabola, with the noise measured by the pooled
    residuals of the parabolas (or, when every budget has exactly 3 sizes and so no residuals, by the
    runs' `eval_loss_stderr`); "auto" resamples runs when every budget has >= 6 sizes, else is parametric.
    """
    if bootstrap not in BOOTSTRAP_METHODS:
        raise UserError(f"bootstrap={bootstrap!r} is not an approach-2 bootstrap; choose one of "
                        f"{', '.join(BOOTSTRAP_METHODS)}")
    df_all = final_rows(table)
    df, held = holdout_split(df_all, holdout)
    counts = pd.Series(budgets(df)).value_counts()
    usable = counts[counts >= MIN_PER_BUDGET]
    if len(usable) < 2:
        raise UserError(f"approach 2 needs at least 2 budgets with >= {MIN_PER_BUDGET} runs each; "
                        f"the table has {len(usable)} (runs per budget: {counts.to_dict()})")
    minima = isoflop_minima(df)
    if len(minima) < 2:
        raise UserError("approach 2: fewer than 2 budgets have a loss valley (parabola opening upwards); "
                        "widen the range of model sizes at each budget so it brackets the optimum")
    coef, exp = power_law(minima["budget"].to_numpy(), minima["n_opt"].to_numpy())
    if bootstrap == "auto":
        bootstrap = "runs" if usable.min() >= MIN_SIZES_TO_RESAMPLE_RUNS else "parametric"
    draws, noise = [], {}
    if bootstrap == "runs":
        samples = (isoflop_minima(df, w) for w in resample_runs(df["run"].to_numpy(), n_bootstrap, seed,
                                                               strata=budgets(df)))
    else:
        samples, noise = _parametric_minima(df, n_bootstrap, seed)
    for m in samples:
        draws.append(power_law(m["budget"].to_numpy(), m["n_opt"].to_numpy()) if len(m) >= 2 else (np.nan, np.nan))
    result = _allocation_result("chinchilla-2", coef, exp, np.array(draws), df, n_bootstrap, seed,
                                extra={"minima": minima.to_dict("list"), "bootstrap_method": bootstrap, **noise})
    if held is not None:
        hm = isoflop_minima(held)
        if len(hm):
            pred = coef * hm["budget"].to_numpy() ** exp
            result.holdout = {"budgets": hm["budget"].tolist(), "observed_n_opt": hm["n_opt"].tolist(),
                              "predicted_n_opt": pred.tolist(),
                              "abs_log10_error": np.abs(np.log10(pred / hm["n_opt"].to_numpy())).tolist()}
        else:
            result.holdout = {"note": "the held-out budget has no parabola minimum to compare with"}
    return result


def _parametric_minima(df: pd.DataFrame, n_bootstrap: int, seed: int):
    """(generator of isoflop_minima over redrawn losses, description of the noise used).

    Each budget with >= 3 sizes gets its least-squares parabola; the losses are redrawn as fitted value +
    N(0, sigma^2). sigma is the pooled residual standard deviation over all budgets when there are at
    least 2 residual degrees of freedom, else each run's eval_loss_stderr."""
    b = budgets(df)
    x_all, y_all = np.log10(df["n_params"].to_numpy()), df["loss"].to_numpy()
    fitted = np.full(len(df), np.nan)
    squares, dof = 0.0, 0
    for budget in np.unique(b):
        m = b == budget
        if np.unique(x_all[m]).size < MIN_PER_BUDGET:
            continue
        coeffs = np.polyfit(x_all[m], y_all[m], 2)
        fitted[m] = np.polyval(coeffs, x_all[m])
        squares += float(np.sum((y_all[m] - fitted[m]) ** 2))
        dof += int(m.sum()) - 3
    keep = np.isfinite(fitted)
    if dof >= 2:
        sigma = np.full(len(df), np.sqrt(squares / dof))
        noise = {"noise": "pooled parabola residuals", "noise_sigma": float(sigma[0]), "noise_dof": dof}
    elif "eval_loss_stderr" in df.columns and np.all(np.isfinite(df["eval_loss_stderr"].to_numpy()[keep])):
        sigma = df["eval_loss_stderr"].to_numpy(dtype=np.float64)
        noise = {"noise": "eval_loss_stderr of each run", "noise_sigma": float(np.median(sigma[keep]))}
    else:
        raise UserError("approach 2's parametric bootstrap needs the size of the loss noise: give some budget "
                        "more than 3 sizes (residuals measure it) or the table an eval_loss_stderr column")
    rng = np.random.default_rng(seed)
    sub = df[keep].reset_index(drop=True)

    def samples():
        for _ in range(n_bootstrap):
            redrawn = sub.copy()
            redrawn["loss"] = fitted[keep] + sigma[keep] * rng.standard_normal(int(keep.sum()))
            yield isoflop_minima(redrawn)

    return samples(), noise


def _allocation_result(law, coef, exp, draws, df, n_bootstrap, seed, extra) -> FitResult:
    ok = np.all(np.isfinite(draws), axis=1)
    params = {"n_coef": coef, "a": exp, "b": 1.0 - exp}
    stderr, intervals = summarise(params, {"n_coef": draws[ok, 0], "a": draws[ok, 1], "b": 1.0 - draws[ok, 1]})
    extra = {**extra, "bootstrap_failed": int((~ok).sum())}
    return FitResult(law=law, params=params, stderr=stderr, intervals=intervals,
                     n_runs=int(df["run"].nunique()), n_rows=len(df), n_bootstrap=n_bootstrap, seed=seed,
                     allocation={"n_coef": coef, "n_exp": exp},
                     bootstrap_allocation=draws[ok].tolist(), extra=extra)
