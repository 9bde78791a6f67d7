"""The local executor: each run as a `chinchax train` subprocess, or in a long-lived worker process
(chinchax.scaling.worker), `parallel` at a time."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from chinchax.errors import UserError
from chinchax.scaling.executors.branches import seed_branch
from chinchax.scaling.executors.common import (
    DEFAULT_TRAIN_COMMAND,
    Outcome,
    _counts,
    _dir_str,
    _in_plan_order,
    _progress,
    plan_work,
    run_with_retries,
    write_run_config,
)
from chinchax.scaling.planned import Plan, PlannedRun
from chinchax.scaling.results import SweepDir, trainer_holding
from chinchax.scaling.worker import WorkerPool


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

