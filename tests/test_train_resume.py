"""`chinchax train` end to end: kill -9 mid-run then re-run == uninterrupted (bitwise), refusing a changed
config, and stopping on a NaN loss with the last good checkpoint kept."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chinchax.train.checkpoint import load_numpy_state
from chinchax.train.metrics import TIMING_FIELDS, read_jsonl

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.d_model=32",
    "model.n_layers=2",
    "model.n_heads=4",
    "model.d_ff=64",
    "model.max_len=32",
    "data.seq_len=32",
    "data.eval_batches=2",
    "trainer.batch_size=4",
    "trainer.steps=12",
    "trainer.checkpoint_every=4",
    "trainer.log_every=1",
    "trainer.eval_every=6",
    "trainer.progress_bar=false",
    "optimizer.warmup_steps=2",
]


def _cmd(run_dir, *extra):
    return [
        sys.executable,
        "-m",
        "chinchax.cli",
        "train",
        str(REPO / "experiments" / "tiny.yaml"),
        f"trainer.run_dir={run_dir}",
        *TINY,
        *extra,
    ]


def _env():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


def _final_params(run_dir: Path, step: int):
    return load_numpy_state(run_dir / "checkpoints" / str(step))["params"]


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted(tmp_path):
    ref, victim = tmp_path / "ref", tmp_path / "victim"
    done = subprocess.run(_cmd(ref), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_cmd(victim), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = victim / "checkpoints" / "4" / "chinchax_manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        rows = read_jsonl(victim / "metrics.jsonl")
        if manifest.is_file() and rows and rows[-1].get("step", 0) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(r["step"] for r in read_jsonl(victim / "metrics.jsonl"))
    assert killed_at < 12 and not (victim / "run.json").exists()

    resumed = subprocess.run(_cmd(victim), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert "from step 4" in resumed.stdout or "from step 8" in resumed.stdout, resumed.stdout

    ref_rows, victim_rows = read_jsonl(ref / "metrics.jsonl"), read_jsonl(victim / "metrics.jsonl")
    assert [r["step"] for r in victim_rows] == [r["step"] for r in ref_rows]  # no duplicated or missing rows
    after = lambda rows: _without_timing([r for r in rows if r["step"] > 4])  # noqa: E731
    assert after(victim_rows) == after(ref_rows)  # bitwise: floats round-trip exactly through JSON
    a, b = _final_params(ref, 12), _final_params(victim, 12)
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    ref_json, victim_json = (
        json.loads((ref / "run.json").read_text()),
        json.loads((victim / "run.json").read_text()),
    )
    for key in (
        "final_train_loss",
        "eval_loss",
        "eval_bits_per_byte",
        "n_tokens",
        "flops_6nd",
        "flops_detailed",
    ):
        assert ref_json[key] == victim_json[key], key


def _leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_rerun_with_a_changed_config_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    from chinchax import configlib
    from chinchax.train.config import ExperimentConfig

    cfg = configlib.load_config(
        ExperimentConfig, REPO / "experiments" / "tiny.yaml", [f"trainer.run_dir={run_dir}", *TINY]
    )
    (run_dir / "config.yaml").write_text(configlib.dump_yaml(cfg))
    out = subprocess.run(
        _cmd(run_dir, "optimizer.learning_rate=0.5"), env=_env(), capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "optimizer.learning_rate" in out.stderr and "new trainer.run_dir" in out.stderr
    # Resume-safe keys (logging, checkpoint cadence, mesh) may change.
    from chinchax.train.trainer import check_resume_compatible

    check_resume_compatible(
        run_dir,
        cfg.replace(
            trainer=cfg.trainer.__class__(
                **{**configlib.to_dict(cfg)["trainer"], "log_every": 7, "checkpoint_every": 3}
            )
        ),
    )


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from chinchax import configlib
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.synthetic import TokenArrayBatches, random_tokens
    from chinchax.train.trainer import TrainingDiverged, train

    cfg = configlib.load_config(
        ExperimentConfig,
        REPO / "experiments" / "tiny.yaml",
        [
            f"trainer.run_dir={tmp_path}",
            *TINY,
            "trainer.checkpoint_every=2",
            "trainer.log_every=1",
            "trainer.wandb_project=chinchax-test",
        ],
    )
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no key: wandb must run offline, not fail

    class PoisonAtStep5(TokenArrayBatches):
        def __next__(self):
            batch = super().__next__()
            if self.position == 5:  # the batch of step 5
                batch["loss_weights"] = batch["loss_weights"] * np.float32("nan")
            return batch

    def data(i, n):
        return (
            PoisonAtStep5(
                random_tokens(5000, 361), global_batch_size=4, seq_len=32, process_index=i, process_count=n
            ),
            None,
            None,
        )

    with pytest.raises(TrainingDiverged, match="at step 5"):
        train(cfg, data=data)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4]  # step 6 (after the NaN update) was never saved
    assert (tmp_path / "checkpoints" / "4" / "chinchax_manifest.json").is_file()
    assert not (tmp_path / "run.json").exists()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]  # step 5 never logged
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # wandb logged the same rows, offline
