"""`chinchax demo --quick` end to end: corpus, sweep with the real trainer, fits, plots, report (CI runs it)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import warnings

import pytest

from chinchax.cli import main


def test_demo_help_is_fast_and_lists_quick():
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "chinchax.cli", "demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--quick" in out.stdout and "--out" in out.stdout
    assert time.time() - t < 60


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    t = time.time()
    with warnings.catch_warnings(record=True) as escaped:  # what would reach a user's terminal
        warnings.simplefilter("always")
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    first_wall = time.time() - t
    assert not [str(w.message) for w in escaped if issubclass(w.category, (RuntimeWarning, UserWarning))]
    captured = capsys.readouterr()
    printed = captured.out
    # Nothing but our own messages on the terminal: no warnings, no tracebacks.
    assert "Traceback" not in captured.err and "Warning" not in captured.err

    # results.csv: one row per grid point (its two seeds averaged), the columns `chinchax fit` reads, losses
    # that make sense; results_seeds.csv: one row per run.
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    with (out / "results_seeds.csv").open() as f:
        seed_rows = list(csv.DictReader(f))
    plan = json.loads((out / "sweep_quick" / "plan.json").read_text())
    assert len(seed_rows) == len(plan["runs"]) == 12 and len(rows) == 6
    for r in rows:
        seeds = [float(s["loss"]) for s in seed_rows
                 if (s["budget"], s["d_model"]) == (r["budget"], r["d_model"])]
        assert len(seeds) == int(r["n_seeds"]) == 2 and float(r["loss"]) == pytest.approx(sum(seeds) / 2)
    budgets = sorted({float(r["budget"]) for r in rows})
    assert len(budgets) == 2
    for r in rows:
        assert 0.5 < float(r["loss"]) < 6.0  # nats per byte-token: below uniform (ln 361 = 5.9)
        assert abs(float(r["flops"]) / float(r["budget"]) - 1) < 0.1
    assert sum(1 for _ in (out / "curves.csv").open()) > 6

    summary = json.loads((out / "summary.json").read_text())
    # The learning rate was measured: every size of the smallest budget at >= 3 rates, the rule from them.
    lr_plan = json.loads((out / "sweep_lr_quick" / "plan.json").read_text())
    sizes = {r["d_model"] for r in plan["runs"] if r["budget"] == budgets[0]}
    assert len(lr_plan["runs"]) >= 3 * len(sizes)
    rule = summary["learning_rate"]
    assert rule["base_lr"] > 0 and set(map(int, rule["best_by_width"])) == sizes
    assert all(r["learning_rate"] for r in rows)
    # Throughput, measured against this machine's jnp.dot in the same run.
    throughput = summary["throughput"]
    assert 0 < throughput["efficiency"] < 1 and throughput["peak_flops"] > 1e9 and throughput["runs_trained"] >= 16
    # Noise: neighbouring sizes compared row by row on the same eval rows.
    assert summary["noise"]["pairs"] and summary["noise"]["eval_rows"] == 4 * 16
    assert summary["noise"]["seeds"]["dof"] == 6 and summary["noise"]["seeds"]["pooled_sd"] > 0
    # Fits: approaches 1 and 3 always fit here (approach 2 may refuse a budget whose best run is at an edge).
    fits = {p.name for p in out.glob("fit_*.json")}
    assert {"fit_approach1.json", "fit_approach3.json"} <= fits
    assert "3" in summary["approaches"] and "agreement" in summary
    # Approach 3 in both forms; the selected one is approach 3, the other is written beside it and predicts too.
    forms = summary["approach3_forms"]
    other = ({"chinchilla", "kaplan"} - {forms["selected"]}).pop()
    assert summary["approaches"]["3"]["form"] == forms["selected"] and forms["alternative"]["form"] == other
    assert forms["by"] in ("backtest", "objective") and f"fit_approach3_{other}.json" in fits
    assert summary["prediction"]["law"] == forms["forms"][forms["selected"]]["law"]
    assert summary["prediction"]["alternative"]["law"] == forms["forms"][other]["law"]
    # The held-out run at 3x the largest budget was trained and compared with its prediction.
    prediction = summary["prediction"]
    assert prediction["budget"] == 3 * budgets[-1]
    assert prediction["predicted_lo"] <= prediction["predicted"] <= prediction["predicted_hi"]
    assert abs(prediction["relative_error"] - (prediction["predicted"] / prediction["measured"] - 1)) < 1e-12
    assert len(prediction["measured_seeds"]) == 2  # the held-out point is a seed mean, as the fitted ones are
    assert prediction["measured"] == pytest.approx(sum(prediction["measured_seeds"]) / 2)
    for run in prediction["runs"]:
        assert (out / "sweep_holdout_quick" / "runs" / run / "run.json").exists()
    # ... at the rule's learning rate for its width, with how far the lr sweep can vouch for that rate
    rate, rule = prediction["learning_rate"], summary["learning_rate"]
    assert rate["d_model"] == prediction["d_model"] and rate["resamples"] > 0 and rate["lo"] <= rate["lr"] <= rate["hi"]
    assert rate["lr"] == pytest.approx(rule["base_lr"] * (rule["base_d_model"] / rate["d_model"]) ** rule["width_exponent"])
    assert rate["tuned_widths"] == [min(map(int, rule["best_by_width"])), max(map(int, rule["best_by_width"]))]

    # The report embeds every plot it names, and the plots exist.
    report = (out / "report.md").read_text()
    assert f"[{rate['lo']:.3g}, {rate['hi']:.3g}]" in report  # the held-out rate's interval, in the prediction section
    for section in ("## Throughput", "## Learning rates (measured)", "## Compute-optimal allocation",
                    "## Fitted laws", "## Noise", "## Prediction of a run the fits did not see",
                    "## How much to trust this", "## Runs"):
        assert section in report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 3 and "prediction.png" in images
    for name in images:
        assert (out / name).stat().st_size > 5000
    # The compute-optimal table is printed: a header and one line per (budget, approach), with intervals.
    assert "N_opt [95% interval]" in printed
    table_lines = [line for line in printed.splitlines() if re.match(r"\d(\.\d+)?e\+\d\d", line)]
    assert len(table_lines) == 4 * len(summary["approaches"])  # (2 budgets + 10x + 100x the largest) x approaches
    assert all(any(line.startswith(f"{b:.3g}") for line in table_lines) for b in budgets)

    # Re-running resumes: every run is skipped, only the fits and the report are redone.
    t = time.time()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert time.time() - t < first_wall
    again = json.loads((out / "summary.json").read_text())
    assert again["runs"] == 12 and again["grid_points"] == 6 and again["throughput"]["from_previous_call"]
    assert again["throughput"]["efficiency"] == throughput["efficiency"]


def test_the_report_names_budgets_whose_best_run_is_at_the_edge_of_the_grid():
    from chinchax.experiments.demo import _bracketing, edge_winners

    def rows(budget, losses):
        return [{"budget": budget, "n_params": 1000 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]

    table = rows(1e10, [2.9, 3.0, 3.1]) + rows(3e10, [2.9, 2.8, 2.95]) + rows(1e11, [2.9, 2.8, 2.7])
    assert edge_winners(table) == {"smallest": [1e10], "largest": [1e11]}
    text = _bracketing(table)
    assert "At 1 of 3 budgets (1e+10) the smallest model" in text and "At 1e+11 the largest" in text
    assert "inside its grid" in _bracketing(rows(3e10, [2.9, 2.8, 2.95]))


def test_each_study_has_its_own_default_folder(tmp_path, monkeypatch):
    # a quick run after a full one must not replace the full one's report (same file names in one folder)
    from chinchax.experiments import demo

    folders = {demo.default_out(quick, scale) for quick, scale in ((False, "cpu"), (True, "cpu"), (False, "gpu"))}
    assert folders == {"demo", "demo_quick", "demo_gpu"}
    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.append(out) or {
        "optimal_table": "", "summary": {"throughput": {"efficiency": 0.0}}, "wall_time_s": 0.0})
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick"]) == 0 and main(["demo"]) == 0
    assert main(["demo", "--quick", "--out", "mine"]) == 0
    assert [str(p) for p in seen] == ["demo_quick", "demo", "mine"]
