"""Plan an isoFLOP sweep: FLOP budgets x model sizes -> one resolved training config per run.

    plan = plan_sweep(load_sweep("experiments/demo_sweep.yaml"))
    print(plan.table())

Planning is pure and deterministic: the same sweep YAML always gives the same runs and run ids.

- Shapes. A shape rule turns a target N into (d_model, n_layers, n_heads, d_ff) with a fixed aspect ratio
  d_model / n_layers and a fixed head size (Kaplan et al. 2020 found loss nearly flat over aspect ratios
  20-200, so holding it fixed leaves one free size knob). The candidate shapes form a *ladder* ordered by
  size; N of each rung is counted exactly with `chinchax.model.count_params`, so embeddings, biases, norms,
  gated MLPs and encoder-decoder stacks are all counted, not approximated.
- Sizes. At each budget C the grid is centred on N* = sqrt(C / (6 * tokens_per_param)) (Chinchilla's ~20
  tokens per parameter is the default guess) and spans `span` x in N, log-spaced over ladder rungs. Or an
  explicit list of N is used at every budget (Chinchilla's own isoFLOP profiles did that).
- Tokens. D follows from C = 6 * N * D with N by the sweep's convention (`total`, Chinchilla; or
  `non_embedding`, Kaplan); steps = round(D / (batch * seq_len)), so the realised C is within half a step.
- Hyperparameters per size from a rule (sweep_config.learning_rate, the one place its formula is written):
  lr = base_lr * (base_d_model / d_model)^width_exponent ("inverse_width"; exponent 1 is the muP
  hidden-layer scaling of Adam's lr applied globally) or "constant"; or "mup": every run µP relative to
  hparams.base_d_model (and base_n_layers), all at base_lr (model/parametrization.py); or "law": lr = eta_opt(C) of a
  hyperparameter law (DeepSeek LLM 2024's, or one fitted with `chinchax fit-hparams`), and with
  `hparams.law_batch` the batch B_opt(C) too, at the run's compute in the law's convention, C = M * D:
  M = 6 * N_non_embedding + 12 * n_layers * d_model * seq_len (DeepSeek's non-embedding FLOPs per token,
  with the exact non-embedding count) and D the planned tokens budget / (6 * N) (the realised D is within
  half a step of it, and the batch must be known before the steps are). The rate is rounded to 6 significant
  digits: a short, stable number in the run's config and id.
- Configs. Each run's ExperimentConfig is the base experiment with the sweep's dotted `overrides` (and its
  family's) merged in once per family and budget, then the run's own values (shape, steps, batch, lr,
  warmup, seed) set as typed values: no number is written into a string and parsed back on the way to the
  executor, which writes the YAML file `chinchax train` reads. Each run also records the dotted overrides
  that give the same config (plan.csv shows them).
- WSD branching (Hagele et al. 2024). With a warmup-stable-decay schedule, every run of one shape shares
  its stable phase: the longest run is the trunk; each shorter run branches off the trunk's checkpoint
  where its own cooldown starts, and only pays for its cooldown. `Plan.wsd_savings` says how many FLOPs that
  saves over training each run from scratch.
- W&B. Every run gets trainer.wandb_group (the sweep's name), trainer.wandb_job_type and trainer.wandb_config
  (sweep, family, budget, N convention), and trainer.wandb_project when the sweep's `wandb.project` is set.
  No trainer.wandb_* key is part of a run id (`_identity`).
"""


from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from chinchax.compute import FLOPS_PER_PARAM_TOKEN, params_at_ratio, tokens_for_budget, training_flops
from chinchax.configlib import load_config, to_dict, validated
from chinchax.errors import UserError
from chinchax.scaling.hyperlaws import (
    PUBLISHED_HYPERPARAMETER_LAWS,
    HyperparameterLaw,
    load_hyperparameter_law,
    non_embedding_flops_per_token,
)
from chinchax.scaling.ladder import (  # noqa: F401 (the sweep's public names, importable from here)
    DIRECT_COUNTS,
    ParamCounter,
    Shape,
    model_with_shape,
    shape_for,
    shape_ladder,
    sizes_for_budget,
)
from chinchax.scaling.planned import Plan, PlannedRun, _si, config_hash, plain_config  # noqa: F401
from chinchax.scaling.sweep_config import (  # noqa: F401
    LR_RULES,
    N_CONVENTIONS,
    SIZE_MODES,
    HParamRule,
    RaySettings,
    ShapeRule,
    SizeRule,
    SweepConfig,
    TpuSettings,
    WandbSettings,
    WsdRule,
    experiment_path,
    learning_rate,
    load_sweep,
)
from chinchax.train.config import WANDB_KEYS, ExperimentConfig, TrainerConfig, wandb_overrides


def wsd_cooldown_steps(steps: int, cooldown_fraction: float) -> int:
    """Cooldown length of a WSD run, rounded as chinchax.train.optimizer.make_schedule rounds it."""
    return max(int(round(cooldown_fraction * steps)), 1)


def _resolve(experiment: Path, overrides: Sequence[str]):
    return load_config(ExperimentConfig, experiment, list(overrides))


def plan_sweep(cfg: SweepConfig, base_dir: str | Path = ".") -> Plan:
    """Turn a sweep config into its plan. Pure: it reads only the base experiment YAML."""
    exp_path = experiment_path(cfg.experiment, Path(base_dir))
    families = cfg.families or {"base": []}
    runs: list[PlannedRun] = []
    dropped: list[str] = []
    conv = cfg.n_convention
    law = _hparams_law(cfg.hparams, Path(base_dir)) if cfg.hparams.rule == "law" else None
    for family, family_overrides in families.items():
        shared = [*cfg.overrides, *family_overrides]
        # The base is a template: its own steps/warmup are replaced per run, so don't let them clash here.
        base = _resolve(exp_path, [*shared, "optimizer.warmup_steps=0"])
        full_batch = cfg.batch_size or base.trainer.batch_size
        seq_len = base.data.seq_len
        if cfg.sizes.mode == "explicit":
            n_max = max(cfg.sizes.n_params)
        else:
            n_max = params_at_ratio(max(cfg.budgets), cfg.sizes.tokens_per_param) * math.sqrt(cfg.sizes.span)
        ladder = shape_ladder(base.model, cfg.shape, 2.0 * n_max, conv)
        grid: list[tuple[float, Shape, int, int]] = []  # (budget, shape, batch, steps)
        for budget in sorted(cfg.budgets):
            for shape in sizes_for_budget(ladder, budget, cfg.sizes, conv):
                tokens = tokens_for_budget(budget, shape.n(conv))
                if law is not None and cfg.hparams.law_batch:
                    law_tokens = law.batch_tokens(law_compute(shape, budget, conv, seq_len))
                    batch = max(cfg.min_batch_size, round(law_tokens / seq_len))
                else:
                    batch = batch_for_run(tokens, seq_len, full_batch, cfg.target_steps, cfg.min_batch_size)
                steps = round(tokens / (batch * seq_len))
                if steps < cfg.sizes.min_steps:
                    dropped.append(
                        f"{family} C={budget:.3g} {shape.tag} (N={_si(shape.n(conv))}): {steps} steps < "
                        f"sizes.min_steps={cfg.sizes.min_steps}"
                    )
                    continue
                grid.append((budget, shape, batch, steps))
        # Warmup: a fraction of the run, or of the shortest run of the shape when WSD runs share a trunk.
        shortest: dict[tuple[Shape, int], int] = {}
        for _, shape, batch, steps in grid:  # a WSD trunk is shared by the runs of one shape and batch
            shortest[shape, batch] = min(steps, shortest.get((shape, batch), steps))
        templates: dict[float, tuple[list[str], ExperimentConfig]] = {}  # per budget: (its overrides, its config)
        for (budget, shape, batch, steps), seed in itertools.product(grid, cfg.seeds):
            if budget not in templates:
                head = [
                    *_wandb(cfg, family, budget),  # first: the sweep's own trainer.wandb_* overrides win
                    *mup_overrides(cfg.hparams, cfg.shape),
                    *shared,
                ]
                templates[budget] = head, _resolve(exp_path, [*head, "optimizer.warmup_steps=0"])
            head, template = templates[budget]
            tokens_per_step = batch * seq_len
            basis = shortest[shape, batch] if cfg.wsd.enabled and cfg.wsd.branch else steps
            warmup = min(steps, max(cfg.hparams.min_warmup_steps, round(cfg.hparams.warmup_fraction * basis)))
            law_flops = law_compute(shape, budget, conv, seq_len) if law is not None else None
            lr = float(f"{learning_rate(cfg.hparams, shape.d_model, law, law_flops):.6g}")
            # the same evaluation rows at every batch (eval_batches x batch rows): runs stay paired
            eval_batches = max(1, base.data.eval_batches * full_batch // batch)
            m = model_with_shape(base.model, cfg.shape, shape.d_model)
            changes = _run_values(cfg, m, steps, batch, eval_batches, lr, warmup, seed)
            experiment = with_values(template, changes)
            runs.append(
                PlannedRun(
                    run_id=_run_id(family, budget, _tag(shape.d_model, shape.n_layers, seed), plain_config(experiment)),
                    family=family, budget=float(budget), d_model=shape.d_model, n_layers=shape.n_layers,
                    n_heads=shape.n_heads, d_ff=shape.d_ff, n_params=shape.n_total,
                    n_params_embedding=shape.n_embedding, n_params_non_embedding=shape.n_non_embedding,
                    n_tokens=steps * tokens_per_step, steps=steps, batch_size=batch, seq_len=seq_len,
                    lr=lr, warmup_steps=warmup, flops=training_flops(shape.n(conv), steps * tokens_per_step),
                    overrides=(*head, *dotted(changes)), experiment=experiment, seed=seed,
                )
            )
    runs = _add_branches(runs, cfg) if cfg.wsd.enabled and cfg.wsd.branch else runs
    independent = sum(r.flops for r in runs)
    with_branching = independent - sum(
        training_flops(r.n_params if conv == "total" else r.n_params_non_embedding, r.branch_step * r.batch_size * r.seq_len)
        for r in runs
        if r.branch_of
    )
    return Plan(cfg.name, conv, str(exp_path), tuple(runs), tuple(dropped), independent, with_branching)


def _run_values(cfg: SweepConfig, m, steps: int, batch: int, eval_batches: int, lr: float, warmup: int,
                seed: int) -> dict[str, object]:
    """A run's own values, by dotted name: its shape (model `m`), length, batch, learning rate and warmup, and
    its seed and WSD schedule where the sweep sets them."""
    values = {
        "model.d_model": m.d_model,
        "model.n_layers": m.n_layers,
        "model.n_heads": m.n_heads,
        "model.n_kv_heads": m.n_kv_heads,
        "model.head_dim": None,
        "model.d_ff": m.d_ff,
        "trainer.steps": steps,
        "trainer.tokens": None,
        "trainer.batch_size": batch,
        "data.eval_batches": eval_batches,
        "optimizer.learning_rate": lr,
        "optimizer.warmup_steps": warmup,
    }
    if cfg.seeds != [0]:  # a one-seed sweep keeps the base's seeds (and its run ids)
        values.update({"trainer.seed": seed, "data.seed": seed})
    if m.variant == "encoder_decoder":
        values["model.n_encoder_layers"] = None
    if cfg.wsd.enabled:
        values.update({"optimizer.schedule": "wsd", "optimizer.cooldown_fraction": cfg.wsd.cooldown_fraction})
    return values


def with_values(config: ExperimentConfig, changes: Mapping[str, object]) -> ExperimentConfig:
    """`config` with the values of dotted `section.key` names replaced (typed values, no string parsed), and
    trainer.run_dir at its default (the executor's to set), validated as `load_config` validates. A deep copy:
    no two runs share a list or dict."""
    sections: dict[str, dict] = {"trainer": {"run_dir": _RUN_DIR_UNSET}}
    for key, value in changes.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    config = copy.deepcopy(config)
    replaced = {name: dataclasses.replace(getattr(config, name), **values) for name, values in sections.items()}
    return validated(dataclasses.replace(config, **replaced))


_RUN_DIR_UNSET = TrainerConfig().run_dir


def dotted(changes: Mapping[str, object]) -> list[str]:
    """The dotted overrides that set `changes` (what a planned run records, and plan.csv shows)."""
    return [f"{key}={'null' if value is None else value}" for key, value in changes.items()]


def _wandb(cfg: SweepConfig, family: str, budget: float) -> list[str]:
    """Every run of the sweep in one W&B group (the sweep's name unless wandb.group says otherwise) with its
    job type, and the planner's numbers a dashboard plots by that the run itself does not know."""
    w = cfg.wandb
    extra = {"sweep": cfg.name, "family": family, "budget": float(budget), "n_convention": cfg.n_convention}
    return wandb_overrides(w.project, group=w.group or cfg.name, job_type=w.job_type, extra=extra,
                           mode=w.mode if w.project else None, tags=w.tags)


def law_compute(shape: Shape, budget: float, conv: str, seq_len: int) -> float:
    """A run's compute in DeepSeek's convention, C = M * D, for a hyperparameter law: M the non-embedding
    FLOPs per token (attention included, vocabulary not) and D the run's planned tokens, budget / (6 N)."""
    m = non_embedding_flops_per_token(shape.n_non_embedding, shape.n_layers, shape.d_model, seq_len)
    return m * budget / (FLOPS_PER_PARAM_TOKEN * shape.n(conv))  # M * D, D = budget / (6 N)


def _hparams_law(rule: HParamRule, base_dir: Path) -> HyperparameterLaw:
    """hparams.law: a published law's name, or a fitted law JSON next to the sweep file or in the cwd."""
    if rule.law in PUBLISHED_HYPERPARAMETER_LAWS:
        return PUBLISHED_HYPERPARAMETER_LAWS[rule.law]
    for candidate in (base_dir / rule.law, Path(rule.law)):
        if candidate.is_file():
            return load_hyperparameter_law(candidate)
    raise UserError(f"hparams.law={rule.law!r} is neither a published law ({', '.join(PUBLISHED_HYPERPARAMETER_LAWS)}) "
                    f"nor a file next to the sweep file ({base_dir}) or in the working directory; fit one with "
                    "`chinchax fit-hparams GRID.csv --out LAW.json`")


def mup_overrides(hparams, shape) -> list[str]:
    """rule=mup: every run µP relative to the rule's base shapes (nothing for the other rules). The shape rule's
    head size is the base's too when it fixes the head size (heads added with width); with a fixed head count
    the base head size is base d_model / n_heads (model/parametrization.py)."""
    if hparams.rule != "mup":
        return []
    out = ["model.parametrization=mup", f"model.mup_base_d_model={hparams.base_d_model}"]
    if not shape.n_heads:
        out.append(f"model.mup_base_head_dim={shape.head_dim}")
    if hparams.base_n_layers is not None:
        out.append(f"model.mup_base_n_layers={hparams.base_n_layers}")
    return out


def batch_for_run(tokens: float, seq_len: int, batch: int, target_steps: int, min_batch: int) -> int:
    """The sweep's batch, halved while the run would train fewer than `target_steps` steps (and the batch
    stays >= `min_batch`): short runs at small scale are step-limited, and a smaller batch of the same
    tokens trains them further (measured: 0.09 nats at 400-600 steps; docs/sweeps.md). 0 = always `batch`."""
    while target_steps and batch // 2 >= max(min_batch, 1) and batch % 2 == 0 and tokens / (batch * seq_len) < target_steps:
        batch //= 2
    return batch


def _tag(d_model: int, n_layers: int, seed: int) -> str:
    return f"d{d_model}l{n_layers}" + (f"s{seed}" if seed else "")


def _run_id(family: str, budget: float, tag: str, config: Mapping) -> str:
    """A run's id from its config as plain data (`plain_config`, as plan.json holds it)."""
    return f"{family}-c{budget:.2g}-{tag}-{config_hash(_identity(config), budget)[:8]}".replace("+", "")


def _identity(config: Mapping) -> dict:
    """What names a run: its resolved config minus every key left at chinchax's default. A new config field
    (with a default that keeps the old behaviour) then renames no planned run, and a sweep re-run after an
    upgrade still finds its finished runs instead of training them all again."""
    from chinchax.train.config import ExperimentConfig

    defaults = json.loads(json.dumps(to_dict(ExperimentConfig()), default=str))
    config = json.loads(json.dumps(config, default=str))
    for key in WANDB_KEYS:  # where a run is shown is not what it computes: moving it to W&B retrains nothing
        config.get("trainer", {}).pop(key, None)
    return {
        section: {k: v for k, v in values.items() if defaults.get(section, {}).get(k, _NO_DEFAULT) != v}
        if isinstance(values, dict)
        else values
        for section, values in config.items()
    }


_NO_DEFAULT = object()


MAX_TRUNK_CHECKPOINTS = 16  # checkpoints a WSD trunk keeps for its branches (disk vs exact branch points)


def _add_branches(runs: list[PlannedRun], cfg: SweepConfig) -> list[PlannedRun]:
    """Per (family, shape, seed, batch): the longest run is the trunk; each shorter run starts from a trunk checkpoint
    at or before the step where its own cooldown begins. Up to there the two schedules are the same
    (same warmup, same peak lr, same data order), so the branch then trains exactly as it would alone.

    The trunk saves every K steps and keeps them all, K = max(gcd of the cooldown starts, trunk steps / 16);
    each branch starts from the last multiple of K before its cooldown."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault((r.family, r.d_model, r.n_layers, r.seed, r.batch_size), []).append(r)
    out = {}
    for group in groups.values():
        trunk = original = max(group, key=lambda r: (r.steps, r.run_id))
        starts = {
            r.run_id: r.steps - wsd_cooldown_steps(r.steps, cfg.wsd.cooldown_fraction)
            for r in group if r is not original
        }
        every = max(math.gcd(*starts.values()) if starts else 1, -(-trunk.steps // MAX_TRUNK_CHECKPOINTS))
        branch_steps = {k: (v // every) * every for k, v in starts.items()}
        branch_steps = {k: v for k, v in branch_steps.items() if v > 0}
        if branch_steps:
            changes = {"trainer.checkpoint_every": every, "trainer.max_to_keep": trunk.steps // every + 2}
            experiment = with_values(trunk.experiment, changes)
            trunk = dataclasses.replace(
                trunk,
                run_id=_run_id(trunk.family, trunk.budget, _tag(trunk.d_model, trunk.n_layers, trunk.seed),
                               plain_config(experiment)),
                experiment=experiment,
                overrides=(*trunk.overrides, *dotted(changes)),
            )
        for r in group:
            if r.run_id in branch_steps:
                out[r.run_id] = dataclasses.replace(r, branch_of=trunk.run_id, branch_step=branch_steps[r.run_id])
            else:
                out[r.run_id] = trunk if r is original else r
    return [out[r.run_id] for r in runs]
