"""Post-training laws, pure numerics on result tables (no model, data or trainer imports).

Zhang et al. 2024 ("When Scaling Meets LLM Finetuning"), the multiplicative joint law of a fine-tuning
factor X (here the base model size) and the fine-tuning data size D_f:
    L(X, D_f) = A · X^-alpha · D_f^-beta + E
fitted per method as they (and Chinchilla) fit: Huber (delta 1e-3) on log L, with log L predicted as
logsumexp(a - alpha·log X - beta·log D_f, e), by L-BFGS from a grid of starts (scaling.multistart),
with run-bootstrap percentile intervals.

Dettmers & Zettlemoyer 2022 ("The case for 4-bit precision"): loss against total model bits
(parameters × bits per parameter) for each precision; `best_precision_at_bits` reads off which
precision has the lowest loss at a given number of total bits (interpolating each precision's curve
linearly in log bits, within the range it covers).
"""

from __future__ import annotations

import itertools

import numpy as np

from chinchax.errors import UserError
from chinchax.scaling.multistart import huber, minimize_multistart

HUBER_DELTA = 1e-3
ZHANG_PARAMS = ("A", "E", "alpha", "beta")


def zhang_loss(x, d_f, A, E, alpha, beta):
    return A * np.asarray(x, float) ** -alpha * np.asarray(d_f, float) ** -beta + E


def zhang_objective(theta_P, data, w_R):
    import jax
    import jax.numpy as jnp

    a, e, alpha, beta = theta_P[0], theta_P[1], theta_P[2], theta_P[3]
    log_x, log_d = data["log_x"], data["log_d"]
    terms_2R = jnp.stack([a - alpha * log_x - beta * log_d, jnp.broadcast_to(e, log_x.shape)])
    pred_R = jax.scipy.special.logsumexp(terms_2R, axis=0)
    return jnp.sum(w_R * huber(pred_R - data["log_loss"], HUBER_DELTA))


def _grid() -> np.ndarray:
    a = np.arange(0.0, 25.1, 5.0)
    e = np.arange(-1.0, 1.51, 0.5)
    ex = np.array([0.05, 0.2, 0.5, 1.0])
    return np.array(list(itertools.product(a, e, ex, ex)), dtype=np.float64)


def fit_zhang(x, d_f, loss, *, n_bootstrap: int = 0, seed: int = 0) -> dict:
    """{A, E, alpha, beta, objective, n_runs, rel_error_mean, [ci: {param: (lo, hi)}]} for one method."""
    x, d_f, loss = (np.asarray(v, np.float64) for v in (x, d_f, loss))
    if not (x.shape == d_f.shape == loss.shape) or x.ndim != 1:
        raise UserError("fit_zhang needs equal-length 1-D x, d_f and loss")
    if len(x) < len(ZHANG_PARAMS) + 1:
        raise UserError(f"the fine-tuning law has {len(ZHANG_PARAMS)} parameters; fit it on at least "
                        f"{len(ZHANG_PARAMS) + 1} runs (got {len(x)})")
    if len(np.unique(x)) < 2 or len(np.unique(d_f)) < 2:
        raise UserError("the runs need at least two base sizes X and two fine-tuning data sizes D_f")
    if not (np.all(x > 0) and np.all(d_f > 0) and np.all(np.isfinite(loss)) and np.all(loss > 0)):
        raise UserError("x and d_f must be positive and every loss finite and positive")
    data = {"log_x": np.log(x), "log_d": np.log(d_f), "log_loss": np.log(loss)}
    starts = _grid()
    res = minimize_multistart(zhang_objective, starts, data)
    best = res.theta_KP[int(np.argmin(res.value_K))]
    out = _params(best)
    pred = zhang_loss(x, d_f, out["A"], out["E"], out["alpha"], out["beta"])
    out.update(objective=float(res.value_K.min()), n_runs=int(len(x)),
               rel_error_mean=float(np.mean(np.abs(pred - loss) / loss)))
    if n_bootstrap:
        rng = np.random.default_rng(seed)
        w = np.stack([np.bincount(rng.integers(0, len(x), len(x)), minlength=len(x)) for _ in range(n_bootstrap)])
        boot = minimize_multistart(zhang_objective, np.broadcast_to(best, (n_bootstrap, 4)), data, weights=w)
        draws = [_params(t) for t in boot.theta_KP]
        out["ci"] = {k: tuple(np.percentile([d[k] for d in draws], [2.5, 97.5]).tolist()) for k in ZHANG_PARAMS}
    return out


def _params(theta) -> dict:
    a, e, alpha, beta = (float(v) for v in theta)
    return {"A": float(np.exp(a)), "E": float(np.exp(e)), "alpha": alpha, "beta": beta}


def fit_by_method(rows: list[dict], *, n_bootstrap: int = 0) -> dict[str, dict]:
    """rows with method, x (base parameters), d_f (fine-tuning examples or tokens), loss -> fit per method."""
    out = {}
    for method in sorted({r["method"] for r in rows}):
        rs = [r for r in rows if r["method"] == method]
        out[method] = fit_zhang([r["x"] for r in rs], [r["d_f"] for r in rs], [r["loss"] for r in rs],
                                n_bootstrap=n_bootstrap)
    return out


def best_precision_at_bits(rows: list[dict], bits_grid) -> list[dict]:
    """rows with bits (per parameter), total_bits, loss -> at each total-bits value, the precision with the
    lowest interpolated loss among those whose measured range covers it (None where none does)."""
    curves = {}
    for b in sorted({r["bits"] for r in rows}):
        pts = sorted((np.log(r["total_bits"]), r["loss"]) for r in rows if r["bits"] == b)
        if len(pts) >= 2:
            curves[b] = np.array(pts)
    out = []
    for tb in np.asarray(bits_grid, float):
        lt = np.log(tb)
        losses = {b: float(np.interp(lt, c[:, 0], c[:, 1])) for b, c in curves.items() if c[0, 0] <= lt <= c[-1, 0]}
        best = min(losses, key=losses.get) if losses else None
        out.append({"total_bits": float(tb), "losses": losses, "best_bits": best})
    return out
