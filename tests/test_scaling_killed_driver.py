"""A local `sweep run` killed with SIGKILL (issue 28 item 6): its trainers stop (the kernel sends them SIGTERM,
on which a trainer saves and exits 75) instead of running on as orphans, and the next `sweep run` waits for a
trainer still stopping, or one a dead driver left running, and resumes that run, instead of refusing the
whole sweep. Only a live driver makes a `sweep run` refuse. The trainer is a fake (no jax): it takes the run
dir's lock as `chinchax train` does, "trains" by sleeping, and on SIGTERM "saves" for a moment and exits 75."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chinchax.errors import UserError
from chinchax.scaling import executors
from chinchax.scaling.results import LOCK_MARKER, SweepDir, driver_marker, process_start
from chinchax.train.runlock import probe

_spec = importlib.util.spec_from_file_location("sweep_fakes", Path(__file__).with_name("sweep_fakes.py"))
fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakes)

# Before the shared fake trainer (which writes metrics.jsonl and run.json): the run dir's lock, held until exit;
# a SIGTERM handler that records the signal, "saves" for FAKE_SAVE_S and exits 75; FAKE_SLEEP s of "training".
PRELUDE = '''
import fcntl, json, os, signal, socket, sys, time, yaml
from pathlib import Path
_d = Path(yaml.safe_load(open(sys.argv[1]))["trainer"]["run_dir"]); _d.mkdir(parents=True, exist_ok=True)
_fd = os.open(_d / ".lock", os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("the run is being trained by another process", file=sys.stderr); sys.exit(2)
os.ftruncate(_fd, 0); os.pwrite(_fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
def _stop(signum, frame):
    (_d / "stopped_by").write_text(signal.Signals(signum).name)
    time.sleep(float(os.environ.get("FAKE_SAVE_S", "0")))
    os._exit(75)
signal.signal(signal.SIGTERM, _stop)
(_d / "trainer.pid").write_text(str(os.getpid()))
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
'''


def _env(**values) -> dict:
    return {**os.environ, **{k: str(v) for k, v in values.items()}}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return process_start(pid) is not None and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def sweep(tmp_path):
    s = SweepDir(tmp_path / "sweep")
    plan = fakes.fake_plan(2)
    s.write_plan(plan)
    script = tmp_path / "fake_train.py"
    script.write_text(PRELUDE + fakes.FAKE_TRAIN)
    return s, plan, [sys.executable, str(script)]


def _trainer_pids(s: SweepDir, plan) -> list[int]:
    """The fake trainers' pids once every run has one holding its lock."""
    pids = []
    for run in plan.runs:
        d = s.run_dir(run.run_id)
        if not (d / "trainer.pid").is_file() or probe(d) is None:
            return []
        pids.append(int((d / "trainer.pid").read_text()))
    return pids


def _start_driver(s: SweepDir, plan, train: list[str], **env) -> tuple[subprocess.Popen, list[int]]:
    """`chinchax sweep run --executor local --parallel 2` on the sweep dir; returns once both trainers train."""
    driver = subprocess.Popen(
        [sys.executable, "-m", "chinchax.cli", "sweep", "run", str(s.root), "--executor", "local", "--parallel", "2",
         "--train-command", " ".join(train)],
        env=_env(FAKE_SLEEP=120, **env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        pids = _wait_for(lambda: _trainer_pids(s, plan) or driver.poll() is not None, 30, "both trainers to start")
    except AssertionError:
        driver.kill()
        raise
    assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
    return driver, pids


def _kill_all(pids) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_trainers_of_a_killed_local_driver_stop_instead_of_running_on(sweep):
    """Before: the trainers ran on as orphans (here, for their 120 s). Now each gets SIGTERM when its driver
    dies and stops after its save."""
    s, plan, train = sweep
    driver, pids = _start_driver(s, plan, train, FAKE_SAVE_S=0.2)
    try:
        driver.kill()
        driver.wait(10)
        _wait_for(lambda: not any(_alive(p) for p in pids), 10, "the orphaned trainers to stop")
        for run in plan.runs:
            assert (s.run_dir(run.run_id) / "stopped_by").read_text() == "SIGTERM"
            assert probe(s.run_dir(run.run_id)) is None
            assert s.state(run.run_id) == "interrupted"  # the dead driver's marker is left, and not believed
            assert (s.run_dir(run.run_id) / LOCK_MARKER).is_file()
    finally:
        _kill_all(pids)


def test_a_new_sweep_run_right_after_a_killed_driver_waits_for_its_stopping_trainers_and_finishes(
    sweep, capsys
):
    """The new driver starts while the old trainers are still saving (2 s, holding their locks). Before: it
    refused the whole sweep ("running in another process", pointing at the dead driver's marker). Now it waits
    for them, then resumes both runs in their own directories."""
    s, plan, train = sweep
    driver, pids = _start_driver(s, plan, train, FAKE_SAVE_S=2)
    try:
        driver.kill()
        driver.wait(10)
        assert all(probe(s.run_dir(r.run_id)) is not None for r in plan.runs)  # still saving
        capsys.readouterr()
        outcomes = executors.run_local(plan, s, parallel=2, train_command=train, env={"FAKE_SLEEP": "0"},
                                       progress=False)
        err = capsys.readouterr().err
        assert [o.status for o in outcomes] == ["done", "done"], outcomes
        for run, pid in zip(plan.runs, pids, strict=True):
            d = s.run_dir(run.run_id)
            assert f"[sweep] {run.run_id}: a trainer no running `sweep run` started (pid {pid}" in err, err
            assert (d / "stopped_by").read_text() == "SIGTERM"  # the old trainer stopped by itself, not by us
            assert json.loads((d / "run.json").read_text())["status"] == "done"
            assert s.state(run.run_id) == "done" and not (d / LOCK_MARKER).exists()
    finally:
        _kill_all(pids)


def test_a_trainer_a_dead_driver_left_running_is_waited_for_and_only_its_run_waits(sweep, tmp_path, capsys):
    """A trainer that outlived its driver and trains on (started by a driver without the death signal, or by
    hand) holds r1, which a local sweep would start first (the larger budget); the marker names a driver that
    is gone. Before: the whole sweep was refused. Now r0 trains first, then the new driver waits for r1's
    trainer, which finishes the run itself: r1 is reported as already done, never launched twice."""
    s, plan, train = sweep
    r1 = s.run_dir("r1")
    r1.mkdir(parents=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (r1 / LOCK_MARKER).write_text(json.dumps({"pid": int(gone.stdout), "host": os.uname().nodename}))
    config = executors.write_run_config(s, plan.runs[1])
    orphan = subprocess.Popen([*train, str(config)], env=_env(FAKE_SLEEP=1.5), stdin=subprocess.DEVNULL)
    try:
        _wait_for(lambda: probe(r1), 10, "the left-over trainer to take r1's lock")
        assert s.state("r1") == "running"
        capsys.readouterr()
        outcomes = executors.run_local(plan, s, parallel=1, train_command=train, env={"FAKE_SLEEP": "0"},
                                       progress=False)
        err = capsys.readouterr().err
        assert {o.run_id: o.status for o in outcomes} == {"r0": "done", "r1": "skipped"}
        assert f"r1: a trainer no running `sweep run` started (pid {orphan.pid}" in err
        assert orphan.wait(10) == 0  # it was left to finish, not stopped
        assert (s.run_dir("r0") / "run.json").stat().st_mtime < (r1 / "run.json").stat().st_mtime  # r0 went first
        assert (r1 / "fake_attempts").read_text() == "1"
        assert not (r1 / LOCK_MARKER).exists()
    finally:
        orphan.kill()


def test_a_recycled_pid_in_a_dead_drivers_marker_is_not_taken_for_a_live_driver(sweep):
    """The marker's pid now belongs to another process (here: this one, with another start time). Before: the
    run looked running and the sweep was refused."""
    s, plan, train = sweep
    d = s.run_dir("r0")
    d.mkdir(parents=True)
    (d / LOCK_MARKER).write_text(json.dumps({**driver_marker(), "pid_start": process_start(os.getpid()) - 1}))
    assert s.state("r0") == "interrupted"
    outcomes = executors.run_local(plan, s, train_command=train, progress=False)
    assert [o.status for o in outcomes] == ["done", "done"]


def test_a_live_driver_still_refuses_a_second_sweep_run(sweep):
    """Two drivers at once would launch the same runs: the second refuses, naming the first's pid."""
    s, plan, train = sweep
    d = s.run_dir("r1")
    d.mkdir(parents=True)
    (d / LOCK_MARKER).write_text(json.dumps(driver_marker()))
    with pytest.raises(UserError, match=f"run r1 is running in another process .the `sweep run` of pid {os.getpid()}"):
        executors.run_local(plan, s, train_command=train, progress=False)


def test_a_worker_whose_driver_dies_gets_sigterm_so_its_run_saves(tmp_path):
    """The worker executor's trainers run inside long-lived workers: when the driver dies, the worker's
    watchdog sends the worker SIGTERM (on which the trainer in it saves and exits 75), not a bare exit."""
    worker = ("import os, signal, sys, time\n"
              "from chinchax.scaling.worker import _exit_with_parent\n"
              f"out = {str(tmp_path / 'stopped_by')!r}\n"
              "def stop(signum, frame):\n"
              "    open(out, 'w').write(signal.Signals(signum).name); os._exit(75)\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              "_exit_with_parent(poll_s=0.05)\n"
              f"open({str(tmp_path / 'pid')!r}, 'w').write(str(os.getpid()))\n"
              "time.sleep(60)\n")
    driver = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys, time\n"
                               f"subprocess.Popen([sys.executable, '-c', {worker!r}]); time.sleep(60)"])
    try:
        pid = int(_wait_for(lambda: (tmp_path / "pid").is_file() and (tmp_path / "pid").read_text(), 30, "the worker"))
        driver.kill()
        driver.wait(10)
        assert _wait_for(lambda: (tmp_path / "stopped_by").is_file(), 10, "the worker's SIGTERM")
        assert (tmp_path / "stopped_by").read_text() == "SIGTERM"
        _wait_for(lambda: not _alive(pid), 10, "the worker to exit")
    finally:
        driver.kill()
