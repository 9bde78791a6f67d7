"""The one cross-entropy of the project: training (train/step.py), validation loss (evaluation/losses.py)
and conditional scoring (evaluation/scoring.py) all call `token_cross_entropy`, so a loss in run.json, a
loss from `chinchax eval --loss` and a log-likelihood from the scorer are the same arithmetic.

In model/ because it is the model's output read against its targets, and model/ is the one package that
train/ and evaluation/ may both import.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_cross_entropy(logits_BLV: jax.Array, targets_BL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy, log Z) per token, in float32: -log p(target) = log Z - logit(target), and
    log Z = logsumexp of the logits (its square is PaLM's z-loss). log p(target) is minus the first."""
    logits_BLV = logits_BLV.astype(jnp.float32)
    log_z_BL = jax.nn.logsumexp(logits_BLV, axis=-1)
    target_logit_BL = jnp.take_along_axis(logits_BLV, targets_BL[..., None], axis=-1)[..., 0]
    return log_z_BL - target_logit_BL, log_z_BL


def weighted_row_losses(logits_BLV: jax.Array, targets_BL: jax.Array, loss_weights_BL: jax.Array) -> dict:
    """Per-row sums {"loss_sum_B", "weight_B"} of weighted cross-entropy (a mean over rows and its standard
    error follow from them: `chinchax.train.evaluate.summarize`)."""
    ce_BL, _ = token_cross_entropy(logits_BLV, targets_BL)
    w_BL = loss_weights_BL.astype(jnp.float32)
    return {"loss_sum_B": jnp.sum(ce_BL * w_BL, axis=1), "weight_B": jnp.sum(w_BL, axis=1)}
