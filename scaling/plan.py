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
- Hyperparameters per size from a rule: lr = base_lr * base_d_model / d_model ("inverse_width", the muP
  hidden-layer scaling of Adam's lr applied globally) or "constant".
- WSD branching (Hagele et al. 2024). With a warmup-stable-decay schedule, every run of one shape shares
  its stable phase: the longest run is the trunk; each shorter run branches off the trunk's checkpoint
  where its own cooldown starts, and only pays for its cooldown. `Plan.wsd_savings` says how many FLOPs that
  saves over training each run from scratch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from chinchax.errors import UserError

N_CONVENTIONS = ("total", "non_embedding")
LR_RULES = ("inverse_width", "constant")
SIZE_MODES = ("around_optimum", "explicit")


@dataclass(frozen=True)
class ShapeRule:
    aspect_ratio: float = 32.0  # d_model / n_layers, held fixed across sizes
    head_dim: int = 64  # fixed head size: n_heads = d_model / head_dim
    ffn_ratio: float = 4.0  # d_ff = ffn_ratio * d_model (8/3 is usual for gated MLPs)
    d_model_multiple: int = 0  # d_model steps; 0 = head_dim
    min_layers: int = 1
    max_layers: int = 256
    max_d_model: int = 32768

    def validate(self) -> ShapeRule:
        for key in ("aspect_ratio", "head_dim", "ffn_ratio", "min_layers", "max_layers", "max_d_model"):
            if getattr(self, key) <= 0:
                raise UserError(f"shape.{key}={getattr(self, key)} must be positive")
        step = self.d_model_multiple or self.head_dim
        if step % self.head_dim:
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
        if self.tokens_per_param <= 0 or self.span < 1:
            raise UserError("sizes.tokens_per_param must be > 0 and sizes.span >= 1")
        if any(n <= 0 for n in self.n_params):
            raise UserError(f"sizes.n_params={self.n_params} must all be positive")
        if self.min_steps < 1:
            raise UserError(f"sizes.min_steps={self.min_steps} must be at least 1")
        return self


@dataclass(frozen=True)
class HParamRule:
    rule: str = "inverse_width"  # lr = base_lr * (base_d_model / d_model)^width_exponent; or "constant"
    base_lr: float = 1e-3
    base_d_model: int = 256
    width_exponent: float = 1.0  # 1 = muP's 1/width for Adam; a learning-rate sweep can measure it
    warmup_fraction: float = 0.05  # of the run's steps (of the shortest run of a shape, with WSD branching)
    min_warmup_steps: int = 1

    def validate(self) -> HParamRule:
        if self.rule not in LR_RULES:
            raise UserError(f"hparams.rule={self.rule!r} is not valid; choose one of {', '.join(LR_RULES)}")
        if self.base_lr <= 0 or self.base_d_model <= 0:
            raise UserError("hparams.base_lr and hparams.base_d_model must be positive")
        if not 0 <= self.warmup_fraction < 1:
            raise UserError(f"hparams.warmup_fraction={self.warmup_fraction} must be in [0, 1)")
        return self


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
    shape: ShapeRule = field(default_factory=ShapeRule)
    sizes: SizeRule = field(default_factory=SizeRule)
    hparams: HParamRule = field(default_factory=HParamRule)
    wsd: WsdRule = field(default_factory=WsdRule)
    # How runs are launched (not part of any run's config or id).
    ray: RaySettings = field(default_factory=RaySettings)
    tpu: TpuSettings = field(default_factory=TpuSettings)

    def validate(self) -> SweepConfig:
        if not self.budgets:
            raise UserError("the sweep has no budgets: set budgets: [1e15, 3e15, ...] (training FLOPs)")
        if any(c <= 0 for c in self.budgets):
            raise UserError(f"budgets={self.budgets} must all be positive FLOP counts")
        if len(set(self.budgets)) != len(self.budgets):
            raise UserError(f"budgets={self.budgets} has duplicates")
        if self.n_convention not in N_CONVENTIONS:
            raise UserError(
                f"n_convention={self.n_convention!r} is not valid; choose one of {', '.join(N_CONVENTIONS)}"
            )
        if self.batch_size < 0:
            raise UserError(f"batch_size={self.batch_size} must be >= 0 (0 = the experiment's)")
        for name in self.families:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise UserError(f"family name {name!r} must be letters, digits, '-' or '_' (it names run dirs)")
        return self


def load_sweep(path: str | Path | Mapping, overrides: Sequence[str] = ()) -> tuple[SweepConfig, Path]:
    """Load a sweep YAML (+ dotted overrides); returns it and the folder its relative paths start from."""
    from chinchax.configlib import load_config

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


# --- shapes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_total: int
    n_embedding: int
    n_non_embedding: int

    @property
    def tag(self) -> str:
        return f"d{self.d_model}l{self.n_layers}"

    def n(self, convention: str) -> int:
        return self.n_total if convention == "total" else self.n_non_embedding


def _round_up(x: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(x / multiple - 1e-9)) * multiple)


def _resized(model_cfg, rule: ShapeRule, d_model: int, n_layers: int, d_ff: int):
    n_heads = d_model // rule.head_dim
    kv = model_cfg.n_kv_heads
    if kv is not None and n_heads % kv:
        kv = math.gcd(n_heads, kv)  # keep grouped-query attention valid at every width
    changes: dict[str, Any] = dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=kv, head_dim=None, d_ff=d_ff
    )
    if model_cfg.variant == "encoder_decoder":
        changes["n_encoder_layers"] = None  # encoder as deep as the decoder
    return dataclasses.replace(model_cfg, **changes).validate()


def model_with_shape(model_cfg, rule: ShapeRule, d_model: int):
    """The base ModelConfig resized to `d_model` by the shape rule (every other choice kept)."""
    n_layers = min(rule.max_layers, max(rule.min_layers, int(d_model / rule.aspect_ratio + 0.5)))
    return _resized(model_cfg, rule, d_model, n_layers, _round_up(rule.ffn_ratio * d_model, 8))


class ParamCounter:
    """Exact parameter counts of the resized family, without building every rung.

    `chinchax.model.count_params` builds the abstract model (~0.1-1 s a call). For a fixed family, with
    heads of a fixed size, every parameter tensor is a product of at most two of d_model, d_ff, n_layers
    and constants (vocab, max_len, buckets), so N = c . (1, d, d^2, L, Ld, Ld^2, Lf, Ldf) exactly. We count
    8 probe shapes with count_params, solve for c (total and embedding), then check the solution on 2 more
    shapes; if that check ever fails (a component outside this form), every rung is counted directly."""

    BASIS_SIZE = 8

    def __init__(self, model_cfg, rule: ShapeRule):
        import numpy as np

        self.model_cfg, self.rule = model_cfg, rule
        # Probe widths whose head count the base's n_kv_heads divides (so no probe needs the gcd fix-up).
        s = (rule.d_model_multiple or rule.head_dim) * (model_cfg.n_kv_heads or 1)
        probes = [(s, 1, 8), (2 * s, 1, 16), (3 * s, 1, 8), (s, 2, 24), (2 * s, 2, 8), (3 * s, 3, 32),
                  (4 * s, 2, 16), (2 * s, 3, 40)]
        checks = [(5 * s, 4, 48), (7 * s, 6, 64)]
        X = np.array([self._features(*p) for p in probes], dtype=np.float64)
        Y = np.array([self._exact(*p) for p in probes], dtype=np.float64)
        self.coef = np.linalg.solve(X, Y)
        self.exact_only = any(self._predict(*c) != self._exact(*c) for c in checks)

    @staticmethod
    def _features(d: int, n_layers: int, f: int) -> list[float]:
        return [1.0, d, d * d, n_layers, n_layers * d, n_layers * d * d, n_layers * f, n_layers * d * f]

    def _exact(self, d: int, n_layers: int, f: int) -> tuple[int, int]:
        counts = _count_params(_resized(self.model_cfg, self.rule, d, n_layers, f))
        return int(counts.total), int(counts.embedding)

    def _predict(self, d: int, n_layers: int, f: int) -> tuple[int, int]:
        import numpy as np

        total, embedding = np.array(self._features(d, n_layers, f)) @ self.coef
        return int(round(total)), int(round(embedding))

    def __call__(self, m) -> tuple[int, int]:
        """(total, embedding) parameters of the resized ModelConfig `m`."""
        args = (m.d_model, m.n_layers, m.d_ff)
        if self.exact_only or m.n_kv_heads != self.model_cfg.n_kv_heads:
            return self._exact(*args)
        return self._predict(*args)


DIRECT_COUNTS = 8  # rungs counted with count_params before switching to the probed formula


@functools.lru_cache(maxsize=64)
def _counter(model_cfg, rule: ShapeRule) -> ParamCounter:
    return ParamCounter(model_cfg, rule)


def shape_ladder(model_cfg, rule: ShapeRule, n_max: float, convention: str = "total") -> list[Shape]:
    """Candidate shapes in increasing N, up to the first one at or beyond `n_max` (always >= 2 rungs)."""
    step = rule.d_model_multiple or rule.head_dim
    ladder: list[Shape] = []
    d_model = step
    while d_model <= rule.max_d_model:
        m = model_with_shape(model_cfg, rule, d_model)
        if d_model // step <= DIRECT_COUNTS:  # a short ladder is cheaper to count rung by rung
            counts = _count_params(m)
            total, embedding = int(counts.total), int(counts.embedding)
        else:
            total, embedding = _counter(model_cfg, rule)(m)
        shape = Shape(m.d_model, m.n_layers, m.n_heads, m.d_ff, total, embedding, total - embedding)
        if not ladder or shape.n(convention) > ladder[-1].n(convention):
            ladder.append(shape)
        if len(ladder) >= 2 and shape.n(convention) >= n_max:
            return ladder
        d_model += step
    if not ladder or ladder[-1].n(convention) < n_max:
        raise UserError(
            f"no shape reaches N={n_max:.3g} below shape.max_d_model={rule.max_d_model}; raise it or lower "
            "the budgets"
        )
    return ladder


@functools.lru_cache(maxsize=4096)
def _count_params(model_cfg):
    from chinchax.model.counting import count_params  # jax: loaded only when a plan is made

    return count_params(model_cfg)


def shape_for(ladder: Sequence[Shape], n_target: float, convention: str = "total") -> Shape:
    """The rung closest to `n_target` in log N (monotone: a larger target never gives a smaller shape)."""
    return ladder[_nearest(ladder, n_target, convention)]


def _nearest(ladder: Sequence[Shape], n_target: float, convention: str) -> int:
    logs = [math.log(s.n(convention)) for s in ladder]
    target = math.log(n_target)
    return min(range(len(ladder)), key=lambda i: (abs(logs[i] - target), i))


def sizes_for_budget(ladder: Sequence[Shape], budget: float, sizes: SizeRule, convention: str) -> list[Shape]:
    """Distinct rungs for one budget: `per_budget` sizes around N*, or the explicit list.

    Around N*, sizes come from ONE geometric grid shared by all budgets (ratio r = span^(1/(per_budget-1)),
    points r^k): each budget takes the `per_budget` consecutive grid points centred on its N*. Neighbouring
    budgets therefore reuse model sizes (as Chinchilla's fixed model set did), which is what lets WSD
    branching share stable phases. Grid points are snapped to the nearest rung; if snapping merges some,
    the nearest unused rungs fill in."""
    if sizes.mode == "explicit":
        picked = {_nearest(ladder, n, convention) for n in sizes.n_params}
        return [ladder[i] for i in sorted(picked)]
    n_star = math.sqrt(budget / (6.0 * sizes.tokens_per_param))
    k = min(sizes.per_budget, len(ladder))
    if k == 1:
        return [ladder[_nearest(ladder, n_star, convention)]]
    log_ratio = math.log(sizes.span) / (k - 1)
    first = round(math.log(n_star) / log_ratio - (k - 1) / 2)
    picked = sorted({_nearest(ladder, math.exp((first + j) * log_ratio), convention) for j in range(k)})
    below, above = picked[0] - 1, picked[-1] + 1
    while len(picked) < k:  # fill in alternately below and above, within the ladder
        if above < len(ladder) and (len(picked) % 2 or below < 0):
            picked.append(above)
            above += 1
        elif below >= 0:
            picked.append(below)
            below -= 1
        else:
            break
    return [ladder[i] for i in sorted(picked)]


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    run_id: str
    family: str
    budget: float
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_params: int  # total
    n_params_embedding: int
    n_params_non_embedding: int
    n_tokens: int  # D = steps * batch_size * seq_len
    steps: int
    batch_size: int
    seq_len: int
    lr: float
    warmup_steps: int
    flops: float  # 6 * N * D with the sweep's N convention (realised, after rounding steps)
    overrides: tuple[str, ...]  # dotted overrides that turn the base experiment into this run
    config: dict  # the run's resolved ExperimentConfig (run_dir left for the executor to set)
    branch_of: str = ""  # WSD: the trunk run this run branches from ("" = trained from scratch)
    branch_step: int = 0  # WSD: the trunk step whose checkpoint this run starts from

    def row(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("config")
        d["overrides"] = " ".join(self.overrides)
        return d


@dataclass(frozen=True)
class Plan:
    name: str
    n_convention: str
    experiment: str
    runs: tuple[PlannedRun, ...]
    dropped: tuple[str, ...]  # human-readable notes on grid points left out (too few steps, ...)
    flops_independent: float  # sum of 6 N D over runs, each trained from scratch
    flops_with_branching: float  # the same sweep with WSD stable phases shared

    @property
    def wsd_savings(self) -> float:
        return self.flops_independent - self.flops_with_branching

    def by_id(self) -> dict[str, PlannedRun]:
        return {r.run_id: r for r in self.runs}

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "n_convention": self.n_convention,
            "experiment": self.experiment,
            "flops_independent": self.flops_independent,
            "flops_with_branching": self.flops_with_branching,
            "wsd_savings": self.wsd_savings,
            "dropped": list(self.dropped),
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Plan:
        runs = tuple(PlannedRun(**{**r, "overrides": tuple(r["overrides"])}) for r in data["runs"])
        return cls(
            data["name"], data["n_convention"], data["experiment"], runs, tuple(data["dropped"]),
            data["flops_independent"], data["flops_with_branching"],
        )

    def table(self) -> str:
        head = ("run", "budget", "d_model", "layers", "heads", "d_ff", "N", "N_non_emb", "D", "steps",
                "batch", "lr", "6ND", "branch")
        rows = [
            (r.run_id, f"{r.budget:.3g}", r.d_model, r.n_layers, r.n_heads, r.d_ff, _si(r.n_params),
             _si(r.n_params_non_embedding), _si(r.n_tokens), r.steps, r.batch_size, f"{r.lr:.3g}",
             f"{r.flops:.3g}", f"@{r.branch_step} of {r.branch_of}" if r.branch_of else "-")
            for r in self.runs
        ]
        widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)) for line in (head, *rows)]
        lines.append(
            f"{len(self.runs)} runs, {self.flops_independent:.3g} FLOPs trained from scratch (N = {self.n_convention})"
        )
        if self.wsd_savings > 0:
            pct = 100 * self.wsd_savings / self.flops_independent
            lines.append(
                f"WSD branching: {self.flops_with_branching:.3g} FLOPs, saves {self.wsd_savings:.3g} ({pct:.0f}%)"
            )
        lines += [f"dropped: {note}" for note in self.dropped]
        return "\n".join(lines)


def _si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def config_hash(config: Mapping, budget: float) -> str:
    """Stable id of a run: sha256 of its resolved config (minus where it is written) and its budget."""
    config = json.loads(json.dumps(config, sort_keys=True, default=str))
    config.get("trainer", {}).pop("run_dir", None)
    blob = json.dumps({"config": config, "budget": float(budget)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def wsd_cooldown_steps(steps: int, cooldown_fraction: float) -> int:
    """Cooldown length of a WSD run, rounded as chinchax.train.optimizer.make_schedule rounds it."""
    return max(int(round(cooldown_fraction * steps)), 1)


def _resolve(experiment: Path, overrides: Sequence[str]):
    from chinchax.configlib import load_config
    from chinchax.train.config import ExperimentConfig

    return load_config(ExperimentConfig, experiment, list(overrides))


def plan_sweep(cfg: SweepConfig, base_dir: str | Path = ".") -> Plan:
    """Turn a sweep config into its plan. Pure: it reads only the base experiment YAML."""
    from chinchax.configlib import to_dict

    exp_path = experiment_path(cfg.experiment, Path(base_dir))
    families = cfg.families or {"base": []}
    runs: list[PlannedRun] = []
    dropped: list[str] = []
    conv = cfg.n_convention
    for family, family_overrides in families.items():
        shared = [*cfg.overrides, *family_overrides]
        # The base is a template: its own steps/warmup are replaced per run, so don't let them clash here.
        base = _resolve(exp_path, [*shared, "optimizer.warmup_steps=0"])
        batch = cfg.batch_size or base.trainer.batch_size
        seq_len = base.data.seq_len
        tokens_per_step = batch * seq_len
        if cfg.sizes.mode == "explicit":
            n_max = max(cfg.sizes.n_params)
        else:
            n_max = math.sqrt(max(cfg.budgets) / (6 * cfg.sizes.tokens_per_param) * cfg.sizes.span)
        ladder = shape_ladder(base.model, cfg.shape, 2.0 * n_max, conv)
        grid: list[tuple[float, Shape, int]] = []  # (budget, shape, steps)
        for budget in sorted(cfg.budgets):
            for shape in sizes_for_budget(ladder, budget, cfg.sizes, conv):
                steps = round(budget / (6.0 * shape.n(conv)) / tokens_per_step)
                if steps < cfg.sizes.min_steps:
                    dropped.append(
                        f"{family} C={budget:.3g} {shape.tag} (N={_si(shape.n(conv))}): {steps} steps < "
                        f"sizes.min_steps={cfg.sizes.min_steps}"
                    )
                    continue
                grid.append((budget, shape, steps))
        # Warmup: a fraction of the run, or of the shortest run of the shape when WSD runs share a trunk.
        shortest: dict[Shape, int] = {}
        for _, shape, steps in grid:
            shortest[shape] = min(steps, shortest.get(shape, steps))
        for budget, shape, steps in grid:
            basis = shortest[shape] if cfg.wsd.enabled and cfg.wsd.branch else steps
            warmup = min(steps, max(cfg.hparams.min_warmup_steps, round(cfg.hparams.warmup_fraction * basis)))
            lr = cfg.hparams.base_lr
            if cfg.hparams.rule == "inverse_width":
                ratio = cfg.hparams.base_d_model / shape.d_model
                exponent = cfg.hparams.width_exponent
                lr = cfg.hparams.base_lr * (ratio if exponent == 1.0 else ratio**exponent)
            lr = float(f"{lr:.6g}")  # a short, stable number in YAML and in the run id
            m = model_with_shape(base.model, cfg.shape, shape.d_model)
            overrides = [
                *shared,
                f"model.d_model={m.d_model}",
                f"model.n_layers={m.n_layers}",
                f"model.n_heads={m.n_heads}",
                f"model.n_kv_heads={'null' if m.n_kv_heads is None else m.n_kv_heads}",
                "model.head_dim=null",
                f"model.d_ff={m.d_ff}",
                f"trainer.steps={steps}",
                "trainer.tokens=null",
                f"trainer.batch_size={batch}",
                f"optimizer.learning_rate={lr}",
                f"optimizer.warmup_steps={warmup}",
            ]
            if m.variant == "encoder_decoder":
                overrides.append("model.n_encoder_layers=null")
            if cfg.wsd.enabled:
                overrides += ["optimizer.schedule=wsd", f"optimizer.cooldown_fraction={cfg.wsd.cooldown_fraction}"]
            config = to_dict(_resolve(exp_path, overrides))
            config["trainer"].pop("run_dir", None)
            runs.append(
                PlannedRun(
                    run_id=_run_id(family, budget, shape.tag, config),
                    family=family, budget=float(budget), d_model=shape.d_model, n_layers=shape.n_layers,
                    n_heads=shape.n_heads, d_ff=shape.d_ff, n_params=shape.n_total,
                    n_params_embedding=shape.n_embedding, n_params_non_embedding=shape.n_non_embedding,
                    n_tokens=steps * tokens_per_step, steps=steps, batch_size=batch, seq_len=seq_len,
                    lr=lr, warmup_steps=warmup, flops=6.0 * shape.n(conv) * steps * tokens_per_step,
                    overrides=tuple(overrides), config=config,
                )
            )
    runs = _add_branches(runs, cfg) if cfg.wsd.enabled and cfg.wsd.branch else runs
    independent = sum(r.flops for r in runs)
    with_branching = independent - sum(
        6.0 * (r.n_params if conv == "total" else r.n_params_non_embedding) * r.branch_step * r.batch_size * r.seq_len
        for r in runs
        if r.branch_of
    )
    return Plan(cfg.name, conv, str(exp_path), tuple(runs), tuple(dropped), independent, with_branching)


def _run_id(family: str, budget: float, tag: str, config: Mapping) -> str:
    return f"{family}-c{budget:.2g}-{tag}-{config_hash(config, budget)[:8]}".replace("+", "")


MAX_TRUNK_CHECKPOINTS = 16  # checkpoints a WSD trunk keeps for its branches (disk vs exact branch points)


def _add_branches(runs: list[PlannedRun], cfg: SweepConfig) -> list[PlannedRun]:
    """Per (family, shape): the longest run is the trunk; each shorter run starts from a trunk checkpoint
    at or before the step where its own cooldown begins. Up to there the two schedules are the same
    (same warmup, same peak lr, same data order), so the branch then trains exactly as it would alone.

    The trunk saves every K steps and keeps them all, K = max(gcd of the cooldown starts, trunk steps / 16);
    each branch starts from the last multiple of K before its cooldown."""
    groups: dict[tuple, list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault((r.family, r.d_model, r.n_layers), []).append(r)
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
            keep = trunk.steps // every + 2
            config = json.loads(json.dumps(trunk.config))
            config["trainer"].update(checkpoint_every=every, max_to_keep=keep)
            trunk = dataclasses.replace(
                trunk,
                run_id=_run_id(trunk.family, trunk.budget, f"d{trunk.d_model}l{trunk.n_layers}", config),
                config=config,
                overrides=(*trunk.overrides, f"trainer.checkpoint_every={every}", f"trainer.max_to_keep={keep}"),
            )
        for r in group:
            if r.run_id in branch_steps:
                out[r.run_id] = dataclasses.replace(r, branch_of=trunk.run_id, branch_step=branch_steps[r.run_id])
            else:
                out[r.run_id] = trunk if r is original else r
    return [out[r.run_id] for r in runs]
