"""The fine-tuning scaling study: base size X x fine-tuning examples D_f x method, and Zhang et al. 2024's
law L(X, D_f) = A X^-alpha D_f^-beta + E fitted per method.

    python -m chinchax.experiments.finetune_study [--quick] [--out DIR]    (experiments/finetune_study.yaml)

1. pretrains the bases: byte-level RoPE decoders of several widths on the stdlib corpus (or reuses them);
2. builds a FLAN-style mixture of the code tasks (chinchax.data.instruction_tasks) from the same corpus's
   validation files (the bases never trained on them), one cluster held out;
3. fine-tunes every base with every method (`chinchax.posttrain.finetune`, the pretraining trainer) at a
   constant learning rate, evaluating on the mixture's held-in validation split after each D_f in
   `eval_at` steps: with a constant rate the model after k steps of one run is the model of a k-step
   run, so one run gives every D_f (Chinchilla's warning is about decaying schedules);
4. scores the held-out cluster's tasks zero-shot by their own metric (ROUGE-L for summaries, exact match,
   accuracy: chinchax.evaluation.task_metrics) at every D_f: the run is trained in stages that stop at each
   `eval_at` step (a constant rate makes an extended run equal one run of the full length) and keep the
   model of each stage (`at/stepN/`); `held_out.every_d_f=false` scores the last D_f only (--quick);
5. fits the law per method (run bootstrap), and writes report.md and summary.json.
Finished runs are reused on a re-run.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chinchax import jsonio, rundir
from chinchax.fileio import write_text_atomic

QUICK = ["base.d_models=[32,64]", "base.steps=60", "finetune.steps=12", "finetune.eval_at=[3,6,12]",
         "finetune.methods=[full,lora,prompt_tuning]", "mixture.n_examples=400", "mixture.file_stride=40",
         "bootstrap=10", "held_out.examples=8", "held_out.max_new_tokens=16", "held_out.batch_size=8",
         "held_out.every_d_f=false"]


@dataclass(frozen=True)
class BaseSection:
    d_models: list[int] = field(default_factory=lambda: [32, 64, 128])
    n_layers: int = 2
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 192
    learning_rate: float = 3e-3
    max_files: int = 400  # of the stdlib corpus (train split for the bases)


@dataclass(frozen=True)
class FinetuneSection:
    methods: list[str] = field(default_factory=lambda: ["full", "lora", "qlora", "prompt_tuning"])
    steps: int = 90
    eval_at: list[int] = field(default_factory=lambda: [10, 30, 90])
    batch_size: int = 8
    learning_rates: dict[str, float] = field(default_factory=lambda: {
        "full": 1e-3, "lora": 3e-3, "qlora": 3e-3, "prompt_tuning": 3e-2})
    lora_rank: int = 8
    prompt_length: int = 16
    eval_batches: int = 4
    # data.loss_on of every fine-tune: "targets" trains on the answers only (FLAN, T5), "all" on prompt + answer
    loss_on: str = "targets"


@dataclass(frozen=True)
class MixtureSection:
    rate_cap: int = 500
    held_out_clusters: list[str] = field(default_factory=lambda: ["summarization"])
    shots: list[int] = field(default_factory=lambda: [0, 1])
    n_examples: int = 4000
    max_prompt_chars: int = 180  # longer examples are dropped: one example per row of base.seq_len bytes
    file_stride: int = 4  # tasks from every k-th file of the stdlib train split


@dataclass(frozen=True)
class HeldOutSection:
    examples: int = 64  # per held-out task (0 = none scored)
    max_new_tokens: int = 48  # bytes generated per example (summaries are one docstring line)
    every_d_f: bool = True  # score the model at every D_f (staged runs), or at the last one only
    batch_size: int = 16


@dataclass(frozen=True)
class StudyConfig:
    name: str = "finetune_study"
    base: BaseSection = field(default_factory=BaseSection)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    mixture: MixtureSection = field(default_factory=MixtureSection)
    held_out: HeldOutSection = field(default_factory=HeldOutSection)
    bootstrap: int = 50
    # W&B: every base and fine-tune logs to this project in one group (the study's name), job types
    # "pretrain" and "fine-tune"; null = none (offline unless a W&B key is configured).
    wandb_project: str | None = None


def base_config(cfg: StudyConfig, d_model: int, run_dir: Path):
    from chinchax.configlib import load_config
    from chinchax.train.config import ExperimentConfig

    b = cfg.base
    return load_config(ExperimentConfig, Path(__file__).with_name("tiny.yaml"), [
        "model.preset=tiny-gpt2", "model.vocab_size=384", f"model.d_model={d_model}", f"model.n_layers={b.n_layers}",
        f"model.n_heads={max(2, d_model // 32)}", f"model.d_ff={4 * d_model}", f"model.max_len={b.seq_len}",
        "model.position=rope", "data.source=stdlib", f"data.seq_len={b.seq_len}", "data.eval_batches=4",
        f"trainer.steps={b.steps}", f"trainer.batch_size={b.batch_size}", f"optimizer.learning_rate={b.learning_rate}",
        f"optimizer.warmup_steps={max(1, b.steps // 10)}", "trainer.checkpoint_every=0", "trainer.progress_bar=false",
        f"trainer.log_every={max(1, b.steps // 10)}", f"trainer.run_dir={run_dir}",
        *_wandb(cfg, "pretrain", {"family": "base"})])


def pretrain_bases(cfg: StudyConfig, out: Path) -> dict[int, Path]:
    """d_model -> run dir `out/bases/d{d_model}` of a finished base (trained unless its run.json is there)."""
    from chinchax.train.trainer import train

    bases = {}
    for d in cfg.base.d_models:
        run_dir = out / "bases" / f"d{d}"
        if not (run_dir / "run.json").is_file():
            train(base_config(cfg, d, run_dir))
        bases[d] = run_dir
    return bases


_MIXTURES: dict[str, tuple] = {}  # one build per process and mixture section: parsing the corpus takes seconds


def mixture_source(cfg: StudyConfig) -> tuple[str, dict, list]:
    """(data source name, mixture info, the held-out clusters' tasks)."""
    key = jsonio.dumps([cfg.name, asdict(cfg.mixture)])
    if key not in _MIXTURES:
        _MIXTURES[key] = _build_mixture_source(cfg)
    return _MIXTURES[key]


def _build_mixture_source(cfg: StudyConfig) -> tuple[str, dict, list]:
    from chinchax.data.config import DataConfig
    from chinchax.data.instruction_tasks import Task, code_tasks
    from chinchax.data.mixtures import MixtureConfig, build_mixture, register_mixture
    from chinchax.data.pipeline import open_documents

    # The validation split is too small (28 files); every k-th train file instead. The bases see a few % of
    # the corpus's bytes (steps x batch x seq_len of 31.5 MB), so most task functions are unseen text.
    docs = open_documents(DataConfig(source="stdlib"), "train")
    tasks = code_tasks([docs[i] for i in range(0, len(docs), cfg.mixture.file_stride)], seed=0)
    m = cfg.mixture
    short = [Task(t.name, t.cluster, t.templates, [e for e in t.examples
                                                    if max(len(tp.format(**e.fields)) for tp in t.templates) + len(e.target)
                                                    <= m.max_prompt_chars], t.metric) for t in tasks]
    mix = build_mixture(short, MixtureConfig(rate_cap=m.rate_cap, held_out_clusters=tuple(m.held_out_clusters),
                                             shots=tuple(m.shots), n_examples=m.n_examples))
    info = {"tasks": {t.name: len(t) for t in short}, "rates": mix.rates, "train": len(mix.train),
            "validation": len(mix.validation), "held_out": len(mix.held_out)}
    held_out = [t for t in short if t.cluster in m.held_out_clusters]
    return register_mixture(f"{cfg.name}-mixture", mix), info, held_out


def finetune_run(cfg: StudyConfig, base_dir: Path, method: str, source: str, run_dir: Path) -> tuple[dict, dict]:
    """(run.json, {step: model dir}): the fine-tune, stopped at each D_f stage whose model is scored."""
    stages = [s for s in sorted(cfg.finetune.eval_at) if s < cfg.finetune.steps] if cfg.held_out.every_d_f else []
    _check_reused(run_dir, cfg.finetune.loss_on)
    models = {}
    for s in stages:
        at = run_dir / "at" / f"step{s}"
        if not (at / "model.yaml").is_file():
            if _steps_done(run_dir) < s:
                _finetune(cfg, base_dir, method, source, run_dir, s)
            if _steps_done(run_dir) == s and (run_dir / "merged" / "model.yaml").is_file():
                at.parent.mkdir(parents=True, exist_ok=True)
                (run_dir / "merged").rename(at)  # the next stage exports its own merged/
        if (at / "model.yaml").is_file():  # (absent for a run finished before stages existed)
            models[s] = at
    if _steps_done(run_dir) < cfg.finetune.steps or not (run_dir / "merged" / "model.yaml").is_file():
        _finetune(cfg, base_dir, method, source, run_dir, cfg.finetune.steps)
    models[cfg.finetune.steps] = run_dir / "merged"
    return rundir.read_run_json(run_dir), models


def _check_reused(run_dir: Path, loss_on: str) -> None:
    """A finished run is reused without a look at its config: refuse one trained on other loss tokens (runs
    made before data.loss_on existed trained on every token)."""
    from chinchax.configlib import read_yaml
    from chinchax.errors import UserError

    path = run_dir / "config.yaml"
    if path.is_file():
        old = read_yaml(path).get("data", {}).get("loss_on") or "all"
        if old != loss_on:
            raise UserError(f"{run_dir} was fine-tuned with data.loss_on={old}, this study asks for "
                            f"finetune.loss_on={loss_on}; use another --out, or set finetune.loss_on={old}")


def _steps_done(run_dir: Path) -> int:
    run = rundir.run_json_or_none(run_dir)
    return int(run["steps"]) if run is not None else 0


def _finetune(cfg: StudyConfig, base_dir: Path, method: str, source: str, run_dir: Path, steps: int) -> dict:
    from chinchax.configlib import load_config
    from chinchax.posttrain.finetune import FinetuneConfig, finetune

    f = cfg.finetune
    ft = load_config(FinetuneConfig, None, [
        f"finetune.method={method}", f"finetune.lora.rank={f.lora_rank}", "finetune.lora.targets=[attention,mlp]",
        f"finetune.prompt.length={f.prompt_length}", "finetune.qlora.group_size=32", f"data.source={source}",
        f"data.seq_len={cfg.base.seq_len}",  # the same rows for every method: losses compare
        f"data.loss_on={f.loss_on}", "data.packing=none", f"data.eval_batches={f.eval_batches}", f"trainer.steps={steps}",
        f"trainer.batch_size={f.batch_size}", f"optimizer.learning_rate={f.learning_rates[method]}",
        "optimizer.schedule=constant", "optimizer.warmup_steps=0", "optimizer.weight_decay=0.0",
        "trainer.checkpoint_every=0", "trainer.progress_bar=false", f"trainer.log_every={min(f.eval_at)}",
        f"trainer.eval_every={math.gcd(*f.eval_at)}", f"trainer.run_dir={run_dir}",
        *_wandb(cfg, "fine-tune", {"family": method, "method": method, "base": base_dir.name})])
    return finetune(base_dir, ft)


def _wandb(cfg: StudyConfig, job_type: str, extra: dict) -> list[str]:
    """The W&B overrides of one of the study's runs (none without wandb_project)."""
    from chinchax.train.config import wandb_overrides

    if not cfg.wandb_project:
        return []
    return wandb_overrides(cfg.wandb_project, group=cfg.name, job_type=job_type, extra={"study": cfg.name, **extra})


def score_held_out(cfg: StudyConfig, tasks: list, model_dir: Path) -> dict:
    """{task: {metric, score, stderr, examples}} of the model in `model_dir`, zero-shot on the held-out tasks."""
    from chinchax.evaluation.run_loading import load_run
    from chinchax.evaluation.task_metrics import score_task

    h = cfg.held_out
    if not tasks or h.examples <= 0:
        return {}
    run = load_run(model_dir, soft_prompt=True)  # a prompt-tuned model with its prompt
    out = {}
    for task in tasks:
        r = score_task(run.model, run.tokenizer, task, limit=h.examples, max_new_tokens=h.max_new_tokens,
                       batch_size=h.batch_size)
        out[task.name] = {k: r[k] for k in ("metric", "score", "stderr", "examples", "samples")}
    return out


def collect(run_dir: Path, eval_at, batch_size: int) -> list[dict]:
    rows = jsonio.read_jsonl(run_dir / "metrics.jsonl")
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    return [{"step": s, "d_f": s * batch_size, "loss": evals[s]} for s in eval_at if s in evals]


def run_study(out: Path, cfg: StudyConfig) -> dict:
    from chinchax.scaling.finetune_laws import fit_by_method

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    bases = pretrain_bases(cfg, out)
    base_runs = {d: rundir.read_run_json(p) for d, p in bases.items()}
    source, mix_info, held_out_tasks = mixture_source(cfg)
    rows, scoring_s = [], 0.0
    for d, base_dir in bases.items():
        for method in cfg.finetune.methods:
            result, models = finetune_run(cfg, base_dir, method, source, out / "finetunes" / f"d{d}-{method}")
            for r in collect(out / "finetunes" / f"d{d}-{method}", cfg.finetune.eval_at, cfg.finetune.batch_size):
                t_score = time.time()
                held = score_held_out(cfg, held_out_tasks, models[r["step"]]) if r["step"] in models else {}
                scoring_s += time.time() - t_score
                rows.append({"method": method, "d_model": d, "x": base_runs[d]["n_params"],
                             "trainable": result["finetune"]["n_params_trainable"], **r, "held_out": held})
    # The law has 4 parameters and a size exponent: a method needs >= 5 runs over >= 2 base sizes to be fitted.
    unfit = sorted(m for m in {r["method"] for r in rows}
                   if sum(r["method"] == m for r in rows) < 5 or len({r["x"] for r in rows if r["method"] == m}) < 2)
    fits = fit_by_method([r for r in rows if r["method"] not in unfit], n_bootstrap=cfg.bootstrap)
    summary = {"name": cfg.name, "rows": rows, "fits": fits, "mixture": mix_info,
               "held_out_tasks": {t.name: {"cluster": t.cluster, "metric": t.metric, "examples": min(len(t), cfg.held_out.examples)}
                                  for t in held_out_tasks},
               "bases": {d: {"n_params": r["n_params"], "eval_loss": r["eval_loss"]} for d, r in base_runs.items()},
               "not_fitted": unfit, "held_out_scoring_s": scoring_s, "wall_time_s": time.time() - t0}
    write_text_atomic(out / "summary.json", jsonio.dumps(summary, indent=2) + "\n")
    from chinchax.experiments.finetune_report import render

    write_text_atomic(out / "report.md", render(summary, cfg))
    return summary


def main(argv=None) -> int:
    from chinchax.configlib import load_config

    p = argparse.ArgumentParser(prog="python -m chinchax.experiments.finetune_study", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(Path(__file__).with_name("finetune_study.yaml")))
    p.add_argument("--quick", action="store_true", help="toy size for CI (2 bases, 3 methods, 12 steps)")
    p.add_argument("--out", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(StudyConfig, args.config, [*(QUICK if args.quick else []), *args.overrides])
    out = Path(args.out or (f"{cfg.name}_quick" if args.quick else cfg.name))
    s = run_study(out, cfg)
    print((out / "report.md").read_text())
    print(f"{s['wall_time_s']:.0f} s -> {out}/report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
