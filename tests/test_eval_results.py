"""eval.json: merged per key, reset when the checkpoint step changes, flattened into results-table columns."""

from __future__ import annotations

import json

from chinchax.evaluation import results


def test_record_merges_resets_on_a_new_step_and_flattens(tmp_path):
    run = tmp_path / "run-a"
    run.mkdir()
    assert results.read_results(run) == {}
    results.record(run, 100, "validation", {"loss": 2.5, "loss_stderr": 0.1})
    results.record(run, 100, "copa/0shot", {"acc": 0.6, "task": "copa", "samples": [{"x": 1}], "ok": True})
    data = json.loads((run / "eval.json").read_text())
    assert data["run"] == "run-a" and data["step"] == 100 and set(data["results"]) == {"validation", "copa/0shot"}
    assert results.flat_metrics(data) == {
        "eval/validation/loss": 2.5, "eval/validation/loss_stderr": 0.1, "eval/copa/0shot/acc": 0.6}
    results.record(run, 200, "copa/0shot", {"acc": 0.7})  # a newer checkpoint: older results are dropped
    assert results.read_results(run)["results"] == {"copa/0shot": {"acc": 0.7}}
    assert [p.name for p in run.iterdir()] == ["eval.json"]  # no temporary files left behind
