"""Approach 3 made fast and still right: the batched L-BFGS lands where SciPy's L-BFGS-B does from the
same start, the warm-started bootstrap finds what a full-grid refit of the resample finds, and the batched
fit costs a small fraction of SciPy's CPU time per start, measured in the same test."""

import os
import time

import jax
import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from chinchax.scaling.fit_parametric import (
    COARSE_FTOL,
    COARSE_GTOL,
    POLISH,
    approach3_objective,
    chinchilla_grid,
    fit_approach3,
)
from chinchax.scaling.fitresult import resample_runs
from chinchax.scaling.laws import ParametricLaw
from chinchax.scaling.multistart import minimize_multistart
from chinchax.scaling.synthetic import isoflop_table

# Epoch AI's refit of Chinchilla's data (Besiroglu et al. 2024, "Chinchilla scaling: a replication attempt"):
# 240 runs like theirs, drawn from their fitted law, with 1% noise on the loss.
EPOCH_LAW = ParametricLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
PARAMS = ("E", "A", "B", "alpha", "beta")
N_BOOT = 3


def _data(df):
    return {"log_n": np.log(df["n_params"].to_numpy()), "log_d": np.log(df["n_tokens"].to_numpy()),
            "log_loss": np.log(df["loss"].to_numpy())}


def _params(theta):
    a, b, e, alpha, beta = theta
    return np.array([np.exp(e), np.exp(a), np.exp(b), alpha, beta])


@pytest.fixture(scope="module")
def epoch():
    df = isoflop_table(EPOCH_LAW, np.logspace(np.log10(6e18), np.log10(3e21), 8), 30, noise=0.01, seed=1)
    fit = fit_approach3(df, n_bootstrap=N_BOOT, seed=0)
    return df, fit


def _cpu():
    t = os.times()
    return t.user + t.system


def test_optimum_matches_scipy_lbfgsb_from_the_same_best_start(epoch):
    df, fit = epoch
    data = _data(df)
    grid = chinchilla_grid()
    first = minimize_multistart(approach3_objective, grid, data, ftol=COARSE_FTOL, gtol=COARSE_GTOL)
    start = grid[np.argmin(first.value_K)]
    with jax.enable_x64(True):
        value_and_grad = jax.jit(jax.value_and_grad(approach3_objective))
        w = np.ones(len(df))

        def fun(theta):
            v, g = value_and_grad(theta, data, w)
            return float(v), np.asarray(g)

        # Tight tolerances: SciPy's default ftol is relative to max(|f|, 1) and f is ~1e-3 here.
        ref = minimize(fun, start, jac=True, method="L-BFGS-B",
                       options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000, "maxfun": 20_000})
    ours = np.array([fit.params[k] for k in PARAMS])
    np.testing.assert_allclose(ours, _params(ref.x), rtol=1e-3)
    assert fit.extra["objective"] <= ref.fun * (1 + 1e-6)
    # and the batched objective is SciPy's Huber-on-log-loss, summed
    a, b, e, alpha, beta = ref.x
    pred = logsumexp([a - alpha * data["log_n"], b - beta * data["log_d"], np.full(len(df), e)], axis=0)
    assert huber(1e-3, pred - data["log_loss"]).sum() == pytest.approx(ref.fun, rel=1e-12)


def test_warm_started_bootstrap_equals_a_full_grid_refit_of_each_resample(epoch):
    df, fit = epoch
    data = _data(df)
    grid = chinchilla_grid()
    # fit_approach3's resamples: the same weights from the same seed
    weights = resample_runs(df["run"].to_numpy(), N_BOOT, 0)
    # Chinchilla's procedure on each resample: the whole 4,500-start grid, then polish the best end points.
    first = minimize_multistart(approach3_objective, np.tile(grid, (N_BOOT, 1)), data,
                                np.repeat(weights, len(grid), axis=0), ftol=COARSE_FTOL, gtol=COARSE_GTOL)
    for s in range(N_BOOT):
        sl = slice(s * len(grid), (s + 1) * len(grid))
        order = np.argsort(first.value_K[sl])[:POLISH]
        polished = minimize_multistart(approach3_objective, first.theta_KP[sl][order], data, weights[s])
        refit = polished.theta_KP[np.argmin(polished.value_K)]
        a, b, e, alpha, beta = refit
        alloc = ParametricLaw(E=np.exp(e), A=np.exp(a), B=np.exp(b), alpha=alpha, beta=beta).allocation()
        np.testing.assert_allclose(fit.bootstrap_allocation[s], [alloc.n_coef, alloc.n_exp], rtol=1e-3)


def test_batched_fit_costs_a_small_fraction_of_scipy_cpu_time_per_start(epoch):
    df, _ = epoch  # the fixture compiled our L-BFGS for this objective and this number of runs
    data = _data(df)
    grid = chinchilla_grid()

    def scipy_objective(theta, log_n, log_d, log_loss):
        a, b, e, alpha, beta = theta
        pred = logsumexp([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)], axis=0)
        return huber(1e-3, pred - log_loss).sum()

    # SciPy as the benchmark runs it: default options, finite-difference gradients.
    scipy_starts = grid[:: len(grid) // 4][:4]
    t = _cpu()
    for s in scipy_starts:
        minimize(scipy_objective, s, args=tuple(data.values()), method="L-BFGS-B")
    scipy_per_start = (_cpu() - t) / len(scipy_starts)
    ours_starts = grid[:: len(grid) // 1000][:1000]
    t, w = _cpu(), time.perf_counter()
    minimize_multistart(approach3_objective, ours_starts, data, ftol=COARSE_FTOL, gtol=COARSE_GTOL)
    ours_per_start = (_cpu() - t) / len(ours_starts)
    # Measured 2026-11-30 (2-core machine): ours ~0.3 ms CPU per start, SciPy ~100-400 ms, a ratio of ~0.002;
    # before the batch-level line search ~2.4 ms per start (0.007-0.017). The bound leaves room for a busy machine.
    ratio = ours_per_start / scipy_per_start
    assert ratio < 0.01, (f"ours {ours_per_start * 1e3:.2f} ms CPU per start ({time.perf_counter() - w:.2f} s wall), "
                          f"SciPy {scipy_per_start * 1e3:.1f} ms: ratio {ratio:.4f}")
