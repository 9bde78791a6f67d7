"""The compiled programs of a run (state init, train step, eval step), shared by every run of one shape.

A sweep worker trains many runs in one process (chinchax.scaling.worker). What a run's programs depend
on is its model config, the optimizer's update direction (clipping, Adam's betas and eps, weight
decay), microbatching, z-loss, the mesh and the seed: not its learning rate, schedule or length, since
the train step takes the step's learning rate as an argument (chinchax.train.optimizer). Runs that agree
on those get the same `Programs`, so the second run of a shape traces and compiles nothing. The cache
keeps the most recently used few; one process never holds more than that.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import Any

import jax

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
        if self._init is None:
            init = state_lib.make_init_fn(cfg.model, self.tx, cfg.trainer.seed)
            self._init = jax.jit(init, out_shardings=self.shardings)
        with jax.set_mesh(self.mesh):
            return self._init()

    def train_step(self, batch_keys) -> Any:
        key = tuple(sorted(batch_keys))
        if key not in self._train:
            self._train[key] = step_lib.jit_train_step(
                self.mesh, self.shardings, key, parts=self.parts, tx=self.tx,
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
        cfg.trainer.seed,
        mesh,
    )


def programs_for(cfg: ExperimentConfig, mesh) -> Programs:
    """The cached programs of this run's shape, or new ones (compiled lazily, on first use)."""
    key = cache_key(cfg, mesh)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    parts = state_lib.model_parts(cfg.model, mesh, cfg.trainer.seed)
    tx = make_direction(cfg.optimizer, parts.decay_mask)
    abstract, shardings = state_lib.abstract_state(cfg.model, tx, parts, mesh, cfg.trainer.seed)
    programs = Programs(parts, tx, abstract, shardings, mesh, cfg.trainer.microbatches, cfg.optimizer.z_loss)
    _cache[key] = programs
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return programs


def clear() -> None:
    _cache.clear()
