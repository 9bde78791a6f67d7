"""One trainer per run directory: an exclusive `flock` on `<run_dir>/.lock`, held for the whole of `train()`.

The kernel drops the lock when its holder dies however it dies (kill -9 included), so a free lock means
nobody is training that run, and a held one means somebody is, whoever started them: the sweep status
reads it (`probe`) instead of trusting an executor's pid file, which outlives an executor killed by a
signal and can name a recycled pid. A second trainer on the same run dir refuses at once with the
holder's pid. The lock is released when `train()` returns or raises, so a long-lived sweep worker can
train run after run in one process.

`flock` locks belong to the open file, not the process: a second open in the same process conflicts
too. On network filesystems flock may be local to one machine (NFS emulates it with fcntl locks, which
work across clients; some others do not): a run directory on such a filesystem shared by two machines
is protected only as far as that filesystem honours it.

On gs:// (an object store: no flock, no lock a dead holder releases) the lock is skipped: `hold` takes
nothing and `probe` reports nobody. What guards a gs:// run dir is whoever launches trainers there: the
tpu executor runs one run per slice at a time, and its sweep directory's `sweep_running.json` marker (held
while the executor lives) makes a second `sweep run` refuse the run (chinchax.scaling.results).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.fileio import is_remote
from chinchax.train import diskspace

LOCK_NAME = ".lock"
# A `probe` holds the lock for microseconds; a trainer starting at that moment retries for this long
# before it concludes that another trainer has the run.
_ACQUIRE_PATIENCE_S = 0.5


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def hold(run_dir: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold the run directory's lock for the duration of the block (created if missing)."""
    if not enabled or is_remote(run_dir):  # gs://: no flock there (module docstring)
        yield
        return
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        _raise_if_disk_full(e, path)
        raise
    try:
        deadline = time.monotonic() + _ACQUIRE_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = _holder(path)
                    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
                    raise UserError(
                        f"{run_dir} is being trained by another process ({who}, lock {path}); two trainers on "
                        "one run directory would overwrite each other's checkpoints. Wait for it to finish, "
                        "stop it, or use another trainer.run_dir"
                    ) from None
                time.sleep(0.02)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, jsonio.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        except OSError as e:  # closing the file below releases the lock
            _raise_if_disk_full(e, path)
            raise
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _raise_if_disk_full(error: OSError, path: Path) -> None:
    if diskspace.is_disk_full(error):
        raise diskspace.DiskFull(diskspace.line(
            f"could not write the run lock {path.name}", path.parent, cause=error.strerror or str(error),
            kept="nothing was trained or changed")) from error


def probe(run_dir: str | Path) -> dict | None:
    """The holder ({"pid", "host"}) if a trainer holds the run directory's lock now, else None. Takes the
    lock for an instant (non-blocking) when it is free. Always None on gs:// (no lock there)."""
    if is_remote(run_dir):
        return None
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder(path) or {"pid": None, "host": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
