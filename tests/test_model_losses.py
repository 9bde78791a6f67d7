"""The one cross-entropy (chinchax.model.losses) and its callers: the scorer's log-likelihood and the
validation loss of the same tokens are the same number."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax.evaluation.losses import validation_loss
from chinchax.evaluation.scoring import Scorer
from chinchax.model import Transformer
from chinchax.model.config import load_model_config
from chinchax.model.losses import token_cross_entropy, weighted_row_losses


def test_cross_entropy_is_minus_log_softmax_and_log_z_is_logsumexp():
    logits = jax.random.normal(jax.random.key(0), (2, 5, 11)) * 4.0
    targets = jax.random.randint(jax.random.key(1), (2, 5), 0, 11)
    ce, log_z = token_cross_entropy(logits.astype(jnp.bfloat16), targets)
    assert ce.dtype == log_z.dtype == jnp.float32
    logits32 = logits.astype(jnp.bfloat16).astype(jnp.float32)
    logp = np.asarray(jax.nn.log_softmax(logits32, -1))
    expected = -np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
    np.testing.assert_allclose(ce, expected, atol=2e-6, rtol=1e-6)
    np.testing.assert_allclose(log_z, np.log(np.exp(np.asarray(logits32, np.float64)).sum(-1)), rtol=1e-6)
    weights = np.zeros((2, 5), np.float32)
    weights[0, 1:3], weights[1, 4] = 1.0, 0.5
    rows = weighted_row_losses(logits, targets, jnp.asarray(weights))
    np.testing.assert_allclose(rows["loss_sum_B"], (np.asarray(token_cross_entropy(logits, targets)[0]) * weights).sum(1),
                               rtol=1e-6)
    np.testing.assert_array_equal(rows["weight_B"], [2.0, 0.5])


def test_scorer_and_validation_loss_agree_on_the_same_tokens():
    cfg = load_model_config("tiny-llama", ["vocab_size=64", "d_model=32", "n_layers=1", "n_heads=4", "d_ff=64",
                                           "max_len=32"])
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    model.eval()
    bos, context, continuation = 2, [11, 12, 13, 14], [20, 21, 22]
    score = Scorer(model, bos_id=bos, batch_size=1).score([(context, continuation)])[0]
    seq = np.asarray(context + continuation, np.int32)
    batch = {
        "inputs": np.concatenate([[bos], seq[:-1]]).astype(np.int32)[None],
        "targets": seq[None],
        "loss_weights": (np.arange(len(seq)) >= len(context)).astype(np.float32)[None],
    }
    out = validation_loss(model, [batch])
    assert out["tokens"] == score.n_tokens == len(continuation)
    np.testing.assert_allclose(out["loss"], -score.logprob / score.n_tokens, rtol=1e-6)
