"""Preemption: SIGTERM or SIGINT saves a checkpoint at the next call boundary and stops (exit code 75); running
again resumes there and trains exactly the uninterrupted run, no step twice. Several hosts stop at one step. A
sweep reads such a run as interrupted, not failed. A kill -9 between orbax's commit of a checkpoint and our
manifest of it resumes from that checkpoint (it used to be set aside as damaged)."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from chinchax.configlib import load_config
from chinchax.train.checkpoint import MANIFEST, load_numpy_state
from chinchax.train.config import ExperimentConfig
from chinchax.train.metrics import TIMING_FIELDS, read_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS = 10
TINY = [
    "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.d_ff=32", "model.max_len=16",
    "data.seq_len=16", "data.eval_batches=2", "trainer.batch_size=4", f"trainer.steps={STEPS}",
    "trainer.checkpoint_every=4", "trainer.log_every=1", "trainer.eval_every=5", "trainer.max_to_keep=5",
    "trainer.progress_bar=false", "optimizer.warmup_steps=2",
]


def _cfg(run_dir, *extra) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [*TINY, f"trainer.run_dir={run_dir}", *extra])


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _assert_same_params(run_dir: Path, reference: Path, step: int = STEPS) -> None:
    import jax

    a, b = (jax.tree.leaves(load_numpy_state(d / "checkpoints" / str(step))) for d in (run_dir, reference))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _env() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    from chinchax.train.trainer import train

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(_cfg(run_dir))
    return run_dir


class _Unhandled(Exception):
    """What a signal raises in this test process where the trainer installed no handler of its own."""


@pytest.fixture
def signals_raise():
    """SIGTERM and SIGINT raise _Unhandled instead of ending pytest (without a handler of the trainer's, the test
    fails instead of killing the test process); the trainer must put these handlers back when it returns."""

    def unhandled(signum, frame):
        raise _Unhandled(signal.Signals(signum).name)

    previous = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGINT)}
    yield unhandled
    for s, handler in previous.items():
        signal.signal(s, handler)


def _data(cfg, drawn: list, signal_at: int | None = None, signum: int = signal.SIGTERM):
    """The real pipeline, counting the batches drawn, and sending `signum` to this process as batch `signal_at`
    (0-based: the batch of step signal_at + 1) is drawn."""
    from chinchax.train.trainer import _default_data

    def data(i, n):
        it, make_eval, tok = _default_data(cfg, i, n)

        class Signalling:
            def __next__(self):
                if len(drawn) == signal_at:
                    os.kill(os.getpid(), signum)
                drawn.append(1)
                return next(it)

            def get_state(self):
                return it.get_state()

            def set_state(self, state):
                it.set_state(state)

        return Signalling(), make_eval, tok

    return data


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_signal_at_a_random_step_saves_there_and_the_rerun_equals_the_uninterrupted_run(
    reference, tmp_path, seed, signals_raise, capsys
):
    from chinchax.train.trainer import INTERRUPTED, TrainingPreempted, _call_length, train

    at = random.Random(seed).randrange(1, STEPS - 1)  # the signal comes as step at + 1 is prepared
    signum, per_call = [(signal.SIGTERM, 3), (signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 3)][seed]
    cfg = _cfg(tmp_path / "run", f"trainer.steps_per_call={per_call}")
    step = 0
    while step <= at:  # the end of the call that holds step at + 1: where the run must stop
        step += _call_length(step, cfg.trainer, STEPS)
    expected = step

    drawn: list = []
    with pytest.raises(TrainingPreempted) as stopped:
        train(cfg, data=_data(cfg, drawn, at, signum))
    assert (stopped.value.step, stopped.value.signal_name) == (expected, signum.name)
    assert signal.getsignal(signal.SIGTERM) is signals_raise and signal.getsignal(signal.SIGINT) is signals_raise
    run = tmp_path / "run"
    assert len(drawn) == expected  # nothing trained beyond the step it saved
    assert (run / "checkpoints" / str(expected) / MANIFEST).is_file()  # committed and verified before it stopped
    assert json.loads((run / INTERRUPTED).read_text())["step"] == expected
    assert not (run / "run.json").exists()
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == expected

    drawn.clear()
    capsys.readouterr()
    result = train(cfg, data=_data(cfg, drawn))
    assert f"from step {expected}" in capsys.readouterr().out
    assert len(drawn) == STEPS - expected  # no step trained twice
    assert _rows(run) == _rows(reference)  # every row, bitwise: floats round-trip exactly through JSON
    _assert_same_params(run, reference)
    assert result["status"] == "done" and not (run / INTERRUPTED).exists()


def test_sigint_to_a_sweep_trainer_exits_75_without_a_traceback_and_the_sweep_resumes_it(tmp_path, capsys):
    """`chinchax train` as a sweep launches it: Ctrl-C stops it with exit code 75 and no traceback; the executor
    records the run as interrupted (not failed, not retried), and the next launch (here in-process, as the worker
    executor's) resumes it and finishes."""
    import yaml

    from chinchax import configlib
    from chinchax.scaling.executors import run_with_retries
    from chinchax.scaling.results import FAILED_MARKER, TRAIN_LOG, SweepDir
    from chinchax.scaling.worker import train_in_process
    from chinchax.train import runlock

    sweep = SweepDir(tmp_path / "sweep")
    run_dir = sweep.run_dir("r0")
    cfg = _cfg(run_dir, "trainer.steps=60")  # room to be interrupted before it ends (same compiled programs)
    config = tmp_path / "r0.yaml"
    config.write_text(yaml.safe_dump(configlib.to_dict(cfg)))
    outcome: list = []
    env = _env()
    thread = threading.Thread(target=lambda: outcome.append(run_with_retries("r0", str(config), str(run_dir),
                                                                             max_retries=2, env=env)))
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline and thread.is_alive():
        rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        if rows and rows[-1].get("step", 0) >= 2:
            break
        time.sleep(0.02)
    holder = runlock.probe(run_dir)
    assert holder is not None, "the run ended before it could be interrupted"
    os.kill(holder["pid"], signal.SIGINT)
    thread.join(300)
    (result,) = outcome
    log = (run_dir / TRAIN_LOG).read_text()
    assert result.status == "interrupted" and result.attempts == 1, log[-3000:]
    assert "Traceback" not in log and "SIGINT: saving a checkpoint" in log and "exit code 75" in log
    stopped = json.loads((run_dir / "interrupted.json").read_text())
    assert stopped["signal"] == "SIGINT" and (run_dir / "checkpoints" / str(stopped["step"]) / MANIFEST).is_file()
    assert not (run_dir / FAILED_MARKER).exists() and sweep.state("r0") == "interrupted"

    capsys.readouterr()
    again = run_with_retries("r0", str(config), str(run_dir), max_retries=0, launch=lambda c, _: train_in_process(c))
    assert again.status == "done" and sweep.state("r0") == "done"
    assert f"resuming {run_dir} from step {stopped['step']}" in capsys.readouterr().out
    assert [r["step"] for r in read_jsonl(run_dir / "metrics.jsonl") if "loss" in r] == list(range(1, 61))


def test_a_worker_whose_run_was_stopped_by_a_signal_answers_75_then_exits(tmp_path):
    """The signal that stopped the run was the worker process's too: it answers for the run, then ends (the
    driver starts a fresh worker for the next run). The trainer is faked: it answers as a stopped run would."""
    from chinchax.scaling.worker import Worker

    fake = "import chinchax.scaling.worker as w; w.train_in_process = lambda config: 75; w.serve()"
    worker = Worker(command=[sys.executable, "-c", fake])
    assert worker.run("unused.yaml", tmp_path / "log") == 75
    assert worker.process.wait(timeout=10) == 0


KILL_AT_MANIFEST = """
import os, signal, sys
from chinchax.train import checkpoint

real, target = checkpoint.write_manifest, sys.argv[1]

def write_manifest(step_dir):  # orbax has committed the step (the manifest is written only after): die here
    if step_dir.name == target:
        os.kill(os.getpid(), signal.SIGKILL)
    real(step_dir)

checkpoint.write_manifest = write_manifest
from chinchax.cli import main
sys.exit(main(["train", "experiments/tiny.yaml", *sys.argv[2:]]))
"""


def test_kill_9_between_orbax_commit_and_manifest_resumes_from_that_step(reference, tmp_path, capsys):
    """The first checkpoint (step 4): the re-run used to set it aside as damaged and start again from step 0.
    (A later one, which used to fall back to the step before: tests/test_train_checkpoint.py.)"""
    from chinchax.train.trainer import train

    committed = 4

    run = tmp_path / "run"
    overrides = [*TINY, f"trainer.run_dir={run}"]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_MANIFEST, str(committed), *overrides], cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run / "checkpoints" / str(committed) / MANIFEST).exists()
    capsys.readouterr()
    train(_cfg(run))
    out, err = capsys.readouterr()
    assert f"from step {committed}" in out, out + err
    assert "damaged" not in err and not (run / "checkpoints" / "damaged").exists()
    assert _rows(run) == _rows(reference)
    _assert_same_params(run, reference)


TWO_HOSTS = """
import sys, time
from chinchax.configlib import load_config
from chinchax.train.config import ExperimentConfig
from chinchax.train.synthetic import TokenArrayBatches, random_tokens
from chinchax.train.trainer import TrainingPreempted, train

run_dir, pid, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = load_config(ExperimentConfig, "experiments/tiny.yaml", [
    f"trainer.run_dir={run_dir}", "trainer.local_device_count=1", "trainer.mesh=[2,1,1]", "model.d_model=16",
    "model.n_layers=1", "model.n_heads=2", "model.d_ff=32", "model.max_len=16", "data.seq_len=16",
    "trainer.batch_size=4", "trainer.steps=200", "trainer.steps_per_call=3", "trainer.checkpoint_every=6",
    "trainer.eval_every=0", "trainer.log_every=1", "trainer.progress_bar=false", f"trainer.coordinator_address=127.0.0.1:{port}",
    "trainer.num_processes=2", f"trainer.process_id={pid}"])

class Slow(TokenArrayBatches):  # a step every 0.1 s: JAX's preemption notice takes up to a second to spread
    def __next__(self):
        time.sleep(0.1)
        return super().__next__()

try:
    train(cfg, data=lambda i, n: (Slow(random_tokens(3000, 384), global_batch_size=4, seq_len=16,
                                       process_index=i, process_count=n), None, None))
except TrainingPreempted as e:
    print(f"stopped at {e.step}", flush=True)
    sys.exit(75)
"""


@pytest.mark.slow
def test_two_hosts_agree_on_the_step_when_only_one_gets_sigterm(tmp_path):
    """JAX's preemption sync point: host 1 alone is sent SIGTERM; both hosts save the same step and stop, at the
    end of a call (3 steps a call; orbax's checkpoint saves report their steps to the same protocol)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    run = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-c", TWO_HOSTS, str(run), str(i), port], cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        deadline = time.time() + 300
        while time.time() < deadline and all(p.poll() is None for p in procs):
            rows = read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").exists() else []
            if rows and rows[-1]["step"] >= 3:
                break
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [75, 75], [o[1][-2000:] for o in outs]
    steps = {int(o[0].split("stopped at ")[1]) for o in outs}
    assert len(steps) == 1, steps
    (step,) = steps
    assert 3 < step < 200 and step % 3 == 0
    saved = run / "checkpoints" / str(step)
    assert (saved / MANIFEST).is_file()
    for host in range(2):  # each host's iterator stopped where the other's did
        state = json.loads((saved / "data" / f"process_{host}-of-2.json").read_text())
        assert state["position"] == step, state
    assert json.loads((run / "interrupted.json").read_text())["step"] == step
    assert max(r["step"] for r in read_jsonl(run / "metrics.jsonl")) == step
