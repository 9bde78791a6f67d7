"""A full disk while training: one line naming what could not be written, where, how much room it needed and
the fix (free space, run the same command again: it resumes), instead of raw OSErrors and orbax's tracebacks.

`DiskFull` is a UserError (the CLI prints it as one line, no traceback); `chinchax train` exits with
`DISK_FULL_EXIT_CODE` (74, EX_IOERR of sysexits.h), which the sweep executors record as failed without
retrying at once (a retry would meet the same full disk). Light on purpose (no jax): the executors import it.

Orbax writes arrays through tensorstore in background threads. When its save fails, orbax logs the error with
a traceback from each thread it passes through, and leaves behind writes that finish after orbax closed their
event loop ("RuntimeError: Event loop is closed", reported by Python as unraisable) and coroutines that are
collected at interpreter shutdown ("ImportError: sys.meta_path is None"). `quiet_orbax_disk_full` drops
orbax's log records whose cause is a full disk (the Checkpointer raises DiskFull with the same facts, once)
and the "Event loop is closed" reports, which say nothing but that a write outlived its abandoned loop; the
Checkpointer collects the abandoned coroutines at close. Every other orbax error is printed as before.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sys
import threading
from pathlib import Path

from chinchax.errors import UserError

DISK_FULL_EXIT_CODE = 74
_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How tensorstore (orbax's array writer) words ENOSPC/EDQUOT: it raises ValueError("RESOURCE_EXHAUSTED: ...").
_MARKERS = ("No space left on device", "Disk quota exceeded", "os_error_code='28'", "os_error_code='122'")


class DiskFull(UserError):
    """A write failed because the disk (or the user's quota) is full; the message names what, where and the fix."""


def is_disk_full(error: BaseException | None) -> bool:
    """True if `error`, or an exception it was raised from or while handling, is a full disk or quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DiskFull):
            return True
        if isinstance(error, OSError) and error.errno in _ERRNOS:
            return True
        if any(m in str(error) for m in _MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def human(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def free_bytes(path) -> int | None:
    """Bytes this user may still write on the filesystem of `path` (its nearest existing parent); None for a
    URI (gs://: no such limit) or when it cannot be told."""
    if "://" in str(path):
        return None
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        usage = shutil.disk_usage(p)
    except OSError:
        return None
    return usage.free if usage.total else None  # some FUSE filesystems report 0 of 0: no answer


FIX = "Free space on that disk (or set trainer.run_dir on another), then run the same command again"


def short_cause(text: str) -> str:
    """'No space left on device' out of an error's text (tensorstore's runs to several lines of paths)."""
    return next((m for m in _MARKERS[:2] if m in text), "")


def line(what: str, where, *, need: int | None = None, free: int | None = None, cause: str = "",
         kept: str = "", resume: str = "it resumes from its newest checkpoint") -> str:
    """The one line: 'disk full: <what> in <where> (<cause>, needs about X, Y free); <kept>. <fix>: <resume>'."""
    if free is None:
        free = free_bytes(where)
    facts = [cause] if cause else []
    if need is not None:
        facts.append(f"needs about {human(need)}")
    if free is not None:
        facts.append(f"{human(free)} free")
    return (f"disk full: {what} in {where}" + (f" ({', '.join(facts)})" if facts else "")
            + (f"; {kept}" if kept else "") + f". {FIX}: {resume}")


def from_os_error(error: BaseException) -> DiskFull:
    """A DiskFull for an OSError(ENOSPC) raised while writing one of the run's files (its name said)."""
    target = getattr(error, "filename", None)
    what = f"could not write {Path(target).name}" if target else "could not write a file"
    where = Path(target).parent if target else "the run directory"
    cause = getattr(error, "strerror", None) or short_cause(str(error)) or "no space left on device"
    return DiskFull(line(what, where, cause=cause))


# --- orbax's reports of a full disk, replaced by our one line ------------------------------------------------
class _Seen:
    """The first disk-full error orbax reported since `take()` (its text), for the Checkpointer's message."""

    def __init__(self):
        self._lock = threading.Lock()
        self._first: str | None = None

    def note(self, text: str) -> None:
        with self._lock:
            self._first = self._first or text

    def take(self) -> str | None:
        with self._lock:
            first, self._first = self._first, None
            return first


SEEN = _Seen()


class _DropDiskFull(logging.Filter):
    """On absl's logger (orbax logs through it): records whose error is a full disk are noted, not printed."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: let logging report it as it would
            return True
        if is_disk_full(error) or any(m in text for m in _MARKERS):
            SEEN.note(str(error) if error is not None else text)
            return False
        return True


def _loop_closed(unraisable) -> bool:
    """A tensorstore write that finished after orbax gave up on the save and closed its event loop."""
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


def quiet_orbax_disk_full() -> None:
    """Install the filters (idempotent; the unraisable hook is chained, and put back if someone replaced it)."""
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _DropDiskFull) for f in absl.filters):
        absl.addFilter(_DropDiskFull())
    hook = sys.unraisablehook
    if getattr(hook, "_chinchax_quiet", False):
        return

    def quiet(unraisable, _previous=hook):
        if not _loop_closed(unraisable):
            _previous(unraisable)

    quiet._chinchax_quiet = True
    sys.unraisablehook = quiet
