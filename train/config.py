"""Typed configs of a training run: optimizer, trainer, and the experiment that bundles them.

    cfg = load_config(ExperimentConfig, "experiments/tiny.yaml", ["trainer.steps=100"])

`ExperimentConfig` = model (chinchax.model.ModelConfig) + data (chinchax.data.config.DataConfig) +
optimizer + trainer. Each section validates itself; `ExperimentConfig.validate` checks the combinations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from chinchax.data.config import DataConfig
from chinchax.errors import UserError
from chinchax.model.config import ModelConfig

SCHEDULES = ("cosine", "linear", "constant", "wsd")
COOLDOWN_SHAPES = ("linear", "cosine", "sqrt")
WANDB_MODES = ("offline", "online", "disabled", "auto")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with decoupled weight decay, global-norm clipping and a warmup + decay schedule.

    Weight decay applies to matrices only (every parameter with 2+ dims except embedding tables);
    norm scales, biases and embeddings (token, position, token-type, relative-bias tables) are not
    decayed, as in GPT-2/LLaMA/nanodo practice. `weight_decay` is decoupled and multiplied by the
    learning rate (optax.adamw), so the effective per-step decay is lr_t * weight_decay.
    """

    learning_rate: float = 3e-4  # peak learning rate
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    clip_norm: float | None = 1.0  # global-norm clipping; None = off
    schedule: str = "cosine"
    warmup_steps: int = 100  # linear warmup from 0 to the peak
    final_lr_fraction: float = 0.1  # lr at the last step, as a fraction of the peak (cosine/linear/wsd)
    cooldown_fraction: float = 0.2  # wsd: fraction of all steps spent decaying at the end
    cooldown_shape: str = "linear"  # wsd: linear | cosine | sqrt (1 - sqrt progress, as in MiniCPM/DeepSeek)
    z_loss: float = 0.0  # coefficient of log(Z)^2 (PaLM uses 1e-4)

    def validate(self) -> OptimizerConfig:
        if self.learning_rate <= 0:
            raise UserError(f"optimizer.learning_rate={self.learning_rate} must be > 0")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"optimizer.{key}={getattr(self, key)} must be in [0, 1)")
        if self.eps <= 0 or self.weight_decay < 0 or self.z_loss < 0:
            raise UserError("optimizer.eps must be > 0 and optimizer.weight_decay, optimizer.z_loss >= 0")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise UserError(f"optimizer.clip_norm={self.clip_norm} must be > 0, or null to turn clipping off")
        if self.schedule not in SCHEDULES:
            raise UserError(
                f"optimizer.schedule={self.schedule!r} is not valid; choose one of {', '.join(SCHEDULES)}"
            )
        if self.cooldown_shape not in COOLDOWN_SHAPES:
            raise UserError(
                f"optimizer.cooldown_shape={self.cooldown_shape!r} is not valid; choose one of "
                f"{', '.join(COOLDOWN_SHAPES)}"
            )
        if self.warmup_steps < 0:
            raise UserError(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise UserError(f"optimizer.final_lr_fraction={self.final_lr_fraction} must be in [0, 1]")
        if not 0.0 < self.cooldown_fraction <= 1.0:
            raise UserError(f"optimizer.cooldown_fraction={self.cooldown_fraction} must be in (0, 1]")
        return self


@dataclass(frozen=True)
class TrainerConfig:
    run_dir: str = "runs/default"
    # Length of the run: give steps, or tokens (steps = ceil(tokens / (batch_size * seq_len))).
    steps: int | None = 1000
    tokens: int | None = None
    batch_size: int = 32  # global batch size in sequences
    microbatches: int = 1  # gradient accumulation: the batch is split into this many scanned pieces
    # Steps per jitted call (lax.scan over that many batches): one dispatch, one transfer and one metrics
    # fetch per call instead of per step, for small models whose steps take a few ms. The same updates.
    steps_per_call: int = 1
    mesh: list[int] = field(default_factory=lambda: [-1, 1, 1])  # (data, fsdp, tensor); -1 = fill
    seed: int = 0
    checkpoint_every: int = 500  # 0 = only at the end
    max_to_keep: int = 3
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end; eval uses data.eval_batches fixed batches
    progress_bar: bool = True
    wandb_project: str | None = None  # None = no wandb
    wandb_mode: str = "auto"  # auto: online if a key is configured (WANDB_API_KEY / WANDB_MODE), else offline
    # Where a run sits on a W&B dashboard: a sweep's runs share a group named after it, a job type says which
    # phase (train, lr-sweep, held-out, fine-tune, ...), and wandb_config adds what the planner knows and the run
    # does not (budget, family). None of these changes what is trained: no run id or resume check sees them.
    wandb_group: str | None = None
    wandb_job_type: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_config: dict[str, Any] = field(default_factory=dict)
    peak_flops: float | None = (
        None  # per-device peak FLOP/s for MFU; None = table (accelerators) / measured (CPU)
    )
    # Multi-host. On TPU pods jax.distributed.initialize() finds everything itself; elsewhere give these
    # (or the env vars CHINCHAX_COORDINATOR, CHINCHAX_NUM_PROCESSES, CHINCHAX_PROCESS_ID).
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_count: int | None = None  # CPU only: fake devices per process (tests, local dry runs)
    # CPU only: cores XLA:CPU computes with (the process pins itself to them before JAX starts). The count
    # sets how reductions are split, so it is part of a run's floats and id; null = every core it may use.
    # Sweeps on CPU set 1: every executor and a plain `chinchax train` then give the same bits (train/cpu_threads.py).
    cpu_threads: int | None = None

    def validate(self) -> TrainerConfig:
        if (self.steps is None) == (self.tokens is None):
            raise UserError(
                f"give exactly one of trainer.steps ({self.steps}) and trainer.tokens ({self.tokens}); "
                "set the other to null"
            )
        for key in ("steps", "tokens"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise UserError(f"trainer.{key}={value} must be a positive integer")
        for key in ("batch_size", "microbatches", "steps_per_call", "max_to_keep", "log_every"):
            if getattr(self, key) < 1:
                raise UserError(f"trainer.{key}={getattr(self, key)} must be >= 1")
        for key in ("checkpoint_every", "eval_every"):
            if getattr(self, key) < 0:
                raise UserError(f"trainer.{key}={getattr(self, key)} must be >= 0 (0 = only at the end)")
        if self.batch_size % self.microbatches:
            raise UserError(
                f"trainer.batch_size={self.batch_size} is not divisible by trainer.microbatches="
                f"{self.microbatches}; pick a divisor of the batch size"
            )
        if len(self.mesh) != 3:
            raise UserError(f"trainer.mesh={list(self.mesh)} must have 3 entries: [data, fsdp, tensor]")
        if self.wandb_mode not in WANDB_MODES:
            raise UserError(f"trainer.wandb_mode={self.wandb_mode!r}: choose one of {', '.join(WANDB_MODES)}")
        for key, limit in (("wandb_group", 128), ("wandb_job_type", 64)):  # W&B's own limits
            value = getattr(self, key)
            if value is not None and not 0 < len(value) <= limit:
                raise UserError(f"trainer.{key}={value!r} must be 1 to {limit} characters, or null")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise UserError(f"trainer.cpu_threads={self.cpu_threads} must be >= 1, or null for every core")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise UserError(f"trainer.peak_flops={self.peak_flops} must be > 0 (FLOP/s per device)")
        return self

    def total_steps(self, seq_len: int) -> int:
        if self.steps is not None:
            return self.steps
        return -(-self.tokens // (self.batch_size * seq_len))


@dataclass(frozen=True)
class ExperimentConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> ExperimentConfig:
        # A warmup longer than the run is allowed (short smoke runs): the lr then never reaches its peak.
        return self

    @property
    def total_steps(self) -> int:
        return self.trainer.total_steps(self.data.seq_len)

    def replace(self, **sections) -> ExperimentConfig:
        return dataclasses.replace(self, **sections).validate()


# Config keys that may change between the first run and a resume without breaking it: where to log,
# how often to save/log/eval, and how the work is laid out on devices (checkpoints restore onto any mesh).
RESUME_SAFE_KEYS = frozenset(
    {
        "trainer.run_dir",
        "trainer.mesh",
        "trainer.checkpoint_every",
        "trainer.max_to_keep",
        "trainer.log_every",
        "trainer.eval_every",
        "trainer.progress_bar",
        "trainer.wandb_project",
        "trainer.wandb_mode",
        "trainer.wandb_group",
        "trainer.wandb_job_type",
        "trainer.wandb_tags",
        "trainer.peak_flops",
        "trainer.coordinator_address",
        "trainer.num_processes",
        "trainer.process_id",
        "trainer.local_device_count",
        "trainer.cpu_threads",  # like the mesh: how the work is spread, which a resume elsewhere may change
        "data.worker_count",
        "trainer.microbatches",
        "trainer.steps_per_call",  # how steps are dispatched, not what they compute
        "model.remat",
        "model.attention_max_segments",  # which attention kernel runs, not what it computes
    }
)
# ...and whole subtrees of such keys (a flattened config names trainer.wandb_config.budget, not the dict).
RESUME_SAFE_PREFIXES = ("trainer.wandb_config.",)
# Keys that only say where a run is shown: they never name a sweep's run (scaling/plan.py's identity).
WANDB_KEYS = frozenset({"wandb_project", "wandb_mode", "wandb_group", "wandb_job_type", "wandb_tags", "wandb_config"})


def wandb_overrides(project: str | None = None, *, group: str | None = None, job_type: str | None = None,
                    extra: dict | None = None, mode: str | None = None, tags=()) -> list[str]:
    """Dotted trainer overrides that put a run in a W&B group with a job type, tags and extra config fields
    (the sweep planner, the demo and the studies add these to every run they start). Without a project the
    run logs nowhere unless its config names one; the rest is only where it would show."""
    out = [f"trainer.wandb_project={_quote(project)}"] if project else []
    out += [f"trainer.wandb_mode={mode}"] if mode else []
    out += [f"trainer.wandb_group={_quote(group)}"] if group else []
    out += [f"trainer.wandb_job_type={_quote(job_type)}"] if job_type else []
    out += [f"trainer.wandb_tags=[{','.join(_quote(t) for t in tags)}]"] if tags else []
    out += [f"trainer.wandb_config.{k}={_quote(v) if isinstance(v, str) else v}" for k, v in (extra or {}).items()]
    return out


def _quote(value: str) -> str:
    """A string override value OmegaConf reads back as that string (not a number, bool or null): a JSON
    string is a YAML double-quoted scalar."""
    import json

    return json.dumps(value)
