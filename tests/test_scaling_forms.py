"""Approach 3 in Kaplan's joint form with an irreducible loss (law kaplan-3), and the choice between it and
Chinchilla's additive form by how each extrapolates to the largest budget (scaling/form_select.py)."""

import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.scaling.fit_parametric import chinchilla_grid, fit_approach3, kaplan_grid
from chinchax.scaling.fitresult import FitResult
from chinchax.scaling.form_select import select_form
from chinchax.scaling.laws import ParametricLaw
from chinchax.scaling.synthetic import isoflop_table

# A law like the one the CPU demo measures (d_model 8-80, byte tokens): a large model trained briefly pays
# more for its data than a small one (gamma well below 1).
KAPLAN_TRUTH = ParametricLaw(E=0.95, A=620.0, B=5.5e5, alpha=0.71, beta=1.0, gamma=0.42)
CHINCHILLA_TRUTH = ParametricLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
BUDGETS_CPU = (3.3e10, 1.05e11, 3.3e11, 1.05e12)
BUDGETS_LM = (6e18, 3e19, 1e20, 6e20)


def _table(law, budgets, seed=0):
    return isoflop_table(law, budgets, sizes_per_budget=5, spread=0.6, noise=0.003, seed=seed)


@pytest.fixture(scope="module")
def kaplan_fit():
    return fit_approach3(_table(KAPLAN_TRUTH, BUDGETS_CPU), n_bootstrap=20, form="kaplan")


def test_law_with_gamma_is_kaplans_eq_1_5_plus_E():
    n, d = np.array([1e4, 1e5]), np.array([1e6, 3e7])
    alpha_n, alpha_d, n_c, d_c = 0.3, 0.42, 2e3, 5.5e5  # Kaplan's [(N_c/N)^(aN/aD) + D_c/D]^aD
    law = ParametricLaw(E=0.9, A=n_c ** (alpha_n / alpha_d), B=d_c, alpha=alpha_n / alpha_d, beta=1.0, gamma=alpha_d)
    expected = 0.9 + ((n_c / n) ** (alpha_n / alpha_d) + d_c / d) ** alpha_d
    np.testing.assert_allclose(law.loss(n, d), expected, rtol=1e-12)
    # gamma = 1 is Chinchilla's sum of terms
    assert ParametricLaw(1.0, 2.0, 3.0, 0.5, 0.5, 1.0).loss(4.0, 9.0) == pytest.approx(1.0 + 1.0 + 1.0)


def test_kaplan_form_recovers_its_law(kaplan_fit):
    p = kaplan_fit.params
    assert kaplan_fit.law == "kaplan-3"
    assert p["beta"] == 1.0
    assert p["gamma"] == pytest.approx(KAPLAN_TRUTH.gamma, abs=0.08)
    assert p["alpha"] == pytest.approx(KAPLAN_TRUTH.alpha, abs=0.12)
    assert p["a"] == pytest.approx(KAPLAN_TRUTH.a, abs=0.04)
    lo, hi = kaplan_fit.intervals["a"]
    assert lo <= KAPLAN_TRUTH.a <= hi
    # the loss it predicts 3x beyond the largest budget, at that budget's optimum
    c = 3 * BUDGETS_CPU[-1]
    n = KAPLAN_TRUTH.allocation().n_opt(c)
    predicted, p_lo, p_hi = kaplan_fit.predict_loss(n, c / (6 * n))
    assert predicted == pytest.approx(float(KAPLAN_TRUTH.loss(n, c / (6 * n))), rel=0.01)
    assert p_lo < predicted < p_hi


def test_kaplan_fit_round_trips_through_json(kaplan_fit, tmp_path):
    back = FitResult.from_json(kaplan_fit.to_json(tmp_path / "fit.json"))
    assert back.law == "kaplan-3" and "gamma" in back.bootstrap_params
    for got, want in zip(back.predict_loss(5e4, 2e6), kaplan_fit.predict_loss(5e4, 2e6), strict=True):
        assert got == pytest.approx(want, rel=1e-12)
    frontier = back.frontier(1e12)  # the allocation is the bracket's optimum, the same for either form
    assert frontier["n_opt"] == pytest.approx(back.allocation_law().n_opt(1e12), rel=1e-9)
    assert back.parametric_law().gamma == back.params["gamma"]


@pytest.mark.parametrize("truth, budgets, expected", [(KAPLAN_TRUTH, BUDGETS_CPU, "kaplan"),
                                                      (CHINCHILLA_TRUTH, BUDGETS_LM, "chinchilla")])
def test_select_form_picks_the_form_that_generated_the_data(truth, budgets, expected):
    table = _table(truth, budgets, seed=1)
    fits = {form: fit_approach3(table, n_bootstrap=2, form=form, grid=grid(coarse=True))
            for form, grid in (("chinchilla", chinchilla_grid), ("kaplan", kaplan_grid))}
    choice = select_form(table, fits, coarse=True)
    assert choice["by"] == "backtest"
    assert choice["selected"] == expected, choice["forms"]
    scores = choice["forms"]
    other = "chinchilla" if expected == "kaplan" else "kaplan"
    assert scores[expected]["rmse_log_loss"] < scores[other]["rmse_log_loss"]
    # every budget from the third up predicted from those below it: 2 budgets x 5 runs, out of sample
    assert scores[expected]["runs"] == 10 and scores[expected]["budgets"] == list(budgets[2:])


def test_select_form_falls_back_to_the_objective_without_enough_runs_to_backtest():
    table = _table(KAPLAN_TRUTH, BUDGETS_CPU[-2:], seed=2)  # 5 runs below the largest budget: too few for 5 parameters
    fits = {form: fit_approach3(table, n_bootstrap=2, form=form, grid=grid(coarse=True))
            for form, grid in (("chinchilla", chinchilla_grid), ("kaplan", kaplan_grid))}
    choice = select_form(table, fits, coarse=True)
    assert choice["by"] == "objective"
    best = min(fits, key=lambda f: fits[f].extra["objective"])
    assert choice["selected"] == best
    assert "error" in choice["forms"]["kaplan"]


def test_kaplan_form_refuses_constraints_with_a_clear_error():
    table = _table(KAPLAN_TRUTH, BUDGETS_CPU)
    with pytest.raises(UserError, match="kaplan-3.*tie-exponents"):
        fit_approach3(table, n_bootstrap=2, form="kaplan", tie_exponents=True)
    with pytest.raises(UserError, match="form='gpt'"):
        fit_approach3(table, n_bootstrap=2, form="gpt")


def test_kaplan_3_through_the_cli(tmp_path, capsys):
    from chinchax.cli import main

    csv = tmp_path / "results.csv"
    _table(KAPLAN_TRUTH, BUDGETS_CPU).to_csv(csv, index=False)
    fit_json = tmp_path / "k3.json"
    assert main(["fit", str(csv), "--law", "kaplan-3", "--coarse-grid", "--bootstrap", "10",
                 "--holdout", "largest-budgets:1", "--out", str(fit_json)]) == 0
    fit = FitResult.from_json(fit_json)
    assert fit.law == "kaplan-3" and fit.holdout["split"] == "largest-budgets:1"
    assert fit.holdout["max_abs_rel_error"] < 0.02  # the largest budget predicted from the others
    assert main(["plot", "contours", "--fit", str(fit_json), "--out", str(tmp_path / "plots")]) == 0
    capsys.readouterr()
    assert main(["fit", str(csv), "--law", "kaplan-3", "--fix-E", "1.0"]) == 2
    assert "--fix-E" in capsys.readouterr().err


def test_demo_fits_use_the_selected_form_as_approach_3(tmp_path):
    """The demo's fit_all: both forms fitted, the one that extrapolates better is approach 3 (its JSON, its
    exponent in the agreement test), the other written beside it."""
    from chinchax.experiments.demo_fits import fit_all
    from chinchax.scaling.synthetic import loss_curves

    table = _table(KAPLAN_TRUTH, BUDGETS_CPU, seed=3)
    table["steps"] = (table["n_tokens"] / 1024).round().astype(int)  # the demo's runs: 1,024 tokens a step
    table.to_csv(tmp_path / "results.csv", index=False)
    loss_curves(KAPLAN_TRUTH, sorted(table["n_params"].unique())[::4], 3e11, points_per_run=12).to_csv(
        tmp_path / "curves.csv", index=False)
    fits = fit_all(tmp_path, n_bootstrap=8, quick=True)
    assert fits["forms"]["selected"] == "kaplan" and fits["forms"]["by"] == "backtest"
    assert FitResult.from_json(tmp_path / "fit_approach3.json").law == "kaplan-3"
    assert FitResult.from_json(tmp_path / "fit_approach3_chinchilla.json").law == "chinchilla-3"
    assert fits["approaches"]["3"]["form"] == "kaplan" and "gamma" in fits["approaches"]["3"]["params"]
    assert fits["agreement"]["a3_width"] == pytest.approx(fits["approaches"]["3"]["a_width"])
    assert fits["alternative"].law == "chinchilla-3"
