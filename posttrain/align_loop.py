"""One resumable loop for every alignment trainer (reward model, DPO/IPO, PPO, RLOO), made of train/'s pieces:
the mesh (`sharding.make_mesh`, logical axis rules), AdamW with warmup + schedule (`train.optimizer`), verified
orbax checkpoints (`train.checkpoint.Checkpointer`), metrics.jsonl (`train.metrics.MetricsLogger`), the run
lock and run.json.

Why not `train.trainer.train` itself: it is built around a grain token stream and the next-token loss;
alignment steps take pairs or fresh rollouts and other losses. What the two share is everything around the
step, which this loop reuses.

The state is a pure pytree `{"step", "params", "opt_state"}` where `params` is the nnx.Param state of the
trained module (policy + value head, or a reward model). A step's batch is a pure function of the step
number (`batch_for_step(step, params)`: a seeded permutation of pairs, or rollouts sampled with a key folded
from the step), so a resumed run repeats exactly the batches an uninterrupted one would take; the
checkpoint's data item records the step and the run's config hash.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from chinchax import configlib, jsonio, rundir
from chinchax.errors import UserError
from chinchax.fileio import write_text_atomic
from chinchax.sharding import LOGICAL_AXIS_RULES


def config_hash(config: dict) -> str:
    return hashlib.sha256(jsonio.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def check_or_write_config(run_dir: Path, config: dict, resume_safe: frozenset[str] = frozenset()) -> None:
    """Refuse to resume a run dir holding another experiment (as the pretraining trainer does)."""
    path = run_dir / rundir.ALIGN_CONFIG
    if path.is_file():
        configlib.refuse_changed_config(run_dir, configlib.read_yaml(path), config, ignored=resume_safe,
                                        what="an alignment run")
    else:
        import yaml

        run_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, yaml.safe_dump(config, sort_keys=True))


def make_mesh(shape=(-1, 1, 1)):
    from chinchax.sharding import make_mesh as _make

    return _make(tuple(shape))


def create_sharded(mesh, make_module: Callable[[], nnx.Module]) -> nnx.Module:
    """The module with every parameter placed by its logical axis names on the mesh (the table in
    chinchax.sharding, as train.state does): FSDP over `fsdp`, tensor parallel over `tensor`."""
    from jax.sharding import NamedSharding

    module = make_module()
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        params = nnx.state(module, nnx.Param)
        specs = nnx.get_partition_spec(params)
    placed = jax.tree.map(lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), params, specs)
    nnx.update(module, placed)
    return module


def split_params(module: nnx.Module):
    """(graphdef, params as a pure dict, the remaining variables)."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), rest


def merge(graphdef, params, rest) -> nnx.Module:
    return nnx.merge(graphdef, params, rest, copy=True)


def optimizer(opt_cfg, total_steps: int, decay_mask=None, scales=None):
    """(tx at a unit rate, learning rate of every step): train.optimizer's AdamW and schedule."""
    from chinchax.train.optimizer import make_optimizer, schedule_values

    tx, schedule = make_optimizer(opt_cfg, total_steps, decay_mask, scales)
    return tx, schedule_values(schedule, total_steps)


def apply_gradients(state: dict, grads, lr, tx):
    """The trainer's update: AdamW direction at a unit rate times this step's learning rate."""
    direction, opt_state = tx.update(grads, state["opt_state"], state["params"])
    updates = jax.tree.map(lambda u: u * lr.astype(u.dtype), direction)
    new = {**state, "step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
           "opt_state": opt_state}
    return new, optax.tree.norm(grads)


def run_loop(
    *,
    run_dir: Path,
    trainer_cfg,
    params,
    tx,
    lr_by_step,
    step_fn: Callable,  # (state, batch, lr) -> (state, metrics); jitted here with the state donated
    batch_for_step: Callable[[int, Any], Any],  # (step, params) -> batch (a pytree of arrays)
    config: dict,
    tag: str,
    evaluate: Callable[[int, Any], dict] | None = None,
    eval_steps: frozenset[int] = frozenset(),
    extra_state: dict | None = None,
    mesh=None,
) -> tuple[dict, list[dict]]:
    """Train (or resume) to `len(lr_by_step)` steps; returns (final state, metrics rows of this run dir).
    `evaluate(step, params)` runs after the steps in `eval_steps`; its dict is logged as an eval row.
    `extra_state`: more arrays carried (and checkpointed) in the state, e.g. PPO's adaptive KL coefficient.
    `mesh`: batches are sharded along their leading axis over its data-parallel axes (as the pretraining
    trainer's), the parameters keep the shardings they were created with."""
    from chinchax.train import runlock
    from chinchax.train.checkpoint import Checkpointer
    from chinchax.train.metrics import MetricsLogger

    total = len(lr_by_step)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), **(extra_state or {})}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    digest = config_hash(config)
    with runlock.hold(run_dir):
        ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=trainer_cfg.max_to_keep)
        start = 0
        restored = ckpt.restore_latest(abstract)
        if restored is not None:
            start, state, data_state = restored
            if data_state.get("config_hash") != digest:
                raise UserError(f"{run_dir}: the checkpoint belongs to another config; use a new run directory")
            print(f"[chinchax {tag}] resuming {run_dir} from step {start}")
        logger = MetricsLogger(run_dir, resume_step=start, enabled=True)
        step = jax.jit(step_fn, donate_argnums=0)
        t0 = time.perf_counter()
        try:
            for s in range(start, total):
                batch = shard_batch(batch_for_step(s, state["params"]), mesh)
                state, metrics = step(state, batch, jnp.float32(lr_by_step[s]))
                done = s + 1
                if done % trainer_cfg.log_every == 0 or done == total:
                    row = {"step": done, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
                    row["elapsed_s"] = time.perf_counter() - t0
                    logger.log(row)
                if evaluate is not None and done in eval_steps:
                    logger.log({"step": done, "eval": True, **evaluate(done, state["params"])})
                if done == total or (trainer_cfg.checkpoint_every and done % trainer_cfg.checkpoint_every == 0):
                    ckpt.save(done, state, {"step": done, "config_hash": digest})
            ckpt.wait_until_finished()
        finally:
            logger.close()
            ckpt.close()
        rows = logger.rows() if hasattr(logger, "rows") else []
    return state, rows


def shard_batch(batch, mesh):
    """Rows over the mesh's data-parallel axes (train.step.batch_sharding), when they divide evenly."""
    if mesh is None:
        return batch
    from chinchax.train.step import batch_sharding

    sharding = batch_sharding(mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if x.ndim and x.shape[0] % shards == 0 else x, batch)


def restore_params(run_dir: Path, params, tx) -> tuple[int, Any]:
    """(step, params) of the newest verified checkpoint of an alignment run (for loading a trained model)."""
    from chinchax.train.checkpoint import Checkpointer

    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=10**6)
    try:
        restored = ckpt.restore_latest(abstract)
    finally:
        ckpt.close()
    if restored is None:
        raise UserError(f"{run_dir} has no verified checkpoint; train it first")
    return int(restored[0]), restored[1]["params"]

