"""Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta, and its data-constrained variant.

Fitted as Hoffmann et al. 2022 (eq. 10 / App. D.2): minimise the SUM over runs of
Huber_delta(LSE(a - alpha·log N, b - beta·log D, e) - log L), delta = 1e-3, with A = e^a, B = e^b,
E = e^e, by L-BFGS from a grid of starts. Float64 throughout (scoped x64, see multistart.py).

Bootstrap: each resample of runs is a weight vector; the resampled fits warm-start from the
full-data optimum plus a few seeded grid points (docs/scaling.md says why that is enough).
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pandas as pd

from chinchax.errors import UserError
from chinchax.scaling.fitresult import FitResult, resample_runs, summarise
from chinchax.scaling.laws import ParametricLaw, effective_data
from chinchax.scaling.multistart import huber, minimize_multistart
from chinchax.scaling.table import final_rows, holdout_split, require_rows

HUBER_DELTA = 1e-3
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
MIN_RUNS = 6  # more runs than the 5 parameters
COARSE_FTOL, COARSE_GTOL = 1e-5, 1e-6  # first pass over the whole grid: enough to rank basins
POLISH = 8  # distinct best end points of the first pass polished to the tight default tolerance


def chinchilla_grid(coarse: bool = False) -> np.ndarray:
    """Chinchilla's initialisation grid over (a, b, e, alpha, beta): 6·6·5·5·5 = 4,500 starts.
    `coarse` keeps every other value (for tests and quick looks)."""
    ab = np.arange(0.0, 25.1, 5.0)
    e = np.arange(-1.0, 1.01, 0.5)
    ex = np.arange(0.0, 2.01, 0.5)
    if coarse:
        ab, e, ex = ab[::2], e[::2], ex[1::2]
    return np.array(list(itertools.product(ab, ab, e, ex, ex)), dtype=np.float64)


def approach3_objective(theta_P, data, w_R):
    import jax
    import jax.numpy as jnp

    a, b, e, alpha, beta = theta_P[0], theta_P[1], theta_P[2], theta_P[3], theta_P[4]
    log_n, log_d = data["log_n"], data["log_d"]
    terms_3R = jnp.stack([a - alpha * log_n, b - beta * log_d, jnp.broadcast_to(e, log_n.shape)])
    pred_R = jax.scipy.special.logsumexp(terms_3R, axis=0)
    return jnp.sum(w_R * huber(pred_R - data["log_loss"], HUBER_DELTA))


def data_constrained_objective(theta_P, data, w_R):
    """Approach 3 with D replaced by Muennighoff's effective data D'(R*); theta[5] = log R*."""
    import jax
    import jax.numpy as jnp

    a, b, e, alpha, beta, log_r = (theta_P[i] for i in range(6))
    r_star = jnp.exp(log_r)
    tokens, unique = data["tokens"], data["unique"]
    repeats = jnp.maximum(tokens / unique - 1.0, 0.0)
    d_eff = jnp.where(tokens <= unique, tokens, unique + unique * r_star * (1.0 - jnp.exp(-repeats / r_star)))
    log_n = data["log_n"]
    terms_3R = jnp.stack([a - alpha * log_n, b - beta * jnp.log(d_eff), jnp.broadcast_to(e, log_n.shape)])
    pred_R = jax.scipy.special.logsumexp(terms_3R, axis=0)
    return jnp.sum(w_R * huber(pred_R - data["log_loss"], HUBER_DELTA))


def _law_from_theta(theta) -> ParametricLaw:
    return ParametricLaw(E=float(np.exp(theta[2])), A=float(np.exp(theta[0])), B=float(np.exp(theta[1])),
                         alpha=float(theta[3]), beta=float(theta[4]))


def _derived(law: ParametricLaw) -> dict[str, float]:
    alloc = law.allocation()
    return {"E": law.E, "A": law.A, "B": law.B, "alpha": law.alpha, "beta": law.beta,
            "a": law.a, "b": law.b, "G": law.G, "n_coef": alloc.n_coef, "n_exp": alloc.n_exp}


def _best_per_group(values: np.ndarray, n_groups: int) -> np.ndarray:
    return np.argmin(values.reshape(n_groups, -1), axis=1) + np.arange(n_groups) * (values.size // n_groups)


def fit_approach3(
    table: pd.DataFrame,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    holdout: str | None = None,
    grid: np.ndarray | None = None,
    bootstrap_starts: int = 4,
    data_constrained: bool = False,
) -> FitResult:
    """Fit E, A, B, alpha, beta (and R* when `data_constrained`) with bootstrap intervals."""
    df_all = final_rows(table)
    fit_df, held = holdout_split(df_all, holdout)
    name = "data-constrained" if data_constrained else "chinchilla-3"
    require_rows(fit_df, MIN_RUNS, f"approach 3 ({name})")
    grid = chinchilla_grid() if grid is None else np.asarray(grid, np.float64)
    rng = np.random.default_rng(seed)

    if data_constrained:
        if "unique_tokens" not in fit_df.columns:
            raise UserError("a data-constrained fit needs a 'unique_tokens' column (unique tokens in the data)")
        data = {"log_n": np.log(fit_df["n_params"]), "tokens": fit_df["n_tokens"].to_numpy(),
                "unique": fit_df["unique_tokens"].to_numpy(), "log_loss": np.log(fit_df["loss"])}
        objective = data_constrained_objective
        # Stage 1 (as Muennighoff et al.): the base law from single-epoch runs; stage 2 adds R*.
        single = fit_df[fit_df["n_tokens"] <= fit_df["unique_tokens"]]
        require_rows(single, MIN_RUNS, "a data-constrained fit", "single-epoch runs (n_tokens <= unique_tokens)")
        base = _fit_points(approach3_objective, grid, _a3_data(single))
        starts = np.array([[*base, np.log(r)] for r in (1.0, 3.0, 10.0, 30.0, 100.0)])
    else:
        data, objective, starts = _a3_data(fit_df), approach3_objective, grid
    # Pass 1: every start, to a loose relative tolerance (enough to tell the basins apart).
    # Pass 2: polish the best distinct end points to a tight one.
    t0 = time.perf_counter()
    res = minimize_multistart(objective, starts, data, ftol=COARSE_FTOL, gtol=COARSE_GTOL)
    candidates = _distinct_best(res.theta_KP, res.value_K, POLISH)
    polished = minimize_multistart(objective, candidates, data)
    order = np.argsort(polished.value_K)
    best = polished.theta_KP[order[0]]
    n_converged = int(np.sum(res.value_K <= polished.value_K.min() * (1 + 1e-4) + 1e-15))

    # Bootstrap: resample runs; each resample starts from the optimum and from the next-best
    # distinct local optima of the full grid (the other basins a resample might prefer).
    t1 = time.perf_counter()
    weights = resample_runs(fit_df["run"].to_numpy(), n_bootstrap, seed)
    alternatives = polished.theta_KP[order[1:bootstrap_starts]]
    if len(alternatives) < bootstrap_starts - 1:
        fill = starts[rng.choice(len(starts), size=bootstrap_starts - 1 - len(alternatives))]
        alternatives = np.concatenate([alternatives, fill])
    boot_starts = np.concatenate([best[None], alternatives])[None].repeat(n_bootstrap, axis=0)
    boot = minimize_multistart(objective, boot_starts.reshape(-1, best.size), data,
                               np.repeat(weights, bootstrap_starts, axis=0))
    boot_theta = boot.theta_KP[_best_per_group(boot.value_K, n_bootstrap)]

    params = _derived(_law_from_theta(best))
    draws_list = [_derived(_law_from_theta(t)) for t in boot_theta]
    if data_constrained:
        params["R_star"] = float(np.exp(best[5]))
        for d, t in zip(draws_list, boot_theta, strict=True):
            d["R_star"] = float(np.exp(t[5]))
    draws = {k: np.array([d[k] for d in draws_list]) for k in params}
    stderr, intervals = summarise(params, draws)
    result = FitResult(
        law=name, params=params, stderr=stderr, intervals=intervals,
        n_runs=int(fit_df["run"].nunique()), n_rows=len(fit_df), n_bootstrap=n_bootstrap, seed=seed,
        allocation={"n_coef": params["n_coef"], "n_exp": params["n_exp"]},
        # Resamples whose fit has no finite optimum (G is NaN) are left out of the allocation draws, and counted.
        bootstrap_allocation=[[d["n_coef"], d["n_exp"]] for d in draws_list if np.isfinite([d["n_coef"], d["n_exp"]]).all()],
        extra={"n_starts": len(starts), "n_starts_at_optimum": n_converged,
               "bootstrap_draws_without_optimum": sum(not np.isfinite(d["n_coef"]) for d in draws_list),
               "objective": float(polished.value_K.min()), "huber_delta": HUBER_DELTA,
               "seconds_grid": t1 - t0, "seconds_bootstrap": time.perf_counter() - t1},
    )
    if held is not None:
        law = _law_from_theta(best)
        tokens = held["n_tokens"].to_numpy()
        if data_constrained:
            tokens = effective_data(tokens, held["unique_tokens"].to_numpy(), params["R_star"])
        result.holdout = loss_prediction_error(law.loss(held["n_params"].to_numpy(), tokens), held)
    return result


def _distinct_best(theta_KP: np.ndarray, value_K: np.ndarray, k: int) -> np.ndarray:
    """The k lowest-objective end points, skipping near-duplicates (same basin)."""
    picked: list[np.ndarray] = []
    for i in np.argsort(value_K):
        if not np.isfinite(value_K[i]):
            break
        if all(np.max(np.abs(theta_KP[i] - p)) > 1e-3 for p in picked):
            picked.append(theta_KP[i])
        if len(picked) == k:
            break
    return np.array(picked) if picked else theta_KP[:1]


def _a3_data(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {"log_n": np.log(df["n_params"].to_numpy()), "log_d": np.log(df["n_tokens"].to_numpy()),
            "log_loss": np.log(df["loss"].to_numpy())}


def _fit_points(objective, starts, data) -> np.ndarray:
    res = minimize_multistart(objective, starts, data, ftol=COARSE_FTOL, gtol=COARSE_GTOL)
    polished = minimize_multistart(objective, _distinct_best(res.theta_KP, res.value_K, POLISH), data)
    return polished.theta_KP[np.argmin(polished.value_K)]


def loss_prediction_error(pred: np.ndarray, held: pd.DataFrame) -> dict:
    obs = held["loss"].to_numpy()
    rel = (pred - obs) / obs
    return {"runs": held["run"].tolist(), "predicted_loss": pred.tolist(), "observed_loss": obs.tolist(),
            "mean_abs_rel_error": float(np.mean(np.abs(rel))),
            "rmse_log_loss": float(np.sqrt(np.mean((np.log(pred) - np.log(obs)) ** 2)))}
