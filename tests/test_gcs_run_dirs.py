"""Run dirs on gs://, end to end, against a local GCS emulator (gcp-storage-emulator, bound to 127.0.0.1).

How each client is pointed at the emulator (nothing here reaches beyond 127.0.0.1):
- etils.epath -> fsspec/gcsfs: STORAGE_EMULATOR_HOST (gcsfs reads it), token "anon", and
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false (else gcsfs asks the Storage Control gRPC API for the bucket type,
  which the emulator does not serve: 60 s of retries per bucket, measured);
- orbax's array data -> tensorstore's gcs driver: TENSORSTORE_GCS_HTTP_URL, and GOOGLE_AUTH_TOKEN_FOR_TESTING
  so it looks for no credentials (without it, it looks for gcloud's files and the GCE metadata server);
- GCE_METADATA_ROOT points any metadata lookup at a closed local port.
So the whole of a checkpoint, array data included, really goes to gs:// here; no local fallback is used.
The TPU VM parts go through a fake `gcloud` (as in tests/test_scaling_sweep_executors.py) whose `ssh` runs
the command on this machine and whose `storage cp`/`ls` talk to the emulator.
"""

from __future__ import annotations

import csv
import importlib.util  # noqa: E402
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

# find_spec, not import: gcsfs chooses its class from GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT when first imported,
# which must happen after the fixture has set it.
if importlib.util.find_spec("gcp_storage_emulator") is None or importlib.util.find_spec("gcsfs") is None:
    pytest.skip("the GCS emulator or gcsfs is not installed: pip install 'chinchax[dev]'", allow_module_level=True)

from chinchax.fileio import run_path  # noqa: E402
from chinchax.train.checkpoint import load_numpy_state  # noqa: E402
from chinchax.train.metrics import TIMING_FIELDS, read_jsonl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUCKET = "chinchax-test"
TINY = [
    "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.d_ff=64", "model.max_len=32",
    "data.seq_len=32", "data.eval_batches=2", "trainer.batch_size=4", "trainer.steps=12",
    "trainer.checkpoint_every=4", "trainer.log_every=1", "trainer.eval_every=6", "trainer.progress_bar=false",
    "optimizer.warmup_steps=2",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The emulator's media downloads lack the `x-goog-generation` header that real GCS sends. tensorstore's gcs driver
# then takes the object's generation as 0 and refuses it as an ocdbt read/write condition ("Malformed
# StorageGeneration" on <step>/state/ocdbt.process_0/manifest.ocdbt, whenever ocdbt re-reads its manifest),
# so orbax's array commit fails. Add the header (and x-goog-metageneration) as GCS does.
EMULATOR_GENERATION_HEADERS = """
from gcp_storage_emulator import server as _srv
from gcp_storage_emulator.handlers import objects as _objects
_plain = _objects.download
def _download(request, response, storage, *args, **kwargs):
    _plain(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])
_objects.download = _download  # objects.get (alt=media) calls it by this name
for _, _table in _srv.HANDLERS:
    for _method, _fn in list(_table.items()):
        if _fn is _plain:
            _table[_method] = _download
"""


@pytest.fixture(scope="module")
def gcs():
    """The emulator in its own process on a free port; the environment every client needs to reach it."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", EMULATOR_GENERATION_HEADERS + textwrap.dedent(f"""
            import time
            from gcp_storage_emulator.server import create_server
            server = create_server("127.0.0.1", {port}, in_memory=True, default_bucket={BUCKET!r})
            server.start()
            while True:
                time.sleep(3600)
        """)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the GCS emulator did not start")
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "GCE_METADATA_ROOT": "127.0.0.1:9", "FSSPEC_GCS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec.config  # fsspec read FSSPEC_* when it was imported: set this process's defaults directly

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {})["token"] = "anon"
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.kill()
        server.wait()


def _env(cwd_extra: dict | None = None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(cwd_extra or {})}
    env.pop("XLA_FLAGS", None)
    return env


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "chinchax.cli", "train", str(REPO / "experiments" / "tiny.yaml"),
            f"trainer.run_dir={run_dir}", *TINY, *extra]


def _without_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]


def test_paths_and_lock_on_gcs(gcs, tmp_path, monkeypatch):
    from chinchax.fileio import write_text_atomic
    from chinchax.train import runlock

    monkeypatch.chdir(tmp_path)
    p = run_path(f"gs://{BUCKET}/unit/run")
    assert str(p) == f"gs://{BUCKET}/unit/run"  # not a local folder named gs:
    assert isinstance(run_path("rel/dir"), Path) and run_path("rel/dir").is_absolute()
    write_text_atomic(p / "a.json", "{}")
    assert (p / "a.json").read_text() == "{}"
    with runlock.hold(p):  # no flock on GCS: nothing taken, nothing refused, nothing written
        assert runlock.probe(p) is None
        with runlock.hold(p):
            pass
    assert not (p / runlock.LOCK_NAME).exists()
    assert not (tmp_path / "gs:").exists()


def test_cloud_tpu_vm_detection(monkeypatch):
    import jax._src.hardware_utils as hw

    from chinchax.train import distributed
    from chinchax.train.config import TrainerConfig

    calls = []
    monkeypatch.setattr(hw, "num_available_tpu_chips_and_device_id", lambda: (4, hw.TpuVersion.v4))
    monkeypatch.delenv("CHINCHAX_DISTRIBUTED", raising=False)
    monkeypatch.delenv("TPU_PROCESS_BOUNDS", raising=False)
    assert distributed.on_cloud_tpu_vm()
    import jax

    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append("init"))
    distributed.maybe_initialize(TrainerConfig())
    assert calls == ["init"]  # a Cloud TPU VM: jax.distributed.initialize() by default
    monkeypatch.setenv("CHINCHAX_DISTRIBUTED", "0")
    distributed.maybe_initialize(TrainerConfig())
    assert calls == ["init"]  # turned off
    monkeypatch.setattr(hw, "num_available_tpu_chips_and_device_id", lambda: (0, None))
    monkeypatch.delenv("CHINCHAX_DISTRIBUTED")
    distributed.maybe_initialize(TrainerConfig())
    assert calls == ["init"]  # no TPU on the PCI bus: a single process, as before


@pytest.mark.slow
def test_train_kill_9_resume_on_gcs_equals_uninterrupted_local(gcs, tmp_path):
    ref = tmp_path / "ref"
    done = subprocess.run(_cmd(ref), env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    uri = f"gs://{BUCKET}/runs/victim"
    victim = run_path(uri)
    t0 = time.time()
    proc = subprocess.Popen(_cmd(uri), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    manifest = victim / "checkpoints" / "4" / "chinchax_manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not manifest.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (victim / "run.json").exists()
    rows = read_jsonl(victim / "metrics.jsonl")
    assert rows and max(r["step"] for r in rows) >= 4  # stored before the step-4 checkpoint was trusted

    again = subprocess.run(_cmd(uri), env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-6000:-2500]
    assert f"resuming {uri} from step" in again.stdout
    print(f"gs:// run: killed and resumed in {time.time() - t0:.1f} s")

    # Everything the run writes is on gs://, nothing in a local folder named `gs:`.
    assert not (tmp_path / "gs:").exists()
    assert (victim / "config.yaml").exists() and (victim / "eval_rows.json").exists()
    assert not (victim / ".lock").exists()
    run = json.loads((victim / "run.json").read_text())
    ref_run = json.loads((ref / "run.json").read_text())
    assert run["status"] == "done" and run["steps"] == 12
    assert run["final_train_loss"] == ref_run["final_train_loss"] and run["eval_loss"] == ref_run["eval_loss"]
    assert _without_timing(read_jsonl(victim / "metrics.jsonl")) == _without_timing(read_jsonl(ref / "metrics.jsonl"))
    got = load_numpy_state(victim / "checkpoints" / "12")["params"]
    want = load_numpy_state(ref / "checkpoints" / "12")["params"]
    import jax

    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise

    # A damaged step on gs:// is detected, set aside (copied to damaged/, no rename on GCS) and skipped.
    from chinchax.fileio import files_under
    from chinchax.train.checkpoint import DAMAGED_DIR, verify

    step12 = victim / "checkpoints" / "12"
    assert verify(step12) is None
    data = [f for f in files_under(step12 / "state") if "/d/" in str(f)][0]
    data.write_bytes(b"\0" * len(data.read_bytes()))
    assert "checksum" in verify(step12)
    extended = subprocess.run(_cmd(uri, "trainer.steps=12"), env=_env(), capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "checkpoint step 12 is damaged" in extended.stderr
    assert any((victim / "checkpoints" / DAMAGED_DIR).iterdir())
    assert json.loads((victim / "run.json").read_text())["final_train_loss"] == ref_run["final_train_loss"]


FAKE_GCLOUD = textwrap.dedent(
    """\
    #!{python}
    # A fake gcloud: the slice is this machine (one host); storage commands talk to the GCS emulator.
    import json, os, subprocess, sys
    from pathlib import Path
    args = sys.argv[1:]
    with open({log!r}, "a") as f:
        f.write(json.dumps(args) + "\\n")
    host = Path({host!r}); host.mkdir(exist_ok=True)
    if args[:4] == ["compute", "tpus", "queued-resources", "describe"]:
        print("ACTIVE")
    elif args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        command = args[-1].split("=", 1)[1]
        if command.startswith("pip install"):
            sys.exit(0)
        sys.exit(subprocess.run(["bash", "-c", command], cwd=host).returncode)
    elif args[:4] == ["compute", "tpus", "tpu-vm", "scp"]:
        src, dst = args[4], args[5].split(":", 1)[1]
        (host / dst).parent.mkdir(parents=True, exist_ok=True)
        (host / dst).write_bytes(Path(src).read_bytes())
    elif args[:2] == ["storage", "ls"]:
        from chinchax.fileio import run_path
        p = run_path(args[2])
        names = [str(c) for c in p.iterdir()] if p.exists() else []
        print("\\n".join(names)); sys.exit(0 if names else 1)
    elif args[:2] == ["storage", "cp"]:
        from chinchax.fileio import copy_tree, is_remote, run_path
        rest = [a for a in args[2:] if a != "--recursive"]
        *sources, dst = rest
        for s in sources:
            src = run_path(s)
            if not src.exists():
                print(f"no such object {{s}}", file=sys.stderr); sys.exit(1)
            target = run_path(dst.rstrip("/") + "/" + src.name) if dst.endswith("/") else run_path(dst)
            if "--recursive" in args:
                copy_tree(src, target)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(src.read_bytes())
    """
)

FAKE_CHINCHAX = textwrap.dedent(
    """\
    #!/bin/bash
    # `chinchax` on the fake TPU host: records CHINCHAX_DISTRIBUTED (the executor must set it so every host joins
    # jax.distributed), then trains as one process (this host is the whole slice).
    echo "CHINCHAX_DISTRIBUTED=${{CHINCHAX_DISTRIBUTED:-unset}}" >> {log}
    unset CHINCHAX_DISTRIBUTED
    exec {python} -m chinchax.cli "$@"
    """
)

BASE = {  # as tests/test_scaling_sweep_train.py
    "model": {"preset": "tiny-gpt2", "vocab_size": 384, "max_len": 16},
    "data": {"seq_len": 16, "eval_batches": 1},
    "trainer": {"steps": 10, "batch_size": 4, "log_every": 1, "eval_every": 0, "progress_bar": False,
                "peak_flops": 1.0e11},
}


@pytest.mark.slow
def test_tpu_sweep_on_gcs_with_wsd_branch_and_collect(gcs, tmp_path, monkeypatch):
    from chinchax.fileio import copy_tree, files_under
    from chinchax.scaling import executors
    from chinchax.scaling.plan import TpuSettings, load_sweep, plan_sweep
    from chinchax.scaling.results import SweepDir, collect

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    sweep_yaml = {
        "name": "wsd", "experiment": "base.yaml", "budgets": [5.6e7, 1.5e8],
        "shape": {"aspect_ratio": 16, "head_dim": 16},
        "sizes": {"mode": "explicit", "n_params": [1e4], "min_steps": 5},
        "hparams": {"base_lr": 3e-3, "base_d_model": 16, "warmup_fraction": 0.2},
        "wsd": {"enabled": True, "cooldown_fraction": 0.2, "branch": True},
    }
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep_yaml))
    cfg, base_dir = load_sweep(tmp_path / "sweep.yaml", [])
    plan = plan_sweep(cfg, base_dir)
    branches = [r for r in plan.runs if r.branch_of]
    assert len(plan.runs) == 2 and len(branches) == 1
    branch, trunk = branches[0], next(r for r in plan.runs if not r.branch_of)
    sweep = SweepDir(tmp_path / "sweep")
    sweep.write_plan(plan)

    bin_dir, log = tmp_path / "bin", tmp_path / "gcloud.log"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable, log=str(log), host=str(tmp_path / "host")))
    chinchax = bin_dir / "chinchax"
    chinchax.write_text(FAKE_CHINCHAX.format(python=sys.executable, log=str(tmp_path / "distributed.log")))
    for f in (gcloud, chinchax):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)

    root = f"gs://{BUCKET}/sweeps/wsd"
    st = TpuSettings(run_root=root, poll_seconds=0.0)
    outcomes = executors.run_tpu(plan, sweep, st, max_retries=0, gcloud=str(gcloud), echo=lambda _: None)
    assert {o.run_id: o.status for o in outcomes} == dict.fromkeys([r.run_id for r in plan.runs], "done"), outcomes
    assert (tmp_path / "distributed.log").read_text().split() == ["CHINCHAX_DISTRIBUTED=1"] * 2
    assert not (tmp_path / "host" / "gs:").exists()

    # The branch started from the trunk's checkpoint at the branch step, copied on gs://: its rows up to there
    # are the trunk's, timings included (a branch trained from scratch would have its own timings).
    t_dir, b_dir = run_path(f"{root}/{trunk.run_id}"), run_path(f"{root}/{branch.run_id}")
    t_rows, b_rows = read_jsonl(t_dir / "metrics.jsonl"), read_jsonl(b_dir / "metrics.jsonl")
    k = branch.branch_step
    assert 0 < k < branch.steps
    assert [r for r in b_rows if r["step"] <= k] == [r for r in t_rows if r["step"] <= k]
    assert max(r["step"] for r in b_rows) == branch.steps
    assert (b_dir / "checkpoints" / str(k) / "chinchax_manifest.json").exists()

    # run.json + metrics came back to the local sweep dir; collect reads them.
    rows, curves = collect(sweep, plan)
    assert {r["run"] for r in rows} == {trunk.run_id, branch.run_id}
    local = {r["run"]: r for r in csv.DictReader((sweep.root / "results.csv").open())}
    b_run = json.loads((b_dir / "run.json").read_text())
    assert b_run["eval_loss"] is not None  # results.csv's loss is the eval loss when there is one (docs/sweeps.md)
    assert float(local[branch.run_id]["loss"]) == b_run["eval_loss"]

    # A sweep dir that itself lives on gs:// (plan.json + runs/<id>/): status, collect (also by the CLI) and the
    # Python WSD seeding work there too.
    gs_sweep = SweepDir(f"gs://{BUCKET}/sweepdir")
    gs_sweep.write_plan(plan)
    copy_tree(t_dir, gs_sweep.run_dir(trunk.run_id))
    copy_tree(b_dir, gs_sweep.run_dir(branch.run_id))
    assert gs_sweep.states(plan) == {trunk.run_id: "done", branch.run_id: "done"}
    from chinchax.cli import main

    assert main(["sweep", "collect", str(gs_sweep.root)]) == 0
    gs_rows = list(csv.DictReader(io_text(gs_sweep.root / "results.csv")))
    assert {r["run"]: r["loss"] for r in gs_rows} == {r: local[r]["loss"] for r in local}

    gs_sweep.run_dir(branch.run_id).rmtree()
    assert gs_sweep.state(branch.run_id) == "planned"
    assert executors.seed_branch(gs_sweep, branch, plan) is True
    src, dst = gs_sweep.run_dir(trunk.run_id) / "checkpoints" / str(k), gs_sweep.run_dir(branch.run_id) / "checkpoints"
    assert [p.name for p in dst.iterdir()] == [str(k)]
    rel = lambda root: {str(f.relative_to(root)): f.read_bytes() for f in files_under(root)}  # noqa: E731
    assert rel(dst / str(k)) == rel(src)
    assert [r["step"] for r in read_jsonl(gs_sweep.run_dir(branch.run_id) / "metrics.jsonl")] == [
        r["step"] for r in t_rows if r["step"] <= k
    ]
    assert gs_sweep.state(branch.run_id) == "interrupted"  # the next launch resumes from the seeded step


def io_text(path):
    import io

    return io.StringIO(path.read_text())
