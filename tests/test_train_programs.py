"""Runs of one shape share compiled programs in one process (what a sweep worker does), and sharing changes
nothing: a run trained after another of its shape equals the same run trained alone, bitwise. Also the
run.json contract: a crash never writes a finished run, and MFU leaves out the window that compiled."""

import importlib.util
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
    "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.d_ff=64", "model.max_len=32",
    "data.seq_len=32", "data.eval_batches=2", "trainer.batch_size=4", "trainer.checkpoint_every=0",
    "trainer.log_every=2", "trainer.eval_every=0", "trainer.progress_bar=false", "optimizer.warmup_steps=2",
]


def _cfg(run_dir, *extra) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [*TINY, f"trainer.run_dir={run_dir}", *extra])


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r]


def test_runs_of_one_shape_share_programs_and_train_as_if_alone(tmp_path):
    from chinchax.sharding import make_mesh
    from chinchax.train import programs
    from chinchax.train.trainer import train

    programs.clear()
    first = _cfg(tmp_path / "a", "trainer.steps=6", "optimizer.learning_rate=1e-3")
    second = _cfg(tmp_path / "b", "trainer.steps=8", "optimizer.learning_rate=3e-3", "optimizer.schedule=linear")
    train(first)
    shared = programs.programs_for(first, make_mesh(first.trainer.mesh))
    (step,) = shared._train.values()
    train(second)
    # Different learning rate, schedule and length: the same Programs, one compiled train step.
    assert programs.programs_for(second, make_mesh(second.trainer.mesh)) is shared
    assert step._cache_size() == 1
    assert len(programs._cache) == 1

    # ...and the second run is exactly what it would have been in a fresh process.
    programs.clear()
    alone = _cfg(tmp_path / "b_alone", "trainer.steps=8", "optimizer.learning_rate=3e-3", "optimizer.schedule=linear")
    result = train(alone)
    assert _losses(tmp_path / "b") == _losses(tmp_path / "b_alone")
    shared_run = __import__("json").loads((tmp_path / "b" / "run.json").read_text())
    assert shared_run["eval_loss"] == result["eval_loss"]
    # A different model shape gets programs of its own.
    wider = _cfg(tmp_path / "c", "trainer.steps=2", "model.d_model=64", "model.d_ff=128")
    assert programs.programs_for(wider, make_mesh(wider.trainer.mesh)) is not programs.programs_for(
        alone, make_mesh(alone.trainer.mesh))


def test_seeds_share_programs_without_dropout_and_init_as_their_own_seed(tmp_path):
    import jax

    from chinchax.sharding import make_mesh
    from chinchax.train import programs
    from chinchax.train.state import make_init_fn
    from chinchax.train.trainer import train

    programs.clear()
    seed0 = _cfg(tmp_path / "s0", "trainer.steps=4")
    seed1 = _cfg(tmp_path / "s1", "trainer.steps=4", "trainer.seed=1")
    mesh = make_mesh(seed0.trainer.mesh)
    train(seed0)
    shared = programs.programs_for(seed0, mesh)
    assert programs.programs_for(seed1, mesh) is shared  # no dropout: the seed is only the init's argument
    state1 = shared.init_state(seed1)
    # The shared init draws seed 1's own weights: those of an init compiled for seed 1 alone.
    alone = jax.jit(make_init_fn(seed1.model, shared.tx, 1))()
    for a, b in zip(jax.tree.leaves(state1["params"]), jax.tree.leaves(alone["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    leaves0 = jax.tree.leaves(shared.init_state(seed0)["params"])
    assert not all(np.array_equal(a, b) for a, b in zip(leaves0, jax.tree.leaves(state1["params"]), strict=True))
    # With dropout the seed is in the step (its dropout keys): programs of their own.
    drop0, drop1 = (_cfg(tmp_path / f"d{s}", "model.dropout=0.1", f"trainer.seed={s}") for s in (0, 1))
    assert programs.programs_for(drop0, mesh) is not programs.programs_for(drop1, mesh)


def test_the_learning_rate_given_to_the_step_is_the_schedules(tmp_path):
    from chinchax.train.optimizer import make_schedule
    from chinchax.train.trainer import train

    cfg = _cfg(tmp_path / "r", "trainer.steps=8", "trainer.log_every=1", "optimizer.learning_rate=2e-3")
    train(cfg)
    logged = [r["learning_rate"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    schedule = make_schedule(cfg.optimizer, 8)
    # row k logs step k+1's update, made with the rate of step k
    np.testing.assert_allclose(logged, [float(schedule(k)) for k in range(8)], rtol=1e-6)


def test_a_crash_mid_run_writes_no_finished_run_json(tmp_path):
    from chinchax.train.trainer import train

    cfg = _cfg(tmp_path / "crash", "trainer.steps=12")
    failing_data = train_fakes.data_failing_after(cfg, 7, OSError("disk gone at batch 7"))

    with pytest.raises(OSError, match="disk gone"):
        train(cfg, data=failing_data)
    assert not (tmp_path / "crash" / "run.json").exists()


def test_mfu_leaves_out_the_first_window_whatever_log_every(tmp_path):
    from chinchax.train.trainer import train

    result = train(_cfg(tmp_path / "m", "trainer.steps=12", "trainer.log_every=4"))
    rows = [r for r in read_jsonl(tmp_path / "m" / "metrics.jsonl") if "mfu" in r]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert result["mfu"] == pytest.approx(np.mean([r["mfu"] for r in rows[1:]]), rel=1e-12)
