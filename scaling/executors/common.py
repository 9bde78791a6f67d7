"""What every executor shares: one run trained to completion with retries (`run_with_retries`, the contract
the package docstring states), the runs still to launch, a run's config file, and outcomes."""

from __future__ import annotations

import datetime
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.fileio import is_remote
from chinchax.rundir import run_json_or_none
from chinchax.scaling.planned import Plan, PlannedRun
from chinchax.scaling.results import (
    FAILED_MARKER,
    LOCK_MARKER,
    TRAIN_LOG,
    SweepDir,
    driver_marker,
    trainer_holding,
    write_atomic,
)
from chinchax.train.diskspace import DISK_FULL_EXIT_CODE
from chinchax.train.preemption import PREEMPTED_EXIT_CODE

DEFAULT_TRAIN_COMMAND = (sys.executable, "-m", "chinchax.cli", "train")
EXECUTORS = ("local", "worker", "ray", "tpu")


@dataclass(frozen=True)
class Outcome:
    run_id: str
    status: str  # "done" | "failed" | "skipped" (already done) | "interrupted" (stopped by a signal: resume later)
    attempts: int = 0
    error: str = ""


def write_run_config(sweep: SweepDir, run: PlannedRun, run_dir: str | None = None) -> Path:
    """The run's resolved config with its run_dir filled in, as the YAML `chinchax train` is given: the one
    place a planned config becomes a file, for the trainer's process."""
    config = run.config  # plain data, a fresh copy (without trainer.run_dir)
    config["trainer"]["run_dir"] = run_dir or _dir_str(sweep.run_dir(run.run_id))
    path = sweep.config_path(run.run_id)
    write_atomic(path, yaml.safe_dump(config, sort_keys=False))
    return path


def _dir_str(path) -> str:
    """A run dir as the trainer is given it: absolute locally, the URI itself on gs://."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_with_retries(
    run_id: str,
    config_path: str,
    run_dir: str,
    train_command: Sequence[str] = DEFAULT_TRAIN_COMMAND,
    max_retries: int = 2,
    env: dict | None = None,
    launch: Callable[[str, Path], int] | None = None,
) -> Outcome:
    """Train one run to completion in its own subprocess, retrying failures; never raises for a bad run.
    `launch(config_path, log_path) -> exit code` replaces the subprocess (a long-lived worker's).

    Runs wherever it is called: in the sweep's process (local), or inside a Ray worker (ray)."""
    d = Path(run_dir)
    done = lambda: (run_json_or_none(d) or {}).get("status") == "done"  # noqa: E731
    if done():
        return Outcome(run_id, "skipped")
    d.mkdir(parents=True, exist_ok=True)
    (d / FAILED_MARKER).unlink(missing_ok=True)
    write_atomic(d / LOCK_MARKER, jsonio.dumps({**driver_marker(), "started": _now()}))
    if _wait_for_leftover_trainer(run_id, d) and done():  # it finished the run itself
        (d / LOCK_MARKER).unlink(missing_ok=True)
        return Outcome(run_id, "skipped")
    command = [*train_command, str(config_path)] if launch is None else ["chinchax", "train", str(config_path)]
    where = "" if launch is None else " (in a long-lived worker)"
    error, returncode = "", None
    try:
        for attempt in range(1, max_retries + 2):
            with open(d / TRAIN_LOG, "a") as log:
                log.write(f"\n=== attempt {attempt} at {_now()}: {shlex.join(command)}{where}\n")
                log.flush()
                if launch is None:
                    returncode = subprocess.run(
                        stop_with_parent(command), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                        env={**os.environ, **(env or {})},
                    ).returncode
            if launch is not None:
                returncode = launch(str(config_path), d / TRAIN_LOG)
            if returncode == 0 and done():
                return Outcome(run_id, "done", attempt)
            if returncode == PREEMPTED_EXIT_CODE:  # saved and stopped on a signal: no failure, no retry now
                return Outcome(run_id, "interrupted", attempt, _tail(d / TRAIN_LOG, 3))
            error = _tail(d / TRAIN_LOG) or exit_description(returncode)
            if returncode is not None and returncode < 0:  # the log cannot say: it died mid-line
                error += f"\n({exit_description(returncode)})"
            if returncode == 0:
                error += "\n(the train command exited 0 but wrote no run.json with status done)"
            if returncode == DISK_FULL_EXIT_CODE:  # its checkpoints are kept; the next `sweep run` resumes it
                break
        failure = {"status": "failed", "attempts": attempt, "returncode": returncode,
                   "signal": signal_name(returncode), "error": error, "command": command, "at": _now()}
        write_atomic(d / FAILED_MARKER, jsonio.dumps(failure, indent=1))
        return Outcome(run_id, "failed", attempt, error)
    finally:
        (d / LOCK_MARKER).unlink(missing_ok=True)


def _wait_for_leftover_trainer(run_id: str, run_dir: Path, poll_s: float = 0.2) -> bool:
    """Wait while a trainer that no live executor launched holds the run (one whose driver was killed: it
    stops on the SIGTERM the kernel sent it, after its checkpoint, or trains on if it was started without
    that); True if there was one. Never two trainers on one run dir: the second would refuse, and fail."""
    holder = trainer_holding(run_dir)
    if holder is None:
        return False
    print(f"[sweep] {run_id}: a trainer no running `sweep run` started (pid {holder.get('pid')}: its driver was "
          "killed, or it was started by hand) still holds the run; waiting for it to stop, then resuming the run "
          "from its checkpoints", file=sys.stderr, flush=True)
    while trainer_holding(run_dir) is not None:
        time.sleep(poll_s)
    return True


# Runs a command as the same process (exec) after asking the kernel to send it SIGTERM when the thread that
# started it dies (PR_SET_PDEATHSIG; kept across exec). A launcher rather than a preexec_fn: the driver has JAX's
# threads, and a fork that runs Python in the child before exec could deadlock (JAX warns of it on every fork).
_STOP_WITH_PARENT = """
import os, sys
try:
    import ctypes, signal
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)
except Exception:  # no prctl: the command runs as it would without this launcher
    pass
if os.getppid() != int(sys.argv[1]):  # the driver died before the prctl: nobody would send the signal
    sys.exit(75)
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as e:
    sys.exit(f"cannot run the train command {sys.argv[2]!r}: {e.strerror}")
"""


def stop_with_parent(command: Sequence[str]) -> list[str]:
    """`command`, sent SIGTERM by the kernel when the thread that starts it ends: when the driver dies, however
    it dies (a driver thread waits for its trainer, so it ends no sooner). A trainer then saves a checkpoint
    and exits 75, as on any SIGTERM. Linux only (elsewhere the command as it is)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _STOP_WITH_PARENT, str(os.getpid()), *command]


def signal_name(returncode: int | None) -> str | None:
    """SIGKILL for -9 (how subprocess reports a child killed by a signal); None for a normal exit."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def exit_description(returncode: int | None) -> str:
    name = signal_name(returncode)
    if name is None:
        return f"exit code {returncode}"
    hint = " (the OOM killer, or someone's kill -9)" if name == "SIGKILL" else ""
    return f"killed by {name}{hint}"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def runs_to_launch(plan: Plan, sweep: SweepDir, skip_failed: bool = False) -> list[PlannedRun]:
    """Runs that still need work, WSD trunks before the branches that start from their checkpoints."""
    todo = []
    for run in plan.runs:
        state = sweep.state(run.run_id)
        if state == "done" or (skip_failed and state == "failed"):
            continue
        driver = sweep.driver(run.run_id) if state == "running" else None
        if driver is not None:  # another `sweep run` is running this sweep: two would launch the same runs
            raise UserError(
                f"run {run.run_id} is running in another process (the `sweep run` of pid {driver.get('pid')} on "
                f"{driver.get('host')}, {sweep.run_dir(run.run_id) / LOCK_MARKER}); wait for it to finish, or stop "
                "that process; its runs resume from their checkpoints in the next `sweep run`"
            )
        todo.append(run)  # "running" with no live driver: a trainer it left behind, waited for at launch
    return sorted(todo, key=lambda r: bool(r.branch_of))


def plan_work(plan: Plan, sweep: SweepDir, skip_failed: bool = False) -> tuple[list[Outcome], list[list[PlannedRun]]]:
    """(outcomes of the runs with nothing to do, the runs to launch in phases): trunks and unbranched runs
    first, then the WSD branches, which start from a trunk's checkpoint and so wait for every trunk."""
    todo = runs_to_launch(plan, sweep, skip_failed)
    skipped = [Outcome(r.run_id, "skipped") for r in plan.runs if r not in todo]
    return skipped, [[r for r in todo if not r.branch_of], [r for r in todo if r.branch_of]]


def _progress(total: int, desc: str):
    return tqdm(total=total, desc=desc, unit="run", dynamic_ncols=True, file=sys.stderr)


def _counts(outcomes: Sequence[Outcome]) -> dict:
    return {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "interrupted")}


def _in_plan_order(plan: Plan, outcomes: Sequence[Outcome]) -> list[Outcome]:
    order = {r.run_id: i for i, r in enumerate(plan.runs)}
    return sorted(outcomes, key=lambda o: order[o.run_id])
