"""`chinchax demo`: a whole compute-optimal scaling study on this CPU, in one command.

1. builds the embedded corpus (the Python standard library's .py files) and uses the byte tokenizer
   (361 ids; even so the 384 x d_model embedding table is most of N for the smallest models);
2. plans the isoFLOP sweep of experiments/demo_sweep.yaml (3 budgets x 6 sizes; `--quick`: 2 x 3, smaller);
3. runs it with the local executor (`chinchax train` subprocesses, `--parallel` at a time; re-running
   the demo skips finished runs and resumes interrupted ones);
4. collects results.csv, fits Chinchilla approaches 2 and 3 with bootstrap intervals, draws the plots,
   writes report.md (plots embedded) and the fit JSON, and prints the compute-optimal table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from importlib import resources
from pathlib import Path

from chinchax.errors import UserError

# `--quick`: the smallest sweep both fits accept (approach 2 needs 3 sizes at >= 2 budgets, approach 3
# needs more runs than its 5 parameters), with short evals. CI runs it.
QUICK_OVERRIDES = ("name=demo_quick", "budgets=[1.0e+10,3.0e+10]", "sizes.per_budget=3", "sizes.span=6",
                   "sizes.min_steps=20")
# ...and, appended to every run's overrides: a shorter eval, no intermediate checkpoints, fewer log lines.
QUICK_RUN_OVERRIDES = ("data.eval_batches=2", "trainer.checkpoint_every=0", "trainer.log_every=25")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole study on this CPU: corpus, isoFLOP sweep, fits, report (~8 min here; --quick under 2 min)",
        description="Build the embedded stdlib corpus, plan and run an isoFLOP sweep of tiny decoders sized for "
        "a laptop CPU, fit Chinchilla approaches 2 and 3 with bootstrap intervals, and write report.md, "
        "results.csv and the fit JSON. Re-running resumes: finished runs are skipped.",
    )
    p.add_argument("--quick", action="store_true", help="a smaller sweep (2 budgets x 3 sizes) for CI and smoke tests")
    p.add_argument("--out", default="demo", help="output directory (default ./demo)")
    p.add_argument("--parallel", type=int, default=2, help="training runs at a time (default 2)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 200; 30 with --quick)")
    p.add_argument("--max-retries", type=int, default=1)
    p.set_defaults(handler=_handle)


def _handle(args) -> int:
    report = run_demo(Path(args.out), quick=args.quick, parallel=args.parallel,
                      n_bootstrap=args.bootstrap or (30 if args.quick else 200), max_retries=args.max_retries)
    print(report["optimal_table"])
    print(f"\nreport: {Path(args.out) / 'report.md'}  ({report['wall_time_s']:.0f} s)")
    return 0


def _say(message: str) -> None:
    print(f"[chinchax demo] {message}", file=sys.stderr, flush=True)


def run_demo(out: Path, *, quick: bool = False, parallel: int = 2, n_bootstrap: int = 200,
             max_retries: int = 1, train_command=None) -> dict:
    """The demo as a function (the CLI and the tests call this); returns the report's numbers."""
    from chinchax.scaling import executors
    from chinchax.scaling.plan import load_sweep, plan_sweep
    from chinchax.scaling.results import SweepDir, collect, write_atomic

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus()
    _say(f"corpus: {corpus['documents']:,} stdlib documents (Python {corpus['python']}), byte tokenizer")

    sweep_yaml = Path(str(resources.files("chinchax.experiments").joinpath("demo_sweep.yaml")))
    cfg, base_dir = load_sweep(sweep_yaml, list(QUICK_OVERRIDES) if quick else [])
    if quick:
        cfg = dataclasses.replace(cfg, overrides=[*cfg.overrides, *QUICK_RUN_OVERRIDES]).validate()
    plan = plan_sweep(cfg, base_dir)
    sweep = SweepDir(out / ("sweep_quick" if quick else "sweep"))  # both can live in one --out
    sweep.write_plan(plan)
    _say(f"plan ({len(plan.runs)} runs, {plan.flops_independent:.3g} FLOPs):\n{plan.table()}")

    env = {
        # Runs of one shape compile the same init/eval programs: share them through JAX's disk cache.
        "JAX_COMPILATION_CACHE_DIR": str((sweep.root / "jax_cache").resolve()),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "WANDB_MODE": "disabled",
    }
    outcomes = executors.run_local(
        plan, sweep, parallel=parallel, max_retries=max_retries, env=env,
        train_command=train_command or executors.DEFAULT_TRAIN_COMMAND,
    )
    failed = [o for o in outcomes if o.status == "failed"]
    rows, curves = collect(sweep, plan)
    write_atomic(out / "results.csv", (sweep.root / "results.csv").read_text())
    write_atomic(out / "curves.csv", (sweep.root / "curves.csv").read_text())
    if len(rows) < 6:
        raise UserError(
            f"only {len(rows)} of {len(plan.runs)} demo runs finished ({len(failed)} failed; see "
            f"`chinchax sweep status {sweep.root}` and the runs' sweep_train.log); the fits need at least 6"
        )
    _say(f"{len(rows)} runs finished; fitting approaches 2 and 3 with {n_bootstrap} bootstrap resamples")

    fits = fit_all(out, cfg.budgets, n_bootstrap=n_bootstrap, quick=quick)
    wall = time.time() - t0
    summary = {
        "quick": quick, "wall_time_s": wall, "corpus": corpus, "plan": plan, "rows": rows,
        "failed": [o.run_id for o in failed], "fits": fits, "machine": _machine(), "sweep_dir": sweep.root.name,
    }
    text, optimal_table = render(summary)
    write_atomic(out / "report.md", text)
    write_atomic(out / "summary.json", json.dumps(
        {"wall_time_s": wall, "runs": len(rows), "failed": summary["failed"], "quick": quick,
         "flops": plan.flops_independent, "fits": fits["json"]}, indent=1, default=float))
    return {"wall_time_s": wall, "optimal_table": optimal_table, "fits": fits, "rows": rows}


def prepare_corpus() -> dict:
    """Build (once) the stdlib corpus; the tokenizer is byte-level and needs no training."""
    from chinchax.data.sources import open_source
    from chinchax.data.tokenizers import load_tokenizer

    train = open_source("stdlib", "train")
    validation = open_source("stdlib", "validation")
    tokenizer = load_tokenizer("byte")
    return {"documents": len(train) + len(validation), "train_documents": len(train),
            "validation_documents": len(validation), "python": platform.python_version(),
            "tokenizer": "byte", "vocab_size": tokenizer.vocab_size, "metadata": dict(train.metadata)}


def _machine() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


# --- fits and plots (chinchax.scaling) ---------------------------------------------------------------


def fit_all(out: Path, budgets, *, n_bootstrap: int, quick: bool = False) -> dict:
    """Approaches 2 and 3 with bootstrap intervals on out/results.csv; JSON + plots into `out`.

    A fit the data cannot support (e.g. no loss valley at enough budgets for approach 2) is reported in the
    report with its reason instead of stopping the demo."""
    from chinchax.scaling.fit_chinchilla import fit_approach2
    from chinchax.scaling.fit_parametric import chinchilla_grid, fit_approach3
    from chinchax.scaling.fitresult import CONFIDENCE
    from chinchax.scaling.table import load_table

    table = load_table(out / "results.csv")
    fits, errors, files = {}, {}, []
    for name, fit in (
        ("approach2", lambda: fit_approach2(table, n_bootstrap=n_bootstrap, seed=0)),
        # --quick: every other value of Chinchilla's initialisation grid (still 225 starts).
        ("approach3", lambda: fit_approach3(table, n_bootstrap=n_bootstrap, seed=0,
                                            grid=chinchilla_grid(coarse=True) if quick else None)),
    ):
        t = time.time()
        try:
            fits[name] = fit()
        except UserError as e:
            errors[name] = str(e)
            _say(f"{name}: not fitted: {e}")
            continue
        fits[name].to_json(out / f"fit_{name}.json")
        files.append(f"fit_{name}.json")
        _say(f"{name} fitted in {time.time() - t:.1f} s")

    largest = max(budgets)
    optimal = []
    for budget in [*sorted(budgets), 10 * largest, 100 * largest]:
        for name, result in fits.items():
            n, n_lo, n_hi = result.n_opt(budget)
            d, d_lo, d_hi = result.d_opt(budget)
            optimal.append({"budget": float(budget), "approach": name[-1], "n_opt": n, "n_lo": n_lo, "n_hi": n_hi,
                            "d_opt": d, "d_lo": d_lo, "d_hi": d_hi, "extrapolated": budget > largest})
    plots = _plots(out, table, fits)
    files += [name for _, name in plots]

    def triple(result, key):
        lo, hi = result.intervals.get(key, [float("nan")] * 2)
        return (float(result.params[key]), float(lo if lo is not None else "nan"),
                float(hi if hi is not None else "nan"))

    summary = {"level": CONFIDENCE, "n_bootstrap": n_bootstrap, "optimal": optimal, "plots": plots, "files": files,
               "errors": errors, "json": {k: f"fit_{k}.json" for k in fits}}
    if "approach2" in fits:
        summary["approach2"] = {k: triple(fits["approach2"], k) for k in ("a", "b")}
        extra = fits["approach2"].extra
        summary["approach2_bootstrap"] = {"method": extra["bootstrap_method"], "noise": extra.get("noise"),
                                          "sigma": extra.get("noise_sigma"),
                                          "sizes": int(table.groupby("budget").size().min())}
    if "approach3" in fits:
        summary["approach3"] = {k: triple(fits["approach3"], k) for k in ("E", "A", "B", "alpha", "beta", "a", "b")}
    return summary


def _plots(out: Path, table, fits: dict) -> list[tuple[str, str]]:
    """Draw the plots (PNG + SVG) with chinchax.scaling.plots; returns (title, PNG name) per plot."""
    from chinchax.scaling import plots
    from chinchax.scaling.laws import ParametricLaw
    from chinchax.scaling.table import load_table

    drawn = [("IsoFLOP profiles with their parabolas (approach 2)", plots.plot_isoflop(table, out / "isoflop"))]
    curves = load_table(out / "curves.csv")
    drawn.append(("Training loss against compute, every run, with the frontier",
                  plots.plot_frontier(curves, out / "frontier")))
    for name, result in fits.items():
        drawn.append((f"N_opt(C) and D_opt(C) from {name} with the bootstrap band",
                      plots.plot_allocation(result, out / f"allocation_{name}",
                                            (float(table["flops"].min()) / 3, float(table["flops"].max()) * 100))))
        if name == "approach3":
            p = result.params
            law = ParametricLaw(E=p["E"], A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"])
            n_range = (float(table["n_params"].min()) / 4, float(table["n_params"].max()) * 4)
            d_range = (float(table["n_tokens"].min()) / 4, float(table["n_tokens"].max()) * 4)
            drawn.append(("Approach 3: loss contours over (N, D) with the efficient frontier",
                          plots.plot_contours(law, out / "contours_approach3", n_range, d_range,
                                              title="demo, approach 3")))
    return [(title, next(p.name for p in paths if p.suffix == ".png")) for title, paths in drawn]


# --- report ---------------------------------------------------------------------------------------

def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _interval(v) -> str:
    value, lo, hi = v
    return f"{value:.3g} [{lo:.3g}, {hi:.3g}]"


def _md_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def optimal_rows(fits: dict) -> list[list]:
    rows = []
    for o in fits["optimal"]:
        extrapolated = " (extrapolated)" if o["extrapolated"] else ""
        rows.append([f"{o['budget']:.3g}{extrapolated}", o["approach"],
                     f"{_si(o['n_opt'])} [{_si(o['n_lo'])}, {_si(o['n_hi'])}]",
                     f"{_si(o['d_opt'])} [{_si(o['d_lo'])}, {_si(o['d_hi'])}]",
                     f"{o['d_opt'] / o['n_opt']:.3g}"])
    return rows


def edge_winners(rows: list[dict]) -> dict[str, list[float]]:
    """Budgets whose lowest loss is at the smallest or the largest model size: there the grid does not
    bracket the optimum, and an approach-2 minimum is an extrapolation."""
    edges: dict[str, list[float]] = {"smallest": [], "largest": []}
    for budget in sorted({r["budget"] for r in rows}):
        runs = sorted((r for r in rows if r["budget"] == budget), key=lambda r: r["n_params"])
        best = min(range(len(runs)), key=lambda i: runs[i]["loss"])
        if best == 0:
            edges["smallest"].append(budget)
        elif best == len(runs) - 1:
            edges["largest"].append(budget)
    return edges


def _bracketing(rows: list[dict]) -> str:
    edges = edge_winners(rows)
    parts = []
    if edges["smallest"]:
        parts.append(f"At {len(edges['smallest'])} of {len({r['budget'] for r in rows})} budgets "
                     f"({', '.join(f'{b:.3g}' for b in edges['smallest'])}) the smallest model had the lowest loss: "
                     "the compute-optimal size there is at or below the smallest model of the grid, which at "
                     "this scale is set by the embeddings (vocabulary x d_model) more than by the budget.")
    if edges["largest"]:
        parts.append(f"At {', '.join(f'{b:.3g}' for b in edges['largest'])} the largest model had the lowest loss: "
                     "the optimum is at or above the grid.")
    return (" " + " ".join(parts)) if parts else " Every budget's best run is inside its grid of sizes."


def _approach2_method(fits: dict) -> str:
    how = fits.get("approach2_bootstrap")
    if not how or how["method"] == "runs":
        return " over runs"
    return (f" (approach 3 over runs; approach 2 redraws each loss around its budget's parabola with σ = "
            f"{how['sigma']:.3g} nats from the {how['noise']}, since {how['sizes']} sizes per budget are too few "
            "to resample)")


def render(summary: dict) -> tuple[str, str]:
    """report.md text, and the compute-optimal table as plain text for the terminal."""
    plan, rows, fits, corpus = summary["plan"], summary["rows"], summary["fits"], summary["corpus"]
    level = fits["level"]
    head = ["budget (FLOPs)", "approach", f"N_opt [{level:.0%} interval]", "D_opt (tokens)", "D/N"]
    opt_md = _md_table(head, optimal_rows(fits))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *optimal_rows(fits), strict=False)]
    opt_text = "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True))
                          for r in [head, *optimal_rows(fits)])
    laws_md, exponents = _laws_text(fits)
    largest = max(r["budget"] for r in rows)
    spread = [o for o in fits["optimal"] if o["budget"] == largest]
    spread_text = "; ".join(
        f"approach {o['approach']}: N_opt within a factor {o['n_hi'] / o['n_lo']:.2g}"
        if math.isfinite(o["n_hi"] / o["n_lo"]) else
        f"approach {o['approach']}: no interval at all (every bootstrap resample failed to fit)"
        for o in spread
    )
    minutes = summary["wall_time_s"] / 60
    results = _md_table(
        ["run", "budget", "d_model x layers", "N (non-emb.)", "D", "eval loss ± s.e.", "wall s"],
        [[r["run"], f"{r['budget']:.3g}", f"{r['d_model']} x {r['n_layers']}",
          f"{_si(r['n_params'])} ({_si(r['n_params_non_embedding'])})", _si(r["n_tokens"]),
          f"{r['loss']:.4f} ± {float(r.get('eval_loss_stderr') or 0):.4f}", f"{float(r.get('wall_time_s') or 0):.0f}"]
         for r in rows],
    )
    plots = "\n\n".join(f"![{title}]({name})" for title, name in fits["plots"])
    machine = summary["machine"]
    text = f"""# chinchax demo: a compute-optimal scaling study on {machine['cpus']} CPU cores

{"**Quick mode** (`--quick`): a smoke test of the pipeline; its fits are not meant to be read. " if summary["quick"] else ""}\
Wall time: **{minutes:.1f} min** on {machine['processor']} ({machine['cpus']} cores), {machine['platform']}, Python {machine['python']}.

## What was done

- **Data**: the Python {corpus['python']} standard library as a text corpus ({corpus['documents']:,} files; \
{corpus['train_documents']:,} train / {corpus['validation_documents']:,} validation), byte-level tokens \
(vocabulary {corpus['vocab_size']}), rows of {rows[0]['seq_len']} tokens.
- **Models**: GPT-2-style causal decoders, d_model / n_layers fixed by the sweep's shape rule, head size fixed.
- **Sweep**: {len(plan.runs)} runs at {len(set(r['budget'] for r in rows))} FLOP budgets \
({", ".join(f"{b:.3g}" for b in sorted(set(r['budget'] for r in rows)))}), C = 6·N·D with N = all parameters; \
{plan.flops_independent:.3g} training FLOPs in all. Learning rate ∝ 1/d_model, cosine schedule.{_failed(summary)}
- **Fits**: Chinchilla approach 2 (a parabola in log N per budget, power laws through the minima) and \
approach 3 (L = E + A/N^α + B/D^β, Huber loss on log L, L-BFGS from Chinchilla's grid), each with \
{fits['n_bootstrap']} bootstrap resamples{_approach2_method(fits)}; intervals are {level:.0%} percentile intervals.

## Compute-optimal allocation

{opt_md}

## Fitted laws

{laws_md}
- For reference, Chinchilla found a ≈ 0.50 (approach 2) and a ≈ 0.46 (approach 3) at 10^18-10^24 FLOPs.

## How much to trust this

Honestly: not much, and the intervals say so. At the largest budget ({largest:.3g} FLOPs) {spread_text}. \
{exponents} The reasons are the scale: models of {_si(min(r['n_params'] for r in rows))} \
to {_si(max(r['n_params'] for r in rows))} parameters (embeddings are a large share of N), budgets that \
span only {_decades(rows):.1f} decade(s), {len(rows) // max(1, len(set(r['budget'] for r in rows)))} sizes per \
budget, one seed per run, eval losses with a standard error of about \
{_mean_stderr(rows):.3f} nats, and a learning rate that is not tuned per size.{_bracketing(rows)} The demo shows \
the machinery end to end; for a real law, run experiments/chinchilla_ladder.yaml on accelerators.

## Plots

{plots}

## Runs

{results}

Files: `results.csv` (one row per run, what `chinchax fit` reads), `curves.csv` (per-step losses), \
{", ".join(f"`{name}`" for name in fits["files"])}, `{summary["sweep_dir"]}/` (plan, configs, run directories).
"""
    return text, opt_text


def _laws_text(fits: dict) -> tuple[str, str]:
    """The fitted-laws bullet list, and one sentence on the width of the exponents' intervals."""
    lines, widths = [], []
    if "approach2" in fits:
        a2 = fits["approach2"]
        lines.append(f"- Approach 2: N_opt ∝ C^a with a = {_interval(a2['a'])}, D_opt ∝ C^b with b = {_interval(a2['b'])}.")
        widths.append(f"approach 2 puts the exponent a in [{a2['a'][1]:.2g}, {a2['a'][2]:.2g}]")
    if "approach3" in fits:
        a3 = fits["approach3"]
        lines.append(
            f"- Approach 3: E = {_interval(a3['E'])}, A = {_interval(a3['A'])}, B = {_interval(a3['B'])}, "
            f"α = {_interval(a3['alpha'])}, β = {_interval(a3['beta'])}; a = β/(α+β) = {_interval(a3['a'])}, "
            f"b = α/(α+β) = {_interval(a3['b'])}."
        )
        widths.append(f"approach 3 puts it in [{a3['a'][1]:.2g}, {a3['a'][2]:.2g}]")
    for name, error in fits["errors"].items():
        lines.append(f"- Approach {name[-1]} could not be fitted on these runs: {error}")
    sentence = ("Over the bootstrap, " + " and ".join(widths) + ".") if widths else ""
    return "\n".join(lines), sentence


def _failed(summary: dict) -> str:
    if not summary["failed"]:
        return ""
    return f" **{len(summary['failed'])} run(s) failed** and are left out: {', '.join(summary['failed'])}."


def _decades(rows: list[dict]) -> float:
    import math

    budgets = [r["budget"] for r in rows]
    return math.log10(max(budgets) / min(budgets))


def _mean_stderr(rows: list[dict]) -> float:
    values = [float(r["eval_loss_stderr"]) for r in rows if r.get("eval_loss_stderr") not in (None, "")]
    return sum(values) / len(values) if values else float("nan")
