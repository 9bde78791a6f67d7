"""The two post-training studies end to end at toy size (`--quick` plus smaller overrides)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_finetune_and_quantize_studies_quick(tmp_path):
    from chinchax.experiments import finetune_study, quantize_study

    tiny = ["base.steps=10", "finetune.steps=4", "finetune.eval_at=[1,2,4]", "finetune.eval_batches=1",
            "mixture.n_examples=64", "bootstrap=4"]
    assert finetune_study.main(["--quick", "--out", str(tmp_path / "ft"), *tiny]) == 0
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert {r["method"] for r in summary["rows"]} == {"full", "lora", "prompt_tuning"}
    assert len(summary["rows"]) == 2 * 3 * 3  # bases x methods x D_f
    for fit in summary["fits"].values():
        assert fit["n_runs"] == 6 and set(fit["ci"]) == {"A", "E", "alpha", "beta"}
    assert "Which method wins where" in (tmp_path / "ft" / "report.md").read_text()

    assert quantize_study.main(["--quick", "--bases", str(tmp_path / "ft"), "--out", str(tmp_path / "q"),
                                "base.steps=10"]) == 0
    q = json.loads((tmp_path / "q" / "summary.json").read_text())
    assert {r["bits"] for r in q["rows"]} == {"bf16", "int8", "int4", "fp32"}
    by = {(r["d_model"], r["bits"]): r["total_bits"] for r in q["rows"]}
    assert by[(32, "int4")] < by[(32, "int8")] < by[(32, "bf16")] < by[(32, "fp32")]
