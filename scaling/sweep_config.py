"""A sweep's configuration (the sweep YAML): budgets, N convention, the shape, size and hyperparameter rules,
WSD branching, and how runs are launched (Ray, Cloud TPU). `load_sweep` reads it; `plan_sweep`
(scaling/plan.py) turns it into runs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from chinchax.configlib import load_config
from chinchax.errors import UserError
from chinchax.scaling.run_rows import N_CONVENTIONS

if TYPE_CHECKING:
    from chinchax.scaling.hyperlaws import HyperparameterLaw

LR_RULES = ("inverse_width", "constant", "law", "mup")
SIZE_MODES = ("around_optimum", "explicit")


@dataclass(frozen=True)
class ShapeRule:
    aspect_ratio: float = 32.0  # d_model / n_layers, held fixed across sizes
    head_dim: int = 64  # fixed head size: n_heads = d_model / head_dim
    # A fixed number of heads at every width instead (0 = d_model / head_dim). Tiny models on a CPU want
    # few wide heads: softmax over [batch, heads, L, L] is element-wise work that 8-wide heads multiply
    # (measured: 1 head trains a d40 decoder 1.4x faster than 5 heads of 8; docs/sweeps.md).
    n_heads: int = 0
    ffn_ratio: float = 4.0  # d_ff = ffn_ratio * d_model (8/3 is usual for gated MLPs)
    d_model_multiple: int = 0  # d_model steps; 0 = head_dim
    min_layers: int = 1
    max_layers: int = 256
    max_d_model: int = 32768

    def validate(self) -> ShapeRule:
        for key in ("aspect_ratio", "head_dim", "ffn_ratio", "min_layers", "max_layers", "max_d_model"):
            if getattr(self, key) <= 0:
                raise UserError(f"shape.{key}={getattr(self, key)} must be positive")
        if self.n_heads < 0:
            raise UserError(f"shape.n_heads={self.n_heads} must be >= 0 (0 = d_model / shape.head_dim)")
        step = self.d_model_multiple or self.head_dim
        if self.n_heads and step % self.n_heads:
            raise UserError(
                f"shape.d_model_multiple={step} must be a multiple of shape.n_heads={self.n_heads} "
                "so that every d_model splits into whole heads"
            )
        if not self.n_heads and step % self.head_dim:
            raise UserError(
                f"shape.d_model_multiple={step} must be a multiple of shape.head_dim={self.head_dim} "
                "so that every d_model splits into whole heads"
            )
        if self.min_layers > self.max_layers:
            raise UserError(f"shape.min_layers={self.min_layers} exceeds shape.max_layers={self.max_layers}")
        return self


@dataclass(frozen=True)
class SizeRule:
    mode: str = "around_optimum"  # or "explicit": the N values in `n_params` at every budget
    per_budget: int = 4
    tokens_per_param: float = 20.0  # guess of D/N at the optimum, to centre the grid (Chinchilla: ~20)
    span: float = 16.0  # largest N / smallest N at one budget
    n_params: list[float] = field(default_factory=list)
    min_steps: int = 20  # runs shorter than this are dropped (and the plan says so)

    def validate(self) -> SizeRule:
        if self.mode not in SIZE_MODES:
            raise UserError(f"sizes.mode={self.mode!r} is not valid; choose one of {', '.join(SIZE_MODES)}")
        if self.mode == "explicit" and not self.n_params:
            raise UserError("sizes.mode=explicit needs sizes.n_params: a list of parameter counts")
        if self.mode == "around_optimum" and self.per_budget < 1:
            raise UserError(f"sizes.per_budget={self.per_budget} must be at least 1")
        if not (0 < self.tokens_per_param < math.inf and 1 <= self.span < math.inf):  # nan fails both
            raise UserError("sizes.tokens_per_param must be > 0 and sizes.span >= 1")
        if any(not math.isfinite(n) or n <= 0 for n in self.n_params):
            raise UserError(f"sizes.n_params={self.n_params} must all be positive")
        if self.min_steps < 1:
            raise UserError(f"sizes.min_steps={self.min_steps} must be at least 1")
        return self


@dataclass(frozen=True)
class HParamRule:
    # Each run's peak learning rate, by `learning_rate` below: "inverse_width" scales base_lr with width; "constant";
    # "law": eta_opt(C) of a hyperparameter law at the run's compute C = M * D (scaling/hyperlaws.py; M the
    # non-embedding FLOPs per token); or "mup": every run is µP relative to base_d_model (and base_n_layers, if
    # set), all at base_lr: the rate tuned at the base shapes transfers (model/parametrization.py, docs/mup.md)
    rule: str = "inverse_width"
    base_lr: float = 1e-3
    base_d_model: int = 256
    width_exponent: float = 1.0  # 1 = muP's 1/width for Adam; a learning-rate sweep can measure it
    warmup_fraction: float = 0.05  # of the run's steps (of the shortest run of a shape, with WSD branching)
    min_warmup_steps: int = 1
    law: str = "deepseek"  # rule=law: a published law's name, or a fitted law JSON (relative to the sweep file)
    law_batch: bool = False  # rule=law: the batch too, B_opt(C) tokens / seq_len (replaces batch_size, target_steps)
    base_n_layers: int | None = None  # rule=mup: depth scaling relative to this many layers (None: width only)

    def validate(self) -> HParamRule:
        if self.rule not in LR_RULES:
            raise UserError(f"hparams.rule={self.rule!r} is not valid; choose one of {', '.join(LR_RULES)}")
        if self.rule == "law" and not self.law:
            raise UserError("hparams.rule=law needs hparams.law: deepseek, or a law JSON from `chinchax fit-hparams`")
        if self.law_batch and self.rule != "law":
            raise UserError(f"hparams.law_batch=true takes the batch from a law; set hparams.rule=law (it is {self.rule!r})")
        if self.base_n_layers is not None and (self.rule != "mup" or self.base_n_layers <= 0):
            raise UserError(f"hparams.base_n_layers={self.base_n_layers} is µP's base depth: set hparams.rule=mup "
                            "and a positive number of layers, or remove it")
        if not 0 < self.base_lr < math.inf or self.base_d_model <= 0:  # nan fails
            raise UserError("hparams.base_lr and hparams.base_d_model must be positive")
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(f"hparams.warmup_fraction={self.warmup_fraction} must be in [0, 1)")
        return self


def learning_rate(hparams: HParamRule, d_model: int, law: HyperparameterLaw | None = None,
                  law_flops: float | None = None) -> float:
    """A run's peak learning rate by the sweep's rule, the one place its formula is written (plan_sweep rounds
    it to 6 significant digits for the run's config and id):

        inverse_width   base_lr * (base_d_model / d_model)^width_exponent  (exponent 1: muP's 1/width for
                        Adam, applied to every layer; a learning-rate sweep can measure it, experiments/demo_lr.py)
        constant, mup   base_lr at every width (µP's scaling with width is the model's: model/parametrization.py)
        law             law.lr(law_flops): eta_opt at the run's compute in the law's convention, C = M * D
                        (scaling/plan.py's `law_compute`)
    """
    if hparams.rule == "inverse_width":
        ratio = hparams.base_d_model / d_model
        exponent = hparams.width_exponent
        return hparams.base_lr * (ratio if exponent == 1.0 else ratio**exponent)
    if hparams.rule == "law":
        if law is None or law_flops is None:
            raise ValueError("hparams.rule=law: the law and the run's compute in its convention are needed")
        return law.lr(law_flops)
    return hparams.base_lr


@dataclass(frozen=True)
class WsdRule:
    enabled: bool = False  # schedule every run as WSD and share stable phases between runs of one shape
    cooldown_fraction: float = 0.2  # of each run's own steps (Hagele et al.: 20% matches cosine)
    branch: bool = True  # share the stable phase (False: WSD schedule, every run from scratch)

    def validate(self) -> WsdRule:
        if not 0 < self.cooldown_fraction < 1:
            raise UserError(f"wsd.cooldown_fraction={self.cooldown_fraction} must be in (0, 1)")
        return self


@dataclass(frozen=True)
class RaySettings:
    address: str = ""  # "" = start a local Ray instance; "auto" or "ray://host:10001" = an existing cluster
    num_cpus: float = 1.0  # declared per run (Ray schedules runs onto nodes with these free)
    num_gpus: float = 0.0
    tpus: float = 0.0  # the "TPU" resource Ray's TPU nodes advertise (chips per run)
    memory_gb: float = 0.0  # 0 = undeclared

    def validate(self) -> RaySettings:
        if min(self.num_cpus, self.num_gpus, self.tpus, self.memory_gb) < 0:
            raise UserError("ray.num_cpus, ray.num_gpus, ray.tpus and ray.memory_gb must be >= 0")
        return self


@dataclass(frozen=True)
class WandbSettings:
    """Where the sweep's runs show on W&B: every run in one group (default: the sweep's name) with a job type.
    Written into each run's trainer.wandb_* keys, which never change a run id (plan.py's `_identity`)."""

    project: str | None = None  # None = each run's own trainer.wandb_project (by default none: no W&B)
    mode: str = "auto"  # trainer.wandb_mode: offline unless a W&B key is configured
    group: str | None = None  # None = the sweep's name
    job_type: str = "train"  # train, lr-sweep, held-out, ...
    tags: list[str] = field(default_factory=list)

    def validate(self) -> WandbSettings:
        if self.project is not None and not self.project.strip():
            raise UserError("wandb.project is empty; give a W&B project name, or null for none")
        return self


@dataclass(frozen=True)
class TpuSettings:
    project: str = ""  # "" = gcloud's configured project
    zone: str = "us-central2-b"
    accelerator_type: str = "v4-8"
    runtime_version: str = "tpu-ubuntu2204-base"
    queued: bool = True  # queued resources (recommended, waits for capacity) or a plain `tpu-vm create`
    spot: bool = False
    nodes: int = 1  # TPU slices created and fed runs in parallel
    node_prefix: str = "chinchax"
    # Where runs write (every host of a slice must see it, and it must outlive the slice): a gs:// folder.
    run_root: str = ""
    setup_command: str = "pip install -U 'chinchax[tpu]'"
    delete_after: bool = True
    poll_seconds: float = 30.0

    def validate(self) -> TpuSettings:
        if self.nodes < 1:
            raise UserError(f"tpu.nodes={self.nodes} must be >= 1")
        if not self.node_prefix.replace("-", "").isalnum() or not self.node_prefix[0].isalpha():
            raise UserError(f"tpu.node_prefix={self.node_prefix!r}: use lowercase letters, digits and '-'")
        return self


@dataclass(frozen=True)
class SweepConfig:
    name: str = "sweep"
    # The base experiment (an ExperimentConfig YAML: model, data, optimizer, trainer): a path relative to
    # the sweep file, or the name of a file shipped in chinchax/experiments/.
    experiment: str = "tiny.yaml"
    overrides: list[str] = field(default_factory=list)  # dotted overrides applied to every run
    # Model families / objectives compared at equal compute: name -> extra overrides. Empty = one family.
    families: dict[str, list[str]] = field(default_factory=dict)
    budgets: list[float] = field(default_factory=list)  # training FLOPs, C = 6 N D
    n_convention: str = "total"  # N in C = 6 N D: "total" (Chinchilla) or "non_embedding" (Kaplan)
    batch_size: int = 0  # global batch in sequences; 0 = the experiment's trainer.batch_size
    # Batch-size rule: a run that would train fewer than `target_steps` steps at `batch_size` gets the batch
    # halved (not below `min_batch_size`) until it trains at least that many, the same tokens in more steps.
    target_steps: int = 0  # 0 = every run at batch_size
    min_batch_size: int = 1
    # Every grid point trained once per seed (trainer.seed and data.seed = the seed: a new init and data
    # order, shared by all sizes of that seed). Small models differ by a few hundredths of a nat from seed
    # to seed, as much as neighbouring sizes do: averaging seeds is what makes isoFLOP profiles smooth.
    seeds: list[int] = field(default_factory=lambda: [0])
    shape: ShapeRule = field(default_factory=ShapeRule)
    sizes: SizeRule = field(default_factory=SizeRule)
    hparams: HParamRule = field(default_factory=HParamRule)
    wsd: WsdRule = field(default_factory=WsdRule)
    # How runs are launched (not part of any run's config or id).
    ray: RaySettings = field(default_factory=RaySettings)
    tpu: TpuSettings = field(default_factory=TpuSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)  # where runs show on W&B (not in any run id)

    def validate(self) -> SweepConfig:
        if not self.budgets:
            raise UserError("the sweep has no budgets: set budgets: [1e15, 3e15, ...] (training FLOPs)")
        if any(not math.isfinite(c) or c <= 0 for c in self.budgets):  # nan passes `c <= 0`
            raise UserError(f"budgets={self.budgets} must all be positive, finite FLOP counts, e.g. "
                            "budgets=[1e15,3e15,1e16]")
        if len(set(self.budgets)) != len(self.budgets):
            raise UserError(f"budgets={self.budgets} has duplicates")
        if self.n_convention not in N_CONVENTIONS:
            raise UserError(
                f"n_convention={self.n_convention!r} is not valid; choose one of {', '.join(N_CONVENTIONS)}"
            )
        if self.batch_size < 0:
            raise UserError(f"batch_size={self.batch_size} must be >= 0 (0 = the experiment's)")
        if self.target_steps < 0 or self.min_batch_size < 1:
            raise UserError(f"target_steps={self.target_steps} must be >= 0 and min_batch_size={self.min_batch_size} >= 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise UserError(f"seeds={self.seeds} must be distinct non-negative integers, e.g. [0, 1]")
        if self.hparams.rule == "law" and self.wsd.enabled and self.wsd.branch:
            raise UserError("hparams.rule=law gives each budget its own lr, but a WSD branch must share its trunk's lr; "
                            "set wsd.branch=false (WSD schedule, every run from scratch) or use another hparams.rule")
        for name in self.families:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise UserError(f"family name {name!r} must be letters, digits, '-' or '_' (it names run dirs)")
        return self


MIN_SIZES_FOR_FITS = 3  # approach 2's parabola in log N, per budget, needs three points


def check_sizes_for_fits(cfg: SweepConfig) -> str | None:
    """An isoFLOP sweep (`chinchax sweep plan|run`) is for `chinchax fit`: fewer than 3 sizes per budget is a
    UserError that says why. A sweep with `families` is a `chinchax compare` study, which fits approach 3 per
    family and may use fewer on purpose (experiments/arch_objective.yaml: 2): the same words come back as a
    warning to print. Not in SweepConfig.validate: other studies plan through the same config with fewer on
    purpose (`chinchax compare --quick`: 1; a learning-rate law sweep)."""
    sizes = cfg.sizes
    n = sizes.per_budget if sizes.mode == "around_optimum" else len(set(sizes.n_params))
    if n >= MIN_SIZES_FOR_FITS:
        return None
    what = f"sizes.per_budget={n}" if sizes.mode == "around_optimum" else f"sizes.n_params with {n} distinct size(s)"
    fix = ("set sizes.per_budget=3 or more (4 to 9 is usual)" if sizes.mode == "around_optimum"
           else "list at least 3 sizes in sizes.n_params")
    why = (f"{what} plans fewer than {MIN_SIZES_FOR_FITS} model sizes per budget: approach 2 (isoFLOP profiles) "
           f"fits a parabola in log N through each budget's losses, which needs at least {MIN_SIZES_FOR_FITS}, so "
           f"it could use none of the budgets; {fix}")
    if cfg.families:
        return f"{why} (a sweep with families is for `chinchax compare`, which fits approach 3 per family)"
    raise UserError(why)


def load_sweep(path: str | Path | Mapping, overrides: Sequence[str] = ()) -> tuple[SweepConfig, Path]:
    """Load a sweep YAML (+ dotted overrides); returns it and the folder its relative paths start from."""
    cfg = load_config(SweepConfig, path, overrides)
    base_dir = Path(path).resolve().parent if isinstance(path, (str, Path)) else Path.cwd()
    return cfg, base_dir


def experiment_path(name: str, base_dir: Path) -> Path:
    """Find the base experiment YAML: relative to the sweep file, the cwd, or shipped with chinchax."""
    for candidate in (base_dir / name, Path(name)):
        if candidate.is_file():
            return candidate.resolve()
    shipped = resources.files("chinchax.experiments").joinpath(name)
    if shipped.is_file():
        return Path(str(shipped))
    raise UserError(
        f"experiment {name!r} not found next to the sweep file ({base_dir}), in the working directory, or "
        "among chinchax/experiments/*.yaml; set `experiment:` to an ExperimentConfig YAML"
    )
