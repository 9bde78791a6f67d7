"""How many cores XLA:CPU computes a run with: part of its config, so the floats do not depend on who ran it.

XLA:CPU splits a reduction (a sum over the batch, a norm's mean) into one piece per thread of its pool, and
its pool has one thread per core the process may use (its CPU affinity when the backend starts). Measured
here (jax 0.10.2, 2-core machine): the same jitted column sum gives other bits on 1 core than on 2, while
matmuls agree bit for bit. A sweep worker pinned to one core, a `chinchax train` on every core and a
machine with more cores therefore trained the same config to different losses (0.04 nats apart at d16 in
the demo sweep, more than its seed noise; docs/training.md).

`trainer.cpu_threads: N` settles it: before JAX starts its CPU backend the process pins itself to N cores,
so every executor, and a plain `chinchax train` of the same config, computes with N threads. Processes that
share a machine take different cores: each holds an advisory lock (flock, released when it exits) on one
file per core it uses; when every core is taken the run shares cores (slower, the same floats). `None`
keeps every core the process may use (XLA's default; the count is recorded in run.json).
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from chinchax.errors import UserError

_held: list[int] = []  # lock files of the cores this process took (open for its lifetime)
_pinned: int | None = None  # cores this process pinned itself to, once it has


def _backend_started() -> bool:
    from jax._src import xla_bridge  # no public query; guarded below if it moves

    return bool(getattr(xla_bridge, "_backends", {}))


def cores_in_use() -> int:
    return len(os.sched_getaffinity(0))


def compatible(threads: int | None) -> bool:
    """Whether this process can train a run asking for `threads`: always before JAX starts; after, only with
    the count its thread pool was started with (a worker that started otherwise needs a fresh process)."""
    if not _backend_started():
        return True
    if _pinned is not None:
        return threads == _pinned
    return threads is None or threads == cores_in_use()


def pin(threads: int | None) -> None:
    """Pin this process to `threads` cores before JAX's CPU backend starts (see the module docstring)."""
    global _pinned
    if not compatible(threads):
        now = f"{_pinned} pinned core(s)" if _pinned is not None else f"{cores_in_use()} core(s)"
        raise UserError(
            f"trainer.cpu_threads={threads}: JAX already computes on {now} in this process and its thread "
            "pool is fixed; train this run in a fresh process (`chinchax train CONFIG`)"
        )
    if threads is None or _backend_started() or threads == _pinned:
        return
    cores = sorted(os.sched_getaffinity(0))
    if threads > len(cores):
        raise UserError(
            f"trainer.cpu_threads={threads} but this process may use only {len(cores)} core(s); "
            f"set trainer.cpu_threads to at most {len(cores)}, or null for every core"
        )
    groups = [cores[i:i + threads] for i in range(0, len(cores) - threads + 1, threads)]
    chosen = next((g for g in groups if _lock_all(g)), None)
    if chosen is None:  # every core is taken by other runs: share (the floats depend on the count only)
        chosen = groups[os.getpid() % len(groups)]
    os.sched_setaffinity(0, chosen)
    _pinned = threads


def _lock_all(cores: list[int]) -> bool:
    fds = []
    for core in cores:
        fd = os.open(_lock_dir() / f"core-{core}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            for held in fds:
                os.close(held)
            return False
        fds.append(fd)
    _held.extend(fds)
    return True


def _lock_dir() -> Path:
    path = Path(os.environ.get("CHINCHAX_CPU_LOCK_DIR") or Path(tempfile.gettempdir()) / f"chinchax-cores-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path
