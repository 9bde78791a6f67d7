"""Learning-rate schedules and the AdamW optimizer (optax), built from an `OptimizerConfig`.

Every schedule warms up linearly from 0 to the peak over `warmup_steps`, then:
- cosine:   cosine decay from the peak to `final_lr_fraction * peak` at the last step;
- linear:   linear decay to `final_lr_fraction * peak` at the last step;
- constant: stays at the peak;
- wsd:      warmup-stable-decay (MiniCPM, DeepSeek): the peak until the last `cooldown_fraction` of the
            run, then a cooldown (linear, cosine, or "sqrt" = 1 - sqrt(progress)) to the final fraction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from chinchax.train.config import OptimizerConfig


def make_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    final = peak * cfg.final_lr_fraction
    decay_steps = max(total_steps - warmup, 1)
    warmup_fn = optax.linear_schedule(0.0, peak, max(warmup, 1))
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.final_lr_fraction)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(peak, final, decay_steps)
    else:  # wsd
        cooldown = max(int(round(cfg.cooldown_fraction * total_steps)), 1)
        stable = max(total_steps - warmup - cooldown, 0)
        after = optax.join_schedules(
            [optax.constant_schedule(peak), _cooldown(cfg.cooldown_shape, peak, final, cooldown)], [stable]
        )
    if warmup == 0:
        return after
    return optax.join_schedules([warmup_fn, after], [warmup])


def _cooldown(shape: str, peak: float, final: float, steps: int) -> optax.Schedule:
    def schedule(count):
        progress = jnp.clip(count / steps, 0.0, 1.0)
        if shape == "linear":
            frac = 1.0 - progress
        elif shape == "cosine":
            frac = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        else:  # sqrt
            frac = 1.0 - jnp.sqrt(progress)
        return final + (peak - final) * frac

    return schedule


def make_optimizer(
    cfg: OptimizerConfig, total_steps: int, decay_mask=None, scales=None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(tx, schedule). `tx` is AdamW at a learning rate of 1: its updates are the step's direction,
    -(adam + weight_decay * param), and the train step multiplies them by `schedule(step)`, which it is
    given as an argument. So one compiled step serves every run of a shape whatever its learning rate or
    length (a sweep trains many such runs in one process), and the update is bitwise optax.adamw's:
    (-u) * lr == -(lr * u) in IEEE arithmetic.
    `decay_mask`: a pytree of bools like the params (True = decayed), see train.state; None = all.
    `scales`: µP's per-parameter (lr, gradient) multipliers (chinchax.model.parametrization.update_scales)."""
    return make_direction(cfg, decay_mask, scales), make_schedule(cfg, total_steps)


def make_direction(cfg: OptimizerConfig, decay_mask=None, scales=None) -> optax.GradientTransformation:
    """Clipping + AdamW with a unit learning rate: what no learning-rate or schedule setting changes.

    With µP's `scales` = (lr multipliers, gradient multipliers), pytrees like the params: clipping sees the
    true gradients; each gradient is then multiplied by its multiplier before Adam (which scales Adam's eps
    by the inverse, see model/parametrization.py), and each update by its lr multiplier after (weight decay
    included, as torch's AdamW and microsoft/mup's MuAdam apply it). None: plain AdamW, SP's optimizer."""
    parts = []
    if cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if scales is not None:
        parts.append(_multiply_by(scales[1]))
    parts.append(
        optax.adamw(1.0, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
    )
    if scales is not None:
        parts.append(_multiply_by(scales[0]))
    return optax.chain(*parts)


def _multiply_by(factors) -> optax.GradientTransformation:
    """Updates times per-leaf constant factors (a pytree of floats like the params); a factor of 1 is skipped."""

    def multiply(updates, params=None):
        del params
        return jax.tree.map(lambda u, f: u if f == 1.0 else u * jnp.asarray(f, u.dtype), updates, factors)

    return optax.stateless(multiply)


def schedule_values(schedule: optax.Schedule, total_steps: int):
    """The learning rate of every step 0..total_steps-1 as float32 numpy, computed once per run on the host."""
    import numpy as np

    # A power-of-two length, so runs of different lengths reuse the same compiled eager ops.
    length = 1 << max(total_steps - 1, 1).bit_length()
    steps = np.arange(length, dtype=np.int32)
    return np.asarray(jax.device_get(jax.vmap(schedule)(steps)), dtype=np.float32)[:total_steps]
