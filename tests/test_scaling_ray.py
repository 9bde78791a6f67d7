"""The Ray executor on real Ray processes: a private instance listens on 127.0.0.1 only, and a sweep on a
two-node cluster survives a node killed mid-run (the lost runs resume elsewhere; nothing is trained twice).

Cheap: the fake `chinchax train` of tests/sweep_fakes.py (loaded by path), wrapped in a script
that takes a few seconds and leaves a "checkpoint" half-way. Ray is kept small (1 CPU per node, 80 MB object
stores) for the 2 shared cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from chinchax.scaling import executors  # noqa: E402
from chinchax.scaling.plan import RaySettings  # noqa: E402
from chinchax.scaling.results import LOCK_MARKER, SweepDir  # noqa: E402

_spec = importlib.util.spec_from_file_location("sweep_fakes", Path(__file__).with_name("sweep_fakes.py"))
fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakes)

pytestmark = pytest.mark.slow  # each test starts real Ray processes: ~15-40 s on 2 shared cores

OBJECT_STORE = 80 * 2**20
LOOPBACK_IPS = {"127.0.0.1", "::ffff:127.0.0.1"}  # gRPC binds 127.0.0.1 through an IPv4-mapped IPv6 socket

# The fake trainer, slowed down: SLOW_TRAIN_SECONDS in two halves with a "checkpoint" between them. A run that
# finds its checkpoint skips the first half and is marked resumed (the fake's checkpoint_marker), as the real
# trainer resumes from its newest checkpoint. Every start, checkpoint and finish is appended to
# SLOW_TRAIN_EVENTS as "<event> <run> <node> <pid>", the node being FAKE_NODE (set per Ray node).
SLOW_TRAIN = textwrap.dedent(
    """
    import os, runpy, sys, time, yaml
    from pathlib import Path
    cfg = yaml.safe_load(open(sys.argv[1]))
    d = Path(cfg["trainer"]["run_dir"]); d.mkdir(parents=True, exist_ok=True)
    node, half = os.environ.get("FAKE_NODE", "?"), float(os.environ["SLOW_TRAIN_SECONDS"]) / 2
    def event(what):
        with open(os.environ["SLOW_TRAIN_EVENTS"], "a") as f:
            f.write(f"{what} {d.name} {node} {os.getpid()}\\n")
    event("start")
    if (d / "half_checkpoint").exists():
        (d / "checkpoint_marker").touch()  # the fake reports resumed=True
    else:
        time.sleep(half)
        (d / "half_checkpoint").write_text(node)
        event("checkpoint")
    time.sleep(half)
    runpy.run_path(os.environ["FAKE_TRAIN_SCRIPT"], run_name="__main__")
    event("finish")
    """
)


@pytest.fixture
def slow_sweep(tmp_path, monkeypatch):
    fake_cmd = fakes.fake_train_command(tmp_path)
    script = tmp_path / "slow_train.py"
    script.write_text(SLOW_TRAIN)
    events = tmp_path / "events.txt"
    events.touch()
    monkeypatch.setenv("FAKE_TRAIN_SCRIPT", fake_cmd[1])
    monkeypatch.setenv("SLOW_TRAIN_EVENTS", str(events))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # private instances only, on 127.0.0.1 (checked below)
    plan = fakes.fake_plan(4)
    return SweepDir(tmp_path / "sweep"), plan, [sys.executable, str(script)], events


def read_events(path: Path) -> list[tuple[str, str, str, int]]:
    return [(e, run, node, int(pid)) for e, run, node, pid in (line.split() for line in path.read_text().splitlines())]


def listeners(pids) -> dict[int, tuple[str, list[tuple[str, int]]]]:
    """pid -> (process name, its listening TCP sockets (ip, port)), for the processes still alive."""
    found = {}
    for pid in pids:
        try:
            p = psutil.Process(pid)
            socks = [(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN]
            found[pid] = (p.name(), socks)
        except psutil.Error:
            pass
    return found


class ListenerWatch:
    """Polls, while a sweep runs, the listening sockets of this process and of every process below it (Ray's
    gcs_server, raylet, agents and workers are all started from here; so are a Cluster's nodes)."""

    def __init__(self, period: float = 0.5):
        self.seen: dict[int, tuple[str, set]] = {}
        self.period, self._stop = period, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        me = psutil.Process()
        while not self._stop.is_set():
            pids = [me.pid] + [c.pid for c in me.children(recursive=True)]
            for pid, (name, socks) in listeners(pids).items():
                self.seen.setdefault(pid, (name, set()))[1].update(socks)
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def by_process(self) -> dict[str, set]:
        out: dict[str, set] = {}
        for name, socks in self.seen.values():
            out.setdefault(name, set()).update(socks)
        return out


def test_private_ray_instance_listens_on_loopback_only(slow_sweep, monkeypatch):
    s, plan, train, events = slow_sweep
    monkeypatch.setenv("SLOW_TRAIN_SECONDS", "2")
    monkeypatch.setenv("FAKE_NODE", "local")
    env_before = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    with ListenerWatch() as watch:
        outcomes = executors.run_ray(
            plan, s, RaySettings(num_cpus=1), max_retries=0, train_command=train, progress=False,
            init_kwargs={"num_cpus": 2, "object_store_memory": OBJECT_STORE},
        )
    assert not ray.is_initialized()
    assert [o.status for o in outcomes] == ["done"] * 4
    by_process = watch.by_process()
    print("listeners seen during the sweep:", json.dumps({k: sorted(v) for k, v in by_process.items()}))
    # the Ray processes were seen listening (else the check below would prove nothing) ...
    assert by_process.get("gcs_server") and by_process.get("raylet")
    assert any(name.startswith("ray::") and socks for name, socks in by_process.items())  # workers, agents
    # ... and every listener of every Ray process (and of this driver) was on 127.0.0.1
    everywhere = {(name, ip, port) for name, socks in by_process.items() for ip, port in socks}
    assert {x for x in everywhere if x[1] not in LOOPBACK_IPS} == set()
    # the switch that keeps Ray on loopback is not left set in this process
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == env_before
    from ray._private import ray_constants

    assert ray_constants.ENABLE_RAY_CLUSTER is True


def test_private_instance_refused_when_ray_would_not_stay_on_loopback(slow_sweep, monkeypatch):
    """If a Ray version ignored the loopback switch, the sweep stops before running anything."""
    s, plan, train, _ = slow_sweep
    monkeypatch.setattr(ray.util, "get_node_ip_address", lambda: "192.0.2.99")
    with pytest.raises(executors.UserError, match="not on 127.0.0.1"):
        executors.run_ray(plan, s, RaySettings(num_cpus=1), train_command=train, progress=False,
                          init_kwargs={"num_cpus": 1, "object_store_memory": OBJECT_STORE})
    assert not ray.is_initialized()
    assert s.states(plan) == {r.run_id: "planned" for r in plan.runs}


KILL_WORKER = textwrap.dedent(
    """
    import os, runpy, signal, sys, yaml
    from pathlib import Path
    run = Path(yaml.safe_load(open(sys.argv[1]))["trainer"]["run_dir"]).name
    with open(os.environ["SLOW_TRAIN_EVENTS"], "a") as f:
        f.write(f"start {run} local {os.getpid()}\\n")
    if run == os.environ["KILL_WORKER_OF"]:
        os.kill(os.getppid(), signal.SIGKILL)  # the Ray worker running this run's task dies, as in an OOM kill
        sys.exit(9)
    runpy.run_path(os.environ["FAKE_TRAIN_SCRIPT"], run_name="__main__")
    """
)


def test_a_run_whose_task_keeps_dying_is_retried_then_recorded(slow_sweep, tmp_path, monkeypatch):
    s, plan, _, events = slow_sweep
    script = tmp_path / "kill_worker.py"
    script.write_text(KILL_WORKER)
    monkeypatch.setenv("KILL_WORKER_OF", "r1")
    outcomes = executors.run_ray(
        plan, s, RaySettings(num_cpus=1), max_retries=1, train_command=[sys.executable, str(script)],
        progress=False, init_kwargs={"num_cpus": 2, "object_store_memory": OBJECT_STORE},
    )
    assert {o.run_id: o.status for o in outcomes} == {"r0": "done", "r1": "failed", "r2": "done", "r3": "done"}
    assert [run for e, run, _, _ in read_events(events) if e == "start"].count("r1") == 2  # submitted again once
    failure = s.failure("r1")
    assert failure["attempts"] == 2 and "WorkerCrashedError" in failure["error"], failure
    assert not (s.run_dir("r1") / LOCK_MARKER).exists()  # the dead task's lock does not make it look running
    assert s.states(plan) == {"r0": "done", "r1": "failed", "r2": "done", "r3": "done"}


def _kill_node(node) -> list[int]:
    """What a lost machine does: every process of the Ray node (raylet, agents, workers) and everything
    they started (the trainers) SIGKILLed at once."""
    roots = [p.process.pid for procs in node.all_processes.values() for p in procs]
    victims = []
    for pid in roots:
        try:
            proc = psutil.Process(pid)
            victims += [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return [p.pid for p in victims]


def test_two_node_cluster_survives_a_node_killed_mid_sweep(slow_sweep, monkeypatch):
    from ray.cluster_utils import Cluster

    s, plan, train, events = slow_sweep
    monkeypatch.setenv("SLOW_TRAIN_SECONDS", "6")
    system_config = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                     "health_check_failure_threshold": 3}
    with executors.ray_on_loopback():  # both nodes on 127.0.0.1, as the driver finds them
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": OBJECT_STORE, "resources": {"node_a": 1},
            "env_vars": {"FAKE_NODE": "a"}, "_system_config": system_config, "include_dashboard": False})
        node_b = cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE, resources={"node_b": 1},
                                  env_vars={"FAKE_NODE": "b"})
    try:
        cluster.wait_for_nodes()
        result: dict = {}

        def sweep():
            try:
                result["outcomes"] = executors.run_ray(
                    plan, s, RaySettings(address=cluster.address, num_cpus=1), max_retries=1,
                    train_command=train, progress=False)
            except BaseException as e:  # noqa: BLE001 (reported by the main thread)
                result["error"] = e

        with ListenerWatch() as watch:
            driver = threading.Thread(target=sweep)
            driver.start()
            deadline = time.monotonic() + 120
            while not any(e == "checkpoint" and node == "b" for e, _, node, _ in read_events(events)):
                assert time.monotonic() < deadline, f"no run got half-way on node b: {read_events(events)}"
                assert driver.is_alive(), f"the sweep ended before node b was killed: {result}"
                time.sleep(0.2)
            killed_pids = _kill_node(node_b)
            killed_at = time.monotonic()
            driver.join(timeout=240)
            assert not driver.is_alive(), "the sweep did not finish after the node was killed"
        assert "error" not in result, result.get("error")
        outcomes = result["outcomes"]
        log = read_events(events)
        print("events:", *log, sep="\n  ")
        print(f"sweep finished {time.monotonic() - killed_at:.1f} s after the kill; outcomes: {outcomes}")

        # Nothing lost: every run done, as the executor and the run dirs both say.
        assert {o.run_id: o.status for o in outcomes} == {r.run_id: "done" for r in plan.runs}
        assert s.states(plan) == {r.run_id: "done" for r in plan.runs}
        # Nothing run twice: each run finished exactly once ...
        finishes = [run for e, run, _, _ in log if e == "finish"]
        assert sorted(finishes) == sorted(r.run_id for r in plan.runs)
        # ... the runs caught on node b were started again (elsewhere) and resumed from their checkpoint ...
        on_b_at_kill = {run for e, run, node, pid in log if e == "start" and node == "b" and pid in killed_pids}
        assert on_b_at_kill, log
        for run in plan.runs:
            starts = [(node, pid) for e, r, node, pid in log if e == "start" and r == run.run_id]
            run_json = json.loads((s.run_dir(run.run_id) / "run.json").read_text())
            if run.run_id in on_b_at_kill:
                assert len(starts) == 2 and starts[1][0] == "a", (run.run_id, starts)
                assert run_json["resumed"] is True
                assert {o.run_id: o.attempts for o in outcomes}[run.run_id] == 2  # the lost task + the retry
            else:
                assert len(starts) == 1, (run.run_id, starts)
                assert run_json["resumed"] is False
            assert not (s.run_dir(run.run_id) / LOCK_MARKER).exists()
        # ... and none of node b's processes (its trainers included) outlived the kill.
        assert not [pid for pid in killed_pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        # Both raylets, the GCS and the workers listened on 127.0.0.1 only.
        by_process = watch.by_process()
        assert by_process.get("gcs_server") and by_process.get("raylet")
        everywhere = {(name, ip, port) for name, socks in by_process.items() for ip, port in socks}
        assert {x for x in everywhere if x[1] not in LOOPBACK_IPS} == set()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
