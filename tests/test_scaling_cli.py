"""CLI round trips: fit -> JSON -> optimal, and every plot kind written as PNG and SVG."""

import json

import numpy as np
import pytest

from chinchax.cli import main
from chinchax.scaling.fitresult import FitResult
from chinchax.scaling.laws import CHINCHILLA_3
from chinchax.scaling.synthetic import isoflop_table, loss_curves


@pytest.fixture(scope="module")
def results_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("tables") / "results.csv"
    isoflop_table(CHINCHILLA_3, np.logspace(18, 21, 5), 7, noise=0.005, seed=0).to_csv(path, index=False)
    return path


def test_fit_json_optimal_round_trip(results_csv, tmp_path, capsys):
    fit_json = tmp_path / "fit.json"
    assert main(["fit", str(results_csv), "--law", "chinchilla-2", "--bootstrap", "50",
                 "--holdout", "largest", "--flops", "1e22", "--out", str(fit_json)]) == 0
    out = capsys.readouterr().out
    assert "N_opt=" in out and "held-out" in out
    fit = FitResult.from_json(fit_json)
    assert fit.law == "chinchilla-2" and fit.n_bootstrap == 50 and len(fit.bootstrap_allocation) == 50
    assert fit.holdout["budgets"] == [1e21]
    assert main(["optimal", "--flops", "1e22", "--law", str(fit_json), "--law", "chinchilla-3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ours = rows[0]
    n, lo, hi = fit.n_opt(1e22)
    assert ours["n_opt"] == pytest.approx(n) and ours["n_opt_interval"] == pytest.approx([lo, hi])
    assert ours["n_opt"] * ours["d_opt"] * 6 == pytest.approx(1e22)
    assert rows[1]["law"] == "chinchilla-3"


def test_approach3_fit_via_cli_round_trips(results_csv, tmp_path, capsys):
    fit_json = tmp_path / "a3.json"
    assert main(["fit", str(results_csv), "--law", "chinchilla-3", "--coarse-grid", "--bootstrap", "10",
                 "--out", str(fit_json)]) == 0
    fit = FitResult.from_json(fit_json)
    assert set(fit.params) >= {"E", "A", "B", "alpha", "beta", "a", "b", "G"}
    assert fit.allocation["n_exp"] == pytest.approx(fit.params["a"])
    capsys.readouterr()
    assert main(["optimal", "--flops", "5.76e23", "--law", str(fit_json), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    g, a = fit.params["G"], fit.params["a"]
    assert row["n_opt"] == pytest.approx(g * (5.76e23 / 6) ** a)  # N_opt = G (C/6)^a


def test_optimal_gpu_hours_and_errors(capsys):
    assert main(["optimal", "--gpu-hours", "1.3e6", "--device", "a100", "--mfu", "0.5", "--law", "chinchilla-1"]) == 0
    out = capsys.readouterr().out
    assert f"{1.3e6 * 3600 * 312e12 * 0.5:.3g} FLOPs" in out and "chinchilla-1" in out
    assert main(["optimal"]) == 2
    assert "exactly one of --flops or --gpu-hours" in capsys.readouterr().err
    assert main(["optimal", "--flops", "1e21", "--law", "missing.json"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fit_bad_table_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("n_params,loss\n1e6,3.0\n")
    assert main(["fit", str(bad), "--law", "chinchilla-2"]) == 2
    assert "lacks column(s) n_tokens" in capsys.readouterr().err


def test_every_plot_kind_is_written(results_csv, tmp_path, capsys):
    fit_json = tmp_path / "fit.json"
    assert main(["fit", str(results_csv), "--law", "chinchilla-2", "--bootstrap", "20", "--out", str(fit_json)]) == 0
    out = tmp_path / "plots"
    assert main(["plot", "all", "--table", str(results_csv), "--fit", str(fit_json), "--out", str(out)]) == 0
    for stem in ("isoflop", "frontier", "allocation_0_chinchilla-2", "contours", "bloomberg"):
        for ext in ("png", "svg"):
            path = out / f"{stem}.{ext}"
            assert path.exists() and path.stat().st_size > 10_000, path
    curves = tmp_path / "curves.csv"
    loss_curves(CHINCHILLA_3, np.logspace(7.5, 10, 8), 1e21, points_per_run=20).to_csv(curves, index=False)
    assert main(["plot", "frontier", "--table", str(curves), "--out", str(out / "c")]) == 0
    assert (out / "c" / "frontier.png").stat().st_size > 10_000
    assert main(["plot", "isoflop", "--out", str(out)]) == 2
    assert "needs --table" in capsys.readouterr().err
