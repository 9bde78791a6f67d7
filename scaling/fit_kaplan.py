"""Kaplan et al. 2020 laws: L(N), L(D), the joint L(N, D), L(C) on the compute frontier, N_opt(C).

Kaplan's N excludes embeddings: the fit uses `n_params_non_embedding` when the table has it (and
C = 6·N_non_embedding·D), else `n_params` (noted in the result).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from chinchax.compute import FLOPS_PER_PARAM_TOKEN, training_flops
from chinchax.errors import UserError
from chinchax.scaling.fit_chinchilla import envelope, power_law
from chinchax.scaling.fit_parametric import loss_prediction_error
from chinchax.scaling.fitresult import FitResult, resample_runs, summarise
from chinchax.scaling.laws import kaplan_loss_nd
from chinchax.scaling.multistart import minimize_multistart
from chinchax.scaling.table import final_rows, holdout_split, require_rows

MIN_RUNS = 5
MAX_LOG10_FLOAT = float(np.log10(np.finfo(np.float64).max))  # 308.25
# Starts for the joint fit over (log N_c, log D_c, alpha_N, alpha_D); Kaplan's values are
# N_c ~ 6e13, D_c ~ 2e13, alpha ~ 0.08-0.1, so the grid spans well around them.
JOINT_GRID = np.array([[np.log(nc), np.log(dc), an, ad]
                       for nc in (1e8, 1e11, 1e14) for dc in (1e8, 1e11, 1e14)
                       for an in (0.05, 0.2, 0.6) for ad in (0.05, 0.2, 0.6)])


def kaplan_joint_objective(theta_P, data, w_R):
    import jax
    import jax.numpy as jnp

    log_nc, log_dc, alpha_n, alpha_d = theta_P[0], theta_P[1], theta_P[2], theta_P[3]
    terms_2R = jnp.stack([(alpha_n / alpha_d) * (log_nc - data["log_n"]), log_dc - data["log_d"]])
    pred_R = alpha_d * jax.scipy.special.logsumexp(terms_2R, axis=0)
    return jnp.sum(w_R * 0.5 * (pred_R - data["log_loss"]) ** 2)


def _n_column(df: pd.DataFrame) -> str:
    return "n_params_non_embedding" if "n_params_non_embedding" in df.columns else "n_params"


def _single_laws(final: pd.DataFrame, curves: pd.DataFrame, n_col: str, w: np.ndarray | None = None,
                 notes: list[str] | None = None) -> dict:
    """L(N), L(D) from per-size / per-token-count minima; L(C), N_opt(C) from the frontier.
    Constants that cannot be represented are NaN, with a note appended to `notes` (when given) saying why."""
    if w is not None:
        final = final[w > 0]
        curves = curves[curves["run"].isin(set(final["run"]))]
    by_n = final.groupby(n_col)["loss"].min()
    by_d = final.groupby("n_tokens")["loss"].min()
    out = {}
    for name, s in (("N", by_n), ("D", by_d)):
        coef, slope = power_law(s.index.to_numpy(np.float64), s.to_numpy())
        alpha = -slope  # L = (X_c/X)^alpha = X_c^alpha · X^-alpha
        out[f"alpha_{name}"], out[f"{name}_c"] = alpha, _scale_constant(coef, alpha, name, notes)
    front = _frontier(curves, n_col)
    coef, slope = power_law(front["flops"].to_numpy(), front["loss"].to_numpy())
    out["alpha_C"], out["C_c"] = -slope, _scale_constant(coef, -slope, "C", notes)
    if front["n_params"].nunique() >= 2:
        out["n_coef"], out["n_exp"] = power_law(front["flops"].to_numpy(), front["n_params"].to_numpy())
    else:
        out["n_coef"] = out["n_exp"] = np.nan
    return out


def _scale_constant(coef: float, alpha: float, name: str, notes: list[str] | None) -> float:
    """X_c of L = (X_c/X)^alpha = coef·X^-alpha, i.e. coef^(1/alpha), computed in log space.

    NaN when the loss does not fall with X (alpha <= 0), or when alpha is so close to 0 that X_c lies
    beyond float64 (1.8e308): then the runs show no usable power law in X, which a note says."""
    if not (alpha > 0 and 0 < coef < np.inf):
        return float("nan")
    log10_xc = float(np.log10(coef)) / float(alpha)
    if log10_xc > MAX_LOG10_FLOAT:
        if notes is not None:
            notes.append(
                f"L({name}): the loss barely falls with {name} (alpha_{name} = {float(alpha):.3g}), so {name}_c = "
                f"10^{log10_xc:.4g} is beyond floating point and is reported as NaN; these runs show no power "
                f"law in {name}: check the losses, or add runs that vary {name} more"
            )
        return float("nan")
    return float(10.0**log10_xc)


def _frontier(curves: pd.DataFrame, n_col: str) -> pd.DataFrame:
    df = curves.assign(n_params=curves[n_col], flops=training_flops(curves[n_col], curves["n_tokens"]))
    if "step" in df.columns and df.groupby("run").size().max() > 1:
        return envelope(df)
    # Final points only: the Pareto frontier (each point beats every cheaper one).
    df = df.sort_values("flops")
    return df[df["loss"] < df["loss"].cummin().shift(fill_value=np.inf)][["flops", "loss", "n_params", "run"]]


def fit_kaplan(table: pd.DataFrame, *, n_bootstrap: int = 200, seed: int = 0,
               holdout: str | None = None) -> FitResult:
    final_all = final_rows(table)
    final, held = holdout_split(final_all, holdout)
    curves = table[table["run"].isin(set(final["run"]))]
    require_rows(final, MIN_RUNS, "the Kaplan fit")
    n_col = _n_column(final)
    if final[n_col].nunique() < 3:
        raise UserError(f"the Kaplan fit needs at least 3 distinct model sizes ({n_col}); add sizes")
    data = {"log_n": np.log(final[n_col].to_numpy()), "log_d": np.log(final["n_tokens"].to_numpy()),
            "log_loss": np.log(final["loss"].to_numpy())}
    joint = minimize_multistart(kaplan_joint_objective, JOINT_GRID, data)
    best = joint.theta_KP[np.argmin(joint.value_K)]
    notes: list[str] = []
    params = {**_single_laws(final, curves, n_col, notes=notes), **_joint_params(best, notes)}
    for note in notes:  # the bootstrap draws below repeat the same NaNs silently
        warnings.warn(f"Kaplan fit: {note}", stacklevel=2)

    weights = resample_runs(final["run"].to_numpy(), n_bootstrap, seed)
    starts = np.concatenate([best[None], JOINT_GRID[[13, 67]]])  # the optimum + two spread-out grid points
    boot = minimize_multistart(kaplan_joint_objective, np.tile(starts, (n_bootstrap, 1)), data,
                               np.repeat(weights, len(starts), axis=0))
    vals = boot.value_K.reshape(n_bootstrap, len(starts))
    boot_best = boot.theta_KP.reshape(n_bootstrap, len(starts), -1)[np.arange(n_bootstrap), np.argmin(vals, 1)]
    draws_list = []
    for w, th in zip(weights, boot_best, strict=True):
        try:
            single = _single_laws(final, curves, n_col, w)
        except (ValueError, np.linalg.LinAlgError):
            single = {k: np.nan for k in params if not k.endswith("_joint")}
        draws_list.append({**single, **_joint_params(th)})
    draws = {k: np.array([d.get(k, np.nan) for d in draws_list]) for k in params}
    stderr, intervals = summarise(params, draws)
    alloc = [[d["n_coef"], d["n_exp"]] for d in draws_list if np.isfinite([d["n_coef"], d["n_exp"]]).all()]
    result = FitResult(
        law="kaplan", params=params, stderr=stderr, intervals=intervals,
        n_runs=int(final["run"].nunique()), n_rows=len(table), n_bootstrap=n_bootstrap, seed=seed,
        allocation={"n_coef": params["n_coef"], "n_exp": params["n_exp"]}, bootstrap_allocation=alloc,
        extra={"n_column": n_col, "flops_convention": f"C = {FLOPS_PER_PARAM_TOKEN:g} * {n_col} * n_tokens",
               **({"warnings": notes} if notes else {})},
    )
    if held is not None:
        pred = kaplan_loss_nd(held[n_col].to_numpy(), held["n_tokens"].to_numpy(), params["N_c_joint"],
                              params["D_c_joint"], params["alpha_N_joint"], params["alpha_D_joint"])
        result.holdout = loss_prediction_error(pred, held)
    return result


def _joint_params(theta, notes: list[str] | None = None) -> dict[str, float]:
    out = {"alpha_N_joint": float(theta[2]), "alpha_D_joint": float(theta[3])}
    for name, log_xc in (("N", float(theta[0])), ("D", float(theta[1]))):
        if log_xc / np.log(10.0) > MAX_LOG10_FLOAT:  # exp() would overflow: not a usable constant
            if notes is not None:
                notes.append(f"joint L(N, D): {name}_c = 10^{log_xc / np.log(10.0):.4g} is beyond floating point "
                             f"and is reported as NaN; the joint law is not identified by these runs")
            out[f"{name}_c_joint"] = float("nan")
        else:
            out[f"{name}_c_joint"] = float(np.exp(log_xc))
    return {k: out[k] for k in ("N_c_joint", "D_c_joint", "alpha_N_joint", "alpha_D_joint")}


