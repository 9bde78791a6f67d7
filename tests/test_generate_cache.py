"""The model's KV cache (`Transformer.__call__(..., cache=, cache_index=)`) against teacher forcing.

Scoring reads every continuation token from one teacher-forced pass of `__call__` (the training layout);
generation feeds the prompt once and then one token at a time through the cache. Both are the same Block
and Stack code, so for a causal decoder, a prefix-LM decoder and an encoder-decoder (and with remat and
unrolled layers) the logits of every continuation token agree to float32 rounding, and the Scorer's
log-likelihood is the sum of the cached logits' log-probabilities.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.errors import UserError
from chinchax.evaluation.scoring import Scorer
from chinchax.model import Transformer
from chinchax.model.config import load_model_config
from chinchax.model.decoding import SamplingConfig, generate

SMALL = ["vocab_size=64", "d_model=32", "n_layers=2", "n_heads=4", "d_ff=64", "head_dim=8", "max_len=32"]
MODELS = {
    "causal_rope_gqa_remat": ("tiny-llama", ["n_kv_heads=2", "remat=dots"]),  # remat around the scanned blocks
    "prefix_lm_t5_relative": ("tiny-gpt2", ["position=t5_relative", "attention=prefix", "relative_buckets=8",
                                            "relative_max_distance=16"]),
    "encoder_decoder": ("tiny-t5", ["relative_buckets=8", "relative_max_distance=16"]),
    "causal_alibi_remat_unrolled": ("tiny-bloom", ["remat=full", "scan_layers=false"]),
}
BOS = 2
rng = np.random.default_rng(0)
CONTEXTS = rng.integers(10, 60, (2, 5)).tolist()  # two rows, so batching is exercised too
CONTINUATIONS = rng.integers(10, 60, (2, 6)).tolist()


@functools.cache
def model_for(name: str) -> Transformer:
    preset, extra = MODELS[name]
    model = Transformer(load_model_config(preset, SMALL + extra), rngs=nnx.Rngs(params=0, dropout=1))
    model.eval()
    return model


@nnx.jit
def _call(model, inputs, kwargs):
    return model(inputs, **kwargs)


def teacher_forced_logits(model) -> np.ndarray:
    """[B, N, V] logits that predict each continuation token, from one pass of `__call__`."""
    cont = np.asarray(CONTINUATIONS, np.int32)
    if model.cfg.variant == "encoder_decoder":
        inputs = np.concatenate([np.full((2, 1), BOS), cont[:, :-1]], 1).astype(np.int32)
        logits = _call(model, jnp.asarray(inputs), {"encoder_inputs": jnp.asarray(CONTEXTS, jnp.int32)})
        return np.asarray(logits)
    seq = np.concatenate([np.full((2, 1), BOS), np.asarray(CONTEXTS), cont[:, :-1]], 1).astype(np.int32)
    kwargs = {}
    if model.cfg.attention == "prefix":  # BOS + context is the bidirectional prefix (scoring's layout)
        kwargs["prefix_mask"] = jnp.asarray(np.arange(seq.shape[1])[None].repeat(2, 0) <= len(CONTEXTS[0]))
    logits = np.asarray(_call(model, jnp.asarray(seq), kwargs))
    return logits[:, len(CONTEXTS[0]) :]


def cached_logits(model) -> np.ndarray:
    """The same [B, N, V] logits, from a prefill of the prompt and then one token per call through the cache."""
    cont = np.asarray(CONTINUATIONS, np.int32)
    if model.cfg.variant == "encoder_decoder":
        prompt = np.full((2, 1), BOS, np.int32)
        kwargs = {"encoder_inputs": jnp.asarray(CONTEXTS, jnp.int32)}
    else:
        prompt = np.concatenate([np.full((2, 1), BOS), np.asarray(CONTEXTS)], 1).astype(np.int32)
        kwargs = {"prefix_mask": jnp.ones(prompt.shape, bool)} if model.cfg.attention == "prefix" else {}
    P, N = prompt.shape[1], cont.shape[1]
    cache = model.init_cache(2, P + N)
    logits, cache = _call(model, jnp.asarray(prompt), {**kwargs, "cache": cache, "cache_index": 0})
    steps = [np.asarray(logits[:, -1])]
    for i in range(N - 1):
        index = jnp.int32(P + i)  # traced: one compiled step for every slot
        logits, cache = _call(model, jnp.asarray(cont[:, i : i + 1]), {"cache": cache, "cache_index": index})
        steps.append(np.asarray(logits[:, 0]))
    return np.stack(steps, 1)


@pytest.fixture(scope="module", params=list(MODELS))
def logits_pair(request):
    model = model_for(request.param)
    return request.param, teacher_forced_logits(model), cached_logits(model)


def test_cached_decoding_equals_teacher_forcing_per_token(logits_pair):
    _, teacher, cached = logits_pair
    assert teacher.shape == cached.shape == (2, len(CONTINUATIONS[0]), 64)
    np.testing.assert_allclose(cached, teacher, atol=1e-5, rtol=0)
    # Logits that differ between tokens by far more than the tolerance, so the match is not trivial.
    assert np.abs(teacher - teacher.mean(-1, keepdims=True)).max() > 1e-2


def test_scorer_loglikelihood_is_the_cached_logits_log_probability(logits_pair):
    name, _, cached = logits_pair
    model = model_for(name)
    scores = Scorer(model, bos_id=BOS, batch_size=2).score(list(zip(CONTEXTS, CONTINUATIONS, strict=True)))
    logp = np.asarray(jax.nn.log_softmax(jnp.asarray(cached), -1))
    expected = [sum(logp[b, j, t] for j, t in enumerate(row)) for b, row in enumerate(CONTINUATIONS)]
    np.testing.assert_allclose([s.logprob for s in scores], expected, atol=5e-5, rtol=0)


def test_prefill_in_two_chunks_equals_one():
    """A chunk that starts mid-cache (cache_index > 0, L > 1) sees the earlier slots: the cache is not just
    a one-token-at-a-time path."""
    model = model_for("causal_rope_gqa_remat")
    prompt = jnp.asarray([[BOS, *CONTEXTS[0]], [BOS, *CONTEXTS[1]]], jnp.int32)
    one, _ = _call(model, prompt, {"cache": model.init_cache(2, 8), "cache_index": 0})
    _, cache = _call(model, prompt[:, :3], {"cache": model.init_cache(2, 8), "cache_index": 0})
    two, _ = _call(model, prompt[:, 3:], {"cache": cache, "cache_index": 3})
    np.testing.assert_allclose(np.asarray(two), np.asarray(one)[:, 3:], atol=1e-5, rtol=0)


def test_cache_misuse_is_a_clear_error():
    bert = Transformer(load_model_config("tiny-bert", SMALL), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="encoder-only"):
        bert.init_cache(1, 4)
    model = model_for("causal_rope_gqa_remat")
    with pytest.raises(ValueError, match="cache_index"):
        model(jnp.ones((1, 2), jnp.int32), cache=model.init_cache(1, 4))
    t5 = model_for("encoder_decoder")
    with pytest.raises(ValueError, match="encoder_inputs"):
        t5(jnp.ones((1, 1), jnp.int32), cache=t5.init_cache(1, 4), cache_index=0)
    with pytest.raises(UserError, match="model.attention=prefix"):  # a causal model never saw a prefix
        generate(model, [[BOS, 5]], SamplingConfig(max_new_tokens=2), prefix=True)
