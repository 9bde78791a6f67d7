"""Gao et al.'s overoptimization forms: fits recover known coefficients, intervals cover them, peaks are where
the forms say, and bad input fails clearly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.scaling import overoptimization as oo


@pytest.mark.parametrize("form, alpha, beta", [("bon", 0.8, 0.15), ("rl", 0.5, 0.2)])
def test_fit_recovers_coefficients_and_intervals_cover(form, alpha, beta):
    rng = np.random.default_rng(0)
    d = np.linspace(0.2, 6.0, 25)
    fn = oo.r_bon if form == "bon" else oo.r_rl
    covered = 0
    for _ in range(40):
        y = fn(d, alpha, beta) + rng.normal(scale=0.02, size=d.size)
        f = oo.fit(form, d, y)
        covered += f.alpha_ci[0] <= alpha <= f.alpha_ci[1]
    assert f.alpha == pytest.approx(alpha, abs=0.03) and f.beta == pytest.approx(beta, abs=0.03)
    assert covered >= 34  # a 95% interval covers the truth in most of 40 noisy repeats
    exact = oo.fit(form, d, fn(d, alpha, beta))
    want = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    assert exact.d_peak == pytest.approx(want, rel=1e-4) and exact.rmse < 1e-6


def test_no_overoptimization_means_no_peak_and_bad_input():
    d = np.array([0.5, 1.0, 2.0, 3.0])
    assert oo.fit("bon", d, 0.3 * d).d_peak == math.inf  # beta ~ 0: gold still rising
    with pytest.raises(UserError, match="at least 3 points"):
        oo.fit("rl", [0.0, 1.0, 2.0], [0.0, 0.1, 0.2])
    with pytest.raises(UserError, match="form"):
        oo.fit("ppo", d, d)
    # standard errors of the points enter as weights
    f = oo.fit("bon", d, oo.r_bon(d, 1.0, 0.2), sigma=[0.1, 0.1, 0.1, 0.1])
    assert f.alpha_ci[0] < 1.0 < f.alpha_ci[1]


def test_plots_write_files(tmp_path):
    d = np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    f = oo.fit("bon", d, oo.r_bon(d, 1.0, 0.3))
    oo.plot_scores({"rm-16": {"d": d, "gold": oo.r_bon(d, 1.0, 0.3), "proxy": d, "fit": f}}, tmp_path / "a.png",
                   title="bon")
    oo.plot_coefficients([1e3, 1e4], {"bon": [f, f]}, tmp_path / "b.png")
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000
