"""KV-cache decoding (chinchax.model.decoding) against the model's own full forward pass.

For each position encoding (learned, RoPE with grouped-query attention, ALiBi, T5 relative buckets with a
prefix-LM decoder) and for an encoder-decoder: with batched prompts of different lengths, the logits the
cached loop decodes from equal the uncached forward pass at every step, and greedy tokens are its argmax.
Sampling properties are checked inside the compiled loop on one model (same shapes: one compilation).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.errors import UserError
from chinchax.model import Transformer
from chinchax.model.config import load_model_config
from chinchax.model.decoding import SamplingConfig, generate

SMALL = ["vocab_size=64", "d_model=32", "n_layers=2", "n_heads=4", "d_ff=64", "head_dim=8", "max_len=32"]
MODELS = {
    "learned": ("tiny-gpt2", []),
    "rope_gqa": ("tiny-llama", ["n_kv_heads=2"]),
    "alibi": ("tiny-bloom", []),
    "t5_relative_prefix_lm": ("tiny-gpt2", ["position=t5_relative", "attention=prefix", "relative_buckets=8",
                                            "relative_max_distance=16"]),
    "encoder_decoder_t5": ("tiny-t5", ["relative_buckets=8", "relative_max_distance=16"]),
}
PROMPTS = [[2, 11, 12, 13, 14, 15], [2, 20], [2, 30, 31, 32]]
ENCODER_INPUTS = [[40, 41, 42], [43, 44, 45, 46, 47, 48, 49], [50]]
N = 6


@functools.cache
def model_for(name: str):
    preset, extra = MODELS[name]
    model = Transformer(load_model_config(preset, SMALL + extra), rngs=nnx.Rngs(params=0, dropout=1))
    model.eval()
    return model


def run(name: str, cfg: SamplingConfig):
    model = model_for(name)
    if model.cfg.variant == "encoder_decoder":
        return generate(model, [[2]] * 3, cfg, encoder_inputs=ENCODER_INPUTS, return_logits=True)
    return generate(model, PROMPTS, cfg, return_logits=True)


def full_forward_step_logits(name: str, tokens_BN: np.ndarray) -> np.ndarray:
    """Uncached logits [B, N, V] that predicted each generated token: one right-padded forward pass (padding
    after the real tokens cannot reach them: causal decoder, segment-masked encoder)."""
    model = model_for(name)
    enc_dec = model.cfg.variant == "encoder_decoder"
    prompts = [[2]] * 3 if enc_dec else PROMPTS
    seqs = [p + t.tolist() for p, t in zip(prompts, tokens_BN, strict=True)]
    width = max(map(len, seqs))
    inputs = np.zeros((3, width), np.int32)
    for b, s in enumerate(seqs):
        inputs[b, : len(s)] = s
    kwargs = {}
    if model.cfg.attention == "prefix":
        kwargs["prefix_mask"] = jnp.asarray(np.arange(width)[None] < np.array([len(p) for p in prompts])[:, None])
    if enc_dec:
        enc = np.zeros((3, 7), np.int32)
        seg = np.zeros((3, 7), np.int32)
        for b, e in enumerate(ENCODER_INPUTS):
            enc[b, : len(e)], seg[b, : len(e)] = e, 1
        kwargs.update(encoder_inputs=jnp.asarray(enc), encoder_segment_ids=jnp.asarray(seg))
    logits = np.asarray(nnx.jit(lambda m, x, kw: m(x, **kw))(model, jnp.asarray(inputs), kwargs))
    return np.stack([logits[b, len(p) - 1 : len(p) - 1 + N] for b, p in enumerate(prompts)])


@pytest.mark.parametrize("name", list(MODELS))
def test_cached_equals_uncached_and_greedy_is_argmax(name):
    result = run(name, SamplingConfig(max_new_tokens=N))
    assert result.tokens.shape == (3, N) and (result.lengths == N).all()
    reference = full_forward_step_logits(name, result.tokens)
    np.testing.assert_allclose(result.step_logits, reference, atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(result.tokens, reference.argmax(-1))


def test_prefix_lm_prompt_is_bidirectional():
    """The prefix-LM decoder reads its prompt both ways: the first step's logits differ from a causal read
    (so the test above really checked the prefix layout, not a causal one)."""
    model = model_for("t5_relative_prefix_lm")
    both_ways = generate(model, PROMPTS, SamplingConfig(max_new_tokens=N), return_logits=True).step_logits
    causal = generate(model, PROMPTS, SamplingConfig(max_new_tokens=N), prefix=False, return_logits=True).step_logits
    assert np.abs(both_ways[:, 0] - causal[:, 0]).max() > 1e-3


def _nucleus(logits_V: np.ndarray, temperature: float, top_p: float) -> set[int]:
    logits = logits_V.astype(np.float64) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    before = np.cumsum(probs[order]) - probs[order]
    return set(order[before < top_p].tolist())


def test_sampling_properties_inside_the_loop():
    greedy = run("learned", SamplingConfig(max_new_tokens=N))

    top_k = run("learned", SamplingConfig(max_new_tokens=N, temperature=2.0, top_k=3, seed=1))
    for b in range(3):
        for i in range(N):
            allowed = set(np.argsort(-top_k.step_logits[b, i])[:3].tolist())
            assert top_k.tokens[b, i] in allowed

    top_p = run("learned", SamplingConfig(max_new_tokens=N, temperature=1.5, top_p=0.3, seed=2))
    for b in range(3):
        for i in range(N):
            assert top_p.tokens[b, i] in _nucleus(top_p.step_logits[b, i], 1.5, 0.3)

    cold = run("learned", SamplingConfig(max_new_tokens=N, temperature=1e-6, seed=3))
    np.testing.assert_array_equal(cold.tokens, greedy.tokens)

    a = run("learned", SamplingConfig(max_new_tokens=N, temperature=1.0, seed=4))
    b = run("learned", SamplingConfig(max_new_tokens=N, temperature=1.0, seed=4))
    c = run("learned", SamplingConfig(max_new_tokens=N, temperature=1.0, seed=5))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    assert not np.array_equal(a.tokens, greedy.tokens)


def test_stop_tokens_end_each_row_and_pad_after():
    greedy = run("learned", SamplingConfig(max_new_tokens=N))
    stop = int(greedy.tokens[0, 2])
    stopped = run("learned", SamplingConfig(max_new_tokens=N, stop_tokens=(stop,)))
    for b in range(3):
        row = greedy.tokens[b].tolist()
        n = row.index(stop) + 1 if stop in row else N
        assert stopped.lengths[b] == n
        assert stopped.tokens[b, :n].tolist() == row[:n]
        assert (stopped.tokens[b, n:] == 0).all()
    assert stopped.as_lists()[0][-1] == stop


def test_bad_requests_are_user_errors():
    with pytest.raises(UserError, match="max_len"):
        generate(model_for("learned"), PROMPTS, SamplingConfig(max_new_tokens=30))
    with pytest.raises(UserError, match="encoder_inputs"):
        generate(model_for("encoder_decoder_t5"), [[2]], SamplingConfig())
    with pytest.raises(UserError, match="top_p"):
        generate(model_for("learned"), PROMPTS, SamplingConfig(top_p=0.0))
    with pytest.raises(UserError, match="at least one token"):
        generate(model_for("learned"), [[2], []], SamplingConfig())
    bert = Transformer(load_model_config("tiny-bert", SMALL), rngs=nnx.Rngs(params=0, dropout=1))
    with pytest.raises(UserError, match="encoder-only"):
        generate(bert, PROMPTS, SamplingConfig())


def test_decoding_is_jit_compiled_once_for_all_sampling_settings():
    from chinchax.model import decoding

    run("learned", SamplingConfig(max_new_tokens=N))
    before = decoding._generate._cache_size()
    run("learned", SamplingConfig(max_new_tokens=N, temperature=0.7, top_k=5, top_p=0.9, seed=9, stop_tokens=(7,)))
    assert decoding._generate._cache_size() == before
