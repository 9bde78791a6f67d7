"""One trainer per run directory, with real processes: a second trainer refuses at once naming the holder;
a sweep driver killed with -9 takes its trainer down with it (SIGTERM: it saves, stops, and frees the lock;
the run reads interrupted); the lock is released when train() raises, so a long-lived worker goes on to its
next run; sweep_failed.json names the signal that killed a run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from chinchax import configlib
from chinchax.configlib import load_config
from chinchax.errors import UserError
from chinchax.scaling.results import FAILED_MARKER, LOCK_MARKER, SweepDir
from chinchax.train.config import ExperimentConfig
from chinchax.train.runlock import hold, probe

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.d_ff=64", "model.max_len=32",
    "data.seq_len=32", "data.eval_batches=2", "trainer.batch_size=4", "trainer.checkpoint_every=0",
    "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress_bar=false", "optimizer.warmup_steps=2",
]


def _cfg(run_dir, *extra) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [*TINY, f"trainer.run_dir={run_dir}", *extra])


def _env():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CHINCHAX_HUGEPAGE_MALLOC": "0"}
    env.pop("XLA_FLAGS", None)
    return env


def _wait_for(condition, timeout=120.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # exited but not reaped yet (an orphan waits for init to reap it): gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_hold_refuses_a_second_holder_and_probe_sees_it(tmp_path):
    with hold(tmp_path):
        holder = probe(tmp_path)
        assert holder == {"pid": os.getpid(), "host": holder["host"]}
        with pytest.raises(UserError, match=f"pid {os.getpid()}") as e, hold(tmp_path):
            pass
        assert str(tmp_path) in str(e.value)
    assert probe(tmp_path) is None
    with hold(tmp_path):  # free again
        pass


def test_two_trainers_kill_9_and_sweep_status(tmp_path):
    """A sweep driver launches a trainer: status running; a second trainer refuses, naming the first. The
    driver is killed with -9: the kernel sends its trainer SIGTERM, which saves a checkpoint and stops (exit
    75, interrupted.json); its lock is free at once and the status is interrupted, though the dead driver's
    sweep_running.json is still there (a trainer started without its driver's death signal, and so left
    running, is tests/test_scaling_killed_driver.py's)."""
    sweep = SweepDir(tmp_path / "sweep")
    run_dir = sweep.run_dir("r1")
    config = tmp_path / "r1.yaml"
    config.write_text(configlib.dump_yaml(_cfg(run_dir, "trainer.steps=100000")))
    driver_code = textwrap.dedent(
        f"""
        import sys
        from chinchax.scaling.executors import run_with_retries
        run_with_retries("r1", {str(config)!r}, {str(run_dir)!r},
                         train_command=[sys.executable, "-m", "chinchax.cli", "train"], max_retries=0)
        """
    )
    driver = subprocess.Popen([sys.executable, "-c", driver_code], env=_env(), stdin=subprocess.DEVNULL)
    trainer_pid = None
    try:
        holder = _wait_for(lambda: probe(run_dir), what="the trainer to take its lock")
        trainer_pid = int(holder["pid"])
        assert trainer_pid != driver.pid
        _wait_for(lambda: (run_dir / "metrics.jsonl").is_file(), what="the first metrics")
        assert sweep.state("r1") == "running"

        second = subprocess.run(
            [sys.executable, "-m", "chinchax.cli", "train", str(config)],
            env=_env(), capture_output=True, text=True, timeout=300,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"{run_dir} is being trained by another process (pid {trainer_pid}" in second.stderr
        assert not _pid_gone(trainer_pid)  # the first trainer was not disturbed

        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        _wait_for(lambda: _pid_gone(trainer_pid), timeout=60, what="the trainer to save and stop")
        trainer_pid = None
        marker = json.loads((run_dir / LOCK_MARKER).read_text())  # the dead driver's marker is left behind
        assert marker["pid"] == driver.pid and _pid_gone(driver.pid)
        stopped = json.loads((run_dir / "interrupted.json").read_text())
        assert stopped["signal"] == "SIGTERM" and (run_dir / "checkpoints" / str(stopped["step"])).is_dir()
        assert probe(run_dir) is None  # the kernel dropped the lock with the process
        assert sweep.state("r1") == "interrupted"
    finally:
        if driver.poll() is None:
            driver.kill()
        if trainer_pid is not None and not _pid_gone(trainer_pid):
            os.kill(trainer_pid, signal.SIGKILL)


def test_lock_is_released_when_train_raises_so_a_worker_goes_on(tmp_path):
    from chinchax.train.trainer import _default_data, train

    cfg = _cfg(tmp_path / "crash", "trainer.steps=6")

    def failing_data(i, n):
        it, make_eval, tok = _default_data(cfg, i, n)

        class Failing:
            def __next__(self):
                raise RuntimeError("the data source broke")

            def get_state(self):
                return it.get_state()

            def set_state(self, state):
                it.set_state(state)

        return Failing(), make_eval, tok

    with pytest.raises(RuntimeError, match="data source broke"):
        train(cfg, data=failing_data)
    assert probe(tmp_path / "crash") is None
    result = train(cfg.replace(trainer=dataclasses.replace(cfg.trainer, steps=2)))
    assert result["steps"] == 2 and probe(tmp_path / "crash") is None


def test_sweep_failed_names_the_signal(tmp_path):
    from chinchax.scaling.executors import run_with_retries

    sweep = SweepDir(tmp_path / "sweep")
    run_dir = sweep.run_dir("r1")
    suicide = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    outcome = run_with_retries("r1", str(tmp_path / "unused.yaml"), str(run_dir), train_command=suicide, max_retries=0)
    assert outcome.status == "failed"
    failure = json.loads((run_dir / FAILED_MARKER).read_text())
    assert failure["returncode"] == -9 and failure["signal"] == "SIGKILL"
    assert "killed by SIGKILL" in failure["error"]
    assert sweep.state("r1") == "failed"
