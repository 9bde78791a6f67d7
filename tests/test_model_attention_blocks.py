"""The fast paths of the model equal the plain computation they replace: causal attention in query blocks,
the fused q/k/v projection, RoPE with its tables made once and its halves swapped by a reversal, the tied head's
reordered gradient, and GELU written with erf."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.model import Transformer, attention
from chinchax.model.attention import Attention, alibi_bias, attend, attention_mask, causal_query_blocks
from chinchax.model.config import load_model_config
from chinchax.model.layers import gelu_exact, project, tied_logits

B, L, H, G, K = 2, 512, 4, 2, 16


def qkv(seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (B, L, H, K)),
        jax.random.normal(kk, (B, L, G, K)),
        jax.random.normal(kv, (B, L, G, K)),
    )


def packed_segments():
    """Two rows of documents of uneven lengths, the second ending in padding (segment 0)."""
    row0 = np.repeat([1, 2, 3], [100, 300, 112])
    row1 = np.concatenate([np.repeat([1, 2], [250, 200]), np.zeros(62, int)])
    return jnp.asarray(np.stack([row0, row1]), jnp.int32)


@pytest.mark.parametrize("case", ["causal", "packed", "alibi"])
def test_query_blocks_equal_dense_causal_attention_values_and_gradients(case):
    q, k, v = qkv()
    causal_LS = jnp.tril(jnp.ones((L, L), bool))
    mask, bias, is_causal = None, None, True
    if case == "packed":
        segments = packed_segments()
        mask, is_causal = attention_mask(segments, segments, causal=True), False
    if case == "alibi":
        positions = jnp.broadcast_to(jnp.arange(L), (B, L))
        bias = alibi_bias(positions, positions, H)
    dense_mask = causal_LS[None, None] if mask is None else mask
    no_dropout = nnx.Dropout(0.0, rngs=nnx.Rngs(0))

    def blocked(q, k, v):
        out = attend(q, k, v, mask_B1LS=mask, bias_BHLS=bias, scale=0.25, is_causal=is_causal,
                     dropout=no_dropout, within_causal=True)
        return out, (out * out).sum()

    def dense(q, k, v):
        k_rep, v_rep = jnp.repeat(k, H // G, axis=2), jnp.repeat(v, H // G, axis=2)
        out = jax.nn.dot_product_attention(q, k_rep, v_rep, bias=bias, mask=dense_mask, scale=0.25)
        return out, (out * out).sum()

    assert causal_query_blocks(L, L) == 4
    grads_blocked = jax.jit(jax.grad(lambda *a: blocked(*a)[1], argnums=(0, 1, 2)))(q, k, v)
    np.testing.assert_allclose(jax.jit(blocked)(q, k, v)[0], jax.jit(dense)(q, k, v)[0], atol=1e-5, rtol=1e-5)
    grads_dense = jax.jit(jax.grad(lambda *a: dense(*a)[1], argnums=(0, 1, 2)))(q, k, v)
    for g_blocked, g_dense in zip(grads_blocked, grads_dense, strict=True):
        np.testing.assert_allclose(g_blocked, g_dense, atol=1e-4, rtol=1e-4)


def test_block_counts():
    assert causal_query_blocks(2048, 2048) == 8  # blocks of 256
    assert causal_query_blocks(512, 512) == 4  # of 128
    assert causal_query_blocks(256, 256) == 2
    assert causal_query_blocks(128, 128) == 1  # too short to split
    assert causal_query_blocks(512, 1024) == 1  # not self-attention over the same positions (decoding)
    assert causal_query_blocks(300, 300) == 2


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2"])
def test_a_packed_causal_model_gives_the_same_logits_with_and_without_blocks(preset, monkeypatch):
    model = Transformer(load_model_config(preset, [f"max_len={L}"]), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(3), (B, L), 1, model.cfg.vocab_size)
    segments = packed_segments()
    positions = jnp.concatenate([jnp.arange(100), jnp.arange(300), jnp.arange(112)])
    positions = jnp.stack([positions, jnp.concatenate([jnp.arange(250), jnp.arange(200), jnp.zeros(62, int)])])

    def logits():  # a new function each time, so each call traces (and sees the patch below) afresh
        return nnx.jit(lambda m: m(tokens, positions=positions, segment_ids=segments))(model)

    blocked = logits()
    monkeypatch.setattr(attention, "causal_query_blocks", lambda L, S: 1)
    dense = logits()
    np.testing.assert_allclose(blocked, dense, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides", [["position=rope", "n_kv_heads=1"], ["position=rope", "use_bias=true"]])
def test_fused_qkv_projection_equals_separate_projections(overrides):
    cfg = load_model_config("tiny-llama", overrides)
    attn = Attention(cfg, rngs=nnx.Rngs(0))
    if cfg.use_bias:  # nonzero biases, so adding them to the right heads is checked
        for name in ("q_bias_HK", "k_bias_GK", "v_bias_GK"):
            p = getattr(attn, name)
            p[...] = jax.random.normal(jax.random.key(len(name)), p[...].shape)
    x = jax.random.normal(jax.random.key(4), (B, 16, cfg.d_model))
    positions = jnp.broadcast_to(jnp.arange(16), (B, 16)) + 3
    q, k, v = attn.project_qkv(x, positions)
    np.testing.assert_allclose(q, attn.project_q(x, positions), atol=1e-6)
    for fused, separate in zip((k, v), attn.project_kv(x, positions), strict=True):
        np.testing.assert_allclose(fused, separate, atol=1e-6)


def test_gelu_with_erf_equals_jax_exact_gelu_values_and_gradients():
    x = jnp.linspace(-8.0, 8.0, 10001)
    np.testing.assert_allclose(gelu_exact(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
    g = jax.vmap(jax.grad(gelu_exact))(x)
    np.testing.assert_allclose(g, jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(x), atol=2e-6)
    assert float(jnp.abs(gelu_exact(x) - jax.nn.gelu(x, approximate=True)).max()) > 1e-4  # not the tanh form


def rope_rotate_half(x_BLHK, positions_BL, theta):
    """RoPE as HF's LLaMA writes it: x·cos + rotate_half(x)·sin, rotate_half(x) = (-x2, x1)."""
    K = x_BLHK.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, K, 2, dtype=jnp.float32) / K))
    angles = positions_BL.astype(jnp.float32)[:, :, None, None] * jnp.concatenate([inv_freq, inv_freq])
    rotated = jnp.concatenate([-x_BLHK[..., K // 2 :], x_BLHK[..., : K // 2]], -1)
    return x_BLHK * jnp.cos(angles) + rotated * jnp.sin(angles)


def test_rope_equals_the_rotate_half_form_values_and_gradients():
    x, _, _ = qkv(3)
    positions = jnp.asarray(np.stack([np.arange(L), np.concatenate([np.arange(200), np.arange(L - 200)])]))  # packed
    cotangent = jax.random.normal(jax.random.key(4), x.shape)
    # both compiled: eager jnp.cos rounds differently from a compiled one by up to 7e-6 at these angles (up to 511
    # rad), while either is 2e-5 from the float64 value
    fast = jax.jit(lambda x: jax.vjp(lambda x: attention.rope(x, positions, 1e4), x)[1](cotangent)[0])
    plain = jax.jit(lambda x: jax.vjp(lambda x: rope_rotate_half(x, positions, 1e4), x)[1](cotangent)[0])
    np.testing.assert_allclose(jax.jit(attention.rope, static_argnums=2)(x, positions, 1e4),
                               jax.jit(rope_rotate_half, static_argnums=2)(x, positions, 1e4), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast(x), plain(x), rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(attention.rope(x, positions, 1e4) - x).max()) > 0.1  # it rotates


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_tied_head_equals_the_plain_product_values_and_gradients(dtype):
    x = jax.random.normal(jax.random.key(5), (3, 7, 24)).astype(dtype)
    embedding = jax.random.normal(jax.random.key(6), (50, 24))
    cotangent = jax.random.normal(jax.random.key(7), (3, 7, 50))

    def plain(x, e):  # what the head computed before, differentiated by JAX
        return project(x, e.astype(dtype).T, preferred_element_type=jnp.float32)

    def fast(x, e):
        return tied_logits(x, e.astype(dtype))

    (y_fast, vjp_fast), (y_plain, vjp_plain) = (jax.vjp(jax.jit(f), x, embedding) for f in (fast, plain))
    assert y_fast.dtype == jnp.float32 and y_fast.shape == (3, 7, 50)
    np.testing.assert_array_equal(y_fast, y_plain)  # the forward product is the same dot
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for got, want in zip(vjp_fast(cotangent), vjp_plain(cotangent), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=tol, atol=tol)
