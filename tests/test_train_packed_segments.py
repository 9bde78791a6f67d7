"""model.attention_max_segments through the trainer: packed rows within the bound train as before (the
setting changes only which kernel runs on GPU), and a batch with more documents per row than the bound is
refused with a message that names the setting and the fix, not silently truncated."""

from pathlib import Path

import pytest

from chinchax.configlib import load_config
from chinchax.data.pipeline import register_memory_source
from chinchax.errors import UserError
from chinchax.train.config import ExperimentConfig
from chinchax.train.trainer import train

REPO = Path(__file__).resolve().parents[1]


def config(tmp_path, max_segments: int):
    docs = [f"def f{i}(x):\n    return x + {i}\n" for i in range(400)]  # ~30 bytes: several per 64-byte row
    source = register_memory_source("short-docs", {"train": docs, "validation": docs[:50]})
    overrides = [
        "model.preset=tiny-gpt2",
        "model.vocab_size=384",
        "model.d_model=16",
        "model.n_heads=2",
        "model.d_ff=32",
        "model.max_len=64",
        "model.n_layers=1",
        f"model.attention_max_segments={max_segments}",
        f"data.source={source}",
        "data.seq_len=64",
        "data.eval_batches=1",
        "trainer.batch_size=4",
        "trainer.steps=3",
        "trainer.checkpoint_every=0",
        "trainer.progress_bar=false",
        f"trainer.run_dir={tmp_path}",
    ]
    return load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", overrides)


def test_packed_rows_within_the_bound_train(tmp_path):
    result = train(config(tmp_path, max_segments=64))
    assert result["status"] == "done" and result["steps"] == 3


def test_more_documents_per_row_than_the_bound_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"segment_ids holds \d+ segments, more than model.attention_max_segments=1"):
        train(config(tmp_path, max_segments=1))


def test_negative_bound_is_refused(tmp_path):
    with pytest.raises(UserError, match="attention_max_segments=-1 must be >= 0"):
        config(tmp_path, max_segments=-1)
