"""Every objective trains a tiny model of every variant it supports, through the real grain pipeline
(stdlib corpus, byte tokenizer), with the loss going down over a few steps."""

from pathlib import Path

import pytest

from chinchax.configlib import load_config
from chinchax.train.config import ExperimentConfig
from chinchax.train.metrics import read_jsonl
from chinchax.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
CASES = [
    ("causal_lm", ["model.preset=tiny-gpt2"]),
    ("prefix_lm", ["model.preset=tiny-gpt2", "model.attention=prefix"]),
    ("prefix_lm", ["model.preset=tiny-t5"]),
    ("span_corruption", ["model.preset=tiny-t5"]),
    ("span_corruption", ["model.preset=tiny-gpt2", "model.attention=prefix"]),
    ("span_corruption", ["model.preset=tiny-gpt2", "model.attention=causal"]),  # Wang et al.'s causal decoder + MLM
    ("masked_lm", ["model.preset=tiny-bert"]),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "objective, model",
    CASES,
    ids=[f"{o}-{m[0].split('=')[1]}{'-' + m[1].split('=')[1] if len(m) > 1 else ''}" for o, m in CASES],
)
def test_objective_trains_variant(tmp_path, objective, model):
    overrides = [
        *model,
        "model.vocab_size=384",
        "model.d_model=32",
        "model.n_heads=4",
        "model.d_ff=64",
        "model.max_len=64",
        f"data.objective={objective}",
        "data.seq_len=32",
        "data.eval_batches=1",
        "trainer.batch_size=8",
        "trainer.steps=12",
        "trainer.log_every=1",
        "trainer.checkpoint_every=0",
        "trainer.progress_bar=false",
        "optimizer.learning_rate=1e-2",
        "optimizer.warmup_steps=2",
        f"trainer.run_dir={tmp_path}",
    ]
    cfg = load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", overrides)
    result = train(cfg)
    losses = [r["loss"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 12
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < first - 0.3, losses  # from ~ln(vocab) towards the unigram entropy and below
    assert result["eval_loss"] is not None and result["eval_loss"] < first
