"""The alignment study end to end at the smallest size: every stage runs, the report and summary hold the
fields a reader needs, and a rerun resumes instead of redoing the work."""

from __future__ import annotations

import json
import math

import pytest
import yaml

TINY = {
    "seed": 0,
    "policy": {"steps": 120, "corpus_docs": 20, "overrides": ["model.d_model=16", "model.n_layers=1", "model.n_heads=2",
                                                             "model.d_ff=32", "model.max_len=64", "data.seq_len=32",
                                                             "trainer.batch_size=8"]},
    "prompts": {"train": 16, "eval": 4},
    "completion": {"max_new_tokens": 6, "temperature": 1.0},
    "pairs_per_prompt": 3,
    "proxies": [{"d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 16}],
    "proxy": {"steps": 6, "batch_size": 4, "learning_rate": 3.0e-3},
    "bon_n": [1, 2, 4],
    "ppo": {"steps": 3, "eval_every": 1, "batch_size": 4, "learning_rate": 1.0e-3, "kl_coef": 0.0, "ppo_epochs": 1,
            "minibatches": 1},
    "dpo": {"epochs": 1, "beta": 0.1, "batch_size": 4, "learning_rate": 1.0e-3, "evals_per_epoch": 3},
}


@pytest.mark.slow
def test_study_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    from chinchax.experiments import alignment_study

    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    assert alignment_study.main(str(config), quick=False, out=str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["gold_initial"] <= 1.0
    (px,) = summary["proxies"]
    kl_bon = [math.log(n) - (n - 1) / n for n in (2, 4)]
    assert [d * d for d in px["bon"]["points"]["d"]] == pytest.approx([0.0, *kl_bon])
    assert len(px["ppo"]["points"]["d"]) == 1 + 3 and len(px["dpo"]["points"]["d"]) >= 2
    report = (out / "report.md").read_text()
    for words in ("best-of-n over n", "PPO over steps", "DPO over epochs", "held-out gold-label accuracy"):
        assert words in report
    assert (out / "bon_scores_vs_d.png").is_file()
    # a rerun finds every stage done: the trainers resume at their last step and take no new step
    before = (out / "ppo_proxy_d8_l1" / "metrics.jsonl").read_text()
    assert alignment_study.main(str(config), quick=False, out=str(out)) == 0
    assert (out / "ppo_proxy_d8_l1" / "metrics.jsonl").read_text() == before
