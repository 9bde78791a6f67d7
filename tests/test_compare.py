"""`chinchax compare --quick` end to end on this CPU (the real stdlib corpus, the worker executor): every
output written, numbers consistent with each other, and a re-run that trains and scores nothing again."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from chinchax import jsonio
from chinchax.errors import UserError

SWEEP = Path(str(resources.files("chinchax.experiments").joinpath("arch_objective.yaml")))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from chinchax.experiments.compare import run_compare

    out = tmp_path_factory.mktemp("compare")
    first = run_compare(SWEEP, out, quick=True, n_bootstrap=100)
    return out, first


@pytest.mark.slow
def test_quick_compare_writes_a_consistent_report(quick):
    out, first = quick
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    table = pd.read_csv(out / "results.csv")
    families = set(table["family"])
    assert families == {"causal_decoder-causal_lm", "prefix_decoder-prefix_lm", "encoder_decoder-span"}
    assert len(table) == 9 and table.groupby("family")["budget"].nunique().min() == 3
    assert summary["runs_measured"] == 9 and summary["runs_failed"] == []
    # one held-out set for all: the same item count and fingerprint in every run's stored measures
    stored = [json.loads(p.read_text()) for p in sorted((out / "measures_quick").glob("*.json"))]
    assert len(stored) == 9 and len({s["fingerprint"] for s in stored}) == 1
    assert {len(s["pair_nll"]) for s in stored} == {summary["measures"]["n_pairs"]}
    for s in stored:  # the table's bits per byte is the sum over its items
        row = table[table["run"] == s["run"]].iloc[0]
        assert row["conditional_bpb"] == pytest.approx(sum(s["pair_nll"]) / math.log(2) / sum(s["pair_bytes"]))
    assert ((table["conditional_bpb"] > 1.0) & (table["conditional_bpb"] < 9.0)).all()
    # compute: 6ND near each budget, the detailed count logged for every run
    assert ((table["flops"] / table["budget"] - 1).abs() < 0.02).all()
    assert (table["flops_detailed"] > 0).all()
    comparison = summary["comparison"]
    assert comparison["reference"] == "causal_decoder-causal_lm"
    assert comparison["multipliers"]["causal_decoder-causal_lm"]["value"] == pytest.approx(1.0)
    assert set(comparison["laws"]) == families
    for fam in summary["families"]:
        assert fam["flops_6nd"] == pytest.approx(table[table["family"] == fam["family"]]["flops"].sum())
        assert fam["detailed_over_6nd"] > 0
    report = (out / "report.md").read_text()
    for heading in ("## Result", "## What this supports, and what it does not", "## Compared with Wang et al. 2022",
                    "## Compute: counted the same way for every family"):
        assert heading in report
    for kind in ("loss_vs_compute", "accuracy_vs_compute", "multipliers"):
        assert (out / "plots" / f"{kind}.png").stat().st_size > 1000
    assert first["summary"]["runs_trained"] == 9


@pytest.mark.slow
def test_rerun_trains_and_scores_nothing_again(quick):
    from chinchax.experiments.compare import run_compare

    out, first = quick
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "measures_quick").glob("*.json")}
    again = run_compare(SWEEP, out, quick=True, n_bootstrap=100)
    assert again["summary"]["runs_trained"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "measures_quick").glob("*.json")} == mtimes
    assert jsonio.strict(again["summary"]["comparison"]) == jsonio.strict(first["summary"]["comparison"])


def test_bad_inputs_are_clear_errors(tmp_path):
    from chinchax.experiments.compare import run_compare

    with pytest.raises(UserError, match="does not exist"):
        run_compare(tmp_path / "missing.yaml", tmp_path)
    with pytest.raises(UserError, match="is not a family of the sweep"):
        run_compare(SWEEP, tmp_path, reference="nope")
    with pytest.raises(UserError, match="--executor='tpu'"):
        run_compare(SWEEP, tmp_path, executor="tpu")
    one = tmp_path / "one.yaml"
    one.write_text(SWEEP.read_text().split("families:")[0] + "budgets: [1.0e+10]\n")
    with pytest.raises(UserError, match="at least two entries"):
        run_compare(one, tmp_path)
    encoder_only = tmp_path / "enc.yaml"
    encoder_only.write_text(SWEEP.read_text().replace(
        "  prefix_decoder-span:", "  bert-mlm: [model.variant=encoder_only, model.attention=bidirectional, "
        "data.objective=masked_lm]\n  prefix_decoder-span:"))
    with pytest.raises(UserError, match="encoder-only"):
        run_compare(encoder_only, tmp_path)
