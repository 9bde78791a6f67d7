"""`chinchax demo --quick` end to end: corpus, sweep with the real trainer, fits, plots, report (CI runs it)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from chinchax.cli import main


def test_demo_help_is_fast_and_lists_quick():
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "chinchax.cli", "demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--quick" in out.stdout and "--out" in out.stdout
    assert time.time() - t < 60


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    t = time.time()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    first_wall = time.time() - t
    printed = capsys.readouterr().out

    # results.csv: one row per planned run, the columns `chinchax fit` reads, losses that make sense.
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    plan = json.loads((out / "sweep_quick" / "plan.json").read_text())
    assert len(rows) == len(plan["runs"]) == 6
    budgets = sorted({float(r["budget"]) for r in rows})
    assert len(budgets) == 2
    for r in rows:
        assert 0.5 < float(r["loss"]) < 6.0  # nats per byte-token: below uniform (ln 361 = 5.9)
        assert abs(float(r["flops"]) / float(r["budget"]) - 1) < 0.1
    assert sum(1 for _ in (out / "curves.csv").open()) > 6

    # Fits: approaches 2 and 3 as JSON with bootstrap intervals.
    fits = {p.name: json.loads(p.read_text()) for p in out.glob("fit_*.json")}
    assert {"fit_approach2.json", "fit_approach3.json"} <= set(fits)
    # 3 sizes per budget: approach 2 bootstraps the losses around its parabolas, so its interval exists
    approach2 = fits["fit_approach2.json"]
    assert approach2["extra"]["bootstrap_method"] == "parametric"
    assert all(v is not None for v in approach2["intervals"]["a"])

    # The report embeds every plot it names, and the plots exist.
    report = (out / "report.md").read_text()
    for section in ("## Compute-optimal allocation", "## Fitted laws", "## How much to trust this", "## Runs"):
        assert section in report
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(images) >= 2
    for name in images:
        assert (out / name).stat().st_size > 5000
    assert "within a factor" in report  # the honest interval statement
    # The compute-optimal table is printed: a header and one line per (budget, approach), with intervals.
    assert "N_opt [95% interval]" in printed
    table_lines = [line for line in printed.splitlines() if re.match(r"\d(\.\d+)?e\+\d\d", line)]
    assert len(table_lines) == 4 * 2  # (2 budgets + 10x + 100x the largest) x approaches 2 and 3
    assert all(any(line.startswith(f"{b:.3g}") for line in table_lines) for b in budgets)

    # Re-running resumes: every run is skipped, only the fits and the report are redone.
    t = time.time()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert time.time() - t < first_wall
    assert json.loads((out / "summary.json").read_text())["runs"] == 6
    assert Path(out / "report.md").exists()


def test_the_report_names_budgets_whose_best_run_is_at_the_edge_of_the_grid():
    from chinchax.experiments.demo import _bracketing, edge_winners

    def rows(budget, losses):
        return [{"budget": budget, "n_params": 1000 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]

    table = rows(1e10, [2.9, 3.0, 3.1]) + rows(3e10, [2.9, 2.8, 2.95]) + rows(1e11, [2.9, 2.8, 2.7])
    assert edge_winners(table) == {"smallest": [1e10], "largest": [1e11]}
    text = _bracketing(table)
    assert "At 1 of 3 budgets (1e+10) the smallest model" in text and "At 1e+11 the largest" in text
    assert "inside its grid" in _bracketing(rows(3e10, [2.9, 2.8, 2.95]))
