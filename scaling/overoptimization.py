"""Reward-model overoptimization laws (Gao, Schulman and Hilton 2022), pure numerics on tables.

With d = sqrt(KL(pi || pi_init)) and R the gold score relative to the initial policy's (R(0) = 0):
    best-of-n:  R_bon(d) = d (alpha_bon - beta_bon d)           peak at d* = alpha / (2 beta)
    RL:         R_RL(d)  = d (alpha_RL  - beta_RL  log d)        peak at d* = exp(alpha / beta - 1)
Fits are least squares (scipy.optimize.curve_fit; R_bon is linear in its coefficients, so that fit is exact
least squares); intervals are 95% t-intervals from the fit's covariance, or from the given standard errors
of each point when `sigma` is passed (absolute_sigma). Imports no model, data or trainer code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

from chinchax.errors import UserError

FORMS = ("bon", "rl")


def r_bon(d, alpha, beta):
    d = np.asarray(d, np.float64)
    return d * (alpha - beta * d)


def r_rl(d, alpha, beta):
    d = np.asarray(d, np.float64)
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)


@dataclass(frozen=True)
class OveroptimizationFit:
    form: str
    alpha: float
    beta: float
    alpha_ci: tuple[float, float]
    beta_ci: tuple[float, float]
    n_points: int
    rmse: float
    d_peak: float  # where the fitted gold score peaks (inf when beta <= 0: no overoptimization seen)
    r_peak: float

    def to_json(self) -> dict:
        return asdict(self)


def fit(form: str, d, gold_delta, sigma=None) -> OveroptimizationFit:
    """Fit R(d) of `form` ('bon' or 'rl') to gold-score gains `gold_delta` at distances `d` (d >= 0)."""
    if form not in FORMS:
        raise UserError(f"form={form!r}: choose one of {FORMS}")
    d, y = np.asarray(d, np.float64), np.asarray(gold_delta, np.float64)
    ok = np.isfinite(d) & np.isfinite(y) & (d > 0)  # d = 0 carries no information (R(0) = 0 by construction)
    if sigma is not None:
        sigma = np.asarray(sigma, np.float64)
        ok &= np.isfinite(sigma) & (sigma > 0)
        sigma = sigma[ok]
    d, y = d[ok], y[ok]
    if d.size < 3:
        raise UserError(f"a {form} fit needs at least 3 points with d > 0; got {d.size}")
    fn = r_bon if form == "bon" else r_rl
    p0 = (float(np.sum(y * d) / np.sum(d * d)), 0.0)
    params, cov = optimize.curve_fit(fn, d, y, p0=p0, sigma=sigma, absolute_sigma=sigma is not None, maxfev=20000)
    t = stats.t.ppf(0.975, max(d.size - 2, 1))
    se = np.sqrt(np.clip(np.diag(cov), 0.0, np.inf)) if np.all(np.isfinite(cov)) else np.full(2, np.nan)
    alpha, beta = (float(v) for v in params)
    if beta > 0:
        d_peak = alpha / (2 * beta) if form == "bon" else math.exp(min(alpha / beta - 1.0, 700.0))
    else:
        d_peak = math.inf
    r_peak = float(fn(d_peak, alpha, beta)) if math.isfinite(d_peak) else math.inf
    return OveroptimizationFit(
        form=form, alpha=alpha, beta=beta,
        alpha_ci=(alpha - t * se[0], alpha + t * se[0]), beta_ci=(beta - t * se[1], beta + t * se[1]),
        n_points=int(d.size), rmse=float(np.sqrt(np.mean((fn(d, alpha, beta) - y) ** 2))),
        d_peak=float(d_peak), r_peak=r_peak,
    )


def _save(fig, path) -> None:
    """PNG written atomically (a reader never sees half a file)."""
    import io

    from chinchax.fileio import write_bytes_atomic

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_bytes_atomic(path, buffer.getvalue())


def plot_scores(curves: dict, path, *, title: str) -> None:
    """Gold (solid) and proxy (dashed) score gains against d, one colour per proxy size, with the fitted
    gold curve dotted. `curves[label] = {"d": [...], "gold": [...], "proxy": [...], "fit": fit or None}`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Two panels: the proxy's gains are often 100x the gold's, and on one axis the gold curve (the point of
    # the plot: where optimisation starts to hurt) would be a flat line at zero.
    fig, (ax_gold, ax_proxy) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (label, c) in enumerate(curves.items()):
        color = f"C{i}"
        ax_gold.plot(c["d"], c["gold"], "o-", color=color, label=label)
        ax_proxy.plot(c["d"], c["proxy"], "s--", color=color, label=label)
        if c.get("fit") is not None:
            grid = np.linspace(0, max(c["d"]) * 1.05, 100)
            fn = r_bon if c["fit"].form == "bon" else r_rl
            ax_gold.plot(grid, fn(grid, c["fit"].alpha, c["fit"].beta), ":", color=color)
    for ax, what in ((ax_gold, "gold score gain (dotted: fit)"), (ax_proxy, "proxy score gain")):
        ax.set_xlabel("d = sqrt(KL from the initial policy)")
        ax.set_ylabel(what)
        ax.axhline(0.0, color="0.6", lw=0.8)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_coefficients(sizes, fits_by_method: dict, path) -> None:
    """alpha and beta (with intervals) against proxy size (parameters), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for method, fits in fits_by_method.items():
        for ax, key in zip(axes, ("alpha", "beta"), strict=True):
            xs = [s for s, f in zip(sizes, fits, strict=True) if f is not None]
            vals = [getattr(f, key) for f in fits if f is not None]
            lo = [v - getattr(f, f"{key}_ci")[0] for v, f in zip(vals, [f for f in fits if f is not None], strict=True)]
            hi = [getattr(f, f"{key}_ci")[1] - v for v, f in zip(vals, [f for f in fits if f is not None], strict=True)]
            ax.errorbar(xs, vals, yerr=[lo, hi], marker="o", capsize=3, label=method)
            ax.set_xscale("log")
            ax.set_xlabel("proxy reward model parameters")
            ax.set_title(key)
    axes[0].legend()
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
