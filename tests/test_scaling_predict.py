"""Approach-3 predictions with bootstrap intervals (FitResult.predict_loss, .frontier, `chinchax predict`),
held-out scoring, constrained fits for few runs, and fits that raise no numerical warnings."""

import json
import warnings

import numpy as np
import pytest

from chinchax.cli import main
from chinchax.errors import UserError
from chinchax.scaling.cli import run_fit, split_holdout
from chinchax.scaling.fit_parametric import chinchilla_grid, fit_approach3
from chinchax.scaling.fitresult import THETA_NAMES, FitResult
from chinchax.scaling.laws import CHINCHILLA_3, ParametricLaw
from chinchax.scaling.synthetic import isoflop_table

BUDGETS = np.logspace(18, 21, 6)


def _fit(df, **kw):
    kw = {"n_bootstrap": 40, "seed": 0, "grid": chinchilla_grid(coarse=True), "bootstrap_starts": 3, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (overflow, invalid value), RankWarning or other
        return fit_approach3(df, **kw)


@pytest.fixture(scope="module")
def table():
    return isoflop_table(CHINCHILLA_3, BUDGETS, 7, spread=1.2, noise=0.003, seed=5)


@pytest.fixture(scope="module")
def fit(table):
    return _fit(table)


def test_predict_loss_is_the_fitted_law_with_an_interval_around_the_truth(fit):
    law = ParametricLaw(*(fit.params[k] for k in ("E", "A", "B", "alpha", "beta")))
    n, d = 3e8, 6e9  # inside the table's range
    value, lo, hi = fit.predict_loss(n, d)
    assert value == pytest.approx(float(law.loss(n, d)), rel=1e-12)
    assert lo < value < hi and lo < float(CHINCHILLA_3.loss(n, d)) < hi
    far = fit.predict_loss(1e11, 2e12)  # extrapolated 30x beyond the largest model: a wider interval
    assert (far[2] - far[1]) / far[0] > (hi - lo) / value
    n_X, d_X = np.array([1e8, 3e8, 1e9]), np.array([2e9, 6e9, 2e10])
    values_X, lo_X, hi_X = fit.predict_loss(n_X, d_X)
    assert values_X.shape == lo_X.shape == (3,)
    assert np.allclose([fit.predict_loss(a, b) for a, b in zip(n_X, d_X, strict=True)],
                       np.stack([values_X, lo_X, hi_X], axis=1), rtol=1e-12)


def test_frontier_is_the_compute_optimal_point_of_the_fit(fit):
    c = 1e22
    f = fit.frontier(c)
    assert 6 * f["n_opt"] * f["d_opt"] == pytest.approx(c)
    assert f["n_opt"] == pytest.approx(fit.n_opt(c)[0], rel=1e-9)
    assert f["loss"] == pytest.approx(fit.predict_loss(f["n_opt"], f["d_opt"])[0], rel=1e-12)
    for factor in (0.5, 2.0):  # any other split of the same compute predicts a higher loss
        n = f["n_opt"] * factor
        assert fit.predict_loss(n, c / (6 * n))[0] > f["loss"]
    true_n = float(CHINCHILLA_3.allocation().n_opt(c))
    assert f["loss_lo"] < float(CHINCHILLA_3.loss(true_n, c / (6 * true_n))) < f["loss_hi"]
    assert f["n_opt_lo"] < f["n_opt"] < f["n_opt_hi"] and f["d_opt_lo"] < f["d_opt"] < f["d_opt_hi"]
    assert f["n_draws"] == 40


def test_the_draws_survive_the_json_round_trip_and_stay_small(fit, tmp_path):
    path = fit.to_json(tmp_path / "fit.json")
    assert set(fit.bootstrap_params) == set(THETA_NAMES)
    assert all(len(v) == 40 for v in fit.bootstrap_params.values())
    assert path.stat().st_size < 30_000
    back = FitResult.from_json(path)
    assert back.predict_loss(1e9, 2e10) == pytest.approx(fit.predict_loss(1e9, 2e10), rel=1e-12)
    assert back.frontier(1e21) == pytest.approx(fit.frontier(1e21), rel=1e-12)



def _strict_json(text):
    """Parsed by a strict JSON parser: a bare NaN, Infinity or -Infinity raises."""
    return json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"not JSON: {c}")))


def test_a_fit_with_nan_stderr_round_trips_as_strict_json(fit, tmp_path, capsys):
    nan = float("nan")
    odd = FitResult(**{**fit.__dict__, "stderr": {**fit.stderr, "E": nan},
                       "intervals": {**fit.intervals, "E": [nan, nan]}, "bootstrap_params": {}})
    path = odd.to_json(tmp_path / "fit.json")
    data = _strict_json(path.read_text())
    assert data["stderr"]["E"] is None and data["intervals"]["E"] == [None, None]
    back = FitResult.from_json(path)
    assert np.isnan(back.stderr["E"]) and np.isnan(back.intervals["E"]).all()
    assert {k: v for k, v in back.stderr.items() if k != "E"} == {k: v for k, v in fit.stderr.items() if k != "E"}
    assert back.predict_loss(1e9, 2e10)[0] == fit.predict_loss(1e9, 2e10)[0]
    # `chinchax predict --json` of a fit without draws: its intervals are nan, printed as null
    assert main(["predict", str(path), "--n-params", "1e9", "--tokens", "2e10", "--flops", "1e22", "--json"]) == 0
    one, frontier = _strict_json(capsys.readouterr().out)["predictions"]
    assert one["loss_lo"] is None and frontier["n_opt_hi"] is None and one["loss"] > 0

def test_extreme_draws_predict_without_overflow_warnings(fit):
    draws = {k: list(v) for k, v in fit.bootstrap_params.items()}
    draws["log_A"][:3] = [800.0, 1500.0, -900.0]  # A = e^800 overflows a float; its log does not
    draws["alpha"][:3] = [0.01, 3.0, -0.2]  # the last has no compute-optimal point
    wild = FitResult(**{**fit.__dict__, "bootstrap_params": draws})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, lo, hi = wild.predict_loss(1e9, 2e10)
        f = wild.frontier(1e22)
        n, n_lo, n_hi = wild.n_opt(1e22)
    assert np.isfinite([value, lo, f["loss_lo"], n_lo]).all() and lo <= value
    # two of 40 draws predict e^800 and more: the 97.5th percentile is beyond the largest float, said as inf
    assert hi == np.inf and value == fit.predict_loss(1e9, 2e10)[0]
    assert f["n_draws"] == 39  # the draw with alpha < 0 is left out


def test_predict_refuses_a_law_that_does_not_model_the_loss(table):
    a2 = run_fit(table, "chinchilla-2", n_bootstrap=10)
    with pytest.raises(UserError, match="needs an approach-3 fit.*--law chinchilla-3"):
        a2.predict_loss(1e9, 2e10)
    with pytest.raises(UserError, match="needs an approach-3 fit"):
        a2.frontier(1e21)


def test_few_runs_fit_with_tied_exponents_and_fixed_E(table):
    tied_law = ParametricLaw(E=1.8, A=350.0, B=900.0, alpha=0.3, beta=0.3)
    few = isoflop_table(tied_law, [1e18, 1e20], 2, spread=1.0, noise=0.002, seed=1)  # 4 runs
    with pytest.raises(UserError, match=r"at least 6 runs.*has 4.*--tie-exponents.*--fix-E"):
        fit_approach3(few, n_bootstrap=4)
    r = _fit(few, tie_exponents=True, fix_E=1.8)
    assert r.extra["free_parameters"] == ["A", "B", "alpha=beta"] and r.extra["degrees_of_freedom"] == 1
    assert r.params["alpha"] == r.params["beta"] and r.params["E"] == pytest.approx(1.8)
    assert r.params["a"] == pytest.approx(0.5)
    assert np.array_equal(r.bootstrap_params["alpha"], r.bootstrap_params["beta"])
    assert r.params["alpha"] == pytest.approx(0.3, abs=0.03)
    with pytest.raises(UserError, match=r"at least 4 runs.*has 3; add more runs$"):
        fit_approach3(few.head(3), n_bootstrap=4, tie_exponents=True, fix_E=1.8)
    with pytest.raises(UserError, match="below the smallest loss"):
        fit_approach3(few, n_bootstrap=4, fix_E=float(few["loss"].min()))
    # tied exponents alone on the full table: 4 free parameters, recovered
    tied = _fit(isoflop_table(tied_law, BUDGETS, 5, noise=0.002, seed=2), tie_exponents=True)
    assert tied.extra["free_parameters"] == ["A", "B", "E", "alpha=beta"]
    lo, hi = tied.intervals["alpha"]
    assert lo <= 0.3 <= hi and tied.params["E"] == pytest.approx(1.8, rel=0.05)


def test_holdout_scores_relative_errors_on_the_held_out_runs(table):
    fit_part, held = split_holdout(table, "largest-models:1")
    assert held["n_params"].nunique() == 1 and held["n_params"].iloc[0] == table["n_params"].max()
    assert len(fit_part) + len(held) == len(table)
    r = run_fit(table, "chinchilla-3", n_bootstrap=20, coarse_grid=True, holdout="largest-models:1")
    pred = r.predict_loss(held["n_params"].to_numpy(), held["n_tokens"].to_numpy())[0]
    rel = np.abs(pred - held["loss"].to_numpy()) / held["loss"].to_numpy()
    assert r.holdout["split"] == "largest-models:1" and r.n_runs == len(fit_part)
    assert r.holdout["mean_abs_rel_error"] == pytest.approx(rel.mean())
    assert r.holdout["max_abs_rel_error"] == pytest.approx(rel.max())
    assert r.holdout["max_abs_rel_error"] < 0.02  # the table follows the law to 0.3% noise
    _, by_filter = split_holdout(table, "budget>=1e20")
    assert set(by_filter["budget"]) == {b for b in BUDGETS if b >= 1e20}
    _, by_budget = split_holdout(table, "largest-budgets:2")
    assert set(by_budget["budget"]) == set(BUDGETS[-2:])
    for bad, message in (("n_params>x", "not a number"), ("size>1", "no column 'size'"),
                         ("n_params>0", "must leave some runs"), ("smallest", "not known")):
        with pytest.raises(UserError, match=message):
            split_holdout(table, bad)
    with pytest.raises(UserError, match="only approach 3"):
        run_fit(table, "chinchilla-2", holdout="largest-models:1")


def test_cli_fit_then_predict(table, tmp_path, capsys):
    csv, fit_json = tmp_path / "t.csv", tmp_path / "fit.json"
    table.to_csv(csv, index=False)
    assert main(["fit", str(csv), "--law", "chinchilla-3", "--coarse-grid", "--bootstrap", "20", "--tie-exponents",
                 "--holdout", "largest-budgets:1", "-o", str(fit_json)]) == 0
    out = capsys.readouterr().out
    assert "free parameters: 4 (A, B, E, alpha=beta" in out and "35 runs -> 31 degrees of freedom" in out
    assert "held-out largest-budgets:1 (7 runs): |relative error| of the loss mean" in out
    assert main(["predict", str(fit_json), "--n-params", "1e9", "--tokens", "2e10", "--flops", "1e22", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    fit = FitResult.from_json(fit_json)
    one, frontier = printed["predictions"]
    assert [one["loss"], one["loss_lo"], one["loss_hi"]] == pytest.approx(list(fit.predict_loss(1e9, 2e10)))
    assert frontier["n_opt"] == pytest.approx(fit.frontier(1e22)["n_opt"]) and printed["n_draws"] == 20
    assert main(["predict", str(fit_json), "--flops", "1e21"]) == 0
    assert "compute-optimal at C=1e+21: N_opt=" in capsys.readouterr().out
    assert main(["predict", str(fit_json), "--n-params", "1e9"]) == 2
    assert "give --n-params and --tokens together" in capsys.readouterr().err
