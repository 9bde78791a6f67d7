"""Zhang et al.'s fine-tuning law fitted back from synthetic runs; the Dettmers-Zettlemoyer bits read-off."""

from __future__ import annotations

import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.scaling.finetune_laws import best_precision_at_bits, fit_by_method, fit_zhang, zhang_loss

TRUE = {"A": 40.0, "E": 1.2, "alpha": 0.3, "beta": 0.15}


def _runs(noise=0.0, seed=0):
    x, d = np.meshgrid([1e5, 3e5, 1e6, 3e6], [100, 400, 1600, 6400])
    x, d = x.ravel(), d.ravel()
    loss = zhang_loss(x, d, **TRUE) * np.exp(np.random.default_rng(seed).normal(0, noise, x.shape))
    return x, d, loss


def test_fit_recovers_the_law():
    fit = fit_zhang(*_runs())
    for k, v in TRUE.items():
        assert fit[k] == pytest.approx(v, rel=1e-3), (k, fit[k])
    assert fit["rel_error_mean"] < 1e-4


def test_noisy_fit_covers_the_truth_and_fits_per_method():
    x, d, loss = _runs(noise=0.005, seed=1)
    fit = fit_zhang(x, d, loss, n_bootstrap=64)
    for k in ("alpha", "beta"):
        lo, hi = fit["ci"][k]
        assert lo <= TRUE[k] <= hi and hi - lo < 0.2, (k, fit["ci"][k])
    rows = [{"method": "lora", "x": a, "d_f": b, "loss": c} for a, b, c in zip(x, d, loss, strict=True)]
    rows += [{"method": "full", "x": a, "d_f": b, "loss": c * 0.9} for a, b, c in zip(x, d, loss, strict=True)]
    fits = fit_by_method(rows)
    assert set(fits) == {"full", "lora"} and fits["full"]["E"] < fits["lora"]["E"]


def test_bad_tables():
    with pytest.raises(UserError, match="at least 5 runs"):
        fit_zhang([1, 2, 3], [1, 2, 3], [3, 2, 1])
    with pytest.raises(UserError, match="two base sizes"):
        fit_zhang([1] * 6, [1, 2, 3, 4, 5, 6], [3, 2, 1, 1, 1, 1])


def test_best_precision_at_bits():
    # 4-bit curve below 8- and 16-bit ones at equal total bits (the paper's finding), as rows
    rows = []
    for n in (1e6, 4e6, 16e6, 64e6):
        for bits, penalty in ((16, 0.0), (8, 0.0), (4, 0.02), (3, 0.4)):
            rows.append({"bits": bits, "total_bits": n * bits, "loss": 5 * n**-0.1 + penalty})
    result = best_precision_at_bits(rows, [64e6, 128e6])
    assert [r["best_bits"] for r in result] == [4, 4]
    assert set(result[0]["losses"]) == {3, 4, 8, 16}
    assert best_precision_at_bits(rows, [1e3])[0]["best_bits"] is None  # no curve covers it
