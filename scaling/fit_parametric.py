"""Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta, and its data-constrained variant; and the same
fit of Kaplan et al.'s joint form with an irreducible loss, L(N, D) = E + (A/N^alpha + B/D)^gamma (`form=
"kaplan"`, law "kaplan-3"): Kaplan's eq. 1.5 [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D with
alpha = alpha_N/alpha_D, A = N_c^alpha, B = D_c, gamma = alpha_D, plus E. Chinchilla's terms add; in Kaplan's
a model's data-limited excess grows with its size (for gamma < 1, at fixed D a larger N still pays more for
D), which small models trained for few steps show (docs/scaling.md).

Fitted as Hoffmann et al. 2022 (eq. 10 / App. D.2): minimise the SUM over runs of
Huber_delta(LSE(a - alpha·log N, b - beta·log D, e) - log L), delta = 1e-3, with A = e^a, B = e^b,
E = e^e, by L-BFGS from a grid of starts. Float64 throughout (scoped x64, see multistart.py).

Bootstrap: each resample of runs is a weight vector; the resampled fits warm-start from the
full-data optimum plus a few seeded grid points (docs/scaling.md says why that is enough).

With few runs the law can be constrained (`tie_exponents`: alpha = beta, the form of Gadre et al. 2024;
`fix_E`: a given irreducible loss): the optimiser then works on the free parameters only, and the
fit needs more runs than free parameters.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from chinchax.compute import FLOPS_PER_PARAM_TOKEN, training_flops
from chinchax.errors import UserError
from chinchax.scaling.fitresult import (
    THETA_NAMES,
    FitResult,
    relative_errors,
    resample_runs,
    safe_exp,
    summarise,
)
from chinchax.scaling.laws import ParametricLaw, effective_data
from chinchax.scaling.multistart import huber, minimize_multistart
from chinchax.scaling.table import final_rows, holdout_split, require_rows

HUBER_DELTA = 1e-3
FORMS = {"chinchilla": "chinchilla-3", "kaplan": "kaplan-3"}  # form -> the law name its FitResult carries
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")
MIN_RUNS = len(PARAM_NAMES) + 1  # more runs than the 5 parameters (fewer with constraints)
THETA_FULL = ("a", "b", "e", "alpha", "beta")  # the optimiser's parameters: a = log A, b = log B, e = log E
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


def kaplan_grid(coarse: bool = False) -> np.ndarray:
    """Starts over (a = log A, b = log B, e = log E, alpha, gamma) for Kaplan's form: 6·6·5·5·5 = 4,500, wide
    around Kaplan's own values (alpha_N/alpha_D ~ 0.8, log N_c^0.8 ~ 26, log D_c ~ 32, alpha_D ~ 0.1)."""
    a, b = np.arange(0.0, 30.1, 6.0), np.arange(0.0, 35.1, 7.0)
    e = np.arange(-1.0, 1.01, 0.5)
    alpha, gamma = np.array([0.25, 0.5, 1.0, 1.5, 2.0]), np.array([0.1, 0.25, 0.5, 1.0, 1.5])
    if coarse:
        a, b, e, alpha, gamma = a[::2], b[::2], e[::2], alpha[1::2], gamma[1::2]
    return np.array(list(itertools.product(a, b, e, alpha, gamma)), dtype=np.float64)


def form_grid(form: str, coarse: bool = False) -> np.ndarray:
    """The grid of starts of a form of approach 3 (`coarse`: every other value, for quick looks)."""
    return (kaplan_grid if form == "kaplan" else chinchilla_grid)(coarse=coarse)


def kaplan_objective(theta_P, data, w_R):
    """Huber loss of log L = logaddexp(e, gamma·logaddexp(a - alpha·log N, b - log D)) against log loss."""
    import jax.numpy as jnp

    a, b, e, alpha, gamma = theta_P[0], theta_P[1], theta_P[2], theta_P[3], theta_P[4]
    bracket_R = jnp.logaddexp(a - alpha * data["log_n"], b - data["log_d"])
    pred_R = jnp.logaddexp(gamma * bracket_R, e)
    return jnp.sum(w_R * huber(pred_R - data["log_loss"], HUBER_DELTA))


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
    d_eff = effective_data(data["tokens"], data["unique"], jnp.exp(log_r), xp=jnp)
    log_n = data["log_n"]
    terms_3R = jnp.stack([a - alpha * log_n, b - beta * jnp.log(d_eff), jnp.broadcast_to(e, log_n.shape)])
    pred_R = jax.scipy.special.logsumexp(terms_3R, axis=0)
    return jnp.sum(w_R * huber(pred_R - data["log_loss"], HUBER_DELTA))


def constrained_objective(theta_P, data, w_R):
    """approach3_objective over the free parameters only: theta_full = offset + expand @ theta_P."""
    return approach3_objective(data["offset_5"] + data["expand_5P"] @ theta_P, data, w_R)


@dataclass(frozen=True)
class Constraints:
    """Which of (a, b, e, alpha, beta) the optimiser moves: alpha = beta when `tie_exponents`, E fixed at `fix_E`."""

    tie_exponents: bool = False
    fix_E: float | None = None

    @property
    def free(self) -> list[int]:
        """Indices into THETA_FULL of the free parameters (with tied exponents, alpha stands for both)."""
        return [i for i in range(5) if not (i == 2 and self.fix_E is not None) and not (i == 4 and self.tie_exponents)]

    @property
    def active(self) -> bool:
        return self.tie_exponents or self.fix_E is not None

    def free_names(self) -> list[str]:
        names = {0: "A", 1: "B", 2: "E", 3: "alpha=beta" if self.tie_exponents else "alpha", 4: "beta"}
        return [names[i] for i in self.free]

    def expansion(self) -> tuple[np.ndarray, np.ndarray]:
        """(offset_5, expand_5P) with theta_full = offset_5 + expand_5P @ theta_P."""
        free = self.free
        expand_5P = np.zeros((5, len(free)))
        expand_5P[free, np.arange(len(free))] = 1.0
        if self.tie_exponents:
            expand_5P[4, free.index(3)] = 1.0
        offset_5 = np.zeros(5)
        if self.fix_E is not None:
            offset_5[2] = np.log(self.fix_E)
        return offset_5, expand_5P

    def describe(self) -> str:
        parts = (["alpha = beta"] if self.tie_exponents else []) + ([f"E = {self.fix_E:g}"] if self.fix_E else [])
        return ", ".join(parts) or "none"


def _law_from_theta(theta) -> ParametricLaw:
    d = _derived(theta)
    return ParametricLaw(E=d["E"], A=d["A"], B=d["B"], alpha=d["alpha"], beta=d["beta"])


def _derived(theta, form: str = "chinchilla") -> dict[str, float]:
    """E, A, B, alpha, beta (gamma for Kaplan's form) and the allocation (a, b, G, n_coef, n_exp) from the
    optimiser's theta = (log A, log B, log E, alpha, beta or, for Kaplan's form, gamma), computed in log
    space: an extreme bootstrap draw gives inf or NaN, never an overflow."""
    log_a, log_b, log_e, alpha, last = (float(t) for t in theta[:5])
    beta, gamma = (1.0, last) if form == "kaplan" else (last, None)
    exp = lambda x: float(safe_exp(x))  # noqa: E731
    out = {"E": exp(log_e), "A": exp(log_a), "B": exp(log_b), "alpha": alpha, "beta": beta}
    if gamma is not None:
        out["gamma"] = gamma
    total = alpha + beta
    a, b = (beta / total, alpha / total) if total != 0 else (np.nan, np.nan)
    if alpha > 0 and beta > 0 and (gamma is None or gamma > 0):  # else no optimum along C = 6ND
        log_g = (np.log(alpha) + log_a - np.log(beta) - log_b) / total
        g, n_coef = exp(log_g), exp(log_g - a * np.log(FLOPS_PER_PARAM_TOKEN))  # N_opt = G·(C/6)^a = G·6^-a·C^a
    else:
        g = n_coef = np.nan
    return {**out, "a": a, "b": b, "G": g, "n_coef": n_coef, "n_exp": a}


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
    tie_exponents: bool = False,
    fix_E: float | None = None,
    form: str = "chinchilla",
) -> FitResult:
    """Fit E, A, B, alpha, beta (and R* when `data_constrained`) with bootstrap intervals; with
    `form="kaplan"`, E, A, B, alpha, gamma of Kaplan's joint form (beta = 1).

    `tie_exponents` fits alpha = beta; `fix_E` holds E at the given value. Either removes a free parameter,
    so fewer runs suffice: the fit needs more runs than free parameters. `n_bootstrap=0`: the point fit only."""
    if form not in FORMS:
        raise UserError(f"form={form!r}: choose one of {', '.join(FORMS)}")
    if form == "kaplan" and (data_constrained or tie_exponents or fix_E is not None):
        raise UserError("Kaplan's form (law kaplan-3) takes no --tie-exponents, --fix-E or data-constrained fit; "
                        "fit chinchilla-3 for those")
    df_all = final_rows(table)
    fit_df, held = holdout_split(df_all, holdout)
    name = "data-constrained" if data_constrained else FORMS[form]
    constraints = _check_constraints(fit_df, tie_exponents, fix_E, data_constrained)
    n_free = len(constraints.free) + int(data_constrained)
    _require_runs(fit_df, n_free, name, constraints)
    if grid is None:
        grid = form_grid(form)
    grid = np.asarray(grid, np.float64)
    problem = _a3_problem(fit_df, grid, form, constraints, data_constrained)

    t0 = time.perf_counter()
    polished, order, n_converged = _fit_from_grid(problem)
    best = polished.theta_KP[order[0]]
    t1 = time.perf_counter()
    best_SP = _bootstrap_fits(problem, fit_df, polished, order, n_bootstrap, seed, bootstrap_starts)
    best = problem.to_full(best[None])[0]

    params, draws_list = _params_with_draws(best, best_SP, form, data_constrained)
    draws = {k: np.array([d[k] for d in draws_list]) for k in params}
    stderr, intervals = summarise(params, draws)
    n_runs = int(fit_df["run"].nunique())
    result = FitResult(
        law=name, params=params, stderr=stderr, intervals=intervals,
        n_runs=n_runs, n_rows=len(fit_df), n_bootstrap=n_bootstrap, seed=seed,
        allocation={"n_coef": params["n_coef"], "n_exp": params["n_exp"]},
        # Resamples whose fit has no finite optimum (G is NaN) are left out of the allocation draws, and counted.
        bootstrap_allocation=[[d["n_coef"], d["n_exp"]] for d in draws_list if np.isfinite([d["n_coef"], d["n_exp"]]).all()],
        bootstrap_params=_theta_columns(best_SP, form) if n_bootstrap else {},
        extra={"n_starts": len(problem.starts), "n_starts_at_optimum": n_converged,
               "bootstrap_draws_without_optimum": sum(not np.isfinite(d["n_coef"]) for d in draws_list),
               "objective": float(polished.value_K.min()), "huber_delta": HUBER_DELTA,
               "constraints": constraints.describe(),
               "free_parameters": constraints.free_names() + (["R_star"] if data_constrained else []),
               "degrees_of_freedom": n_runs - n_free,
               "seconds_grid": t1 - t0, "seconds_bootstrap": time.perf_counter() - t1,
               "runs": _fitted_runs(fit_df)},
    )
    if held is not None:
        result.holdout = _holdout_error(result, held, best, data_constrained)
    return result


@dataclass(frozen=True)
class _A3Problem:
    """What the optimiser minimises: `objective(theta_KP, data)` from `starts`; `to_full` maps its theta to
    the full (log A, log B, log E, alpha, beta or gamma[, log R*]) that `_derived` reads."""

    data: dict
    objective: Callable
    starts: np.ndarray
    to_full: Callable[[np.ndarray], np.ndarray]


def _a3_problem(fit_df: pd.DataFrame, grid: np.ndarray, form: str, constraints: Constraints,
                data_constrained: bool) -> _A3Problem:
    if data_constrained:
        if "unique_tokens" not in fit_df.columns:
            raise UserError("a data-constrained fit needs a 'unique_tokens' column (unique tokens in the data)")
        data = {"log_n": np.log(fit_df["n_params"]), "tokens": fit_df["n_tokens"].to_numpy(),
                "unique": fit_df["unique_tokens"].to_numpy(), "log_loss": np.log(fit_df["loss"])}
        # Stage 1 (as Muennighoff et al.): the base law from single-epoch runs; stage 2 adds R*.
        single = fit_df[fit_df["n_tokens"] <= fit_df["unique_tokens"]]
        require_rows(single, MIN_RUNS, "a data-constrained fit", "single-epoch runs (n_tokens <= unique_tokens)")
        base = _fit_points(approach3_objective, grid, _a3_data(single))
        starts = np.array([[*base, np.log(r)] for r in (1.0, 3.0, 10.0, 30.0, 100.0)])
        return _A3Problem(data, data_constrained_objective, starts, lambda theta_KP: theta_KP)
    if constraints.active:
        offset_5, expand_5P = constraints.expansion()
        data = {**_a3_data(fit_df), "offset_5": offset_5, "expand_5P": expand_5P}
        return _A3Problem(data, constrained_objective, np.unique(grid[:, constraints.free], axis=0),
                          lambda theta_KP: offset_5 + theta_KP @ expand_5P.T)
    objective = kaplan_objective if form == "kaplan" else approach3_objective
    return _A3Problem(_a3_data(fit_df), objective, grid, lambda theta_KP: theta_KP)


def _fit_from_grid(problem: _A3Problem):
    """(the polished fits, their order best first, how many starts reached the optimum).
    Pass 1: every start, to a loose relative tolerance (enough to tell the basins apart).
    Pass 2: polish the best distinct end points to a tight one."""
    res = minimize_multistart(problem.objective, problem.starts, problem.data, ftol=COARSE_FTOL, gtol=COARSE_GTOL)
    candidates = _distinct_best(res.theta_KP, res.value_K, POLISH)
    polished = minimize_multistart(problem.objective, candidates, problem.data)
    order = np.argsort(polished.value_K)
    n_converged = int(np.sum(res.value_K <= polished.value_K.min() * (1 + 1e-4) + 1e-15))
    return polished, order, n_converged


def _bootstrap_fits(problem: _A3Problem, fit_df: pd.DataFrame, polished, order: np.ndarray, n_bootstrap: int,
                    seed: int, bootstrap_starts: int) -> np.ndarray:
    """The full theta of each resample's best fit, (n_bootstrap, P). Resample runs; each resample starts from
    the optimum and from the next-best distinct local optima of the full grid (the other basins a resample
    might prefer)."""
    rng = np.random.default_rng(seed)
    best = polished.theta_KP[order[0]]
    weights = resample_runs(fit_df["run"].to_numpy(), n_bootstrap, seed)
    alternatives = polished.theta_KP[order[1:bootstrap_starts]]
    if len(alternatives) < bootstrap_starts - 1:
        fill = problem.starts[rng.choice(len(problem.starts), size=bootstrap_starts - 1 - len(alternatives))]
        alternatives = np.concatenate([alternatives, fill])
    if not n_bootstrap:
        return np.zeros((0, best.size))
    boot_starts = np.concatenate([best[None], alternatives])[None].repeat(n_bootstrap, axis=0)
    boot = minimize_multistart(problem.objective, boot_starts.reshape(-1, best.size), problem.data,
                               np.repeat(weights, bootstrap_starts, axis=0))
    return problem.to_full(boot.theta_KP[_best_per_group(boot.value_K, n_bootstrap)])


def _params_with_draws(best: np.ndarray, best_SP: np.ndarray, form: str,
                       data_constrained: bool) -> tuple[dict, list[dict]]:
    """The fitted parameters and each bootstrap draw's, with R* for a data-constrained fit."""
    params = _derived(best, form)
    draws_list = [_derived(t, form) for t in best_SP]
    if data_constrained:
        params["R_star"] = float(safe_exp(best[5]))
        for d, t in zip(draws_list, best_SP, strict=True):
            d["R_star"] = float(safe_exp(t[5]))
    return params, draws_list


def _fitted_runs(fit_df: pd.DataFrame) -> dict[str, list[float]]:
    """The runs fitted, so plots can show them and mark where the data end."""
    flops = fit_df["flops"] if "flops" in fit_df.columns else training_flops(fit_df["n_params"], fit_df["n_tokens"])
    return {"n_params": fit_df["n_params"].astype(float).tolist(),
            "n_tokens": fit_df["n_tokens"].astype(float).tolist(),
            "flops": flops.astype(float).tolist()}


def _holdout_error(result: FitResult, held: pd.DataFrame, best: np.ndarray, data_constrained: bool):
    if data_constrained:
        law = _law_from_theta(best)
        tokens = effective_data(held["n_tokens"].to_numpy(), held["unique_tokens"].to_numpy(),
                                result.params["R_star"])
        return loss_prediction_error(law.loss(held["n_params"].to_numpy(), tokens), held)
    return result.score_holdout(held)


def _theta_columns(theta_SP: np.ndarray, form: str = "chinchilla") -> dict[str, list[float]]:
    """Per-draw {log_E, log_A, log_B, alpha, beta (, gamma)} columns from the optimiser's (a, b, e, alpha, beta)
    or, for Kaplan's form, (a, b, e, alpha, gamma) with beta = 1."""
    column = {"log_E": 2, "log_A": 0, "log_B": 1, "alpha": 3, "beta": 4}
    if form == "kaplan":
        out = {name: theta_SP[:, column[name]].tolist() for name in THETA_NAMES if name != "beta"}
        return {**out, "beta": [1.0] * len(theta_SP), "gamma": theta_SP[:, 4].tolist()}
    return {name: theta_SP[:, column[name]].tolist() for name in THETA_NAMES}


def _check_constraints(df: pd.DataFrame, tie_exponents: bool, fix_E: float | None,
                       data_constrained: bool) -> Constraints:
    if data_constrained and (tie_exponents or fix_E is not None):
        raise UserError("--tie-exponents and --fix-E apply to approach 3 (--law chinchilla-3), "
                        "not to the data-constrained fit; drop them or fit chinchilla-3")
    if fix_E is not None:
        smallest = float(df["loss"].min())
        if not (np.isfinite(fix_E) and 0 < fix_E < smallest):
            raise UserError(f"--fix-E {fix_E:g} must be positive and below the smallest loss in the table "
                            f"({smallest:.4g}): L = E + A/N^alpha + B/D^beta never predicts a loss below E")
    return Constraints(tie_exponents=tie_exponents, fix_E=fix_E)


def _require_runs(df: pd.DataFrame, n_free: int, name: str, constraints: Constraints) -> None:
    n_runs = len(df)
    if n_runs > n_free:
        return
    hint = ("" if constraints.tie_exponents and constraints.fix_E is not None else
            ", or fit fewer parameters: --tie-exponents (alpha = beta) and/or --fix-E VALUE")
    raise UserError(f"approach 3 ({name}) needs at least {n_free + 1} runs (more than its {n_free} free "
                    f"parameters), but the table has {n_runs}; add more runs{hint}")


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
    return relative_errors(pred, held)
