"""Extending a run (`trainer.steps=10` after 6) is allowed where it leaves the past alone: a constant
schedule, or wsd before its cooldown began. The extended run equals one trained at the new length from the
start. Cosine/linear decay and a begun wsd cooldown depend on the length: refused, saying why."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from chinchax.configlib import load_config, read_yaml
from chinchax.errors import UserError
from chinchax.train.config import ExperimentConfig
from chinchax.train.metrics import read_jsonl

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.d_ff=64", "model.max_len=32",
    "data.seq_len=32", "data.eval_batches=2", "trainer.batch_size=4", "trainer.checkpoint_every=4",
    "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress_bar=false", "optimizer.warmup_steps=2",
]


def _cfg(run_dir, *extra) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [*TINY, f"trainer.run_dir={run_dir}", *extra])


def _steps(cfg: ExperimentConfig, steps: int) -> ExperimentConfig:
    return cfg.replace(trainer=dataclasses.replace(cfg.trainer, steps=steps))


def _train_rows(run_dir: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r["learning_rate"]) for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def _stop_after(cfg: ExperimentConfig, n_batches: int):
    """Data that breaks at batch n_batches + 1: the run dies like a killed one, after its checkpoints."""
    from chinchax.train.trainer import _default_data

    def data(i, n):
        it, make_eval, tok = _default_data(cfg, i, n)

        class Stopping:
            def __next__(self):
                if it.get_state_calls >= n_batches:
                    raise RuntimeError("stopped")
                it.get_state_calls += 1
                return next(it)

            def get_state(self):
                return it.get_state()

            def set_state(self, state):
                it.set_state(state)

        it.get_state_calls = 0
        return Stopping(), make_eval, tok

    return data


def test_a_constant_run_extends_and_equals_the_longer_run(tmp_path):
    from chinchax.train.trainer import train

    short = _cfg(tmp_path / "ext", "optimizer.schedule=constant", "trainer.steps=6")
    train(short)
    assert json.loads((tmp_path / "ext" / "run.json").read_text())["steps"] == 6
    result = train(_steps(short, 10))
    assert result["steps"] == 10 and result["n_tokens"] == 10 * 4 * 32
    assert read_yaml(tmp_path / "ext" / "config.yaml")["trainer"]["steps"] == 10
    alone = _cfg(tmp_path / "alone", "optimizer.schedule=constant", "trainer.steps=10")
    train(alone)
    assert _train_rows(tmp_path / "ext") == _train_rows(tmp_path / "alone")


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_a_decaying_run_is_not_extended(tmp_path, schedule):
    from chinchax.train.trainer import train

    short = _cfg(tmp_path / schedule, f"optimizer.schedule={schedule}", "trainer.steps=6")
    train(short)
    with pytest.raises(UserError, match=f"change the learning rate of steps it has already taken.*{schedule}"):
        train(_steps(short, 10))
    assert read_yaml(tmp_path / schedule / "config.yaml")["trainer"]["steps"] == 6  # nothing changed
    assert json.loads((tmp_path / schedule / "run.json").read_text())["steps"] == 6


def test_wsd_extends_before_its_cooldown_and_not_after(tmp_path):
    from chinchax.train.trainer import train

    wsd = ["optimizer.schedule=wsd", "optimizer.cooldown_fraction=0.25"]
    # 16 steps: cooldown over steps 12..15. Stopped at step 8 (checkpoint at 8), then extended to 24.
    first = _cfg(tmp_path / "early", *wsd, "trainer.steps=16")
    with pytest.raises(RuntimeError, match="stopped"):
        train(first, data=_stop_after(first, 8))
    result = train(_steps(first, 24))
    assert result["steps"] == 24
    alone = _cfg(tmp_path / "alone", *wsd, "trainer.steps=24")
    train(alone)
    assert _train_rows(tmp_path / "early") == _train_rows(tmp_path / "alone")

    # A finished wsd run has cooled down: extending it would rewrite its cooldown.
    with pytest.raises(UserError, match="cooldown.*had already begun"):
        train(_steps(alone, 32))
    # Shortening below the steps taken is refused too.
    with pytest.raises(UserError, match="already trained 24 steps"):
        train(_steps(alone, 20))


def test_a_run_dir_of_another_experiment_is_refused_naming_the_keys(tmp_path):
    from chinchax.train.trainer import train

    train(_steps(_cfg(tmp_path), 2))
    with pytest.raises(UserError, match=r"different config \(model.d_ff: 64 -> 128.*Restore the old values"):
        train(_steps(_cfg(tmp_path, "model.d_ff=128"), 2))
    train(_steps(_cfg(tmp_path, "trainer.log_every=2", "model.attention_max_segments=4"), 2))  # resume-safe keys
