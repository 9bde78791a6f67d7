"""Prompt tuning's forward pass: a soft prompt equal to the embeddings of tokens t must give the logits of
the model run on t followed by the input (decoders), or with t in front of the encoder input (encoder-
decoders)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.model import Transformer
from chinchax.model.config import load_model_config
from chinchax.model.soft_prompt import PromptedModel

P, B, L, S = 3, 2, 6, 5


@pytest.mark.parametrize("preset, changes", [
    ("tiny-gpt2", {}), ("tiny-gpt2", {"position": "rope"}), ("tiny-bart", {}), ("tiny-t5", {})])
def test_soft_prompt_of_token_embeddings_equals_prepending_the_tokens(preset, changes):
    cfg = load_model_config(preset).replace(vocab_size=61, dropout=0.0, attention_dropout=0.0, **changes)
    if cfg.scale_embeddings:
        pytest.skip("a soft prompt is not scaled like token embeddings")
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    model.eval()
    rng = np.random.default_rng(0)
    prompt_tokens = rng.integers(0, 61, (P,))
    inputs = jnp.asarray(rng.integers(0, 61, (B, L)), jnp.int32)
    prompt_PD = model.embedding_VD[...][prompt_tokens]
    prompted = PromptedModel(model, prompt_PD)
    pre = jnp.asarray(np.broadcast_to(prompt_tokens, (B, P)), jnp.int32)
    if cfg.variant == "encoder_decoder":
        enc = jnp.asarray(rng.integers(0, 61, (B, S)), jnp.int32)
        got = prompted(inputs, encoder_inputs=enc)
        want = model(inputs, encoder_inputs=jnp.concatenate([pre, enc], 1))
    else:
        got = prompted(inputs)
        want = model(jnp.concatenate([pre, inputs], 1))[:, P:]
    assert got.shape == (B, L, 61)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-5)
    noise = jnp.asarray(rng.normal(0, 0.5, prompt_PD.shape), jnp.float32)  # not uniform: LayerNorm removes that
    other = PromptedModel(model, prompt_PD + noise)(inputs, **({"encoder_inputs": enc} if cfg.variant == "encoder_decoder" else {}))
    assert np.abs(np.asarray(other) - np.asarray(got)).max() > 1e-3  # the prompt matters
