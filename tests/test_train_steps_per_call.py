"""`trainer.steps_per_call`: several steps in one jitted call (lax.scan over stacked batches) train exactly
the run of one call per step: the same losses, evals and checkpoints, bitwise, through checkpoint and
eval steps that fall inside a call, a tail shorter than a call, and a resume."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from chinchax.configlib import load_config
from chinchax.train.config import ExperimentConfig
from chinchax.train.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_fakes", Path(__file__).with_name("train_fakes.py"))
train_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_fakes)
TINY = [
    "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.d_ff=32", "model.max_len=16",
    "data.seq_len=16", "data.eval_batches=2", "trainer.batch_size=4", "trainer.checkpoint_every=6",
    "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress_bar=false", "optimizer.warmup_steps=2",
    "trainer.steps=13", "trainer.max_to_keep=5",
]


def _cfg(run_dir, *extra) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [*TINY, f"trainer.run_dir={run_dir}", *extra])


def _rows(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["grad_norm"], r["learning_rate"])
            for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def _params(run_dir: Path, step: int):
    import jax

    from chinchax.train.checkpoint import load_numpy_state

    return jax.tree.leaves(load_numpy_state(run_dir / "checkpoints" / str(step)))


@pytest.fixture(scope="module")
def one_per_step(tmp_path_factory):
    from chinchax.train.trainer import train

    run_dir = tmp_path_factory.mktemp("k1") / "run"
    return run_dir, train(_cfg(run_dir))


def test_four_steps_a_call_train_the_same_run_bitwise(one_per_step, tmp_path):
    from chinchax.train.trainer import train

    base_dir, base = one_per_step
    result = train(_cfg(tmp_path / "k4", "trainer.steps_per_call=4", "trainer.eval_every=5"))
    rows = _rows(tmp_path / "k4")
    assert [r[0] for r in rows] == list(range(1, 14))  # every step logged, in order
    assert rows == _rows(base_dir)
    assert result["eval_loss"] == base["eval_loss"]
    for step in (6, 12, 13):  # checkpoints inside calls' reach and the tail's
        for a, b in zip(_params(tmp_path / "k4", step), _params(base_dir, step), strict=True):
            np.testing.assert_array_equal(a, b)
    evals = [r["step"] for r in read_jsonl(tmp_path / "k4" / "metrics.jsonl") if "eval_loss" in r]
    assert evals == [5, 10, 13]


def test_a_run_interrupted_one_way_resumes_the_other_bitwise(one_per_step, tmp_path):
    from chinchax.train.trainer import train

    base_dir, base = one_per_step
    cfg = _cfg(tmp_path / "r", "trainer.steps_per_call=4")
    failing_data = train_fakes.data_failing_after(cfg, 9, OSError("killed at batch 9"))

    with pytest.raises(OSError, match="killed"):
        train(cfg, data=failing_data)
    assert not (tmp_path / "r" / "run.json").exists()
    result = train(_cfg(tmp_path / "r", "trainer.steps_per_call=1"))  # resumes from step 6, one step a call
    assert json.loads((tmp_path / "r" / "run.json").read_text())["steps"] == 13
    assert _rows(tmp_path / "r") == _rows(base_dir)
    assert result["eval_loss"] == base["eval_loss"]


def test_a_call_never_steps_over_a_checkpoint_or_eval():
    from types import SimpleNamespace

    from chinchax.train.trainer import _call_length

    tc = SimpleNamespace(steps_per_call=4, checkpoint_every=6, eval_every=0)
    lengths, step = [], 0
    while step < 13:
        n = _call_length(step, tc, 13)
        lengths.append(n)
        step += n
    assert lengths == [4, 1, 1, 4, 1, 1, 1]  # 1-4 | 5 | 6 (save) | 7-10 | 11 | 12 (save) | 13 (end)
    assert _call_length(0, SimpleNamespace(steps_per_call=4, checkpoint_every=2, eval_every=0), 13) == 1
    assert _call_length(0, SimpleNamespace(steps_per_call=4, checkpoint_every=0, eval_every=4), 13) == 4


def test_steps_per_call_must_be_positive():
    from chinchax.errors import UserError

    with pytest.raises(UserError, match="steps_per_call"):
        _cfg("/tmp/unused", "trainer.steps_per_call=0")
