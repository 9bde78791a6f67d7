"""`chinchax sweep plan|run|status|collect`: isoFLOP sweeps from a sweep YAML."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from chinchax.errors import UserError


def register(subparsers) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="plan, run and collect isoFLOP sweeps (local, Ray, Cloud TPU)",
        description="Plan an isoFLOP sweep (FLOP budgets x model sizes) from a sweep YAML, run it locally, on "
        "a Ray cluster or on Cloud TPU VMs, watch its state, and collect results.csv for `chinchax fit`.",
    )
    sub = sweep.add_subparsers(dest="sweep_command", metavar="SWEEP_COMMAND")

    def common(p: argparse.ArgumentParser, overrides: bool = True) -> None:
        p.add_argument("sweep", help="sweep YAML (e.g. experiments/demo_sweep.yaml), or a sweep directory")
        if overrides:
            p.add_argument("overrides", nargs="*", help="dotted overrides of the sweep, e.g. budgets=[1e12,3e12]")
        p.add_argument("--out", help="sweep directory (default: runs/sweeps/<name>)")

    p = sub.add_parser("plan", help="print and save the plan table", description="Plan the sweep: one resolved "
                       "training config per (budget, size); prints the table and saves plan.json / plan.csv.")
    common(p)
    p.set_defaults(handler=_plan)

    p = sub.add_parser("run", help="run every unfinished run of the sweep", description="Run the sweep. "
                       "Idempotent: finished runs are skipped, interrupted ones resume from their checkpoints, "
                       "failing ones are retried and then recorded as failed while the rest go on. Exit code 1 when a "
                       "run failed, 75 when none failed but a signal stopped some (run it again to resume them).")
    common(p)
    p.add_argument("--executor", choices=("local", "worker", "ray", "tpu"), default="local",
                   help="local: a `chinchax train` subprocess per run (default); worker: --parallel long-lived "
                   "processes that each train many runs and share compiled programs between runs of one "
                   "shape (fastest for sweeps of small models); ray: Ray tasks; tpu: Cloud TPU VMs via gcloud")
    p.add_argument("--parallel", type=int, default=1, help="local, worker: runs at a time (default 1)")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a failing run (default 2)")
    p.add_argument("--skip-failed", action="store_true", help="do not retry runs recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="tpu: print every gcloud command, run nothing")
    p.add_argument("--ray-address", help="ray: an existing cluster (default: ray.address in the sweep, or local)")
    p.add_argument("--train-command", help="the trainer to launch (default: this Python's `chinchax train`)")
    p.set_defaults(handler=_run)

    p = sub.add_parser("status", help="planned / running / interrupted / failed / done per run")
    common(p, overrides=False)
    p.set_defaults(handler=_status)

    p = sub.add_parser("collect", help="write results.csv and curves.csv from finished runs")
    common(p, overrides=False)
    p.set_defaults(handler=_collect)
    sweep.set_defaults(handler=lambda args: (sweep.print_help(), 0)[1])


def _open(args, plan_fresh: bool):
    """(plan, SweepDir, SweepConfig | None) from a YAML (planned now) or a sweep dir (its saved plan)."""
    from chinchax.fileio import is_remote
    from chinchax.scaling.plan import load_sweep, plan_sweep
    from chinchax.scaling.results import SweepDir
    from chinchax.scaling.sweep_config import check_sizes_for_fits

    path = Path(args.sweep)
    if is_remote(args.sweep) or path.is_dir():  # a sweep dir, local or gs:// (e.g. `sweep collect gs://b/s`)
        if getattr(args, "overrides", None):
            raise UserError("overrides apply to a sweep YAML, not to a sweep directory")
        sweep = SweepDir(args.out or args.sweep)
        return sweep.load_plan(), sweep, None
    cfg, base_dir = load_sweep(path, getattr(args, "overrides", None) or [])
    sweep = SweepDir(args.out or Path("runs") / "sweeps" / cfg.name)
    if not plan_fresh and sweep.plan_path.exists():
        return sweep.load_plan(), sweep, cfg
    warning = check_sizes_for_fits(cfg)
    if warning:
        print(f"chinchax sweep: warning: {warning}", file=sys.stderr)
    plan = plan_sweep(cfg, base_dir)
    if not plan.runs:
        raise UserError(f"the sweep plans no runs:\n{plan.table()}\nraise the budgets or lower sizes.min_steps")
    sweep.write_plan(plan)
    return plan, sweep, cfg


def _plan(args) -> int:
    plan, sweep, _ = _open(args, plan_fresh=True)
    print(plan.table())
    print(f"plan saved to {sweep.plan_path} and {sweep.root / 'plan.csv'}")
    return 0


def _run(args) -> int:
    from chinchax.scaling import executors

    plan, sweep, cfg = _open(args, plan_fresh=True)
    print(plan.table(), file=sys.stderr)
    train = tuple(shlex.split(args.train_command)) if args.train_command else executors.DEFAULT_TRAIN_COMMAND
    if args.executor in ("local", "worker"):
        if args.executor == "worker" and args.train_command:
            raise UserError("--train-command applies to the local executor; the worker executor trains in-process")
        outcomes = executors.run_local(plan, sweep, parallel=args.parallel, max_retries=args.max_retries,
                                       train_command=train, skip_failed=args.skip_failed,
                                       workers=args.executor == "worker")
    elif args.executor == "ray":
        from chinchax.scaling.plan import RaySettings

        settings = cfg.ray if cfg else RaySettings()
        if args.ray_address:
            import dataclasses

            settings = dataclasses.replace(settings, address=args.ray_address)
        outcomes = executors.run_ray(plan, sweep, settings, max_retries=args.max_retries, train_command=train,
                                     skip_failed=args.skip_failed)
    else:
        from chinchax.scaling.plan import TpuSettings

        outcomes = executors.run_tpu(plan, sweep, cfg.tpu if cfg else TpuSettings(), max_retries=args.max_retries,
                                     dry_run=args.dry_run, skip_failed=args.skip_failed)
    if args.dry_run and args.executor == "tpu":
        return 0
    print(sweep.status_table(plan))
    from chinchax.scaling.results import collect

    rows, _ = collect(sweep, plan)
    print(f"{len(rows)} finished runs collected into {sweep.root / 'results.csv'}")
    if any(o.status == "failed" for o in outcomes):
        return 1
    interrupted = [o.run_id for o in outcomes if o.status == "interrupted"]
    if interrupted:  # stopped by a signal after saving: not a failure, but not finished either
        from chinchax.train.preemption import PREEMPTED_EXIT_CODE

        print(f"{len(interrupted)} runs interrupted by a signal ({', '.join(interrupted[:5])}"
              f"{', ...' if len(interrupted) > 5 else ''}): run the same `sweep run` again to resume them "
              f"(exit code {PREEMPTED_EXIT_CODE})", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    return 0


def _status(args) -> int:
    plan, sweep, _ = _open(args, plan_fresh=False)
    print(sweep.status_table(plan))
    return 0


def _collect(args) -> int:
    from chinchax.scaling.results import collect

    plan, sweep, _ = _open(args, plan_fresh=False)
    rows, curves = collect(sweep, plan)
    print(f"{len(rows)} of {len(plan.runs)} runs finished; wrote {sweep.root / 'results.csv'} "
          f"and {sweep.root / 'curves.csv'} ({len(curves)} curve points)")
    return 0
