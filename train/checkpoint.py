"""Checkpoints: orbax CheckpointManager (async) + a manifest we verify ourselves before trusting a step.

Layout of `<run_dir>/checkpoints/`:
    <step>/state/...                 orbax StandardSave of the train state (sharded arrays)
    <step>/data/process_I-of-N.json  each host's data-iterator state (a JSON snapshot taken at save time)
    <step>/commit_success.txt        orbax's commit marker (written last, with the step's final name)
    <step>/chinchax_manifest.json    size + sha256 of every file above, written once the save has committed
    damaged/<step>-<time>/           steps that failed verification, moved aside (never deleted by us)

Why our own manifest and retention: orbax does not notice a finished step whose files were damaged later
(restore raises, with no fallback), and its `max_to_keep` may delete the good older step in favour of the
damaged newer one. So orbax keeps everything (`max_to_keep=None`) and this class:
- writes the manifest once the save has committed: the trainer asks after every call (`poll`, single host)
  and waits for it at the next save, at a preemption and at close;
- on resume, trusts a step without a manifest only when orbax committed it (its commit marker is there: a
  kill landed between the commit and our manifest) and orbax restores it; its manifest is written then. A
  step with neither marker (a save that never committed, or damage that took both) is not trusted;
- deletes old steps only when more than `max_to_keep` verified steps remain AND the newer ones still
  have all their files at the recorded sizes (a cheap check; the full hash runs before any restore);
- on restore, tries steps newest first, verifies the full hash, and moves damaged steps aside, saying so.

A full disk (train/diskspace.py): before each save, the free space is checked against the size of the newest
step (or, for the first, the state's bytes); too little stops the run with one line (DiskFull) before orbax
starts. A save that fails anyway (another writer filled the disk meanwhile) is reported the same way, once:
orbax's own reports of it are dropped, its threads are waited for, and its partial `<step>.orbax-checkpoint-tmp`
folder is removed. Earlier steps are never touched, so the re-run resumes from the newest one.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import grain
import grain.checkpoint
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from chinchax.errors import UserError
from chinchax.fileio import (
    copy_tree,
    file_size,
    files_under,
    is_remote,
    remove_tree,
    run_path,
    write_text_atomic,
)
from chinchax.fileio import sha256_file as _sha256
from chinchax.train import diskspace
from chinchax.train.diskspace import DiskFull, is_disk_full

MANIFEST = "chinchax_manifest.json"
DAMAGED_DIR = "damaged"
# orbax writes this file into a step as the last act of its save (then renames the folder on local disks): a step
# that has it was committed by every host (orbax's atomicity.COMMIT_SUCCESS_FILE, private, so named here).
ORBAX_COMMITTED = "commit_success.txt"
NO_MANIFEST = "no manifest (the save never finished, or the run stopped before it was verified)"
# Where orbax writes a step before renaming it to <step> (local disks; a suffix in some orbax versions).
ORBAX_TMP = ".orbax-checkpoint-tmp"


# --- the data-iterator state as an orbax item: grain's own handler (one JSON file per host) ----------------
class _Snapshot(grain.DatasetIterator):
    """A data-iterator state taken when `save` is called, in the shape grain's checkpoint handler serialises
    (it calls `get_state` / `set_state` on a grain iterator). Saving a snapshot rather than the live iterator
    keeps `save(step, state, data_state)` a plain dict in and out: the trainer, the tests and any `data`
    iterator with get_state/set_state work unchanged."""

    def __init__(self, state: Any = None):
        super().__init__()
        self.state = state

    def __next__(self):
        raise TypeError("a checkpointed iterator state, not an iterator")

    def get_state(self) -> Any:
        return self.state

    def set_state(self, state: Any) -> None:
        self.state = state


def _data_file(step_dir: Path) -> Path:
    """Where grain's handler keeps this host's iterator state."""
    return step_dir / "data" / f"process_{jax.process_index()}-of-{jax.process_count()}.json"


# --- manifests ------------------------------------------------------------------------------------------
def _files(step_dir: Path) -> list[Path]:
    return [p for p in files_under(step_dir) if p.name != MANIFEST]


def write_manifest(step_dir: Path) -> None:
    entries = {str(p.relative_to(step_dir)): [file_size(p), _sha256(p)] for p in _files(step_dir)}
    write_text_atomic(step_dir / MANIFEST, json.dumps({"files": entries}, indent=0, sort_keys=True))


def verify(step_dir: Path, *, full: bool = True) -> str | None:
    """None if the step matches its manifest, else why not. `full=False` checks names and sizes only."""
    manifest = step_dir / MANIFEST
    if not manifest.is_file():
        return NO_MANIFEST
    try:
        recorded = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable manifest ({e})"
    present = {str(p.relative_to(step_dir)): p for p in _files(step_dir)}
    for name, (size, digest) in recorded.items():
        path = present.get(name)
        if path is None:
            return f"file {name} is missing"
        if file_size(path) != size:
            return f"file {name} has {file_size(path)} bytes, the manifest says {size}"
        if full and _sha256(path) != digest:
            return f"file {name} does not match its checksum"
    extra = sorted(set(present) - set(recorded))
    if extra:
        return f"unexpected files {extra[:3]}"
    return None


def _check(step_dir: Path, trust_orbax_commit: bool) -> str | None:
    """None if the step may be restored: it matches its manifest, or (`trust_orbax_commit`) orbax committed it
    and our manifest was never written (orbax's restore is then the check); else why not."""
    problem = verify(step_dir)
    if trust_orbax_commit and problem == NO_MANIFEST and (step_dir / ORBAX_COMMITTED).is_file():
        return None
    return problem


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(f"[chinchax checkpoint] {message}", file=sys.stderr, flush=True)


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Async orbax saves of (train state, data-iterator state) with verified, fallback-safe restore.

    `read_only=True` (evaluation, export): never creates, saves, deletes or moves anything; a damaged or
    unverified step is announced and skipped (a run may still be training and about to write its manifest)."""

    def __init__(self, directory: str | Path, *, max_to_keep: int | None = None, use_async: bool = True,
                 read_only: bool = False):
        self.directory = run_path(directory)  # gs:// stays a URI (etils.epath, as orbax uses)
        self.max_to_keep = max_to_keep
        self.read_only = read_only
        self._unverified: list[int] = []  # saved steps whose manifest is not written yet
        self._failed: list[int] = []  # steps whose save failed: their partial folders are removed at close
        self._need: int | None = None  # the room the last save was estimated to need (check_room)
        if not read_only:
            if max_to_keep is None:
                raise ValueError("a writing Checkpointer needs max_to_keep")
            self.directory.mkdir(parents=True, exist_ok=True)
            diskspace.quiet_orbax_disk_full()
        self._manager = self._new_manager(use_async)

    def _new_manager(self, use_async: bool) -> ocp.CheckpointManager:
        # orbax keeps every step (max_to_keep=None): retention is ours, see the module docstring.
        with _quiet_absl(self.read_only):  # read-only is what we asked for: orbax's two warnings say only that
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None, create=not self.read_only, read_only=self.read_only,
                enable_async_checkpointing=use_async, cleanup_tmp_directories=not self.read_only,
            )
            return ocp.CheckpointManager(
                self.directory,
                options=options,
                item_names=("state", "data"),
                item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
            )

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    # --- saving ---------------------------------------------------------------------------------------
    def save(self, step: int, state: Any, data_state: Any) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.directory} was opened read-only; open a Checkpointer with max_to_keep to save")
        self._finish_pending()  # orbax would wait for the previous save here anyway
        self.check_room(state, step)
        diskspace.SEEN.take()  # only what this save reports counts
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(_Snapshot(data_state))
                ),
            )
        except Exception as e:  # the synchronous part (metadata, the iterator's JSON) failed
            if not is_disk_full(e):
                raise
            with contextlib.suppress(Exception):  # its background part, if it started, must stop first
                self._manager.wait_until_finished()
            self._failed.append(step)
            self._remove_partial()
            raise self._disk_full(step, str(e)) from e
        self._unverified.append(step)

    def poll(self) -> None:
        """Write the manifests of saves that finished in the background, without waiting. Single-host
        only (hosts could disagree on 'finished' and the manifest step has a barrier); with several
        hosts manifests are written at the next save or at close."""
        if self._unverified and jax.process_count() == 1 and not self._manager.is_saving_in_progress():
            self._finish_pending()

    def wait_until_finished(self) -> None:
        self._finish_pending()

    def _finish_pending(self) -> None:
        error = None
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # orbax raises a background save's error here (once), or only logs it
            error = e
        if not self._unverified:
            if error is not None:
                raise error
            return
        # A failed save is dropped from orbax's steps. Such a step (its files half written, in the final folder
        # on GCS) must get no manifest, or a resume would trust it.
        saved = set(self._manager.all_steps())
        failed = [s for s in self._unverified if s not in saved]
        if error is not None and not failed:
            raise error
        pending, self._unverified = self._unverified, []
        manifest_error = None
        if jax.process_index() == 0:
            for step in pending:
                if step not in failed:
                    try:
                        write_manifest(self._step_dir(step))
                    except OSError as e:  # orbax committed the step: a resume trusts it without its manifest
                        if not is_disk_full(e):
                            raise
                        manifest_error = (step, e)
        _barrier("chinchax_manifest")
        if failed:
            self._failed += failed
            self._remove_partial()
            cause = diskspace.SEEN.take()
            if cause or is_disk_full(error):
                raise self._disk_full(failed[0], cause or str(error)) from error
            raise RuntimeError(
                f"checkpoint save of step {failed} failed (orbax's error is logged above); it has no manifest "
                "and will not be resumed from"
            ) from error
        if manifest_error is not None:
            step, e = manifest_error
            raise DiskFull(diskspace.line(
                f"could not write the manifest of checkpoint step {step}", self._step_dir(step),
                cause=e.strerror or str(e), kept="orbax committed the step itself, so it is kept",
                resume=f"it resumes from step {step}")) from e
        self._enforce_max_to_keep()

    # --- a full disk --------------------------------------------------------------------------------------
    def _good_steps(self) -> list[int]:
        return [s for s in self.steps() if (self._step_dir(s) / MANIFEST).is_file()]

    def room_needed(self, state: Any) -> int:
        """Bytes a new step will take here: the newest verified step's, else the state's bytes on this host
        plus orbax's metadata (measured on a tiny model: under 1 kB a leaf and 200 kB of small files, in
        4 kB blocks), with 5% and 64 kB to spare."""
        good = self._good_steps()
        if good:
            size = _allocated(self._step_dir(good[-1]))
        else:
            leaves = jax.tree.leaves(state)
            size = sum(_host_bytes(x) for x in leaves) + 1024 * len(leaves) + 262144
        return int(size * 1.05) + 65536

    def check_room(self, state: Any, step: int | None = None) -> None:
        """DiskFull if the disk holding the checkpoints has less room than a new step needs (`step` None: at
        start-up, before training towards a first save that could not be written). Local disks only."""
        if self.read_only or is_remote(self.directory):
            return
        need = self._need = self.room_needed(state) if jax.process_index() == 0 else 0
        free = diskspace.free_bytes(self.directory) if jax.process_index() == 0 else None
        short = free is not None and free < need
        if jax.process_count() > 1:  # every host must take the same decision: the save is a collective
            short = bool(multihost_utils.broadcast_one_to_all(np.array(short)))
        if not short:
            return
        if step is None:
            good = self._good_steps()
            raise DiskFull(diskspace.line(
                "no room for this run's checkpoints", self.directory, need=need, free=free,
                kept="nothing was trained", resume=_resume(good)))
        raise self._disk_full(step, "", need=need, free=free, started=False)

    def _disk_full(self, step: int, cause: str, *, need: int | None = None, free: int | None = None,
                   started: bool = True) -> DiskFull:
        good = self._good_steps()
        kept = f"the last good checkpoint, step {good[-1]}, is kept" if good else "no earlier checkpoint exists"
        if started:
            kept += f"; the partial step {step} was removed"
        what = f"could not write checkpoint step {step}" if started else f"not enough room for checkpoint step {step}"
        return DiskFull(diskspace.line(what, self.directory, need=need or self._need or None, free=free,
                                       cause=diskspace.short_cause(cause), kept=kept, resume=_resume(good)))

    def _remove_partial(self) -> None:
        """The temporary folders of failed saves (orbax would remove them only when a run starts again)."""
        if self.read_only or is_remote(self.directory) or jax.process_index() != 0:
            return
        for step in self._failed:
            for path in self.directory.glob(f"{step}{ORBAX_TMP}*"):
                remove_tree(path)

    def _enforce_max_to_keep(self) -> None:
        good = [s for s in self.steps() if (self._step_dir(s) / MANIFEST).is_file()]
        if len(good) <= self.max_to_keep:
            return
        keep, drop = good[-self.max_to_keep :], good[: -self.max_to_keep]
        damaged = [s for s in keep if verify(self._step_dir(s), full=False)]
        if damaged:
            _say(
                f"steps {damaged} no longer match their manifests; keeping older steps {drop} instead of deleting"
            )
            return
        for step in drop:
            self._manager.delete(step)

    def steps(self) -> list[int]:
        self._manager.reload()  # other processes (or a fallback) may have changed the folder
        return sorted(self._manager.all_steps())

    # --- restoring ------------------------------------------------------------------------------------
    def restore_latest(self, abstract_state: Any, *, with_data: bool = True) -> tuple[int, Any, Any] | None:
        """(step, state, data_state) from the newest step that verifies and restores (data_state None when
        `with_data` is False); damaged steps are announced and moved to `damaged/` (read-only: skipped).
        None when no good step exists (start from scratch)."""
        damaged: list[int] = []
        steps = self.steps()
        for step in reversed(steps):
            # read-only (evaluation of a run that may be training): verified steps only, nothing is set aside
            problem = _check(self._step_dir(step), not self.read_only) if jax.process_index() == 0 else None
            problem = _broadcast_problem(problem)
            if problem is None:
                if with_data and not _data_file(self._step_dir(step)).is_file():
                    raise UserError(
                        f"{_data_file(self._step_dir(step))} is missing: the checkpoint was written by a different "
                        "number of hosts; resume with the same process count (the train state itself restores "
                        "onto any mesh)"
                    )
                try:
                    restored = self._restore(step, abstract_state, with_data)
                except Exception as e:  # a manifest-consistent (or committed) step that orbax still cannot read
                    problem = f"orbax could not restore it: {type(e).__name__}: {e}"
                else:
                    self._adopt(step)
                    return (step, *restored)
            damaged.append(step)
            if self.read_only:
                _say(f"skipping checkpoint step {step} of {self.directory}: {problem}")
                continue
            fallback = "falling back to the previous step" if len(damaged) < len(steps) else "no earlier step is left"
            _say(f"checkpoint step {step} is damaged ({problem}); {fallback}")
            self._quarantine(step)
        if damaged and not self.read_only:
            _say(
                f"WARNING: every checkpoint of this run is damaged (steps {sorted(damaged)}, moved to "
                f"{self.directory / DAMAGED_DIR}); training restarts from step 0"
            )
        return None

    def _restore(self, step: int, abstract_state: Any, with_data: bool) -> tuple[Any, Any]:
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if with_data:
            items["data"] = grain.checkpoint.CheckpointRestore(_Snapshot())
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored["state"], (restored["data"].state if with_data else None)

    def _adopt(self, step: int) -> None:
        """A committed step restored without a manifest (the run stopped between orbax's commit and ours)
        gets its manifest now, so that damage from here on is detected."""
        step_dir = self._step_dir(step)
        if self.read_only or jax.process_index() != 0 or (step_dir / MANIFEST).is_file():
            return
        write_manifest(step_dir)
        _say(f"step {step} was committed by orbax but had no manifest yet (the run stopped in between); "
             "restored it and wrote its manifest")

    def _quarantine(self, step: int) -> None:
        if jax.process_index() == 0:
            target = self.directory / DAMAGED_DIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            target.parent.mkdir(exist_ok=True)
            if is_remote(target):  # no rename on GCS: copy, then delete
                copy_tree(self._step_dir(step), target)
                remove_tree(self._step_dir(step))
            else:
                shutil.move(str(self._step_dir(step)), str(target))
            _say(f"moved step {step} to {target.relative_to(self.directory)}")
        _barrier("chinchax_quarantine")
        self._manager.reload()

    def close(self) -> None:
        """Wait for saves (their manifests written), then stop orbax's threads, also when a save failed."""
        try:
            if not self.read_only:
                self._finish_pending()
        finally:
            self._manager.close()
            if self._failed:
                # The failed save's abandoned writes: collected now, not at interpreter shutdown (where they
                # print "sys.meta_path is None"); their folders removed again in case a late write recreated them.
                gc.collect()
                self._remove_partial()


def _resume(good: list[int]) -> str:
    return f"it resumes from step {good[-1]}" if good else "it starts from step 0 (no checkpoint was saved)"


def _host_bytes(x: Any) -> int:
    """Bytes of `x` this host writes: one replica of each of its shards (a host array: all of it)."""
    shards = getattr(x, "addressable_shards", None)
    if shards is None:
        return int(getattr(x, "nbytes", 0))
    return sum(int(s.data.nbytes) for s in shards if s.replica_id == 0)


def _allocated(folder: Path) -> int:
    """Bytes `folder` takes on disk (blocks, not file lengths: small files take a whole block)."""
    total = 0
    for root, _, files in os.walk(folder):
        total += 4096  # the folder's own block
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def _broadcast_problem(problem: str | None) -> str | None:
    """Process 0 verifies; every process must take the same decision."""
    if jax.process_count() == 1:
        return problem
    bad = multihost_utils.broadcast_one_to_all(np.array(problem is not None))
    return (problem or "damaged on the primary host") if bool(bad) else None


def load_numpy_state(step_dir: str | Path) -> Any:
    """The train state of a finished step as host numpy arrays, whatever mesh or hosts wrote it
    (for inspection, tests and export; the trainer restores onto its mesh with `restore_latest`)."""
    path = run_path(step_dir) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    # An item of a manager's step has no step-level metadata file of its own: orbax warns, harmlessly.
    with _quiet_absl(True):
        metadata = checkpointer.metadata(path)
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))


@contextlib.contextmanager
def _quiet_absl(quiet: bool):
    """absl warnings off for the block (orbax logs through absl)."""
    from absl import logging as absl_logging

    if not quiet:
        yield
        return
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)
