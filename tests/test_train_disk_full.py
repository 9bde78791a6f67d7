"""A full disk while training (issue 28 item 5): one line naming what could not be written, where, the room it
needed and the fix; exit code 74; the checkpoints already saved are kept bitwise, orbax's partial folder is
removed, and once space is freed the same command resumes and trains exactly the uninterrupted run.

In-process, the full disk is faked at the boundary (a write raising OSError(ENOSPC), or the filesystem
reporting little free space). One test fills a real disk: a small tmpfs mounted in a private user+mount
namespace (`unshare -rm`, no root needed where the kernel allows user namespaces; skipped elsewhere)."""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from chinchax.configlib import load_config
from chinchax.train import diskspace
from chinchax.train.checkpoint import MANIFEST, ORBAX_TMP, load_numpy_state
from chinchax.train.config import ExperimentConfig
from chinchax.train.diskspace import DISK_FULL_EXIT_CODE, DiskFull
from chinchax.train.metrics import TIMING_FIELDS, read_jsonl

REPO = Path(__file__).resolve().parents[1]
STEPS = 20
TINY = [  # checkpoints at 4, 8, 12, 16, 20; the third save is the one that finds the disk full
    "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.d_ff=32", "model.max_len=16",
    "data.seq_len=16", "data.eval_batches=2", "trainer.batch_size=4", f"trainer.steps={STEPS}",
    "trainer.checkpoint_every=4", "trainer.log_every=1", "trainer.eval_every=5", "trainer.max_to_keep=5",
    "trainer.progress_bar=false", "optimizer.warmup_steps=2",
]


def _cfg(run_dir) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [*TINY, f"trainer.run_dir={run_dir}"])


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _same_params(run_dir: Path, reference: Path, step: int) -> None:
    import jax

    a, b = (jax.tree.leaves(load_numpy_state(d / "checkpoints" / str(step))) for d in (run_dir, reference))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _steps(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _env() -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "offline", "CHINCHAX_HUGEPAGE_MALLOC": "0"}
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    from chinchax.train.trainer import train

    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(_cfg(run_dir))
    return run_dir


def _resumes_exactly(run: Path, reference: Path, capture, from_step: int) -> None:
    from chinchax.train.trainer import train

    capture.readouterr()
    result = train(_cfg(run))
    assert f"resuming {run} from step {from_step}" in capture.readouterr().out
    assert result["status"] == "done"
    assert _rows(run) == _rows(reference)  # every row, bitwise (floats round-trip exactly through JSON)
    _same_params(run, reference, STEPS)


def test_a_save_that_fails_for_lack_of_space_is_one_error_keeps_earlier_steps_and_resumes_exactly(
    reference, tmp_path, monkeypatch, capfd
):
    """The disk fills during orbax's background save of step 12 (faked: the data-iterator file's write, which
    orbax runs in a thread, raises ENOSPC). Before: a RuntimeError after orbax's tracebacks, and the partial
    folder left behind; now one DiskFull line, orbax's reports dropped, the partial step removed."""
    import grain.checkpoint

    from chinchax.train.trainer import train

    run = tmp_path / "run"
    handler, real = grain.checkpoint.CheckpointHandler, grain.checkpoint.CheckpointHandler.save
    saves = []

    def save(self, directory, *args, **kwargs):
        saves.append(directory)
        if len(saves) == 3:
            raise _enospc(directory / "process_0-of-1.json")
        return real(self, directory, *args, **kwargs)

    monkeypatch.setattr(handler, "save", save)
    capfd.readouterr()
    with pytest.raises(DiskFull) as failed:
        train(_cfg(run))
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith(f"disk full: could not write checkpoint step 12 in {run / 'checkpoints'} "
                              "(No space left on device, needs about ")
    assert "the last good checkpoint, step 8, is kept; the partial step 12 was removed" in message
    assert message.endswith("then run the same command again: it resumes from step 8")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ERROR:absl" not in err, err[-3000:]
    assert _steps(run) == ["4", "8"]  # nothing of step 12, no orbax tmp folder
    for step in (4, 8):
        assert (run / "checkpoints" / str(step) / MANIFEST).is_file()
        _same_params(run, reference, step)
    assert not (run / "run.json").exists()

    monkeypatch.undo()  # space freed
    _resumes_exactly(run, reference, capfd, 8)


def test_too_little_room_for_the_next_checkpoint_stops_before_orbax_writes_anything(reference, tmp_path, monkeypatch,
                                                                                   capsys):
    """The filesystem reports 50 kB free once two steps are saved: the third save is refused before orbax
    starts, naming the room it needs (the size of the last step) and the room there is."""
    from chinchax.train.trainer import train

    run = tmp_path / "run"
    real = diskspace.free_bytes

    def free_bytes(path):
        saved = run / "checkpoints"
        return 50_000 if saved.is_dir() and len(list(saved.iterdir())) >= 2 else real(path)

    monkeypatch.setattr(diskspace, "free_bytes", free_bytes)
    with pytest.raises(DiskFull) as failed:
        train(_cfg(run))
    message = str(failed.value)
    assert message.startswith(f"disk full: not enough room for checkpoint step 12 in {run / 'checkpoints'} "
                              "(needs about "), message
    needed = float(message.split("needs about ")[1].split(" kB")[0]) * 1000
    assert needed > 50_000 and "50.0 kB free); the last good checkpoint, step 8, is kept." in message
    assert "partial" not in message and _steps(run) == ["4", "8"]

    monkeypatch.undo()
    _resumes_exactly(run, reference, capsys, 8)


def test_a_full_disk_when_the_run_finishes_keeps_the_final_checkpoint(reference, tmp_path, monkeypatch, capsys):
    """run.json cannot be written: one line, and the re-run (space freed) finds the final step, trains nothing
    and writes run.json."""
    from chinchax.train import trainer

    run = tmp_path / "run"
    real = trainer.write_json

    def write_json(path, data):
        if Path(path).name == "run.json":
            raise _enospc(path)
        real(path, data)

    monkeypatch.setattr(trainer, "write_json", write_json)
    with pytest.raises(DiskFull, match=rf"^disk full: could not write run.json in {run} \(No space left on device"):
        trainer.train(_cfg(run))
    assert str(STEPS) in _steps(run) and not (run / "run.json").exists()
    monkeypatch.undo()
    capsys.readouterr()
    result = trainer.train(_cfg(run))
    assert f"from step {STEPS}" in capsys.readouterr().out and result["status"] == "done"
    assert json.loads((run / "run.json").read_text())["final_train_loss"] == json.loads(
        (reference / "run.json").read_text())["final_train_loss"]


@pytest.mark.parametrize("where", ["run lock", "config.yaml"])
def test_a_full_disk_at_start_up_is_one_line_and_exit_74(tmp_path, monkeypatch, capsys, where):
    """Before: a raw OSError traceback from the run lock (or from the config's write)."""
    from chinchax.cli import main
    from chinchax.train import runlock, trainer

    run = tmp_path / "run"
    if where == "run lock":
        monkeypatch.setattr(runlock.os, "pwrite", lambda fd, data, offset: (_ for _ in ()).throw(
            _enospc(run / runlock.LOCK_NAME)))
        expected = f"could not write the run lock .lock in {run} (No space left on device"
    else:
        real = trainer.atomic_write_text

        def atomic_write_text(path, text):
            if Path(path).name == "config.yaml":
                raise _enospc(path)
            real(path, text)

        monkeypatch.setattr(trainer, "atomic_write_text", atomic_write_text)
        expected = f"could not write config.yaml in {run} (No space left on device"
    capsys.readouterr()
    code = main(["train", str(REPO / "experiments" / "tiny.yaml"), *TINY, f"trainer.run_dir={run}"])
    err = capsys.readouterr().err
    assert code == DISK_FULL_EXIT_CODE, err[-3000:]
    assert err.count("\n") == 1 and err.startswith(f"chinchax train: error: disk full: {expected}"), err
    assert "Free space on that disk" in err


# --- a real full disk -----------------------------------------------------------------------------------

NO_PREFLIGHT = """
import sys
from chinchax.train import checkpoint
# As if another writer filled the disk after the free-space check: the save itself meets the full disk.
checkpoint.Checkpointer.check_room = lambda self, state, step=None: None
from chinchax.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir()
    probe = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(where))}"
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.slow
def test_a_real_full_disk_gives_one_line_keeps_checkpoints_and_resumes_exactly(reference, tmp_path):
    """A 800 kB tmpfs holds two checkpoints of the tiny run. Before: 868 lines, 61 tracebacks, the cause in the
    middle and `ImportError: sys.meta_path is None` last. Now, on a disk filled to the last byte and at the save
    orbax starts on a full disk: exit 74, one line each. Then the disk is made larger (space freed) and the
    same command resumes from step 8 and ends bitwise where the uninterrupted run does."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare -rm)")
    out.mkdir()
    (tmp_path / "no_preflight.py").write_text(NO_PREFLIGHT)
    run = disk / "run"
    args = " ".join(shlex.quote(a) for a in [str(REPO / "experiments" / "tiny.yaml"), *TINY, f"trainer.run_dir={run}"])
    py = shlex.quote(sys.executable)
    script = textwrap.dedent(f"""
        set -u
        mount -t tmpfs -o size=800k tmpfs {disk}
        mkdir {run}
        dd if=/dev/zero of={disk}/filler bs=4k 2>/dev/null  # full to the last byte
        {py} -m chinchax.cli train {args} >{out}/start.txt 2>&1; echo $? >{out}/start.rc
        rm {disk}/filler
        {py} {tmp_path}/no_preflight.py {args} >{out}/save.txt 2>&1; echo $? >{out}/save.rc
        ls -a {run}/checkpoints >{out}/after_save.txt
        mount -o remount,size=20m {disk}  # space freed
        {py} -m chinchax.cli train {args} >{out}/resume.txt 2>&1; echo $? >{out}/resume.rc
        cp -a {run} {out}/run
    """)
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    def result(name):
        return int((out / f"{name}.rc").read_text()), (out / f"{name}.txt").read_text()

    code, text = result("start")
    assert code == DISK_FULL_EXIT_CODE and text.count("\n") == 1, text[-3000:]
    assert text.startswith(f"chinchax train: error: disk full: could not write the run lock .lock in {run} "
                           "(No space left on device, 0 B free)"), text

    # Which write finds the disk full depends on how many bytes a run writes besides its checkpoints (config.yaml
    # and metrics.jsonl grow as keys are added): orbax's save of a step (that step removed, the one before kept)
    # or, once orbax has committed a step, its manifest (the step kept). Either way one line, and the resume
    # starts from the newest step that is kept.
    code, text = result("save")
    assert code == DISK_FULL_EXIT_CODE and text.count("\n") == 1, text[-5000:]
    where = rf"in {re.escape(str(run))}/checkpoints(/\d+)? \(No space left on device"
    save = re.match(rf"chinchax train: error: disk full: could not write checkpoint step (\d+) {where}", text)
    manifest = re.match(rf"chinchax train: error: disk full: could not write the manifest of checkpoint step (\d+) "
                        rf"{where}", text)
    assert save or manifest, text
    step = int((save or manifest).group(1))
    assert 8 <= step < STEPS and step % 4 == 0, text  # at least two checkpoints fitted before
    last = step - 4 if save else step
    if save:
        assert f"the last good checkpoint, step {last}, is kept; the partial step {step} was removed" in text
    else:
        assert "orbax committed the step itself, so it is kept" in text and f"resumes from step {last}" in text
    kept = [str(s) for s in range(4, last + 1, 4)]
    assert sorted((out / "after_save.txt").read_text().split()) == sorted([".", "..", *kept])  # no orbax tmp folder

    code, text = result("resume")
    assert code == 0 and f"resuming {run} from step {last}" in text, text[-3000:]
    assert _rows(out / "run") == _rows(reference)
    for step in (4, 8, STEPS):
        _same_params(out / "run", reference, step)
    assert not list((out / "run" / "checkpoints").glob(f"*{ORBAX_TMP}*"))


def test_a_sweep_records_a_full_disk_as_failed_at_once_without_retrying(tmp_path):
    """A retry would meet the same full disk: one attempt, and the failure marker holds the trainer's line (the
    next `sweep run` retries the run, which resumes from its checkpoints)."""
    from chinchax.scaling.executors import run_with_retries
    from chinchax.scaling.results import FAILED_MARKER, SweepDir

    sweep = SweepDir(tmp_path / "sweep")
    run_dir = sweep.run_dir("r0")
    line = "chinchax train: error: disk full: could not write checkpoint step 12 in /x (No space left on device)"
    full = [sys.executable, "-c", f"import sys; print({line!r}, file=sys.stderr); sys.exit({DISK_FULL_EXIT_CODE})"]
    outcome = run_with_retries("r0", str(tmp_path / "unused.yaml"), str(run_dir), train_command=full, max_retries=2)
    assert (outcome.status, outcome.attempts) == ("failed", 1)
    failure = json.loads((run_dir / FAILED_MARKER).read_text())
    assert failure["returncode"] == DISK_FULL_EXIT_CODE and failure["error"].endswith(line)
    assert sweep.state("r0") == "failed"
