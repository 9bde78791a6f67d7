"""The jitted train and eval steps: loss, gradient accumulation over microbatches, the AdamW update.

Loss = sum over tokens of loss_weights * cross-entropy, divided by the sum of loss_weights over the WHOLE
batch (not per microbatch), so M microbatches give the same update as one batch. Optional z-loss
(PaLM): z_loss * log(Z)^2 per weighted token, added to the objective but reported separately.
Microbatches run inside one jitted step with `lax.scan`; row b goes to microbatch b % M, which keeps
each microbatch spread over every data shard (no resharding).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from chinchax.model import MODEL_INPUT_KEYS
from chinchax.model.losses import token_cross_entropy, weighted_row_losses
from chinchax.sharding import LOGICAL_AXIS_RULES, logical_to_spec
from chinchax.train.state import ModelParts

BATCH_SPEC_NAMES = ("batch",)


def batch_sharding(mesh) -> NamedSharding:
    """Every batch array is sharded along its leading (batch) axis over the data-parallel mesh axes."""
    return NamedSharding(mesh, logical_to_spec(BATCH_SPEC_NAMES))


def _constrain(x, names):
    # Names -> mesh axes; a no-op unless a mesh is in context (the step traces under `in_mesh`).
    return nn.with_logical_constraint(x, names, rules=LOGICAL_AXIS_RULES)


def in_mesh(fn, mesh):
    """`fn` traced under `mesh` and the logical axis rules, so every `with_logical_constraint` in the model
    and the step becomes a sharding constraint. Without them flax skips the constraint silently (it needs
    an abstract mesh in context) and XLA is left to guess the activations' layout.

    The context is entered inside the traced function, not around the call: `jax.set_mesh` may only be
    used outside jit, but `use_abstract_mesh` is allowed while tracing, and this way `.lower()`, the first
    call and any retrace all see the same context whatever the caller has set."""

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            return fn(*args, **kwargs)

    return traced


def forward(parts: ModelParts, params, batch: dict, rng_keys=None, *, train: bool) -> jax.Array:
    model = parts.merge(params, rng_keys)
    model.train() if train else model.eval()
    kwargs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch and k != "inputs"}
    logits_BLV = model(batch["inputs"], **kwargs)
    return _constrain(logits_BLV, ("batch", "length", "vocab"))


def _objective(params, batch, rng_keys, parts: ModelParts, z_loss: float):
    logits_BLV = forward(parts, params, batch, rng_keys, train=True)
    ce_BL, log_z_BL = token_cross_entropy(logits_BLV, batch["targets"])
    w_BL = batch["loss_weights"].astype(jnp.float32)
    ce_sum = jnp.sum(ce_BL * w_BL)
    z_sum = z_loss * jnp.sum(jnp.square(log_z_BL) * w_BL)
    return ce_sum + z_sum, (ce_sum, z_sum, jnp.sum(w_BL))


def _fold(keys, n):
    """Fold `n` into every key (scanned layers hold a key array, one key per layer)."""

    def fold(k):
        flat = jax.vmap(jax.random.fold_in, in_axes=(0, None))(k.reshape(-1), n)
        return flat.reshape(k.shape)

    return jax.tree.map(fold, keys)


def train_step(state: dict, batch: dict, lr, *, parts: ModelParts, tx, microbatches: int, z_loss: float):
    """One update. `lr` (a float32 scalar) is this step's learning rate and `tx` the update direction at a
    unit rate (chinchax.train.optimizer.make_optimizer): the compiled step depends on neither the run's
    learning rate nor its length."""
    params, step = state["params"], state["step"]
    step_keys = _fold(parts.rng_keys(), step)
    grad_fn = jax.value_and_grad(functools.partial(_objective, parts=parts, z_loss=z_loss), has_aux=True)

    if microbatches == 1:
        (_, (ce_sum, z_sum, w_sum)), grads = grad_fn(params, batch, step_keys)
    else:

        def split(x):  # [B, ...] -> [M, B/M, ...] with row b in microbatch b % M
            x = x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:])
            return jnp.swapaxes(x, 0, 1)

        def body(carry, xs):
            micro, i = xs
            micro = {k: _constrain(v, ("batch",) + (None,) * (v.ndim - 1)) for k, v in micro.items()}
            (_, sums), g = grad_fn(params, micro, _fold(step_keys, i))
            acc_g, acc_s = carry
            return (jax.tree.map(jnp.add, acc_g, g), jax.tree.map(jnp.add, acc_s, sums)), None

        zeros = (jax.tree.map(jnp.zeros_like, params), (jnp.zeros(()),) * 3)
        xs = ({k: split(v) for k, v in batch.items()}, jnp.arange(microbatches))
        (grads, (ce_sum, z_sum, w_sum)), _ = jax.lax.scan(body, zeros, xs)

    denom = jnp.maximum(w_sum, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.tree.norm(grads)
    direction, opt_state = tx.update(grads, state["opt_state"], params)
    updates = jax.tree.map(lambda u: u * lr.astype(u.dtype), direction)
    new_state = {"step": step + 1, "params": optax.apply_updates(params, updates), "opt_state": opt_state}
    metrics = {
        "loss": ce_sum / denom,
        "z_loss": z_sum / denom,
        "grad_norm": grad_norm,
        "learning_rate": lr,
        "loss_tokens": w_sum,
    }
    return new_state, metrics


def scanned(step_fn):
    """step_fn(state, batch, lr) -> (state, metrics), made to run len(lrs) steps in one call: scanned over
    batches stacked on a leading axis ([steps, batch, ...]), metrics stacked the same way. Bitwise the
    updates of one call per step (tests/test_train_steps_per_call.py)."""

    def steps(state, batches, lrs):
        return jax.lax.scan(lambda s, xs: step_fn(s, *xs), state, (batches, lrs))

    return steps


def eval_step(params, batch: dict, *, parts: ModelParts) -> dict:
    """Per-row sums (so the caller can compute a mean and its standard error over rows)."""
    logits_BLV = forward(parts, params, batch, train=False)
    return weighted_row_losses(logits_BLV, batch["targets"], batch["loss_weights"])


def stacked_batch_sharding(mesh) -> NamedSharding:
    """Batches stacked for a `scanned` update: [steps, batch, ...], the batch axis sharded as in `batch_sharding`."""
    return NamedSharding(mesh, PartitionSpec(None, *logical_to_spec(BATCH_SPEC_NAMES)))


def jit_train_step(mesh, state_shardings, batch_keys, *, steps_per_call: int = 1, **static) -> Any:
    """The jitted update: one step, or with `steps_per_call` > 1 that many over stacked batches (`scanned`)."""
    fn = functools.partial(train_step, **static)
    return jit_update(fn if steps_per_call == 1 else scanned(fn), mesh, state_shardings, batch_keys, steps_per_call)


def jit_update(fn, mesh, state_shardings, batch_keys, steps_per_call: int = 1) -> Any:
    """jit of an update fn(state, batch, lr) (or its `scanned` form): state donated, batches data-parallel."""
    data = batch_sharding(mesh) if steps_per_call == 1 else stacked_batch_sharding(mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        in_mesh(fn, mesh),
        in_shardings=(state_shardings, {k: data for k in batch_keys}, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )


def jit_eval_step(mesh, param_shardings, batch_keys, parts: ModelParts) -> Any:
    data = batch_sharding(mesh)
    return jax.jit(
        in_mesh(functools.partial(eval_step, parts=parts), mesh),
        in_shardings=(param_shardings, {k: data for k in batch_keys}),
        out_shardings=data,
    )
