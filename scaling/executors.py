"""Run a planned sweep: locally (one or N at a time), as Ray tasks, or on Cloud TPU VMs via gcloud.

Every executor launches the same thing per run -- `chinchax train <sweep>/configs/<run>.yaml` whose
trainer.run_dir is `<sweep>/runs/<run>` -- and talks to the run only through that config and its run.json.
That makes every executor idempotent in the same way (see `run_with_retries`):
- a run whose run.json says "done" is skipped;
- an interrupted run is simply launched again: the trainer resumes from its checkpoints in the same dir;
- a trainer stopped by a signal (exit code 75: it saved a checkpoint first, train/preemption.py) is not a
  failure and is not retried at once: its run stays interrupted, and the next `sweep run` resumes it;
- a failing run is retried up to `max_retries` times (not a full disk, exit code 74: a retry would meet
  the same disk); if it still fails, a failure marker with its exit code and the tail of its log is
  written, and the sweep goes on with the next run;
- a trainer does not outlive the process that launched it (Linux: the kernel sends it SIGTERM when that
  process dies, however it dies, so it saves and stops as on any SIGTERM); a trainer that outlived a dead
  driver anyway (started by hand, or by a driver before this) is waited for, and its run then resumed,
  by the next `sweep run`: only a live driver makes a `sweep run` refuse.
The train command is a parameter so tests can inject a fake trainer.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.fileio import files_under, is_remote, new_dir_atomic, remove_tree
from chinchax.jsonio import read_jsonl
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
from chinchax.scaling.sweep_config import RaySettings, TpuSettings
from chinchax.scaling.worker import WorkerPool
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


# --- local ------------------------------------------------------------------------------------------


def run_local(
    plan: Plan,
    sweep: SweepDir,
    *,
    parallel: int = 1,
    max_retries: int = 2,
    train_command: Sequence[str] = DEFAULT_TRAIN_COMMAND,
    skip_failed: bool = False,
    env: dict | None = None,
    progress: bool = True,
    workers: bool = False,
    pool: WorkerPool | None = None,
) -> list[Outcome]:
    """Each run as a `chinchax train` subprocess in its own directory, `parallel` at a time; with
    `workers`, in `parallel` long-lived worker processes that share compiled programs between runs of one
    shape (chinchax.scaling.worker); with `pool`, in those workers (the caller's: kept for its next sweep)."""
    if parallel < 1:
        raise UserError(f"--parallel={parallel} must be >= 1")
    if pool is not None:
        return _run_local(plan, sweep, parallel, max_retries, train_command, skip_failed, env, progress, pool.run)
    if workers:
        with WorkerPool(parallel, env) as pool:
            return _run_local(plan, sweep, parallel, max_retries, train_command, skip_failed, env, progress,
                              pool.run)
    return _run_local(plan, sweep, parallel, max_retries, train_command, skip_failed, env, progress, None)


def _run_local(plan, sweep, parallel, max_retries, train_command, skip_failed, env, progress, launch):
    outcomes, phases = plan_work(plan, sweep, skip_failed)
    bar = _progress(len(plan.runs), f"sweep {plan.name}") if progress else None
    if bar:
        bar.update(len(outcomes))

    def train_one(run: PlannedRun) -> Outcome:
        seed_branch(sweep, run, plan)
        config = write_run_config(sweep, run)
        return run_with_retries(run.run_id, str(config), _dir_str(sweep.run_dir(run.run_id)),
                                train_command, max_retries, env, launch)

    for phase in phases:
        # runs still held by a trainer a dead driver left behind go last: the others need not wait for them
        order = sorted(launch_order(phase), key=lambda r: trainer_holding(sweep.run_dir(r.run_id)) is not None)
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(train_one, r) for r in order]
            for future in as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                if bar:
                    bar.update(1)
                    bar.set_postfix(_counts(outcomes))
    if bar:
        bar.close()
    return _in_plan_order(plan, outcomes)


def launch_order(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """The order a local sweep starts its runs in: the largest budget first (its runs are the longest, and
    the short ones then fill in at the end, so parallel workers finish together), and within a budget every
    size of one seed before the next seed. Plans list a grid point's seeds side by side, which started two
    runs of one shape at once, each compiling the same programs; now the second finds them compiled (in its
    worker, or in the persistent compilation cache: 0.8 s instead of 4 s for a demo model here)."""
    return sorted(runs, key=lambda r: (-r.budget, r.seed))  # stable: sizes and families keep plan order


def _counts(outcomes: Sequence[Outcome]) -> dict:
    return {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "interrupted")}


def _in_plan_order(plan: Plan, outcomes: Sequence[Outcome]) -> list[Outcome]:
    order = {r.run_id: i for i, r in enumerate(plan.runs)}
    return sorted(outcomes, key=lambda o: order[o.run_id])


# The trainer's checkpoint layout (chinchax.train.checkpoint): <run_dir>/checkpoints/<step>/ with a manifest
# written once the step is complete. Named here rather than imported, to keep jax/orbax out of the sweep.
CHECKPOINTS = "checkpoints"
CHECKPOINT_MANIFEST = "chinchax_manifest.json"
ORBAX_COMMITTED = "commit_success.txt"  # with it but no manifest, a resume trusts the step (orbax committed it)
BRANCH_MARKER = "sweep_branch.json"


def seed_branch(sweep: SweepDir, run: PlannedRun, plan: Plan) -> bool:
    """WSD branch: copy the trunk's checkpoint at `branch_step` (train state + data-iterator position) and its
    metrics up to there into the branch's run dir; `chinchax train` then resumes from it with the branch's
    own config. Returns False (the run trains from scratch: same result, more FLOPs) if the trunk has no
    such checkpoint, e.g. because it failed."""
    if not run.branch_of:
        return False
    d = sweep.run_dir(run.run_id)
    if is_remote(d):
        return _seed_branch_remote(sweep, run)
    if (d / CHECKPOINTS).is_dir() and any((d / CHECKPOINTS).iterdir()):
        return True  # seeded before (or already training): the trainer resumes from what is there
    trunk_dir = sweep.run_dir(run.branch_of)
    source = trunk_dir / CHECKPOINTS / str(run.branch_step)
    if not (source / CHECKPOINT_MANIFEST).is_file():
        print(f"[sweep] {run.run_id}: trunk {run.branch_of} has no finished checkpoint at step "
              f"{run.branch_step}; training the branch from scratch", file=sys.stderr)
        return False
    d.mkdir(parents=True, exist_ok=True)
    with new_dir_atomic(d / CHECKPOINTS) as tmp:  # all or nothing: a half-copied checkpoint is never seen
        shutil.copytree(source, tmp / str(run.branch_step))
        _copy_metrics_until(trunk_dir, d, run.branch_step)
    write_atomic(d / BRANCH_MARKER, jsonio.dumps({"trunk": run.branch_of, "step": run.branch_step}))
    return True


def _seed_branch_remote(sweep: SweepDir, run: PlannedRun) -> bool:
    """`seed_branch` for a sweep dir on gs://, which has no rename: the files are copied into
    checkpoints/<step>/ with orbax's commit marker and the manifest last, so the trainer never trusts a
    half-copied step (a copy cut short leaves a step with neither, which the trainer sets aside: the branch
    trains from scratch)."""
    d, trunk_dir = sweep.run_dir(run.run_id), sweep.run_dir(run.branch_of)
    if (d / CHECKPOINTS).exists() and any((d / CHECKPOINTS).iterdir()):
        return True
    source = trunk_dir / CHECKPOINTS / str(run.branch_step)
    if not (source / CHECKPOINT_MANIFEST).is_file():
        print(f"[sweep] {run.run_id}: trunk {run.branch_of} has no finished checkpoint at step "
              f"{run.branch_step}; training the branch from scratch", file=sys.stderr)
        return False
    _copy_metrics_until(trunk_dir, d, run.branch_step)
    target = d / CHECKPOINTS / str(run.branch_step)
    files = {str(f.relative_to(source)): f for f in files_under(source)}
    last = [name for name in (ORBAX_COMMITTED, CHECKPOINT_MANIFEST) if name in files]
    try:
        for name in [n for n in files if n not in last] + last:
            dst = target / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(files[name].read_bytes())
    except BaseException:
        remove_tree(d / CHECKPOINTS)
        raise
    write_atomic(d / BRANCH_MARKER, jsonio.dumps({"trunk": run.branch_of, "step": run.branch_step}))
    return True


def _copy_metrics_until(trunk_dir, branch_dir, step: int) -> None:
    """The trunk's metrics.jsonl rows up to `step` become the branch's (the trainer drops later rows on resume
    anyway; copying only these keeps a branch that never trains consistent)."""
    if (trunk_dir / "metrics.jsonl").is_file():
        kept = [row for row in read_jsonl(trunk_dir / "metrics.jsonl") if row.get("step", math.inf) <= step]
        write_atomic(branch_dir / "metrics.jsonl", "".join(jsonio.dumps(row) + "\n" for row in kept))


# --- ray --------------------------------------------------------------------------------------------

# Ray names a node by its IP. Asked for 127.0.0.1 (ray.init(_node_ip_address=...), `ray start
# --node-ip-address`), Ray replaces it by the host's routable address (services.resolve_ip_for_localhost)
# unless its cluster mode is off (ray_constants.ENABLE_RAY_CLUSTER, from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER;
# off by default on macOS and Windows only). gcs_server, raylet and the workers bind their gRPC servers to
# 127.0.0.1 only when the node IP is 127.0.0.1, else to the wildcard address. Measured with ray 2.60.0 on
# Linux: `_node_ip_address="127.0.0.1"` alone left gcs_server, raylet, workers and the driver on [::]
# (every interface), the autoscaler monitor, dashboard head and dashboard agent on 0.0.0.0 (the agent also on
# the host's address), the runtime-env agent on the host's address; with cluster mode off around ray.init,
# every listener was on 127.0.0.1 (tests/test_scaling_ray.py checks this).
_RAY_CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK = "127.0.0.1"


class ray_on_loopback:  # noqa: N801 (a context manager, used like a function)
    """Ray's node IP resolution kept on 127.0.0.1 inside the block: a Ray instance started here listens on
    loopback only, and a driver can join a cluster whose nodes were started the same way. Both the module
    flag (read by the driver's process) and the environment variable (inherited by every process Ray
    spawns) are set, and both restored on exit; nodes started inside the block keep them."""

    def __enter__(self):
        try:  # private to Ray: if a version drops it, run_ray's check of the node IP still refuses
            from ray._private import ray_constants
        except ImportError:
            ray_constants = None
        self._constants = ray_constants
        self._saved = (os.environ.get(_RAY_CLUSTER_ENV), getattr(ray_constants, "ENABLE_RAY_CLUSTER", None))
        os.environ[_RAY_CLUSTER_ENV] = "0"
        if ray_constants is not None:
            ray_constants.ENABLE_RAY_CLUSTER = False
        return self

    def __exit__(self, *exc):
        env, flag = self._saved
        if env is None:
            os.environ.pop(_RAY_CLUSTER_ENV, None)
        else:
            os.environ[_RAY_CLUSTER_ENV] = env
        if self._constants is not None:
            self._constants.ENABLE_RAY_CLUSTER = flag
        return False


def _is_loopback_address(address: str) -> bool:
    host = address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def _ray_init(ray, settings: RaySettings, init_kwargs: dict | None) -> None:
    """Connect to settings.address, or start a private instance for this sweep that listens on 127.0.0.1 only
    (and is refused if this Ray version would not keep it there)."""
    kwargs = dict(include_dashboard=False, log_to_driver=False)
    private = not settings.address
    if private:
        kwargs["_node_ip_address"] = LOOPBACK
        # Authentication off is acceptable only because nothing but this machine can reach the instance
        # (any local user still can: docs/sweeps.md).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    else:
        kwargs["address"] = settings.address
    kwargs.update(init_kwargs or {})
    if private or _is_loopback_address(settings.address):
        with ray_on_loopback():
            ray.init(**kwargs)
    else:
        ray.init(**kwargs)
    if private and ray.util.get_node_ip_address() != LOOPBACK:
        where = ray.util.get_node_ip_address()
        ray.shutdown()
        raise UserError(
            f"this Ray version ({ray.__version__}) put the sweep's private Ray instance on {where}, not on "
            f"{LOOPBACK}; refusing to run it there with authentication off. Start a cluster you have secured "
            "and pass --ray-address"
        )


def _lost_with_its_worker(ray, error: BaseException) -> bool:
    """A Ray system failure -- the task's worker or node died (node lost, raylet killed, worker OOM-killed) --
    as opposed to an exception raised by run_with_retries itself (RayTaskError), which retrying won't fix."""
    return isinstance(error, ray.exceptions.RayError) and not isinstance(error, ray.exceptions.RayTaskError)


def run_ray(
    plan: Plan,
    sweep: SweepDir,
    settings: RaySettings,
    *,
    max_retries: int = 2,
    train_command: Sequence[str] = DEFAULT_TRAIN_COMMAND,
    skip_failed: bool = False,
    env: dict | None = None,
    progress: bool = True,
    init_kwargs: dict | None = None,
) -> list[Outcome]:
    """Each run as a Ray task declaring its resources; on a private local Ray instance (127.0.0.1 only, shut
    down at the end) or an existing cluster (settings.address).

    A task lost with its worker or node (a node preempted or killed mid-run) is submitted again, up to
    `max_retries` times, wherever Ray finds room: the trainer resumes from the run's newest checkpoint, and a
    run that finished before its node died is skipped, so no run is trained to completion twice. The run dirs
    must be on storage every Ray node sees (a shared filesystem) for a multi-node cluster."""
    try:
        import ray
    except ImportError:
        raise UserError("the ray executor needs Ray: pip install 'chinchax[ray]'") from None
    outcomes, phases = plan_work(plan, sweep, skip_failed)
    started_here = not ray.is_initialized()
    if started_here:
        _ray_init(ray, settings, init_kwargs)
    resources = {"TPU": settings.tpus} if settings.tpus else None
    # max_retries=0: the run's own failures are retried inside the task (run_with_retries), and a task lost
    # with its node is resubmitted below, where it is counted and reported.
    options = dict(num_cpus=settings.num_cpus, num_gpus=settings.num_gpus, resources=resources, max_retries=0)
    if settings.memory_gb:
        options["memory"] = int(settings.memory_gb * 2**30)
    remote = ray.remote(run_with_retries).options(**options)
    bar = _progress(len(plan.runs), f"sweep {plan.name} (ray)") if progress else None
    if bar:
        bar.update(len(outcomes))

    def submit(run: PlannedRun, config: Path):
        return remote.remote(run.run_id, str(config), _dir_str(sweep.run_dir(run.run_id)),
                             list(train_command), max_retries, env)

    try:
        for phase in phases:
            pending = {}  # ref -> (run, its config, tasks of this run lost so far)
            for run in phase:
                seed_branch(sweep, run, plan)
                config = write_run_config(sweep, run)
                pending[submit(run, config)] = (run, config, 0)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                run, config, lost = pending.pop(ready[0])
                try:
                    outcome = ray.get(ready[0])
                except Exception as e:
                    if _lost_with_its_worker(ray, e) and lost < max_retries:
                        print(f"[sweep] {run.run_id}: its Ray task was lost ({type(e).__name__}); submitting "
                              f"it again ({lost + 1}/{max_retries}): it resumes from its checkpoints",
                              file=sys.stderr)
                        pending[submit(run, config)] = (run, config, lost + 1)
                        continue
                    outcome = _record_lost_task(sweep, run, e, lost)
                if lost:  # attempts include the lost tasks; "skipped" = it finished before its node died
                    status = "done" if outcome.status == "skipped" else outcome.status
                    outcome = Outcome(outcome.run_id, status, outcome.attempts + lost, outcome.error)
                outcomes.append(outcome)
                if bar:
                    bar.update(1)
                    bar.set_postfix(_counts(outcomes))
    finally:
        if bar:
            bar.close()
        if started_here:
            ray.shutdown()
    return _in_plan_order(plan, outcomes)


def _record_lost_task(sweep: SweepDir, run: PlannedRun, error: BaseException, lost: int) -> Outcome:
    """The run's task died (or raised) `lost + 1` times: recorded as failed like any run that keeps failing,
    and the lock its dead task left behind removed (that task will never remove it)."""
    d = sweep.run_dir(run.run_id)
    message = f"ray task failed ({lost + 1} tasks lost): {type(error).__name__}: {error}"
    d.mkdir(parents=True, exist_ok=True)
    write_atomic(d / FAILED_MARKER, jsonio.dumps(
        {"status": "failed", "attempts": lost + 1, "returncode": None, "signal": None, "error": message[-4000:],
         "at": _now()}, indent=1))
    (d / LOCK_MARKER).unlink(missing_ok=True)
    return Outcome(run.run_id, "failed", lost + 1, message)


# --- Cloud TPU (gcloud) -----------------------------------------------------------------------------


def node_name(settings: TpuSettings, sweep_name: str, index: int) -> str:
    name = f"{settings.node_prefix}-{sweep_name}-{index}".lower().replace("_", "-")
    return "".join(c for c in name if c.isalnum() or c == "-")[:61]


def _where(settings: TpuSettings) -> list[str]:
    return [f"--zone={settings.zone}"] + ([f"--project={settings.project}"] if settings.project else [])


def tpu_create_commands(settings: TpuSettings, node: str, gcloud: str = "gcloud") -> list[list[str]]:
    spot = ["--spot"] if settings.spot else []
    if settings.queued:
        return [
            [gcloud, "compute", "tpus", "queued-resources", "create", node, f"--node-id={node}",
             f"--accelerator-type={settings.accelerator_type}", f"--runtime-version={settings.runtime_version}",
             *_where(settings), *spot],
        ]
    return [[gcloud, "compute", "tpus", "tpu-vm", "create", node, f"--accelerator-type={settings.accelerator_type}",
             f"--version={settings.runtime_version}", *_where(settings), *spot]]


def tpu_wait_command(settings: TpuSettings, node: str, gcloud: str = "gcloud") -> list[str]:
    """Prints the state (ACTIVE when the slice is up) -- polled until ACTIVE (queued resources only)."""
    return [gcloud, "compute", "tpus", "queued-resources", "describe", node, *_where(settings),
            "--format=value(state.state)"]


def tpu_ssh(settings: TpuSettings, node: str, command: str, gcloud: str = "gcloud") -> list[str]:
    """The same command on every host of the slice (`chinchax train` then joins them with
    jax.distributed.initialize(), which finds the coordinator by itself on Cloud TPU)."""
    return [gcloud, "compute", "tpus", "tpu-vm", "ssh", node, *_where(settings), "--worker=all",
            f"--command={command}"]


def tpu_run_commands(settings: TpuSettings, node: str, run: PlannedRun, config_path: Path, local_run_dir: Path,
                     gcloud: str = "gcloud") -> list[list[str]]:
    """Copy the run's config to every host, train on all hosts, fetch run.json + metrics back."""
    remote_cfg = f"chinchax_sweep/{run.run_id}.yaml"
    remote_dir = f"{settings.run_root.rstrip('/')}/{run.run_id}"
    return [
        [gcloud, "compute", "tpus", "tpu-vm", "ssh", node, *_where(settings), "--worker=all",
         "--command=mkdir -p chinchax_sweep"],
        [gcloud, "compute", "tpus", "tpu-vm", "scp", str(config_path), f"{node}:{remote_cfg}",
         *_where(settings), "--worker=all"],
        # CHINCHAX_DISTRIBUTED=1: every host joins one jax.distributed job (train/distributed.py)
        tpu_ssh(settings, node, f"CHINCHAX_DISTRIBUTED=1 chinchax train {remote_cfg}", gcloud),
        [gcloud, "storage", "cp", f"{remote_dir}/run.json", f"{remote_dir}/metrics.jsonl", f"{local_run_dir}/"],
    ]


def tpu_seed_branch_commands(settings: TpuSettings, run: PlannedRun, gcloud: str = "gcloud") -> list[list[str]]:
    """WSD branch on GCS, as `seed_branch` does locally: the trunk's checkpoint at the branch step and its
    metrics (the trainer drops the rows after the step it resumes from) go into the branch's run dir."""
    root = settings.run_root.rstrip("/")
    trunk, branch = f"{root}/{run.branch_of}", f"{root}/{run.run_id}"
    return [
        [gcloud, "storage", "cp", "--recursive", f"{trunk}/{CHECKPOINTS}/{run.branch_step}", f"{branch}/{CHECKPOINTS}/"],
        [gcloud, "storage", "cp", f"{trunk}/metrics.jsonl", f"{branch}/metrics.jsonl"],
    ]


def tpu_delete_command(settings: TpuSettings, node: str, gcloud: str = "gcloud") -> list[str]:
    if settings.queued:
        return [gcloud, "compute", "tpus", "queued-resources", "delete", node, *_where(settings), "--force",
                "--quiet"]
    return [gcloud, "compute", "tpus", "tpu-vm", "delete", node, *_where(settings), "--quiet"]


def run_tpu(
    plan: Plan,
    sweep: SweepDir,
    settings: TpuSettings,
    *,
    max_retries: int = 2,
    dry_run: bool = False,
    skip_failed: bool = False,
    gcloud: str = "gcloud",
    execute: Callable[[list[str]], subprocess.CompletedProcess] | None = None,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Create the slice(s), install chinchax on every host, train each run on all hosts of a slice,
    copy its run.json back, delete the slices. `dry_run` prints every command and runs none."""
    if not settings.run_root.startswith("gs://") and not dry_run:
        raise UserError(
            f"tpu.run_root={settings.run_root!r} must be a gs:// folder: every host of a slice writes there, and "
            "it must outlive the slice (set tpu.run_root=gs://BUCKET/sweeps/NAME)"
        )
    outcomes, phases = plan_work(plan, sweep, skip_failed)
    n_todo = sum(len(p) for p in phases)
    if not n_todo:
        return _in_plan_order(plan, outcomes)
    tpu = _TpuSweep(plan, sweep, settings, max_retries, dry_run, gcloud, execute, echo)
    nodes = [node_name(settings, plan.name, i) for i in range(min(settings.nodes, n_todo))]
    try:
        tpu.create(nodes)
        for phase in phases:
            outcomes += tpu.run_phase(nodes, phase)
    finally:
        if settings.delete_after:
            for node in nodes:
                tpu.do(tpu_delete_command(tpu.settings, node, gcloud), check=False)
    if dry_run:
        return [Outcome(o.run_id, "planned" if o.status == "done" else o.status) for o in _in_plan_order(plan, outcomes)]
    return _in_plan_order(plan, outcomes)


class _TpuSweep:
    """The steps of `run_tpu`, sharing its settings: every gcloud command goes through `do`."""

    def __init__(self, plan, sweep, settings: TpuSettings, max_retries, dry_run, gcloud, execute, echo):
        self.sweep, self.max_retries, self.dry_run, self.gcloud, self.echo = sweep, max_retries, dry_run, gcloud, echo
        self.root = (settings.run_root or f"gs://YOUR_BUCKET/chinchax/{plan.name}").rstrip("/")
        self.settings = settings if settings.run_root else _with_root(settings, self.root)
        self.execute = execute or (lambda cmd: subprocess.run(cmd, capture_output=True, text=True))

    def do(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess | None:
        self.echo(shlex.join(cmd))
        if self.dry_run:
            return None
        result = self.execute(cmd)
        if check and result.returncode:
            raise RuntimeError(f"`{shlex.join(cmd)}` failed ({result.returncode}): {(result.stderr or '')[-2000:]}")
        return result

    def create(self, nodes: list[str]) -> None:
        """Every slice created, then each waited for (queued resources) and set up."""
        for node in nodes:
            for cmd in tpu_create_commands(self.settings, node, self.gcloud):
                self.do(cmd)
        for node in nodes:
            if self.settings.queued:
                while True:
                    result = self.do(tpu_wait_command(self.settings, node, self.gcloud))
                    if self.dry_run or (result.stdout or "").strip() == "ACTIVE":
                        break
                    time.sleep(self.settings.poll_seconds)
            self.do(tpu_ssh(self.settings, node, self.settings.setup_command, self.gcloud))

    def run_phase(self, nodes: list[str], phase: list[PlannedRun]) -> list[Outcome]:
        """Runs go to the slices round-robin; slices work in parallel, each runs its share in turn."""
        shares = {node: phase[i :: len(nodes)] for i, node in enumerate(nodes)}
        if self.dry_run:  # print in a readable order
            return [o for node, share in shares.items() for o in self.work(node, share)]
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return [o for future in [pool.submit(self.work, n, s) for n, s in shares.items()] for o in future.result()]

    def work(self, node: str, share: list[PlannedRun]) -> list[Outcome]:
        return [self.train(node, run) for run in share]

    def train(self, node: str, run: PlannedRun) -> Outcome:
        local_dir = self.sweep.run_dir(run.run_id)
        if not self.dry_run:
            local_dir.mkdir(parents=True, exist_ok=True)
        if run.branch_of:
            self.seed(run)
        config = write_run_config(self.sweep, run, run_dir=f"{self.root}/{run.run_id}")
        error = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                for cmd in tpu_run_commands(self.settings, node, run, config, local_dir, self.gcloud):
                    self.do(cmd)
                return Outcome(run.run_id, "done", attempt)
            except RuntimeError as e:
                error = str(e)
        write_atomic(local_dir / FAILED_MARKER, jsonio.dumps(
            {"status": "failed", "attempts": self.max_retries + 1, "error": error, "at": _now()}))
        return Outcome(run.run_id, "failed", self.max_retries + 1, error)

    def seed(self, run: PlannedRun) -> None:
        """A branch starts from its trunk's checkpoint unless its own run dir has checkpoints already
        (seeded or trained before: re-seeding would replace its metrics with the trunk's)."""
        listing = self.do([self.gcloud, "storage", "ls", f"{self.root}/{run.run_id}/{CHECKPOINTS}/"], check=False)
        if listing is not None and listing.returncode == 0 and listing.stdout.strip():
            return
        for cmd in tpu_seed_branch_commands(self.settings, run, self.gcloud):
            result = self.do(cmd, check=False)
            if result is not None and result.returncode:
                self.echo(f"[sweep] {run.run_id}: no checkpoint of trunk {run.branch_of} at step {run.branch_step} "
                          "to start from; training the branch from scratch")
                return


def _with_root(settings: TpuSettings, root: str) -> TpuSettings:
    return dataclasses.replace(settings, run_root=root)
