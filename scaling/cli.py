"""`chinchax fit`, `chinchax fit-hparams`, `chinchax optimal`, `chinchax plot`: the scaling-law face of the CLI.

Heavy imports (jax, pandas, matplotlib) happen inside the handlers so `chinchax --help` stays fast.
"""

from __future__ import annotations

import sys

from chinchax import jsonio
from chinchax.compute import training_flops

FIT_LAWS = ("chinchilla-1", "chinchilla-2", "chinchilla-3", "kaplan-3", "kaplan", "data-constrained")


def register(subparsers) -> None:
    fit = subparsers.add_parser(
        "fit", help="fit a scaling law to a results table",
        description="Fit Kaplan or Chinchilla (approach 1, 2, 3, data-constrained) laws to a results table "
        "(CSV, Parquet or a sweep directory of run.json) with bootstrap intervals over runs; write JSON. "
        "kaplan-3 is approach 3's fit of Kaplan's joint L(N, D) with an irreducible loss, E + (A/N^alpha + B/D)^gamma.",
    )
    fit.add_argument("table", help="results.csv / .parquet / sweep directory")
    fit.add_argument("--law", choices=FIT_LAWS, default="chinchilla-3")
    fit.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples over runs (default 200)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--holdout", default="none", metavar="SPEC",
                     help="fit on part of the table and score the rest. 'largest': without the largest budget's runs "
                     "(every law); for approach 3 also 'largest-budgets:K' (fit on all but the K largest budgets), "
                     "'largest-models:K' (all but the K largest model sizes), or a filter 'COLUMN>VALUE' "
                     "(<, <=, >, >=, ==) naming the runs to hold out; reports mean and max |relative error| of the loss")
    fit.add_argument("--tie-exponents", action="store_true",
                     help="approach 3: fit alpha = beta (Gadre et al. 2024), one parameter fewer")
    fit.add_argument("--fix-E", type=float, default=None, metavar="VALUE",
                     help="approach 3: hold the irreducible loss E at VALUE, one parameter fewer")
    fit.add_argument("--approach2-bootstrap", choices=("auto", "runs", "parametric"), default="auto",
                     help="approach 2: resample runs per budget, or redraw losses around the fitted parabolas "
                     "(auto: runs when every budget has >= 6 sizes)")
    fit.add_argument("--coarse-grid", action="store_true",
                     help="approach 3: 108 starts instead of Chinchilla's 4,500 (quick looks)")
    fit.add_argument("--flops", type=float, action="append", default=[],
                     help="also print N_opt, D_opt with intervals at this budget (repeatable)")
    fit.add_argument("--out", "-o", help="write the fit as JSON here (read by `chinchax optimal --law`)")
    fit.add_argument("--plots", metavar="DIR", help="draw the isoFLOP, frontier, allocation (and approach 3's "
                     "contour) plots into DIR")
    from chinchax.scaling.wandb_report import add_wandb_arguments

    add_wandb_arguments(fit, "one analysis run with the table, the fitted parameters and intervals, the plots")
    fit.set_defaults(handler=_fit)

    hp = subparsers.add_parser(
        "fit-hparams", help="fit the compute-optimal learning rate and batch as power laws of compute",
        description="Fit eta_opt = a*C^b and B_opt = c*C^d (batch in tokens) the way DeepSeek LLM (2024) did: per "
        "budget take every configuration whose loss is within --tolerance of the budget's best, fit log lr and log "
        "batch against log C over all of them; 95% bootstrap intervals over budgets (widened for few budgets). The CSV has one row per run: "
        "flops (C = M*D, M the non-embedding FLOPs per token; one value per budget), learning_rate, batch_tokens, "
        "loss, and optionally seed (replicates are averaged).",
    )
    hp.add_argument("table", help="grid CSV: flops, learning_rate, batch_tokens, loss[, seed]")
    hp.add_argument("--tolerance", type=float, default=0.0025,
                    help="near-optimal: loss within this relative difference of the budget's best (default 0.0025, "
                    "DeepSeek's 0.25%%)")
    hp.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of budgets (default 200)")
    hp.add_argument("--seed", type=int, default=0)
    hp.add_argument("--flops", type=float, action="append", default=[],
                    help="also print the lr and batch with intervals at this C = M*D (repeatable)")
    hp.add_argument("--out", "-o", help="write the law as JSON here (read by `chinchax optimal --hparams-law` and "
                    "the sweep planner's hparams.law)")
    hp.set_defaults(handler=_fit_hparams)

    pred = subparsers.add_parser(
        "predict", help="loss predicted by an approach-3 fit, with its bootstrap interval",
        description="The loss of a model of N parameters trained on D tokens (--n-params, --tokens), and/or the "
        "compute-optimal N, D and loss for a FLOP budget (--flops), from an approach-3 fit JSON "
        "(`chinchax fit TABLE --law chinchilla-3 -o FIT.json`), with 95% bootstrap intervals.",
    )
    pred.add_argument("fit", help="fit JSON written by `chinchax fit --law chinchilla-3 --out`")
    pred.add_argument("--n-params", type=float, help="parameters N (with --tokens)")
    pred.add_argument("--tokens", type=float, help="training tokens D (with --n-params)")
    pred.add_argument("--flops", type=float, action="append", default=[],
                      help="budget C = 6ND: N_opt, D_opt and the loss on the compute-optimal frontier (repeatable)")
    pred.add_argument("--json", action="store_true", help="print JSON instead of text")
    pred.set_defaults(handler=_predict)

    opt = subparsers.add_parser(
        "optimal", help="compute-optimal N and D for a budget",
        description="Optimal parameters N and tokens D for a FLOP budget under the published laws "
        "(chinchilla-1/2/3, kaplan; data-constrained with --unique-tokens) and/or your own fit JSON; "
        "or convert GPU-hours to FLOPs first. Also the learning rate and batch at the budget from a "
        "hyperparameter law (DeepSeek LLM 2024's by default; --hparams-law).",
    )
    opt.add_argument("--flops", type=float, help="training budget in FLOPs, e.g. 2.36e23")
    opt.add_argument("--gpu-hours", type=float, help="budget in accelerator-hours (with --device, --mfu)")
    opt.add_argument("--device", default="a100", help="accelerator for --gpu-hours (a100, h100, tpu-v4, ...)")
    opt.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation for --gpu-hours")
    opt.add_argument("--law", action="append", default=[],
                     help="chinchilla-1|chinchilla-2|chinchilla-3|kaplan|data-constrained|FIT.json "
                     "(repeatable; default: all published)")
    opt.add_argument("--unique-tokens", type=float, default=None,
                     help="unique tokens U you have: adds epochs per law, and data-constrained "
                     "(Muennighoff et al. 2023) allocates for repeated data")
    opt.add_argument("--hparams-law", action="append", default=[], metavar="LAW",
                     help="learning rate and batch at the budget from deepseek (DeepSeek LLM 2024, the default) or "
                     "a LAW.json of `chinchax fit-hparams` (repeatable); 'none' leaves them out. The budget is "
                     "taken as C = M*D (DeepSeek's convention), unconverted")
    opt.add_argument("--seq-len", type=int, default=2048, help="sequence length for the batch in sequences (default 2048)")
    opt.add_argument("--json", action="store_true", help="print JSON instead of a table (hyperparameter rows last, "
                     "with \"kind\": \"hyperparameters\")")
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
            coarse_grid: bool = False, approach2_bootstrap: str = "auto", tie_exponents: bool = False,
            fix_E: float | None = None):
    """Python entry point used by the CLI and the demo: table (path or DataFrame) -> FitResult.

    `holdout`: None/"none", "largest" (handled by each fit), or for approach 3 a split of the runs
    (see `split_holdout`): the law is fitted on the rest and scored on the held-out runs."""
    from chinchax.errors import UserError
    from chinchax.scaling.table import load_table

    if n_bootstrap < 2:
        raise UserError(f"--bootstrap must be at least 2, got {n_bootstrap}")
    if (tie_exponents or fix_E is not None) and law != "chinchilla-3":
        raise UserError(f"--tie-exponents and --fix-E constrain approach 3; --law {law} has no such parameters")
    df = load_table(table)
    holdout = None if holdout in (None, "none") else holdout
    held, split = None, holdout
    if holdout not in (None, "largest"):
        if law not in ("chinchilla-3", "kaplan-3"):
            raise UserError(f"--holdout {holdout} scores predicted losses, which only approach 3 gives "
                            f"(--law chinchilla-3 or kaplan-3); for --law {law} use --holdout largest")
        df, held = split_holdout(df, holdout)
        holdout = None
    if law == "chinchilla-1":
        from chinchax.scaling.fit_chinchilla import fit_approach1

        return fit_approach1(df, n_bootstrap=n_bootstrap, seed=seed, holdout=holdout)
    if law == "chinchilla-2":
        from chinchax.scaling.fit_chinchilla import fit_approach2

        return fit_approach2(df, n_bootstrap=n_bootstrap, seed=seed, holdout=holdout, bootstrap=approach2_bootstrap)
    if law == "kaplan":
        from chinchax.scaling.fit_kaplan import fit_kaplan

        return fit_kaplan(df, n_bootstrap=n_bootstrap, seed=seed, holdout=holdout)
    from chinchax.scaling.fit_parametric import fit_approach3, form_grid
    from chinchax.scaling.table import final_rows

    form = "kaplan" if law == "kaplan-3" else "chinchilla"
    result = fit_approach3(df, n_bootstrap=n_bootstrap, seed=seed, holdout=holdout,
                           grid=form_grid(form, coarse=coarse_grid), form=form,
                           data_constrained=law == "data-constrained", tie_exponents=tie_exponents, fix_E=fix_E)
    if held is not None:
        result.holdout = {"split": split, **result.score_holdout(final_rows(held))}
    return result


_FILTER = r"^\s*(\w+)\s*(<=|>=|==|<|>)\s*(\S+)\s*$"


def split_holdout(df, spec: str):
    """(fit rows, held-out rows) by whole runs. `spec`: 'largest-budgets:K', 'largest-models:K', or a filter
    'COLUMN OP VALUE' (OP one of <, <=, >, >=, ==) selecting the runs to hold out."""
    import operator
    import re

    import numpy as np

    from chinchax.errors import UserError
    from chinchax.scaling.table import budgets, final_rows

    final = final_rows(df)
    kind, _, count = spec.partition(":")
    if kind in ("largest-budgets", "largest-models"):
        if not count.isdigit() or int(count) < 1:
            raise UserError(f"--holdout {spec}: give how many to hold out, e.g. {kind}:1")
        key = budgets(final) if kind == "largest-budgets" else final["n_params"].to_numpy()
        held_values = np.unique(key)[-int(count):]
        held_mask = np.isin(key, held_values)
    elif (m := re.match(_FILTER, spec)) is not None:
        column, op, value = m.groups()
        if column not in final.columns:
            raise UserError(f"--holdout {spec}: the table has no column {column!r} (columns: {', '.join(final.columns)})")
        ops = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq}
        try:
            threshold = float(value)
        except ValueError:
            raise UserError(f"--holdout {spec}: {value!r} is not a number") from None
        held_mask = ops[op](final[column].to_numpy(), threshold)
    else:
        raise UserError(f"--holdout {spec!r} is not known; use none, largest, largest-budgets:K, largest-models:K "
                        "or a filter such as 'n_params>=1e9'")
    held_runs = set(final["run"][held_mask])
    if not held_runs or len(held_runs) == len(final):
        raise UserError(f"--holdout {spec} holds out {len(held_runs)} of {len(final)} runs; it must leave some "
                        "runs on each side")
    mask = df["run"].isin(held_runs).to_numpy()
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


def _fit(args) -> int:
    result = run_fit(args.table, args.law, n_bootstrap=args.bootstrap, seed=args.seed,
                     holdout=args.holdout, coarse_grid=args.coarse_grid,
                     approach2_bootstrap=args.approach2_bootstrap, tie_exponents=args.tie_exponents,
                     fix_E=args.fix_E)
    method = result.extra.get("bootstrap_method", "runs")
    print(f"{result.law}: {result.n_runs} runs, {result.n_bootstrap} bootstrap resamples ({method}, seed {result.seed})")
    if "free_parameters" in result.extra:
        free = result.extra["free_parameters"]
        print(f"  free parameters: {len(free)} ({', '.join(free)}; constraints: {result.extra['constraints']}); "
              f"{result.n_runs} runs -> {result.extra['degrees_of_freedom']} degrees of freedom")
    for b in result.extra.get("budgets", []):
        if b["used"]:
            sizes = ", ".join(f"{n:.3g}" for n in b["sizes"])
            print(f"  budget {b['budget']:.3g}: used {len(b['sizes'])} of {b['n_sizes']} sizes ({sizes})")
        else:
            print(f"  budget {b['budget']:.3g}: dropped: {b['reason']}")
    for name, value in result.params.items():
        lo, hi = result.intervals.get(name, [None, None])
        iv = f"[{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else ""
        print(f"  {name:14s} {value:12.5g}  95% {iv}")
    for flops in args.flops:
        n, n_lo, n_hi = result.n_opt(flops)
        d, d_lo, d_hi = result.d_opt(flops)
        print(f"  at C={flops:.3g}: N_opt={n:.4g} [{n_lo:.3g}, {n_hi:.3g}]  D_opt={d:.4g} [{d_lo:.3g}, {d_hi:.3g}]")
    if result.holdout:
        _print_holdout(result.holdout)
    if args.out:
        print(f"wrote {result.to_json(args.out)}")
    _fit_outputs(args, result)
    return 0


def _fit_outputs(args, result) -> None:
    """--plots and the W&B analysis run: both draw the plots (into a scratch folder when only W&B wants them)."""
    import tempfile
    from pathlib import Path

    if not (args.plots or args.wandb_project):
        return
    from chinchax.scaling import wandb_report
    from chinchax.scaling.table import load_table

    table = load_table(args.table)
    with tempfile.TemporaryDirectory(prefix="chinchax-fit-plots-") as scratch:
        drawn = _fit_plots(table, result, Path(args.plots or scratch))
        if args.plots:
            for path in drawn:
                print(f"wrote {path}")
        group = args.wandb_group or wandb_report.sweep_group(args.table)
        summary = {**wandb_report.fit_summary(result)}
        for flops in args.flops:
            (n, n_lo, n_hi), (d, d_lo, d_hi) = result.n_opt(flops), result.d_opt(flops)
            summary.update({f"n_opt@{flops:.3g}": n, f"n_opt@{flops:.3g}_lo": n_lo, f"n_opt@{flops:.3g}_hi": n_hi,
                            f"d_opt@{flops:.3g}": d, f"d_opt@{flops:.3g}_lo": d_lo, f"d_opt@{flops:.3g}_hi": d_hi})
        params = [{"parameter": k, "value": v, "lo": (result.intervals.get(k) or [None, None])[0],
                   "hi": (result.intervals.get(k) or [None, None])[1]} for k, v in result.params.items()]
        where = wandb_report.log_analysis(
            args.wandb_project, group=group, name=f"{group}-fit-{result.law}", kind="fit", mode=args.wandb_mode,
            dir=Path(args.out).resolve().parent if args.out else Path.cwd(),
            config={"table": str(args.table), "law": result.law, "bootstrap": result.n_bootstrap, "seed": result.seed,
                    "holdout": args.holdout},
            tables={"results": table, "parameters": params}, summary=summary, images=wandb_report.pngs(*drawn))
        if where is not None:
            print(f"W&B analysis run (group {group}): {where}")


def _fit_plots(table, result, out) -> list:
    """The plots of a fit and its table: isoFLOP profiles, the frontier, N_opt/D_opt against compute, and
    approach 3's loss contours."""
    from chinchax.scaling import plots
    from chinchax.scaling.fitresult import PARAMETRIC_LAWS

    drawn = plots.plot_isoflop(table, out / "isoflop") + plots.plot_frontier(table, out / "frontier")
    drawn += plots.plot_allocation(result, out / f"allocation_{result.law}", table=table)
    if result.law in PARAMETRIC_LAWS:
        drawn += plots.plot_contours(result.parametric_law(), out / "contours", title=f"your {result.law} fit")
    return drawn


def _print_holdout(holdout: dict) -> None:
    if "mean_abs_rel_error" in holdout:
        n_runs = len(holdout["runs"])
        inside = (f", {holdout['n_inside_interval']} of {n_runs} inside the 95% interval"
                  if "n_inside_interval" in holdout else "")
        print(f"  held-out {holdout.get('split', '')} ({n_runs} runs): |relative error| of the loss "
              f"mean {holdout['mean_abs_rel_error']:.2%}, max {holdout['max_abs_rel_error']:.2%}{inside}")
    else:
        print("  held-out:", jsonio.dumps({k: v for k, v in holdout.items() if k != "runs"}))


def _predict(args) -> int:
    from chinchax.errors import UserError
    from chinchax.scaling.fitresult import CONFIDENCE, FitResult

    if (args.n_params is None) != (args.tokens is None):
        raise UserError("give --n-params and --tokens together (the loss of one model), or --flops alone")
    if args.n_params is None and not args.flops:
        raise UserError("nothing to predict: give --n-params N --tokens D, and/or --flops C")
    fit = FitResult.from_json(args.fit)
    rows = []
    if args.n_params is not None:
        loss, lo, hi = fit.predict_loss(args.n_params, args.tokens)
        rows.append({"n_params": args.n_params, "n_tokens": args.tokens, "flops": training_flops(args.n_params, args.tokens),
                     "loss": loss, "loss_lo": lo, "loss_hi": hi})
    rows += [{**fit.frontier(c), "compute_optimal": True} for c in args.flops]
    if args.json:
        jsonio.dump({"fit": args.fit, "level": CONFIDENCE, "n_draws": len(next(iter(fit.bootstrap_params.values()), [])),
                     "predictions": rows}, sys.stdout, indent=1)  # an interval with no draws (nan) is null
        print()
        return 0
    print(f"{fit.law} fit on {fit.n_runs} runs; {CONFIDENCE:.0%} bootstrap intervals")
    for r in rows:
        where = ("compute-optimal at C={flops:.3g}: N_opt={n_opt:.4g} [{n_opt_lo:.3g}, {n_opt_hi:.3g}] "
                 "D_opt={d_opt:.4g} [{d_opt_lo:.3g}, {d_opt_hi:.3g}]" if r.get("compute_optimal")
                 else "N={n_params:.4g} D={n_tokens:.4g} (C={flops:.3g})").format(**r)
        print(f"  {where}: loss {r['loss']:.4f} [{r['loss_lo']:.4f}, {r['loss_hi']:.4f}]")
    return 0


def _optimal(args) -> int:
    from pathlib import Path

    from chinchax.errors import UserError
    from chinchax.fileio import read_user_text
    from chinchax.scaling.optimal import (
        allocation_rows,
        format_hyperparameter_rows,
        format_rows,
        gpu_hours_to_flops,
        hyperparameter_rows,
    )

    if (args.flops is None) == (args.gpu_hours is None):
        raise UserError("give exactly one of --flops or --gpu-hours")
    flops = args.flops if args.flops is not None else gpu_hours_to_flops(args.gpu_hours, args.device, args.mfu)
    rows = allocation_rows(flops, args.law or None, unique_tokens=args.unique_tokens)
    hparam_laws = [name for name in args.hparams_law if name != "none"]
    for name in hparam_laws:  # a law file's bytes that are not UTF-8: one line with the place, before JSON's message
        if Path(name).is_file():
            read_user_text(name, what="hyperparameter law")
    hparams = [] if "none" in args.hparams_law else hyperparameter_rows(flops, hparam_laws or None, args.seq_len)
    if args.json:
        jsonio.dump(rows + hparams, sys.stdout, indent=1)
        print()
    else:
        if args.gpu_hours is not None:
            print(f"{args.gpu_hours:.3g} {args.device} hours at MFU {args.mfu} = {flops:.3g} FLOPs")
        print(format_rows(rows))
        if hparams:
            print()
            print(format_hyperparameter_rows(hparams))
    return 0


def _fit_hparams(args) -> int:
    from pathlib import Path

    from chinchax.errors import UserError
    from chinchax.fileio import read_user_text
    from chinchax.scaling.hyperlaws import CONFIDENCE, fit_hyperparameter_law

    if isinstance(args.table, str) and Path(args.table).is_file():  # bytes that are not UTF-8: one line, not
        read_user_text(args.table, what="grid table")  # the csv module's UnicodeDecodeError
    try:
        law = fit_hyperparameter_law(args.table, tolerance=args.tolerance, n_bootstrap=args.bootstrap, seed=args.seed)
    except UserError as e:  # name the file when the message does not (a missing column, too few budgets)
        if str(args.table) in str(e):
            raise
        raise UserError(f"{args.table}: {e}") from None
    print("\n".join(law.describe()))
    for flops in args.flops:
        (lr_lo, lr_hi), (b_lo, b_hi) = law.lr_interval(flops), law.batch_interval(flops)
        print(f"  at C={flops:.3g}: lr={law.lr(flops):.4g} [{lr_lo:.3g}, {lr_hi:.3g}]  batch={law.batch_tokens(flops):.4g} "
              f"tokens [{b_lo:.3g}, {b_hi:.3g}] ({CONFIDENCE:.0%})"
              + ("" if law.flops_range[0] <= flops <= law.flops_range[1] else ", extrapolated"))
    if args.out:
        print(f"wrote {law.to_json(args.out)}")
    return 0


def _plot(args) -> int:
    from pathlib import Path

    from chinchax.errors import UserError
    from chinchax.scaling import plots
    from chinchax.scaling.fitresult import PARAMETRIC_LAWS, FitResult
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
            fit = next((f for f in fits if f.law in PARAMETRIC_LAWS), None)
            law = fit.parametric_law() if fit else None
            written += plots.plot_contours(law, out / "contours",
                                           title="your approach-3 fit" if law else "Chinchilla approach 3")
        else:
            written += plots.plot_bloomberg(out / "bloomberg", fits)
    for path in written:
        print(f"wrote {path}")
    return 0
