"""The compiled programs of a run (state init, train step, eval step), shared by every run of one shape.

A sweep worker trains many runs in one process (chinchax.scaling.worker). What a run's programs depend
on is its model config, the optimizer's update direction (clipping, Adam's betas and eps, weight
decay), microbatching, z-loss, the mesh, and the seed where there is dropout: not its learning rate,
schedule or length, since the train step takes the step's learning rate as an argument
(chinchax.train.optimizer), nor its seed otherwise (the init takes it as an argument). Runs that agree on
those get the same `Programs`, so the second run of a shape, or its second seed, traces and compiles
nothing. The cache keeps the most recently used few; one process never holds more than that.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any

import jax
import numpy as np

from chinchax.train import state as state_lib
from chinchax.train import step as step_lib
from chinchax.train.config import ExperimentConfig
from chinchax.train.optimizer import make_direction

CACHE_SIZE = 8
# Optimizer settings that only shape the learning-rate schedule: the step is given the rate, so runs that
# differ only in these share programs.
SCHEDULE_KEYS = ("learning_rate", "schedule", "warmup_steps", "final_lr_fraction", "cooldown_fraction",
                 "cooldown_shape")
_cache: collections.OrderedDict[tuple, Programs] = collections.OrderedDict()


@dataclasses.dataclass
class Programs:
    parts: state_lib.ModelParts
    tx: Any  # the update direction (AdamW at a unit learning rate)
    abstract: Any  # ShapeDtypeStructs with shardings: the restore target
    shardings: Any
    mesh: Any
    microbatches: int
    z_loss: float
    _init: Any = None
    _train: dict = dataclasses.field(default_factory=dict)
    _eval: dict = dataclasses.field(default_factory=dict)

    def init_state(self, cfg: ExperimentConfig) -> dict:
        seed = cfg.trainer.seed
        if not 0 <= seed < 2**31:  # a seed that is no int32 keeps its own program (same keys as before)
            init = jax.jit(state_lib.make_init_fn(cfg.model, self.tx, seed), out_shardings=self.shardings)
            with jax.set_mesh(self.mesh):
                return init()
        if self._init is None:
            self._init = jax.jit(state_lib.make_seeded_init_fn(cfg.model, self.tx), out_shardings=self.shardings)
        with jax.set_mesh(self.mesh):
            return self._init(np.int32(seed))

    def train_step(self, batch_keys, steps_per_call: int = 1) -> Any:
        """The update of one step, or of `steps_per_call` stacked batches in one call (step.scanned)."""
        key = (tuple(sorted(batch_keys)), steps_per_call)
        if key not in self._train:
            self._train[key] = step_lib.jit_train_step(
                self.mesh, self.shardings, key[0], steps_per_call=steps_per_call, parts=self.parts, tx=self.tx,
                microbatches=self.microbatches, z_loss=self.z_loss,
            )
        return self._train[key]

    def eval_step(self, batch_keys) -> Any:
        key = tuple(sorted(batch_keys))
        if key not in self._eval:
            self._eval[key] = step_lib.jit_eval_step(self.mesh, self.shardings["params"], key, self.parts)
        return self._eval[key]


def cache_key(cfg: ExperimentConfig, mesh) -> tuple:
    optimizer = {k: v for k, v in dataclasses.asdict(cfg.optimizer).items() if k not in SCHEDULE_KEYS}
    return (
        json.dumps(dataclasses.asdict(cfg.model), sort_keys=True, default=str),
        json.dumps(optimizer, sort_keys=True),
        cfg.trainer.microbatches,
        cfg.trainer.seed if uses_dropout(cfg) else None,
        mesh,
    )


def uses_dropout(cfg: ExperimentConfig) -> bool:
    """The seed reaches the train step only through the dropout keys (constants of the program); without
    dropout, runs that differ only in their seed share every program (the init takes the seed as an
    argument): a sweep's second seed compiles nothing."""
    return cfg.model.dropout > 0 or cfg.model.attention_dropout > 0


def programs_for(cfg: ExperimentConfig, mesh) -> Programs:
    """The cached programs of this run's shape, or new ones (compiled lazily, on first use)."""
    key = cache_key(cfg, mesh)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    parts = state_lib.model_parts(cfg.model, mesh, cfg.trainer.seed)
    tx = make_direction(cfg.optimizer, parts.decay_mask, parts.update_scales)
    abstract, shardings = state_lib.abstract_state(cfg.model, tx, parts, mesh, cfg.trainer.seed)
    programs = Programs(parts, tx, abstract, shardings, mesh, cfg.trainer.microbatches, cfg.optimizer.z_loss)
    _cache[key] = programs
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return programs


def clear() -> None:
    _cache.clear()
