"""The Ray executor: each run as a Ray task declaring its resources, on a private instance that listens on
127.0.0.1 only or on an existing cluster; a task lost with its node is submitted again."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.scaling.executors.branches import seed_branch
from chinchax.scaling.executors.common import (
    DEFAULT_TRAIN_COMMAND,
    Outcome,
    _counts,
    _dir_str,
    _in_plan_order,
    _now,
    _progress,
    plan_work,
    run_with_retries,
    write_run_config,
)
from chinchax.scaling.planned import Plan, PlannedRun
from chinchax.scaling.results import FAILED_MARKER, LOCK_MARKER, SweepDir, write_atomic
from chinchax.scaling.sweep_config import RaySettings

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

