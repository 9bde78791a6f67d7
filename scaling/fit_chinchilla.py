"""Chinchilla approaches 1 (envelope of loss curves) and 2 (isoFLOP parabolas); numpy only.

Both end in power laws N_opt = k·C^a fitted by least squares in log10 space, and D_opt = C/(6·N_opt).
Approach 3 (the parametric loss) lives in fit_parametric.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from chinchax.errors import UserError
from chinchax.scaling.fitresult import FitResult, ScalingFitWarning, resample_runs, summarise
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
        # a relative tolerance: runs planned to end at one budget end within rounding of it, not exactly on it
        inside = (grid >= f[0] * (1 - 1e-9)) & (grid <= f[-1] * (1 + 1e-9))
        loss = np.interp(np.log(np.clip(grid[inside], f[0], f[-1])), np.log(f), g["loss"].to_numpy())
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
# Each budget's parabola is fitted on the WINDOW_SIZES sizes nearest (in log N) to its observed best run,
# as Hoffmann et al. and Porian et al. (2024) fit near the minimum: far from it the isoFLOP curve is not a
# parabola (it is asymmetric, and flattens or steepens), and a parabola through every size puts its vertex
# where the far points pull it, not where the valley is.
WINDOW_SIZES = 7
# The allocation exponent is a slope in log C: budgets closer than this factor give a slope made of noise.
MIN_BUDGET_SPAN = 2.0  # refuse below (largest used budget / smallest)
WARN_BUDGET_SPAN = 10.0  # warn below


def select_windows(df: pd.DataFrame, window: int = WINDOW_SIZES) -> tuple[dict[float, np.ndarray], list[dict]]:
    """({budget: row indices of the window}, one report per budget).

    A budget is dropped when it has fewer than 3 sizes, or when its observed best run is its smallest or
    largest size: the grid does not bracket the optimum, and a parabola's vertex there is an extrapolation."""
    b = budgets(df)
    log_n_R, loss_R = np.log10(df["n_params"].to_numpy()), df["loss"].to_numpy()
    windows, report = {}, []
    for budget in np.unique(b):
        rows = np.nonzero(b == budget)[0]
        best = rows[np.argmin(loss_R[rows])]
        sizes = np.unique(log_n_R[rows])
        entry = {"budget": float(budget), "n_sizes": int(sizes.size), "observed_best_n": float(10 ** log_n_R[best])}
        if sizes.size < MIN_PER_BUDGET:
            report.append({**entry, "used": False, "reason": f"only {sizes.size} sizes (a parabola needs 3)"})
            continue
        if log_n_R[best] in (sizes[0], sizes[-1]):
            edge = "smallest" if log_n_R[best] == sizes[0] else "largest"
            report.append({**entry, "used": False, "reason": f"observed best run is the {edge} size: the grid does "
                           "not bracket the optimum (add sizes beyond it)"})
            continue
        nearest = sizes[np.argsort(np.abs(sizes - log_n_R[best]), kind="stable")[:window]]
        in_window = rows[np.isin(log_n_R[rows], nearest)]
        windows[float(budget)] = in_window
        report.append({**entry, "used": True, "reason": "", "sizes": (10 ** np.sort(nearest)).tolist()})
    return windows, report


def fit_parabolas(df: pd.DataFrame, windows: dict[float, np.ndarray],
                  weights_R: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[float, str]]:
    """(minima, {budget: why it has no usable minimum}).

    Per budget, the parabola loss = p2·x² + p1·x + p0 in x = log10 N over its window rows (weighted), and its
    vertex. No minimum when the parabola opens downwards or its vertex lies outside the sizes it was fitted on."""
    w_R = np.ones(len(df)) if weights_R is None else weights_R
    log_n_R, loss_R = np.log10(df["n_params"].to_numpy()), df["loss"].to_numpy()
    rows, rejected = [], {}
    for budget, idx in windows.items():
        idx = idx[w_R[idx] > 0]
        x, y = log_n_R[idx], loss_R[idx]
        if np.unique(x).size < MIN_PER_BUDGET:
            rejected[budget] = "fewer than 3 distinct sizes"
            continue
        p2, p1, p0 = np.polyfit(x, y, 2, w=np.sqrt(w_R[idx]))
        if p2 <= 0:
            rejected[budget] = "the parabola opens downwards (no valley)"
            continue
        x_opt = -p1 / (2 * p2)
        if not x.min() <= x_opt <= x.max():
            rejected[budget] = (f"the fitted minimum N = {10**x_opt:.3g} lies outside the sizes fitted "
                                f"({10**x.min():.3g} to {10**x.max():.3g})")
            continue
        rows.append({"budget": budget, "n_opt": 10**x_opt, "loss_opt": p0 - p1**2 / (4 * p2),
                     "p2": p2, "p1": p1, "p0": p0, "n_min": 10 ** x.min(), "n_max": 10 ** x.max()})
    columns = ["budget", "n_opt", "loss_opt", "p2", "p1", "p0", "n_min", "n_max"]
    return pd.DataFrame(rows, columns=columns), rejected


def isoflop_minima(df: pd.DataFrame, weights: np.ndarray | None = None, window: int = WINDOW_SIZES) -> pd.DataFrame:
    """Per usable budget: the parabola in x = log10 N over its window of sizes, and its minimum."""
    windows, _ = select_windows(df, window)
    return fit_parabolas(df, windows, weights)[0]


def fit_approach2(table: pd.DataFrame, *, n_bootstrap: int = 200, seed: int = 0,
                  holdout: str | None = None, bootstrap: str = "auto", window: int = WINDOW_SIZES) -> FitResult:
    """Approach 2 with a bootstrap interval for the allocation exponent.

    Each budget's parabola is fitted on the `window` sizes nearest its observed best run; budgets whose best
    run is at an edge of their grid, or whose fitted minimum falls outside the sizes fitted, are dropped
    (with a ScalingFitWarning, and the reason in `extra["budgets"]`). The used budgets must span a factor
    MIN_BUDGET_SPAN. The bootstrap keeps the windows chosen on the data.

    `bootstrap`: "runs" resamples runs within each budget (as approaches 1 and 3 do); "parametric" keeps the
    design and redraws every loss around its budget's fitted parabola, with the noise measured by the pooled
    residuals of the parabolas (or, when every window has exactly 3 sizes and so no residuals, by the
    runs' `eval_loss_stderr`); "auto" resamples runs when every window has >= 6 sizes, else is parametric.
    """
    if bootstrap not in BOOTSTRAP_METHODS:
        raise UserError(f"bootstrap={bootstrap!r} is not an approach-2 bootstrap; choose one of "
                        f"{', '.join(BOOTSTRAP_METHODS)}")
    if window < MIN_PER_BUDGET:
        raise UserError(f"the approach-2 window must hold at least {MIN_PER_BUDGET} sizes, got {window}")
    df_all = final_rows(table)
    df, held = holdout_split(df_all, holdout)
    counts = pd.Series(budgets(df)).value_counts()
    usable = counts[counts >= MIN_PER_BUDGET]
    if len(usable) < 2:
        raise UserError(f"approach 2 needs at least 2 budgets with >= {MIN_PER_BUDGET} runs each; "
                        f"the table has {len(usable)} (runs per budget: {counts.to_dict()})")
    minima, report = _minima_with_report(df, window)
    coef, exp = power_law(minima["budget"].to_numpy(), minima["n_opt"].to_numpy())
    # The bootstrap works on the window rows only, each budget's window whole.
    used_rows = np.sort(np.concatenate([np.asarray(r["rows"]) for r in report if r["used"]]))
    sub = df.iloc[used_rows].reset_index(drop=True)
    sub_windows = {budget: np.nonzero(budgets(sub) == budget)[0] for budget in minima["budget"]}
    if bootstrap == "auto":
        fewest = min(np.unique(sub["n_params"].to_numpy()[rows]).size for rows in sub_windows.values())
        bootstrap = "runs" if fewest >= MIN_SIZES_TO_RESAMPLE_RUNS else "parametric"
    draws, noise = [], {}
    if bootstrap == "runs":
        samples = (fit_parabolas(sub, sub_windows, w)[0]
                   for w in resample_runs(sub["run"].to_numpy(), n_bootstrap, seed, strata=budgets(sub)))
    else:
        samples, noise = _parametric_minima(sub, sub_windows, n_bootstrap, seed)
    for m in samples:
        draws.append(power_law(m["budget"].to_numpy(), m["n_opt"].to_numpy()) if len(m) >= 2 else (np.nan, np.nan))
    for r in report:
        r.pop("rows", None)
    result = _allocation_result("chinchilla-2", coef, exp, np.array(draws), df, n_bootstrap, seed,
                                extra={"minima": minima.to_dict("list"), "budgets": report, "window": window,
                                       "bootstrap_method": bootstrap, **noise})
    if held is not None:
        hm = isoflop_minima(held, window=window)
        if len(hm):
            pred = coef * hm["budget"].to_numpy() ** exp
            result.holdout = {"budgets": hm["budget"].tolist(), "observed_n_opt": hm["n_opt"].tolist(),
                              "predicted_n_opt": pred.tolist(),
                              "abs_log10_error": np.abs(np.log10(pred / hm["n_opt"].to_numpy())).tolist()}
        else:
            result.holdout = {"note": "the held-out budget has no parabola minimum to compare with (its best run "
                              "is at an edge of its sizes, or its parabola has no minimum inside them)"}
    return result


def _minima_with_report(df: pd.DataFrame, window: int) -> tuple[pd.DataFrame, list[dict]]:
    """The minima of the usable budgets, and per budget whether it was used (its window rows) or why not.
    Warns for every dropped budget; refuses when fewer than 2 remain or they span too little compute."""
    windows, report = select_windows(df, window)
    minima, rejected = fit_parabolas(df, windows)
    for r in report:
        if r["budget"] in rejected:
            r.update(used=False, reason=rejected[r["budget"]])
        elif r["used"]:
            r["rows"] = windows[r["budget"]]
    dropped = [r for r in report if not r["used"]]
    why = "; ".join(f"{r['budget']:.3g}: {r['reason']}" for r in dropped)
    if dropped:
        warnings.warn(f"approach 2 dropped {len(dropped)} of {len(report)} budgets ({why})",
                      ScalingFitWarning, stacklevel=3)
    if len(minima) < 2:
        raise UserError(f"approach 2: only {len(minima)} budget(s) have a usable loss valley ({why or 'none dropped'}); "
                        "give each budget sizes on both sides of its best run, so its grid brackets the optimum")
    span = minima["budget"].max() / minima["budget"].min()
    if span < MIN_BUDGET_SPAN:
        raise UserError(f"approach 2: the usable budgets span only a factor {span:.3g} of compute "
                        f"({', '.join(f'{b:.4g}' for b in minima['budget'])}); the exponent a is a slope in log C "
                        f"and needs budgets at least {MIN_BUDGET_SPAN:g}x apart (better {WARN_BUDGET_SPAN:g}x): "
                        "add a budget further away")
    if span < WARN_BUDGET_SPAN:
        warnings.warn(f"approach 2: the usable budgets span only a factor {span:.3g} of compute; the exponent "
                      f"is poorly determined below {WARN_BUDGET_SPAN:g}x", ScalingFitWarning, stacklevel=3)
    return minima, report


def _parametric_minima(sub: pd.DataFrame, windows: dict[float, np.ndarray], n_bootstrap: int, seed: int):
    """(generator of parabola minima over redrawn losses, description of the noise used).

    Each window's losses are redrawn as its least-squares parabola's value + N(0, sigma^2). sigma is the pooled
    residual standard deviation over all windows when there are at least 2 residual degrees of freedom, else
    each run's eval_loss_stderr."""
    x_R, y_R = np.log10(sub["n_params"].to_numpy()), sub["loss"].to_numpy()
    fitted_R = np.full(len(sub), np.nan)
    squares, dof = 0.0, 0
    for rows in windows.values():
        fitted_R[rows] = np.polyval(np.polyfit(x_R[rows], y_R[rows], 2), x_R[rows])
        squares += float(np.sum((y_R[rows] - fitted_R[rows]) ** 2))
        dof += rows.size - 3
    if dof >= 2:
        sigma_R = np.full(len(sub), np.sqrt(squares / dof))
        noise = {"noise": "pooled parabola residuals", "noise_sigma": float(sigma_R[0]), "noise_dof": dof}
    elif "eval_loss_stderr" in sub.columns and np.all(np.isfinite(sub["eval_loss_stderr"].to_numpy())):
        sigma_R = sub["eval_loss_stderr"].to_numpy(dtype=np.float64)
        noise = {"noise": "eval_loss_stderr of each run", "noise_sigma": float(np.median(sigma_R))}
    else:
        raise UserError("approach 2's parametric bootstrap needs the size of the loss noise: give some budget "
                        "more than 3 sizes (residuals measure it) or the table an eval_loss_stderr column")
    rng = np.random.default_rng(seed)

    def samples():
        for _ in range(n_bootstrap):
            redrawn = sub.assign(loss=fitted_R + sigma_R * rng.standard_normal(len(sub)))
            yield fit_parabolas(redrawn, windows)[0]

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
