"""`chinchax fit`, `chinchax optimal`, `chinchax plot`: the scaling-law face of the CLI.

Heavy imports (jax, pandas, matplotlib) happen inside the handlers so `chinchax --help` stays fast.
"""

from __future__ import annotations

import json
import sys

FIT_LAWS = ("chinchilla-1", "chinchilla-2", "chinchilla-3", "kaplan", "data-constrained")


def register(subparsers) -> None:
    fit = subparsers.add_parser(
        "fit", help="fit a scaling law to a results table",
        description="Fit Kaplan or Chinchilla (approach 1, 2, 3, data-constrained) laws to a results table "
        "(CSV, Parquet or a sweep directory of run.json) with bootstrap intervals over runs; write JSON.",
    )
    fit.add_argument("table", help="results.csv / .parquet / sweep directory")
    fit.add_argument("--law", choices=FIT_LAWS, default="chinchilla-3")
    fit.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples over runs (default 200)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--holdout", choices=("none", "largest"), default="none",
                     help="'largest': fit without the largest-budget runs and report the error on them")
    fit.add_argument("--approach2-bootstrap", choices=("auto", "runs", "parametric"), default="auto",
                     help="approach 2: resample runs per budget, or redraw losses around the fitted parabolas "
                     "(auto: runs when every budget has >= 6 sizes)")
    fit.add_argument("--coarse-grid", action="store_true",
                     help="approach 3: 108 starts instead of Chinchilla's 4,500 (quick looks)")
    fit.add_argument("--flops", type=float, action="append", default=[],
                     help="also print N_opt, D_opt with intervals at this budget (repeatable)")
    fit.add_argument("--out", "-o", help="write the fit as JSON here (read by `chinchax optimal --law`)")
    fit.set_defaults(handler=_fit)

    opt = subparsers.add_parser(
        "optimal", help="compute-optimal N and D for a budget",
        description="Optimal parameters N and tokens D for a FLOP budget under the published laws "
        "(chinchilla-1/2/3, kaplan) and/or your own fit JSON; or convert GPU-hours to FLOPs first.",
    )
    opt.add_argument("--flops", type=float, help="training budget in FLOPs, e.g. 2.36e23")
    opt.add_argument("--gpu-hours", type=float, help="budget in accelerator-hours (with --device, --mfu)")
    opt.add_argument("--device", default="a100", help="accelerator for --gpu-hours (a100, h100, tpu-v4, ...)")
    opt.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for --gpu-hours")
    opt.add_argument("--law", action="append", default=[],
                     help="chinchilla-1|chinchilla-2|chinchilla-3|kaplan|FIT.json (repeatable; default: all published)")
    opt.add_argument("--json", action="store_true", help="print JSON instead of a table")
    opt.set_defaults(handler=_optimal)

    plot = subparsers.add_parser(
        "plot", help="scaling plots (PNG + SVG)",
        description="isoflop, frontier (loss vs compute), allocation (N_opt, D_opt with bootstrap bands), "
        "contours (approach-3 loss over N, D), bloomberg (laws vs compute with well-known models).",
    )
    plot.add_argument("kind", choices=("isoflop", "frontier", "allocation", "contours", "bloomberg", "all"))
    plot.add_argument("--table", help="results table (isoflop, frontier)")
    plot.add_argument("--fit", action="append", default=[], help="fit JSON (allocation, contours, bloomberg)")
    plot.add_argument("--out", "-o", default="plots", help="output directory (default ./plots)")
    plot.set_defaults(handler=_plot)


def run_fit(table, law: str, *, n_bootstrap: int = 200, seed: int = 0, holdout: str | None = None,
            coarse_grid: bool = False, approach2_bootstrap: str = "auto"):
    """Python entry point used by the CLI and the demo: table (path or DataFrame) -> FitResult."""
    from chinchax.errors import UserError
    from chinchax.scaling.table import load_table

    if n_bootstrap < 2:
        raise UserError(f"--bootstrap must be at least 2, got {n_bootstrap}")
    df = load_table(table)
    holdout = None if holdout in (None, "none") else holdout
    if law == "chinchilla-1":
        from chinchax.scaling.fit_chinchilla import fit_approach1

        return fit_approach1(df, n_bootstrap=n_bootstrap, seed=seed, holdout=holdout)
    if law == "chinchilla-2":
        from chinchax.scaling.fit_chinchilla import fit_approach2

        return fit_approach2(df, n_bootstrap=n_bootstrap, seed=seed, holdout=holdout, bootstrap=approach2_bootstrap)
    if law == "kaplan":
        from chinchax.scaling.fit_kaplan import fit_kaplan

        return fit_kaplan(df, n_bootstrap=n_bootstrap, seed=seed, holdout=holdout)
    from chinchax.scaling.fit_parametric import chinchilla_grid, fit_approach3

    return fit_approach3(df, n_bootstrap=n_bootstrap, seed=seed, holdout=holdout,
                         grid=chinchilla_grid(coarse=coarse_grid), data_constrained=law == "data-constrained")


def _fit(args) -> int:
    result = run_fit(args.table, args.law, n_bootstrap=args.bootstrap, seed=args.seed,
                     holdout=args.holdout, coarse_grid=args.coarse_grid,
                     approach2_bootstrap=args.approach2_bootstrap)
    method = result.extra.get("bootstrap_method", "runs")
    print(f"{result.law}: {result.n_runs} runs, {result.n_bootstrap} bootstrap resamples ({method}, seed {result.seed})")
    for name, value in result.params.items():
        lo, hi = result.intervals.get(name, [None, None])
        iv = f"[{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else ""
        print(f"  {name:14s} {value:12.5g}  95% {iv}")
    for flops in args.flops:
        n, n_lo, n_hi = result.n_opt(flops)
        d, d_lo, d_hi = result.d_opt(flops)
        print(f"  at C={flops:.3g}: N_opt={n:.4g} [{n_lo:.3g}, {n_hi:.3g}]  D_opt={d:.4g} [{d_lo:.3g}, {d_hi:.3g}]")
    if result.holdout:
        print("  held-out:", json.dumps({k: v for k, v in result.holdout.items() if k != "runs"}))
    if args.out:
        print(f"wrote {result.to_json(args.out)}")
    return 0


def _optimal(args) -> int:
    from chinchax.errors import UserError
    from chinchax.scaling.optimal import allocation_rows, format_rows, gpu_hours_to_flops

    if (args.flops is None) == (args.gpu_hours is None):
        raise UserError("give exactly one of --flops or --gpu-hours")
    flops = args.flops if args.flops is not None else gpu_hours_to_flops(args.gpu_hours, args.device, args.mfu)
    rows = allocation_rows(flops, args.law or None)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        if args.gpu_hours is not None:
            print(f"{args.gpu_hours:.3g} {args.device} hours at MFU {args.mfu} = {flops:.3g} FLOPs")
        print(format_rows(rows))
    return 0


def _plot(args) -> int:
    from pathlib import Path

    from chinchax.errors import UserError
    from chinchax.scaling import plots
    from chinchax.scaling.fitresult import FitResult
    from chinchax.scaling.laws import ParametricLaw
    from chinchax.scaling.table import load_table

    kinds = plots.KINDS if args.kind == "all" else (args.kind,)
    out = Path(args.out)
    fits = [FitResult.from_json(f) for f in args.fit]
    table = load_table(args.table) if args.table else None
    written = []
    if args.kind == "all":  # draw what the given inputs allow
        kinds = [k for k in kinds if (k not in ("isoflop", "frontier") or table is not None)
                 and (k != "allocation" or fits)]
    for kind in kinds:
        if kind in ("isoflop", "frontier"):
            if table is None:
                raise UserError(f"`chinchax plot {kind}` needs --table RESULTS")
            fn = plots.plot_isoflop if kind == "isoflop" else plots.plot_frontier
            written += fn(table, out / kind)
        elif kind == "allocation":
            if not fits:
                raise UserError("`chinchax plot allocation` needs --fit FIT.json")
            for i, fit in enumerate(fits):
                written += plots.plot_allocation(fit, out / f"allocation_{i}_{fit.law}")
        elif kind == "contours":
            params = next((f.params for f in fits if "alpha" in f.params and "E" in f.params), None)
            law = ParametricLaw(*(params[k] for k in ("E", "A", "B", "alpha", "beta"))) if params else None
            written += plots.plot_contours(law, out / "contours",
                                           title="your approach-3 fit" if law else "Chinchilla approach 3")
        else:
            written += plots.plot_bloomberg(out / "bloomberg", fits)
    for path in written:
        print(f"wrote {path}")
    return 0
