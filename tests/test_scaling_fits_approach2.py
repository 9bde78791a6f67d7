"""Approach 2 on tables built to break a parabola through every size: it fits each budget near its observed
best run, drops budgets whose grid does not bracket the optimum, and refuses budgets too close together."""

import warnings

import numpy as np
import pandas as pd
import pytest

from chinchax.errors import UserError
from chinchax.scaling.fit_chinchilla import fit_approach2, select_windows
from chinchax.scaling.fitresult import ScalingFitWarning
from chinchax.scaling.laws import CHINCHILLA_3
from chinchax.scaling.synthetic import isoflop_table

BUDGETS = np.logspace(18, 21, 7)


def _well_table(budgets, log_n_grid, a=0.5, noise=0.002, seed=0) -> pd.DataFrame:
    """isoFLOP curves with their minimum at N_opt = 0.1·C^a: a parabola near it, flat far from it (a Gaussian
    well), measured on one grid of sizes for every budget, so the optimum sits off-centre in most grids."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        x_opt = np.log10(0.1 * c**a)
        for x in log_n_grid:
            loss = 2.0 + 5 * c**-0.05 - 0.3 * np.exp(-(((x - x_opt) / 0.4) ** 2)) + noise * rng.standard_normal()
            rows.append({"run": f"{c:.2e}-{x:.2f}", "n_params": 10**x, "n_tokens": c / (6 * 10**x),
                         "budget": c, "loss": loss})
    return pd.DataFrame(rows)


def _law_table(budgets, log_n_grid, noise=0.003, seed=0) -> pd.DataFrame:
    """Chinchilla's approach-3 law measured on one fixed grid of sizes at every budget."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        for n in 10.0 ** np.asarray(log_n_grid):
            d = c / (6 * n)
            rows.append({"run": f"{c:.2e}-{n:.3e}", "n_params": n, "n_tokens": d, "budget": c,
                         "loss": float(CHINCHILLA_3.loss(n, d) * np.exp(noise * rng.standard_normal()))})
    return pd.DataFrame(rows)


def test_a_window_near_the_minimum_recovers_the_exponent_where_all_sizes_do_not():
    df = _well_table(BUDGETS, np.linspace(7.5, 11.5, 17))
    r = fit_approach2(df, n_bootstrap=100, seed=0)
    lo, hi = r.intervals["a"]
    assert lo <= 0.5 <= hi and abs(r.params["a"] - 0.5) < 0.03
    # the same table with every size in each parabola (what approach 2 did before): far off
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScalingFitWarning)
        naive = fit_approach2(df, n_bootstrap=20, seed=0, window=100)
    assert abs(naive.params["a"] - 0.5) > 0.1


def test_budgets_whose_best_run_is_at_the_edge_are_dropped_and_reported():
    budgets = np.logspace(18, 22, 9)  # N_opt runs from 8e7 to 5e9; the sizes stop at 3e9
    df = _law_table(budgets, np.linspace(7.5, 9.5, 9))
    with pytest.warns(ScalingFitWarning, match="largest size"):
        r = fit_approach2(df, n_bootstrap=60, seed=0)
    report = {b["budget"]: b for b in r.extra["budgets"]}
    best_n = df.loc[df.groupby("budget")["loss"].idxmin()].set_index("budget")["n_params"]
    for budget, entry in report.items():
        at_edge = best_n[budget] == df["n_params"].max()
        assert entry["used"] == (not at_edge), entry
        assert ("largest size" in entry["reason"]) == at_edge
    assert sum(not b["used"] for b in report.values()) >= 1
    assert sorted(r.extra["minima"]["budget"]) == sorted(b for b, e in report.items() if e["used"])
    assert abs(r.params["a"] - CHINCHILLA_3.a) < 0.03


def test_the_window_is_the_sizes_nearest_the_observed_best_run():
    df = _law_table([1e19, 1e20], np.linspace(7, 10, 13))
    windows, report = select_windows(df, window=5)
    for entry in report:
        rows = df[df["budget"] == entry["budget"]]
        x_best = np.log10(rows.loc[rows["loss"].idxmin(), "n_params"])
        x = np.log10(rows["n_params"].to_numpy())
        expected = np.sort(x[np.argsort(np.abs(x - x_best), kind="stable")[:5]])
        assert np.allclose(np.log10(entry["sizes"]), expected)
        assert np.allclose(np.sort(np.log10(df["n_params"].to_numpy()[windows[entry["budget"]]])), expected)


def test_a_fitted_minimum_outside_the_sizes_fitted_drops_the_budget():
    df = isoflop_table(CHINCHILLA_3, BUDGETS, 7, noise=0.002, seed=1)
    # a budget whose best run is inside its grid but whose losses keep falling almost linearly:
    # the least-squares parabola's vertex lands 3 sizes beyond the largest
    log_n = 8 + 0.25 * np.arange(7)
    odd = pd.DataFrame({"run": [f"odd{i}" for i in range(7)], "n_params": 10**log_n,
                        "n_tokens": 3e21 / (6 * 10**log_n), "budget": 3e21,
                        "loss": [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.52]})
    with pytest.warns(ScalingFitWarning, match="outside the sizes fitted"):
        r = fit_approach2(pd.concat([df, odd], ignore_index=True), n_bootstrap=40, seed=0)
    entry = next(b for b in r.extra["budgets"] if b["budget"] == 3e21)
    assert not entry["used"] and "outside the sizes fitted" in entry["reason"]
    assert 3e21 not in r.extra["minima"]["budget"]


def test_budgets_too_close_together_are_refused_and_a_narrow_span_warns():
    grid = np.linspace(8, 10, 9)
    with pytest.raises(UserError, match=r"span only a factor 1\.03.*at least 2x apart"):
        fit_approach2(_law_table([1e20, 1.03e20], grid), n_bootstrap=10, seed=0)
    with pytest.warns(ScalingFitWarning, match="span only a factor 3"):
        fit_approach2(_law_table([1e20, 3e20], grid), n_bootstrap=10, seed=0)


def test_every_budget_at_an_edge_is_a_clear_error():
    df = _law_table([1e21, 1e22], np.linspace(7, 8.5, 7))  # every optimum is above the largest size
    with pytest.raises(UserError, match="only 0 budget.*largest size.*brackets the optimum"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ScalingFitWarning)
            fit_approach2(df, n_bootstrap=10, seed=0)


def test_a_clean_fit_raises_no_warning_of_any_kind():
    df = isoflop_table(CHINCHILLA_3, BUDGETS, 9, noise=0.005, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fit_approach2(df, n_bootstrap=50, seed=0)
        parametric = fit_approach2(df, n_bootstrap=50, seed=0, bootstrap="parametric")
    assert all(b["used"] for b in r.extra["budgets"]) and len(r.extra["budgets"]) == len(BUDGETS)
    assert r.extra["bootstrap_method"] == "runs" and parametric.extra["noise"] == "pooled parabola residuals"
