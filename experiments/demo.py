"""`chinchax demo`: a whole compute-optimal scaling study on this CPU, in one command.

1. builds the embedded corpus (the Python standard library's .py files); byte tokens (no tokenizer to train);
2. measures the learning rate: at the smallest budget every size is trained at 1/3x, 1x and 3x the
   planned rate, and a power law in d_model through the best rates sets the rule for the study
   (experiments/demo_lr.py);
3. plans and runs the isoFLOP sweep of experiments/demo_sweep.yaml with that rule, in long-lived worker
   processes that share compiled programs between runs of one shape (chinchax.scaling.worker);
4. fits Chinchilla approaches 1, 2 and 3 with bootstrap intervals, checks that neighbouring sizes differ by
   more than the evaluation noise (paired over the same rows), and draws the plots;
5. predicts the loss of a run at 3x the largest budget at approach 3's N_opt, trains that run, and
   compares;
6. writes report.md and summary.json (docs/interfaces.md), and prints the compute-optimal table.
Re-running skips every finished run (and resumes interrupted ones); only fits and the report are redone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import sys
import time
from importlib import resources
from pathlib import Path

from chinchax.compute import training_flops
from chinchax.errors import UserError
from chinchax.experiments.demo_report import _bracketing, edge_winners, render  # noqa: F401 (re-exported)

# `--quick`: the smallest study every step accepts, for CI: 2 budgets x 3 sizes, short evals.
QUICK_OVERRIDES = ("name=demo_quick", "budgets=[1.0e+10,3.0e+10]", "sizes.per_budget=3", "sizes.span=8",
                   "sizes.min_steps=10", "sizes.tokens_per_param=20", "batch_size=16")
# ...and, appended to every run's overrides: a shorter eval, no intermediate checkpoints, fewer log lines.
QUICK_RUN_OVERRIDES = ("data.eval_batches=4", "trainer.checkpoint_every=0", "trainer.log_every=10")
HOLDOUT_FACTOR = 3.0  # the held-out run's budget, in multiples of the largest fitted budget
SCALES = {"cpu": "demo_sweep.yaml", "gpu": "demo_gpu_sweep.yaml"}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole study on this CPU: corpus, lr sweep, isoFLOP sweep, fits, held-out prediction, report "
        "(~8 min here; --quick under 2 min)",
        description="Build the embedded stdlib corpus, measure the learning-rate rule, run an isoFLOP sweep of "
        "small decoders, fit Chinchilla approaches 1, 2 and 3 with bootstrap intervals, predict and train a "
        "held-out run at 3x the largest budget, and write report.md, summary.json, results.csv and the fit "
        "JSON. Re-running resumes: finished runs are skipped.",
    )
    p.add_argument("--quick", action="store_true", help="a toy-sized study (2 budgets x 3 sizes) for CI and smoke tests")
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                   help="cpu: experiments/demo_sweep.yaml (this 2-core CPU, ~8 min); gpu: experiments/demo_gpu_sweep.yaml "
                   "(one H100/H200, ~15 min, ~1.6e17 FLOPs; use --parallel 1)")
    p.add_argument("--out", default=None,
                   help="output directory (default ./demo; ./demo_quick with --quick, ./demo_gpu with --scale gpu)")
    p.add_argument("--parallel", type=int, default=2, help="worker processes training at a time (default 2)")
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default 200; 30 with --quick)")
    p.add_argument("--max-retries", type=int, default=1)
    from chinchax.scaling.wandb_report import add_wandb_arguments

    add_wandb_arguments(p, "every training run in one group with its job type (lr-sweep, train, held-out), "
                        "then one analysis run with the tables, fits and plots")
    p.set_defaults(handler=_handle)


def _handle(args) -> int:
    if args.quick and args.scale != "cpu":
        raise UserError("--quick is the CPU study at toy size; drop --scale, or drop --quick")
    out = Path(args.out or default_out(args.quick, args.scale))
    report = run_demo(out, quick=args.quick, parallel=args.parallel, scale=args.scale,
                      n_bootstrap=args.bootstrap or (30 if args.quick else 200), max_retries=args.max_retries,
                      wandb=Wandb(args.wandb_project, args.wandb_group, args.wandb_mode))
    print(report["optimal_table"])
    print(f"\nsweep efficiency {report['summary']['throughput']['efficiency']:.1%} of jnp.dot; "
          f"report: {out / 'report.md'}  ({report['wall_time_s']:.0f} s)")
    return 0


def default_out(quick: bool, scale: str) -> str:
    """Each study its own folder by default: a quick run after a full one must not replace its report."""
    return "demo_quick" if quick else "demo" if scale == "cpu" else f"demo_{scale}"


def _say(message: str) -> None:
    print(f"[chinchax demo] {message}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Phases:
    """Wall time and trained FLOPs of the training phases (lr sweep, sweep, held-out run) of this call."""

    wall_s: float = 0.0
    flops_detailed: float = 0.0
    flops_6nd: float = 0.0
    runs_trained: int = 0

    def add(self, wall: float, sweep, outcomes) -> None:
        from chinchax.rundir import run_json_or_none

        self.wall_s += wall
        for o in outcomes:
            if o.status == "done":
                run = run_json_or_none(sweep.run_dir(o.run_id)) or {}
                self.flops_detailed += float(run.get("flops_detailed") or 0)
                self.flops_6nd += float(run.get("flops_6nd") or 0)
                self.runs_trained += 1


@dataclasses.dataclass(frozen=True)
class Wandb:
    """Where the demo's runs show on W&B: no project, no W&B (the workers run with WANDB_MODE=disabled)."""

    project: str | None = None
    group: str | None = None  # default: the sweep's name (demo, demo_quick, demo_gpu)
    mode: str = "auto"


def run_demo(out: Path, *, quick: bool = False, parallel: int = 2, n_bootstrap: int = 200,
             max_retries: int = 1, train_command=None, scale: str = "cpu", wandb: Wandb = Wandb()) -> dict:
    """The demo as a function (the CLI and the tests call this); returns the report's numbers.
    `train_command` (tests) replaces the worker processes with that subprocess command."""
    from chinchax.scaling.worker import WorkerPool

    if parallel < 1:
        raise UserError(f"--parallel={parallel} must be >= 1")
    with contextlib.ExitStack() as stack:
        # One pool of workers for every training phase: the sweep reuses the lr sweep's processes and compiled
        # programs (same shapes) instead of starting and compiling again.
        env = _worker_env(out, wandb.project)
        pool = None if train_command is not None else stack.enter_context(WorkerPool(parallel, env))
        return _run_demo(out, quick=quick, parallel=parallel, n_bootstrap=n_bootstrap, max_retries=max_retries,
                         train_command=train_command, scale=scale, pool=pool, wandb=wandb)


def _run_demo(out: Path, *, quick, parallel, n_bootstrap, max_retries, train_command, scale, pool, wandb) -> dict:
    from chinchax.experiments import demo_lr, demo_seeds
    from chinchax.scaling.plan import WandbSettings, load_sweep, plan_sweep
    from chinchax.scaling.results import SweepDir

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    corpus = prepare_corpus("site-packages" if scale == "gpu" else "stdlib")
    _say(f"corpus: {corpus['documents']:,} {corpus['source']} documents (Python {corpus['python']}), byte tokenizer")
    peak = measure_peak()
    _say(f"jnp.dot peak of this machine now: {peak / 1e9:.1f} GFLOP/s (float32)")

    sweep_yaml = Path(str(resources.files("chinchax.experiments").joinpath(SCALES[scale])))
    cfg, base_dir = load_sweep(sweep_yaml, list(QUICK_OVERRIDES) if quick else [])
    if quick:
        cfg = dataclasses.replace(cfg, overrides=[*cfg.overrides, *QUICK_RUN_OVERRIDES]).validate()
    group = wandb.group or cfg.name  # every phase's runs in one W&B group, told apart by job type
    cfg = dataclasses.replace(cfg, wandb=WandbSettings(wandb.project, wandb.mode, group, "train")).validate()
    suffix = "_quick" if quick else ""  # both can live in one --out
    phases = Phases()
    run = _runner(out, parallel, max_retries, train_command, phases, pool, wandb.project)

    # 1. the learning-rate rule, measured at the smallest budget
    multipliers = list(demo_lr.MULTIPLIERS)
    for _ in range(1 if quick else demo_lr.MAX_ROUNDS):  # widen the range until every best rate is inside it
        lr_plan = demo_lr.plan_lr_sweep(_job(cfg, "lr-sweep"), base_dir, multipliers)
        _say(f"learning-rate sweep ({len(lr_plan.runs)} runs at {min(cfg.budgets):.3g} FLOPs, "
             f"x{', x'.join(f'{m:.3g}' for m in sorted(multipliers))} the planned rate)")
        lr_rows = run(lr_plan, SweepDir(out / f"sweep_lr{suffix}"))
        rule = demo_lr.tune(lr_rows, cfg.hparams.base_d_model, demo_lr.exponent_for(cfg))
        more = demo_lr.extensions(rule, multipliers)
        if not more:
            break
        multipliers += more
    cfg = demo_lr.with_rule(cfg, rule)
    _say(f"learning rate: {rule['base_lr']:.3g} x ({rule['base_d_model']}/d_model)^{rule['width_exponent']:.2f} "
         f"({rule['exponent_source']}" + (f"; fitted freely k = {rule['free_width_exponent']}"
                                         if rule.get("free_width_exponent") is not None else "") + ")")

    # 2. the isoFLOP sweep
    plan = plan_sweep(cfg, base_dir)
    sweep = SweepDir(out / f"sweep{suffix}")
    _say(f"plan ({len(plan.runs)} runs, {plan.flops_independent:.3g} FLOPs):\n{plan.table()}")
    seed_rows = run(plan, sweep, results_to=out)
    rows = demo_seeds.seed_means(seed_rows)  # one row per grid point: what the fits and the report read
    if len(rows) < 6:
        raise UserError(
            f"only {len(seed_rows)} of {len(plan.runs)} demo runs finished; see `chinchax sweep status {sweep.root}` "
            "and the runs' sweep_train.log; the fits need at least 6 grid points"
        )

    # 3. fits, noise, plots
    _say(f"{len(seed_rows)} runs finished ({len(rows)} grid points x {len(cfg.seeds)} seeds); fitting approaches "
         f"1, 2 and 3 on the seed means with {n_bootstrap} bootstrap resamples")
    from chinchax.experiments.demo_fits import fit_all, noise_table

    fits = fit_all(out, n_bootstrap=n_bootstrap, quick=quick)
    noise = {**noise_table(sweep, plan), "seeds": demo_seeds.seed_noise(seed_rows)}

    # 4. the held-out prediction
    prediction = None
    if "approach3" in fits["results"]:
        prediction = holdout(cfg, base_dir, fits["results"]["approach3"], run, out, suffix, fits["alternative"])
        prediction["learning_rate"] = demo_lr.rate_interval(lr_rows, rule, prediction["d_model"], n_bootstrap)
        from chinchax.experiments.demo_fits import plot_prediction

        fits["plots"].append(("Held-out run: predicted (approach 3) against measured loss",
                              plot_prediction(out, fits["results"]["approach3"], rows, prediction)))
    else:
        _say("no approach-3 fit: the held-out prediction is skipped")

    wall = time.time() - t0
    throughput = _throughput(out, phases, peak)
    summary = _summary(quick=quick, wall=wall, corpus=corpus, rule=rule, plan=plan, lr_plan=lr_plan, rows=rows,
                       seed_rows=seed_rows,
                       fits=fits, noise=noise, prediction=prediction, throughput=throughput)
    text, optimal_table = render(summary, plan, rows, fits, _machine(), sweep.root.name)
    from chinchax import jsonio
    from chinchax.fileio import write_text_atomic

    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "summary.json", jsonio.dumps(summary, indent=1))  # NaN -> null: strict JSON
    _log_analysis(out, wandb, group, summary, fits, lr_rows)
    return {"wall_time_s": wall, "optimal_table": optimal_table, "fits": fits, "rows": rows, "summary": summary}


def _worker_env(out: Path, wandb_project: str | None = None) -> dict:
    return {
        # Only the first process compiles a shape; later workers (and re-runs) load it from disk.
        "JAX_COMPILATION_CACHE_DIR": str((out / "jax_cache").resolve()),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        # no W&B unless asked for (a project in the base experiment must not switch it on behind the demo)
        **({} if wandb_project else {"WANDB_MODE": "disabled"}),
    }


def _job(cfg, job_type: str):
    """The sweep config with its runs' W&B job type set (the group stays the demo's)."""
    return dataclasses.replace(cfg, wandb=dataclasses.replace(cfg.wandb, job_type=job_type))


def _log_analysis(out: Path, wandb: Wandb, group: str, summary: dict, fits: dict, lr_rows: list) -> None:
    """The demo's W&B analysis run: its tables, every fit's parameters and intervals, the held-out prediction,
    the sweep's efficiency, and every plot of the report."""
    from chinchax.scaling import wandb_report

    numbers = {"wall_time_s": summary["wall_time_s"], "runs": summary["runs"], "grid_points": summary["grid_points"]}
    for name, result in fits["results"].items():
        numbers.update(wandb_report.fit_summary(result, prefix=f"{name}/"))
    for key in ("prediction", "throughput", "learning_rate", "scale"):
        numbers.update(wandb_report.flat_numbers(summary.get(key), prefix=f"{key}/"))
    tables = {"results": out / "results.csv", "results_seeds": out / "results_seeds.csv",
              "optimal": fits["optimal"], "lr_sweep": lr_rows}
    where = wandb_report.log_analysis(
        wandb.project, group=group, name=f"{group}-analysis", kind="demo", dir=out, mode=wandb.mode,
        config={"quick": summary["quick"], "n_bootstrap": fits["n_bootstrap"]}, tables=tables, summary=numbers,
        images=wandb_report.pngs(*(out / name for _, name in fits["plots"])))
    if where is not None:
        _say(f"W&B: group {group} of project {wandb.project}; analysis run in {where}")


def _runner(out: Path, parallel: int, max_retries: int, train_command, phases: Phases, pool, wandb_project=None):
    """run(plan, sweep, results_to=None) -> results rows: one training phase, timed and counted."""
    from chinchax.experiments import demo_seeds
    from chinchax.fileio import write_text_atomic
    from chinchax.scaling import executors
    from chinchax.scaling.results import CURVE_COLUMNS, collect, csv_text
    from chinchax.scaling.run_rows import EXTRA_COLUMNS, RESULT_COLUMNS

    def run(plan, sweep, results_to: Path | None = None) -> list[dict]:
        sweep.write_plan(plan)
        t = time.time()
        outcomes = executors.run_local(
            plan, sweep, parallel=parallel, max_retries=max_retries, env=_worker_env(out, wandb_project), pool=pool,
            train_command=train_command or executors.DEFAULT_TRAIN_COMMAND,
        )
        phases.add(time.time() - t, sweep, outcomes)
        failed = [o.run_id for o in outcomes if o.status == "failed"]
        if failed:
            _say(f"{len(failed)} run(s) failed and are left out: {', '.join(failed)}")
        rows, curves = collect(sweep, plan)
        if results_to is not None:  # what the fits read: one row (and one curve) per grid point, seeds averaged
            means = demo_seeds.seed_means(rows)
            columns = [*RESULT_COLUMNS, *EXTRA_COLUMNS, "n_seeds", "loss_seed_sd"]
            write_text_atomic(results_to / "results.csv", csv_text(means, columns))
            write_text_atomic(results_to / "results_seeds.csv", (sweep.root / "results.csv").read_text())
            write_text_atomic(results_to / "curves.csv",
                              csv_text(demo_seeds.mean_curves(curves, rows), list(CURVE_COLUMNS)))
        return rows

    return run


def holdout(cfg, base_dir, fit, run, out: Path, suffix: str, alternative=None) -> dict:
    """Train one run at HOLDOUT_FACTOR x the largest budget at approach 3's N_opt; predicted vs measured (and
    what approach 3's other form, `alternative`, predicted for the same run)."""
    from chinchax.scaling.plan import SizeRule, plan_sweep
    from chinchax.scaling.results import SweepDir

    budget = HOLDOUT_FACTOR * max(cfg.budgets)
    frontier = fit.frontier(budget)
    sizes = SizeRule(mode="explicit", n_params=[frontier["n_opt"]], min_steps=1)
    held_cfg = dataclasses.replace(_job(cfg, "held-out"), name=f"{cfg.name}_holdout", budgets=[budget], sizes=sizes,
                                   families={"holdout": []}).validate()
    plan = plan_sweep(held_cfg, base_dir)
    planned = plan.runs[0]
    predicted, lo, hi = fit.predict_loss(planned.n_params, planned.n_tokens)
    _say(f"held-out run at {budget:.3g} FLOPs: N = {planned.n_params:,} (N_opt {frontier['n_opt']:,.0f}), "
         f"predicted loss {predicted:.4f} [{lo:.4f}, {hi:.4f}]")
    # One run per seed of the sweep, trained side by side (each on its own core): the fits predict a seed
    # mean, so the held-out point is one too, and the spread of its seeds is measured where it matters.
    rows = sorted(run(plan, SweepDir(out / f"sweep_holdout{suffix}")), key=lambda r: int(r.get("seed") or 0))
    seeds = [float(r["loss"]) for r in rows]
    measured = sum(seeds) / len(seeds) if seeds else float("nan")
    error = (predicted - measured) / measured
    _say(f"held-out run: measured {measured:.4f} (mean of {len(seeds)} seeds), predicted {predicted:.4f} ({error:+.2%})")
    other = None
    if alternative is not None:
        p, p_lo, p_hi = alternative.predict_loss(planned.n_params, planned.n_tokens)
        other = {"law": alternative.law, "predicted": float(p), "predicted_lo": float(p_lo),
                 "predicted_hi": float(p_hi), "relative_error": float((p - measured) / measured)}
    return {"law": fit.law, "alternative": other, "budget": budget, "n_opt": frontier["n_opt"],
            "n_params": planned.n_params, "n_tokens": planned.n_tokens, "d_model": planned.d_model,
            "n_layers": planned.n_layers, "run": planned.run_id, "runs": [r["run"] for r in rows], "measured_seeds": seeds,
            "predicted": float(predicted), "predicted_lo": float(lo), "predicted_hi": float(hi),
            "measured": measured, "relative_error": float(error), "inside_interval": bool(lo <= measured <= hi)}


def measure_peak() -> float:
    """The best of a few square float32 `jnp.dot`s (as benchmarks/train_step.py): this machine's peak now."""
    from chinchax.train.mfu import measure_matmul_peak

    return max(measure_matmul_peak("float32", n=n, repeats=5) for n in (512, 1024, 2048))


def _throughput(out: Path, phases: Phases, peak: float) -> dict:
    """Sweep efficiency: FLOPs trained / (training wall time x peak), over the phases of this call. A call
    that trained nothing (everything was done) keeps the previous summary's figures."""
    if phases.runs_trained == 0:
        previous = _previous_summary(out)
        if previous and previous.get("throughput", {}).get("runs_trained"):
            return {**previous["throughput"], "from_previous_call": True}
    wall = max(phases.wall_s, 1e-9)
    return {"efficiency": phases.flops_detailed / wall / peak, "efficiency_6nd": phases.flops_6nd / wall / peak,
            "flops_detailed": phases.flops_detailed, "flops_6nd": phases.flops_6nd, "training_wall_s": phases.wall_s,
            "peak_flops": peak, "runs_trained": phases.runs_trained, "from_previous_call": False}


def _previous_summary(out: Path) -> dict | None:
    try:
        return json.loads((out / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _summary(*, quick, wall, corpus, rule, plan, lr_plan, rows, seed_rows, fits, noise, prediction,
             throughput) -> dict:
    import math

    budgets = sorted({float(r["budget"]) for r in rows})
    n_ne = [float(r["n_params_non_embedding"]) for r in rows]
    edges = edge_winners(rows)
    flops_total = plan.flops_independent + lr_plan.flops_independent + (
        training_flops(prediction["n_params"], prediction["n_tokens"]) * len(prediction["measured_seeds"]) if prediction else 0.0)
    return {
        "quick": quick, "wall_time_s": wall, "runs": len(seed_rows), "grid_points": len(rows),
        "seeds": sorted({int(r.get("seed") or 0) for r in seed_rows}), "corpus": corpus,
        "throughput": throughput,
        "scale": {"flops_total": flops_total, "flops_sweep": plan.flops_independent,
                  "flops_lr_sweep": lr_plan.flops_independent, "budgets": budgets,
                  "budget_decades": math.log10(budgets[-1] / budgets[0]) if budgets else 0.0,
                  "n_non_embedding_span": max(n_ne) / min(n_ne) if n_ne else 0.0,
                  "bracketed": not (edges["smallest"] or edges["largest"]), "edge_budgets": edges},
        "learning_rate": rule,
        "noise": noise,
        "approaches": fits["approaches"],
        "approach3_forms": fits["forms"],
        "agreement": fits["agreement"],
        "prediction": prediction,
        "fit_errors": fits["errors"],
        "files": fits["files"],
    }


def prepare_corpus(source: str = "stdlib") -> dict:
    """Build (once) the corpus; the tokenizer is byte-level and needs no training."""
    from chinchax.data.sources import open_source
    from chinchax.data.tokenizers import load_tokenizer

    train = open_source(source, "train")
    validation = open_source(source, "validation")
    tokenizer = load_tokenizer("byte")
    return {"source": source, "documents": len(train) + len(validation), "train_documents": len(train),
            "validation_documents": len(validation), "python": platform.python_version(),
            "tokenizer": "byte", "vocab_size": tokenizer.vocab_size, "metadata": dict(train.metadata)}


def _machine() -> dict:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version()}
