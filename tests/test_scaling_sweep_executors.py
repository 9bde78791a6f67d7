"""Executors with a fake `chinchax train` injected: skip, resume, retry, fail-and-go-on, parallel, Ray, TPU."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from chinchax.errors import UserError
from chinchax.scaling import executors
from chinchax.scaling.plan import RaySettings, TpuSettings
from chinchax.scaling.results import FAILED_MARKER, LOCK_MARKER, SweepDir

_spec = importlib.util.spec_from_file_location("sweep_fakes", Path(__file__).with_name("sweep_fakes.py"))
fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakes)


@pytest.fixture
def sweep(tmp_path):
    s = SweepDir(tmp_path / "sweep")
    plan = fakes.fake_plan(4)
    s.write_plan(plan)
    return s, plan, fakes.fake_train_command(tmp_path)


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_local_runs_retries_records_failure_and_goes_on(sweep, tmp_path, monkeypatch):
    s, plan, train = sweep
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("FAKE_FAIL", "r1")
    monkeypatch.setenv("FAKE_FLAKY", "r2")
    outcomes = executors.run_local(plan, s, max_retries=2, train_command=train, progress=False)
    by_id = {o.run_id: o for o in outcomes}
    assert [o.run_id for o in outcomes] == ["r0", "r1", "r2", "r3"]
    assert by_id["r0"].status == "done" and by_id["r0"].attempts == 1
    assert by_id["r1"].status == "failed" and by_id["r1"].attempts == 3  # 1 try + 2 retries
    assert by_id["r2"].status == "done" and by_id["r2"].attempts == 2  # flaky: the retry succeeded
    assert by_id["r3"].status == "done"  # the sweep went on after r1 kept failing
    assert sorted(_calls(calls)) == sorted(["r0", "r1", "r1", "r1", "r2", "r2", "r3"])
    failure = json.loads((s.run_dir("r1") / FAILED_MARKER).read_text())
    assert failure["attempts"] == 3 and failure["returncode"] == 1
    assert "boom: r1 cannot train (attempt 3)" in failure["error"]
    assert s.states(plan) == {"r0": "done", "r1": "failed", "r2": "done", "r3": "done"}
    assert not any((s.run_dir(r.run_id) / LOCK_MARKER).exists() for r in plan.runs)
    table = s.status_table(plan)
    assert "done 3" in table and "failed 1" in table and "boom: r1" in table

    # Re-run: finished runs are skipped (not launched again); the failed one is retried and now works.
    calls.unlink()
    monkeypatch.setenv("FAKE_FAIL", "")
    outcomes = executors.run_local(plan, s, max_retries=2, train_command=train, progress=False)
    assert _calls(calls) == ["r1"]
    assert {o.run_id: o.status for o in outcomes} == {"r0": "skipped", "r1": "done", "r2": "skipped", "r3": "skipped"}
    assert not (s.run_dir("r1") / FAILED_MARKER).exists()
    assert s.states(plan) == dict.fromkeys(["r0", "r1", "r2", "r3"], "done")


def test_skip_failed_leaves_failed_runs_alone(sweep, tmp_path, monkeypatch):
    s, plan, train = sweep
    monkeypatch.setenv("FAKE_FAIL", "r0")
    executors.run_local(plan, s, max_retries=0, train_command=train, progress=False)
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    executors.run_local(plan, s, max_retries=0, train_command=train, skip_failed=True, progress=False)
    assert _calls(calls) == []
    assert s.state("r0") == "failed"


def test_interrupted_run_is_resumed_in_its_own_directory(sweep, tmp_path, monkeypatch):
    s, plan, train = sweep
    # A run killed mid-way leaves its directory (checkpoints) but no run.json and no live lock.
    d = s.run_dir("r3")
    d.mkdir(parents=True)
    (d / "checkpoint_marker").write_text("step 5")
    (d / LOCK_MARKER).write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    assert s.state("r3") == "interrupted"
    executors.run_local(plan, s, train_command=train, progress=False)
    run_json = json.loads((d / "run.json").read_text())
    assert run_json["status"] == "done" and run_json["resumed"] is True  # same dir: the trainer saw its checkpoint
    assert json.loads((s.run_dir("r0") / "run.json").read_text())["resumed"] is False


def test_a_live_lock_means_running_and_is_not_launched_twice(sweep):
    s, plan, train = sweep
    d = s.run_dir("r0")
    d.mkdir(parents=True)
    (d / LOCK_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    assert s.state("r0") == "running"
    with pytest.raises(UserError, match="running in another process"):
        executors.run_local(plan, s, train_command=train, progress=False)


def test_exit_zero_without_run_json_counts_as_failure(sweep, tmp_path):
    s, plan, _ = sweep
    outcomes = executors.run_local(plan, s, max_retries=1, train_command=[sys.executable, "-c", "pass"],
                                   progress=False)
    assert all(o.status == "failed" and o.attempts == 2 for o in outcomes)
    assert "wrote no run.json" in s.failure("r0")["error"]


def test_parallel_local_gives_the_same_results(sweep, tmp_path, monkeypatch):
    s, plan, train = sweep
    monkeypatch.setenv("FAKE_FAIL", "r2")
    outcomes = executors.run_local(plan, s, parallel=3, max_retries=1, train_command=train, progress=False)
    assert [(o.run_id, o.status) for o in outcomes] == [("r0", "done"), ("r1", "done"), ("r2", "failed"),
                                                         ("r3", "done")]
    for run in plan.runs:  # each run in its own directory, with its own config
        if run.run_id != "r2":
            assert json.loads((s.run_dir(run.run_id) / "run.json").read_text())["steps"] == run.steps


@pytest.mark.slow  # starting a real Ray instance takes ~20-30 s on 2 shared cores
def test_ray_executor_on_a_real_local_cluster(sweep, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    s, plan, train = sweep
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("FAKE_FAIL", "r1")
    settings = RaySettings(num_cpus=1)
    outcomes = executors.run_ray(
        plan, s, settings, max_retries=1, train_command=train, progress=False,
        env={"FAKE_FAIL": "r1"},
        init_kwargs={"num_cpus": 2, "object_store_memory": 80 * 2**20},
    )
    assert not ray.is_initialized()  # the executor shut down the cluster it started
    assert {o.run_id: o.status for o in outcomes} == {"r0": "done", "r1": "failed", "r2": "done", "r3": "done"}
    assert {o.run_id: o.attempts for o in outcomes}["r1"] == 2
    assert s.states(plan) == {"r0": "done", "r1": "failed", "r2": "done", "r3": "done"}
    assert "boom: r1" in s.failure("r1")["error"]


# --- Cloud TPU: command generation, and the executor driven by a fake gcloud ------------------------


def test_tpu_commands_queued_and_plain():
    st = TpuSettings(project="proj", zone="us-east5-a", accelerator_type="v5litepod-16",
                     runtime_version="v2-alpha-tpuv5-lite", spot=True, run_root="gs://b/s")
    [create] = executors.tpu_create_commands(st, "node-1")
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "node-1"]
    assert {"--node-id=node-1", "--accelerator-type=v5litepod-16", "--runtime-version=v2-alpha-tpuv5-lite",
            "--zone=us-east5-a", "--project=proj", "--spot"} <= set(create)
    plain = TpuSettings(queued=False, zone="us-central2-b", run_root="gs://b/s")
    [create] = executors.tpu_create_commands(plain, "n")
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "n"]
    assert "--version=tpu-ubuntu2204-base" in create and not any(a.startswith("--project") for a in create)
    assert executors.tpu_delete_command(st, "node-1")[3:5] == ["queued-resources", "delete"]
    assert executors.tpu_delete_command(plain, "n")[3:5] == ["tpu-vm", "delete"]
    ssh = executors.tpu_ssh(st, "node-1", "chinchax train x.yaml")
    assert "--worker=all" in ssh and ssh[-1] == "--command=chinchax train x.yaml"


def test_tpu_dry_run_prints_every_command_and_runs_nothing(sweep, tmp_path):
    s, plan, _ = sweep
    lines = []
    st = TpuSettings(nodes=2, run_root="gs://bucket/sweeps/fake")
    outcomes = executors.run_tpu(plan, s, st, dry_run=True, echo=lines.append,
                                 execute=lambda cmd: pytest.fail(f"dry run executed {cmd}"))
    assert [o.status for o in outcomes] == ["planned"] * 4
    text = "\n".join(lines)
    nodes = ["chinchax-fake-0", "chinchax-fake-1"]
    for node in nodes:
        assert f"queued-resources create {node}" in text and f"queued-resources delete {node}" in text
        assert text.count(f"tpu-vm ssh {node}") == 1 + 2 * 2  # setup + (mkdir, train) per run, 2 runs each
    for run in plan.runs:
        assert f"'--command=CHINCHAX_DISTRIBUTED=1 chinchax train chinchax_sweep/{run.run_id}.yaml'" in text
        assert f"gs://bucket/sweeps/fake/{run.run_id}/run.json" in text
        config = s.config_path(run.run_id).read_text()
        assert f"run_dir: gs://bucket/sweeps/fake/{run.run_id}" in config  # every host writes to GCS
    assert lines[-1].startswith("gcloud compute tpus queued-resources delete")
    assert s.states(plan) == dict.fromkeys(["r0", "r1", "r2", "r3"], "planned")


FAKE_GCLOUD = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys
    from pathlib import Path
    args = sys.argv[1:]
    with open({log!r}, "a") as f:
        f.write(json.dumps(args) + "\\n")
    if args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
        n = Path({log!r} + ".polls"); k = int(n.read_text()) + 1 if n.exists() else 1; n.write_text(str(k))
        print("ACTIVE" if k >= 2 else "WAITING_FOR_RESOURCES")
    elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and "chinchax train chinchax_sweep/r1.yaml" in args[-1]:
        print("preempted", file=sys.stderr); sys.exit(255)
    elif args[:2] == ["storage", "cp"]:
        run = args[2].split("/")[-2]
        out = Path(args[-1]); out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps({{"status": "done", "run": run}}))
    """
)


def test_tpu_executor_with_a_fake_gcloud(sweep, tmp_path):
    s, plan, _ = sweep
    log = tmp_path / "gcloud.log"
    gcloud = tmp_path / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable, log=str(log)))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    st = TpuSettings(run_root="gs://bucket/x", poll_seconds=0.0)
    outcomes = executors.run_tpu(plan, s, st, max_retries=1, gcloud=str(gcloud), echo=lambda _: None)
    assert {o.run_id: o.status for o in outcomes} == {"r0": "done", "r1": "failed", "r2": "done", "r3": "done"}
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    verbs = [" ".join(c[2:4]) for c in calls]
    assert verbs[0] == "queued-resources create"
    assert verbs[1:3] == ["queued-resources describe"] * 2  # polled until ACTIVE
    assert calls[3][-1] == "--command=pip install -U 'chinchax[tpu]'"  # setup on every host
    assert verbs[-1] == "queued-resources delete"  # deleted even though a run failed
    trains = [c[-1] for c in calls if c[-1].startswith("--command=CHINCHAX_DISTRIBUTED=1 chinchax train")]
    assert trains.count("--command=CHINCHAX_DISTRIBUTED=1 chinchax train chinchax_sweep/r1.yaml") == 2  # retried once
    assert s.states(plan) == {"r0": "done", "r1": "failed", "r2": "done", "r3": "done"}
    assert "preempted" in s.failure("r1")["error"]
    # Re-run: everything done is skipped; only r1 goes to the (new) slice.
    log.unlink()
    executors.run_tpu(plan, s, st, max_retries=0, gcloud=str(gcloud), echo=lambda _: None)
    trains = [json.loads(line)[-1] for line in log.read_text().splitlines() if "chinchax train" in line]
    assert trains == ["--command=CHINCHAX_DISTRIBUTED=1 chinchax train chinchax_sweep/r1.yaml"]


def test_tpu_needs_a_gcs_run_root(sweep):
    s, plan, _ = sweep
    with pytest.raises(UserError, match="gs://"):
        executors.run_tpu(plan, s, TpuSettings(run_root="/local/dir"), echo=lambda _: None)


def test_wsd_branch_is_seeded_from_its_trunk_checkpoint(tmp_path, capsys):
    import dataclasses

    plan = fakes.fake_plan(2)
    trunk, branch = plan.runs[1], dataclasses.replace(plan.runs[0], branch_of="r1", branch_step=6)
    plan = dataclasses.replace(plan, runs=(branch, trunk))
    s = SweepDir(tmp_path / "sweep")
    s.write_plan(plan)
    # No trunk checkpoint (e.g. the trunk failed): the branch trains from scratch, and says so.
    assert executors.seed_branch(s, branch, plan) is False
    assert "training the branch from scratch" in capsys.readouterr().err
    # A finished trunk with checkpoints at steps 6 and 12 and metrics for steps 1..12.
    t = s.run_dir("r1")
    for step in (6, 12):
        (t / "checkpoints" / str(step) / "state").mkdir(parents=True)
        (t / "checkpoints" / str(step) / "state" / "data.bin").write_bytes(bytes([step]) * 10)
        (t / "checkpoints" / str(step) / executors.CHECKPOINT_MANIFEST).write_text("{}")
    (t / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1.0 / i}) + "\n" for i in range(1, 13)))
    assert executors.seed_branch(s, branch, plan) is True
    b = s.run_dir("r0")
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["6"]  # only the branch point
    assert (b / "checkpoints" / "6" / "state" / "data.bin").read_bytes() == bytes([6]) * 10
    assert [json.loads(line)["step"] for line in (b / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))
    assert json.loads((b / executors.BRANCH_MARKER).read_text()) == {"trunk": "r1", "step": 6}
    assert s.state("r0") == "interrupted"  # i.e. the next launch resumes from the seeded checkpoint
    # Seeding again (a re-run) leaves what is there alone.
    (b / "checkpoints" / "6" / "state" / "data.bin").write_bytes(b"trained further")
    assert executors.seed_branch(s, branch, plan) is True
    assert (b / "checkpoints" / "6" / "state" / "data.bin").read_bytes() == b"trained further"
    # The executor launches trunks before branches.
    assert [r.run_id for r in executors.runs_to_launch(plan, s)] == ["r1", "r0"]


def test_tpu_executor_seeds_wsd_branches_on_gcs_after_their_trunks(tmp_path):
    import dataclasses
    import subprocess

    plan = fakes.fake_plan(3)
    r0, r1, r2 = plan.runs
    branch = dataclasses.replace(r0, branch_of="r1", branch_step=6)
    plan = dataclasses.replace(plan, runs=(branch, r1, r2))
    s = SweepDir(tmp_path / "sweep")
    s.write_plan(plan)
    st = TpuSettings(nodes=2, run_root="gs://b/x", poll_seconds=0.0)

    def run_with(listing: str, copy_fails: bool):
        calls, echoed = [], []

        def execute(cmd):
            calls.append(cmd)
            out, code = "ACTIVE" if "describe" in cmd else "", 0
            if cmd[1:3] == ["storage", "ls"]:
                out, code = listing, 0 if listing else 1
            if cmd[1:3] == ["storage", "cp"] and "gs://b/x/r1/checkpoints/6" in cmd and copy_fails:
                code = 1
            return subprocess.CompletedProcess(cmd, code, out, "")

        outcomes = executors.run_tpu(plan, s, st, execute=execute, echo=echoed.append)
        return calls, echoed, {o.run_id: o.status for o in outcomes}

    calls, echoed, states = run_with(listing="", copy_fails=False)
    assert states == {"r0": "done", "r1": "done", "r2": "done"}
    trains = [i for i, c in enumerate(calls) if c[-1].startswith("--command=CHINCHAX_DISTRIBUTED=1 chinchax train")]
    order = [calls[i][-1].split("/")[-1] for i in trains]
    assert order.index("r0.yaml") == 2  # the branch runs after both trunks, on whichever slice
    seeds = [c for c in calls if c[1:3] == ["storage", "cp"] and "gs://b/x/r0/" in c[-1]]
    assert seeds == [
        ["gcloud", "storage", "cp", "--recursive", "gs://b/x/r1/checkpoints/6", "gs://b/x/r0/checkpoints/"],
        ["gcloud", "storage", "cp", "gs://b/x/r1/metrics.jsonl", "gs://b/x/r0/metrics.jsonl"],
    ]
    assert calls.index(seeds[0]) > trains[0] and calls.index(seeds[1]) < trains[2]
    assert "run_dir: gs://b/x/r0" in s.config_path("r0").read_text()  # the branch trains in its own dir
    # Already seeded (or trained) on GCS: left alone.
    calls, _, _ = run_with(listing="gs://b/x/r0/checkpoints/6/\n", copy_fails=False)
    assert not [c for c in calls if c[1:3] == ["storage", "cp"] and "gs://b/x/r0/" in c[-1]]
    # The trunk has no checkpoint at the branch step: the branch trains from scratch, and says so.
    calls, echoed, states = run_with(listing="", copy_fails=True)
    assert any("training the branch from scratch" in line for line in echoed)
    assert states["r0"] == "done"


def test_local_sweeps_start_long_runs_first_and_never_two_seeds_of_one_shape_side_by_side(tmp_path, monkeypatch):
    import dataclasses

    base = fakes.fake_plan(4)  # budgets 1e9 (r0, r2) and 2e9 (r1, r3)
    runs = [dataclasses.replace(r, run_id=f"{r.run_id}s{seed}", seed=seed) for r in base.runs for seed in (0, 1)]
    plan = dataclasses.replace(base, runs=tuple(runs))  # seeds side by side, as plans list them
    order = [r.run_id for r in executors.launch_order(plan.runs)]
    assert order == ["r1s0", "r3s0", "r1s1", "r3s1", "r0s0", "r2s0", "r0s1", "r2s1"]
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    s = SweepDir(tmp_path / "sweep")
    s.write_plan(plan)
    outcomes = executors.run_local(plan, s, train_command=fakes.fake_train_command(tmp_path), progress=False)
    assert _calls(calls) == order  # one at a time: launched in that order
    assert [o.run_id for o in outcomes] == [r.run_id for r in runs]  # reported in plan order
