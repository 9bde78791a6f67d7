"""Attention: masks, position encodings (RoPE, ALiBi, T5 relative buckets) and the attention module.

Shape letters in names (`x_BLD`) and einsum strings, the legend for all of model/:
B batch, L query (sequence) length, S key length (the cache length when decoding), D d_model,
F d_ff (the MLP's hidden width), V vocabulary, H query heads, G key/value heads, K head size,
N the fused query/key/value heads (H + 2G), 1 a kept axis of size one;
R relative-position buckets (T5's bias table, `table_RH`) or, in grouped attention, the H/G query
heads that share one key/value head (`q_BLGRK`);
P learned positions (`position_embedding_PD`, one row per position) or, when decoding, the width of
the left-padded prompts (`tokens_BP`);
T token types (BERT's `token_type_embedding_TD`) or, when decoding, the stop tokens (`stop_T`).
Grouped-query attention shares each of the G key/value heads among H/G query heads.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax.model.config import ModelConfig
from chinchax.model.cudnn_segments import cudnn_segment_attention
from chinchax.model.layers import LoraSpec, dense_init, lora_adapters, param, project
from chinchax.model.parametrization import multipliers

# --- masks ---------------------------------------------------------------------------------------


def attention_mask(
    q_segment_ids_BL: jax.Array | None,
    kv_segment_ids_BS: jax.Array | None,
    *,
    causal: bool,
    prefix_mask_BL: jax.Array | None = None,
    shape: tuple[int, int, int] | None = None,
    kv_prefix_mask_BS: jax.Array | None = None,
    q_offset: jax.Array | int = 0,
) -> jax.Array | None:
    """Boolean [B, 1, L, S]: True where query l may attend to key s.

    Same segment only (segment 0 is padding: padded queries attend to padding, so no row is empty);
    `causal` adds s <= l (by array index: packing keeps each document in order); `prefix_mask_BL`
    additionally lets positions of the prefix see each other both ways (prefix LM).
    With a KV cache the keys are the cache's S slots and query l sits at slot `q_offset + l`;
    `kv_prefix_mask_BS` marks the cached prefix keys (default: the queries' own `prefix_mask_BL`).
    """
    mask = None
    if q_segment_ids_BL is not None:
        mask = q_segment_ids_BL[:, :, None] == kv_segment_ids_BS[:, None, :]
    if causal:
        B, L, S = shape if shape else (*q_segment_ids_BL.shape, kv_segment_ids_BS.shape[1])
        q_slots_L = jnp.arange(L) if isinstance(q_offset, int) and q_offset == 0 else q_offset + jnp.arange(L)
        causal_LS = q_slots_L[:, None] >= jnp.arange(S)[None, :]
        allowed_BLS = jnp.broadcast_to(causal_LS, (B, L, S))
        if prefix_mask_BL is not None:
            kv_prefix_BS = prefix_mask_BL if kv_prefix_mask_BS is None else kv_prefix_mask_BS
            allowed_BLS = allowed_BLS | (prefix_mask_BL[:, :, None] & kv_prefix_BS[:, None, :])
        mask = allowed_BLS if mask is None else mask & allowed_BLS
    return None if mask is None else mask[:, None, :, :]


# --- position encodings --------------------------------------------------------------------------


def rope(x_BLHK: jax.Array, positions_BL: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, "rotate half" layout (first half of K pairs with the second, as LLaMA in HF):
    x·cos + swap_halves(x)·(-sin, sin), the same products as x·cos + (-x2, x1)·sin.

    Two things keep it cheap on CPU (a one-layer d_model 80 step of the demo: 13.4 -> 12.0 ms): the cos and
    sin tables are made once, behind an optimization barrier (fused into their consumers, XLA recomputed
    both transcendentals for every element of every head, forward and backward), and the halves are
    swapped by a reversal, whose gradient is another reversal (a concatenate of slices differentiates
    into pads and adds)."""
    B, L, H, K = x_BLHK.shape
    inv_freq_k = 1.0 / (theta ** (jnp.arange(0, K, 2, dtype=jnp.float32) / K))
    angles_BLk = positions_BL.astype(jnp.float32)[:, :, None] * inv_freq_k
    cos_BLk, sin_BLk = jax.lax.optimization_barrier((jnp.cos(angles_BLk), jnp.sin(angles_BLk)))
    cos_BL1K = jnp.concatenate([cos_BLk, cos_BLk], -1)[:, :, None, :]
    signed_sin_BL1K = jnp.concatenate([-sin_BLk, sin_BLk], -1)[:, :, None, :]
    x = x_BLHK.astype(jnp.float32)
    swapped = x.reshape(B, L, H, 2, K // 2)[:, :, :, ::-1, :].reshape(B, L, H, K)
    return (x * cos_BL1K + swapped * signed_sin_BL1K).astype(x_BLHK.dtype)


def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al.), with the interpolation BLOOM uses for non-powers of two."""
    closest = 2 ** math.floor(math.log2(n_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != n_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base ** (2 * i + 1) for i in range(n_heads - closest)]
    return np.asarray(slopes, np.float32)


def alibi_bias(q_positions_BL: jax.Array, kv_positions_BS: jax.Array, n_heads: int) -> jax.Array:
    """[B, H, L, S] bias slope_h * (s - l): a linear penalty on distance (only s <= l is ever unmasked
    in a causal model; the per-query constant slope_h * l does not change the softmax)."""
    distance_BLS = (kv_positions_BS[:, None, :] - q_positions_BL[:, :, None]).astype(jnp.float32)
    return jnp.asarray(alibi_slopes(n_heads))[None, :, None, None] * distance_BLS[:, None]


def t5_relative_buckets(relative_BLS: jax.Array, *, bidirectional: bool, n_buckets: int, max_distance: int):
    """T5's bucketing of key-minus-query distance: exact for small distances, log-spaced up to max_distance."""
    buckets = jnp.zeros_like(relative_BLS)
    if bidirectional:
        n_buckets //= 2
        buckets += (relative_BLS > 0).astype(jnp.int32) * n_buckets
        distance = jnp.abs(relative_BLS)
    else:
        distance = -jnp.minimum(relative_BLS, 0)
    max_exact = n_buckets // 2
    is_small = distance < max_exact
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (n_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, n_buckets - 1)
    return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nnx.Module):
    """T5's learned bias per (bucket, head), shared by all layers of one stack."""

    def __init__(self, cfg: ModelConfig, *, bidirectional: bool, rngs: nnx.Rngs):
        self.cfg = cfg
        self.bidirectional = bidirectional
        self.table_RH = param(rngs, nnx.initializers.normal(1.0), (cfg.relative_buckets, cfg.n_heads), (None, "heads"))

    def __call__(self, q_positions_BL: jax.Array, kv_positions_BS: jax.Array) -> jax.Array:
        relative_BLS = kv_positions_BS[:, None, :] - q_positions_BL[:, :, None]
        buckets_BLS = t5_relative_buckets(
            relative_BLS,
            bidirectional=self.bidirectional,
            n_buckets=self.cfg.relative_buckets,
            max_distance=self.cfg.relative_max_distance,
        )
        bias_BLSH = self.table_RH[...][buckets_BLS]
        return jnp.transpose(bias_BLSH, (0, 3, 1, 2))


# --- the attention module ------------------------------------------------------------------------


class Attention(nnx.Module):
    """Multi-head / grouped-query / multi-query attention; self- or cross-attention."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoraSpec | None = None):
        self.cfg = cfg
        D, H, G, K = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_size
        qkv_init = dense_init(scale=multipliers(cfg).qkv_init)
        q_init = nnx.initializers.zeros if cfg.mup_zero_query else qkv_init
        self.q_DHK = param(rngs, q_init, (D, H, K), ("embed", "heads", "kv"))
        self.k_DGK = param(rngs, qkv_init, (D, G, K), ("embed", "kv_heads", "kv"))
        self.v_DGK = param(rngs, qkv_init, (D, G, K), ("embed", "kv_heads", "kv"))
        self.o_HKD = param(rngs, dense_init(2), (H, K, D), ("heads", "kv", "embed"))
        if cfg.use_bias:
            self.q_bias_HK = param(rngs, nnx.initializers.zeros, (H, K), ("heads", "kv"))
            self.k_bias_GK = param(rngs, nnx.initializers.zeros, (G, K), ("kv_heads", "kv"))
            self.v_bias_GK = param(rngs, nnx.initializers.zeros, (G, K), ("kv_heads", "kv"))
            self.o_bias_D = param(rngs, nnx.initializers.zeros, (D,), ("embed",))
        self.attention_dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)
        kernels = {
            "q": ((D, H, K), ("embed", "heads", "kv"), 1),
            "k": ((D, G, K), ("embed", "kv_heads", "kv"), 1),
            "v": ((D, G, K), ("embed", "kv_heads", "kv"), 1),
            "o": ((H, K, D), ("heads", "kv", "embed"), 2),
        }
        lora_adapters(self, lora, kernels, rngs)

    def project_kv(self, x_BSD: jax.Array, positions_BS: jax.Array | None):
        """Keys and values [B, S, G, K] (RoPE applied to keys): what a decoding cache stores."""
        dtype = x_BSD.dtype
        k_BSGK = project(x_BSD, self.k_DGK[...].astype(dtype), adapter=getattr(self, "k_lora", None))
        v_BSGK = project(x_BSD, self.v_DGK[...].astype(dtype), adapter=getattr(self, "v_lora", None))
        if self.cfg.use_bias:
            k_BSGK = k_BSGK + self.k_bias_GK[...].astype(dtype)
            v_BSGK = v_BSGK + self.v_bias_GK[...].astype(dtype)
        if self.cfg.position == "rope" and positions_BS is not None:
            k_BSGK = rope(k_BSGK, positions_BS, self.cfg.rope_theta)
        return k_BSGK, v_BSGK

    def project_q(self, x_BLD: jax.Array, positions_BL: jax.Array | None) -> jax.Array:
        """Queries [B, L, H, K] (RoPE applied when positions are given)."""
        dtype = x_BLD.dtype
        q_BLHK = project(x_BLD, self.q_DHK[...].astype(dtype), adapter=getattr(self, "q_lora", None))
        if self.cfg.use_bias:
            q_BLHK = q_BLHK + self.q_bias_HK[...].astype(dtype)
        if self.cfg.position == "rope" and positions_BL is not None:
            q_BLHK = rope(q_BLHK, positions_BL, self.cfg.rope_theta)
        return q_BLHK

    def project_qkv(self, x_BLD: jax.Array, positions_BL: jax.Array | None):
        """Self-attention's queries, keys and values from one matmul over the concatenated weights: one
        [D, (H + 2G)·K] matmul is faster than three narrow ones, and its backward has one input gradient."""
        dtype = x_BLD.dtype
        H, G = self.cfg.n_heads, self.cfg.kv_heads
        w_DNK = jnp.concatenate([self.q_DHK[...], self.k_DGK[...], self.v_DGK[...]], axis=1).astype(dtype)
        qkv_BLNK = project(x_BLD, w_DNK)
        q_BLHK, k_BLGK, v_BLGK = qkv_BLNK[:, :, :H], qkv_BLNK[:, :, H : H + G], qkv_BLNK[:, :, H + G :]
        # LoRA adapters stay per kernel beside the fused base product (peft's q_proj/k_proj/v_proj)
        if hasattr(self, "q_lora"):
            q_BLHK = q_BLHK + self.q_lora(x_BLD, 1)
        if hasattr(self, "k_lora"):
            k_BLGK = k_BLGK + self.k_lora(x_BLD, 1)
        if hasattr(self, "v_lora"):
            v_BLGK = v_BLGK + self.v_lora(x_BLD, 1)
        if self.cfg.use_bias:
            q_BLHK = q_BLHK + self.q_bias_HK[...].astype(dtype)
            k_BLGK = k_BLGK + self.k_bias_GK[...].astype(dtype)
            v_BLGK = v_BLGK + self.v_bias_GK[...].astype(dtype)
        if self.cfg.position == "rope" and positions_BL is not None:
            q_BLHK = rope(q_BLHK, positions_BL, self.cfg.rope_theta)
            k_BLGK = rope(k_BLGK, positions_BL, self.cfg.rope_theta)
        return q_BLHK, k_BLGK, v_BLGK

    def attend_and_project(
        self, q_BLHK, k_BSGK, v_BSGK, *, mask_B1LS, bias_BHLS, is_causal=False, within_causal=False, segments=None
    ) -> jax.Array:
        """Softmax attention over the given keys and values, then the output projection to [B, L, D]."""
        out_BLHK = attend(
            q_BLHK,
            k_BSGK,
            v_BSGK,
            mask_B1LS=mask_B1LS,
            bias_BHLS=bias_BHLS,
            scale=multipliers(self.cfg).attention_scale,
            is_causal=is_causal,
            within_causal=within_causal,
            dropout=self.attention_dropout,
            segments=segments,
        )
        out_BLD = project(out_BLHK, self.o_HKD[...].astype(q_BLHK.dtype), n_in=2, adapter=getattr(self, "o_lora", None))
        if self.cfg.use_bias:
            out_BLD = out_BLD + self.o_bias_D[...].astype(q_BLHK.dtype)
        return out_BLD

    def __call__(
        self,
        x_BLD: jax.Array,
        *,
        positions_BL: jax.Array | None,
        mask_B1LS: jax.Array | None,
        bias_BHLS: jax.Array | None = None,
        kv_BSD: jax.Array | None = None,
        is_causal: bool = False,
        within_causal: bool = False,
        cache: dict | None = None,
        cache_index: jax.Array | int | None = None,
        segments: tuple | None = None,
    ):
        """Self-attention over x, or cross-attention to `kv_BSD` (no positions on cross-attention).

        With a `cache` ({"k", "v"}, each [B, S, G, K]) it returns (out, new cache). Self-attention
        (`cache_index` given) writes this chunk's keys and values at slots cache_index.. and attends over
        all S slots (the mask hides the unwritten ones). Cross-attention stores the keys and values of
        `kv_BSD` when given (pass `cache={}`), and otherwise reads them: the encoder runs once per generation.
        """
        if cache is not None and cache_index is not None:
            q_BLHK, k_new_BLGK, v_new_BLGK = self.project_qkv(x_BLD, positions_BL)
            k_BSGK = jax.lax.dynamic_update_slice(
                cache["k"], k_new_BLGK.astype(cache["k"].dtype), (0, cache_index, 0, 0)
            )
            v_BSGK = jax.lax.dynamic_update_slice(
                cache["v"], v_new_BLGK.astype(cache["v"].dtype), (0, cache_index, 0, 0)
            )
            cache = {"k": k_BSGK, "v": v_BSGK}
        elif kv_BSD is not None:
            q_BLHK = self.project_q(x_BLD, None)
            k_BSGK, v_BSGK = self.project_kv(kv_BSD, None)
            cache = None if cache is None else {"k": k_BSGK, "v": v_BSGK}
        elif cache is not None:
            q_BLHK = self.project_q(x_BLD, None)
            k_BSGK, v_BSGK = cache["k"], cache["v"]
        else:
            q_BLHK, k_BSGK, v_BSGK = self.project_qkv(x_BLD, positions_BL)
        out_BLD = self.attend_and_project(
            q_BLHK,
            k_BSGK,
            v_BSGK,
            mask_B1LS=mask_B1LS,
            bias_BHLS=bias_BHLS,
            is_causal=is_causal,
            within_causal=within_causal,
            segments=segments,
        )
        return out_BLD if cache is None else (out_BLD, cache)


def attend(
    q_BLHK,
    k_BSGK,
    v_BSGK,
    *,
    mask_B1LS,
    bias_BHLS,
    scale,
    is_causal,
    dropout: nnx.Dropout,
    within_causal=False,
    segments: tuple | None = None,
):
    """Softmax attention with float32 logits and softmax.

    `is_causal`: causal with no mask array. `within_causal`: the mask (given or implied) never lets query l
    see a key s > l (causal decoders, packed or not), so key blocks above the diagonal can be skipped.
    Causal self-attention runs in query blocks, block i over keys [0, end of block i): XLA has no fused
    attention on CPU (nor on GPU in float32), and computing the masked half of [L, S] doubles the work
    (the step of the CPU benchmark took 0.5 s less for it; docs/benchmarks.md). cuDNN's fused kernel is
    taken explicitly where it applies; everything else is `_softmax_attention`, not XLA's path of
    `jax.nn.dot_product_attention`, whose gradient ran 1.6-1.9x slower on CPU at the demo's shapes
    (heads of 8, rows of 64; docs/benchmarks.md).
    """
    use_dropout = not (dropout.rate == 0.0 or dropout.deterministic)
    if segments is not None and not use_dropout and _use_cudnn(q_BLHK, bias_BHLS, None):
        # Packed or padded rows (`segments`: query ids, key ids, most documents per row): cuDNN's layout
        # instead of the mask array, so they keep the fused kernel.
        q_segment_ids_BL, kv_segment_ids_BS, max_segments = segments
        return cudnn_segment_attention(
            q_BLHK,
            k_BSGK,
            v_BSGK,
            q_segment_ids_BL=q_segment_ids_BL,
            kv_segment_ids_BS=kv_segment_ids_BS,
            max_segments=max_segments,
            scale=scale,
            is_causal=is_causal or within_causal,
        )
    if not use_dropout and _use_cudnn(q_BLHK, bias_BHLS, mask_B1LS):
        return jax.nn.dot_product_attention(
            q_BLHK, k_BSGK, v_BSGK, scale=scale, is_causal=is_causal, implementation="cudnn"
        )
    L, S = q_BLHK.shape[1], k_BSGK.shape[1]
    n_blocks = causal_query_blocks(L, S) if (is_causal or within_causal) else 1
    if n_blocks == 1:
        if is_causal:
            causal_11LS = (jnp.arange(L)[:, None] >= jnp.arange(S)[None, :])[None, None]
            mask_B1LS = causal_11LS if mask_B1LS is None else mask_B1LS & causal_11LS
        return _softmax_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, bias_BHLS, scale, dropout)
    size = L // n_blocks
    out_blocks = []
    for i in range(n_blocks):
        start, end = i * size, (i + 1) * size
        causal_1S = (jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :])[None, None]
        mask = causal_1S if mask_B1LS is None else mask_B1LS[:, :, start:end, :end] & causal_1S
        bias = None if bias_BHLS is None else bias_BHLS[:, :, start:end, :end]
        q = q_BLHK[:, start:end]
        out_blocks.append(_softmax_attention(q, k_BSGK[:, :end], v_BSGK[:, :end], mask, bias, scale, dropout))
    return jnp.concatenate(out_blocks, axis=1)


def causal_query_blocks(L: int, S: int) -> int:
    """How many query blocks causal self-attention runs in: up to 8 blocks of at least 128 queries. n blocks
    compute (n + 1) / 2n of the full [L, S] (56% for 8, 62% for 4); smaller blocks mean more, smaller
    matmuls, and on CPU 64-query blocks were no faster than 128 at L = 512."""
    if L != S:
        return 1
    for n in (8, 4, 2):
        if L % n == 0 and L // n >= 128:
            return n
    return 1


def _softmax_attention(q_BLHK, k_BSGK, v_BSGK, mask_B1LS, bias_BHLS, scale, dropout: nnx.Dropout):
    B, L, H, K = q_BLHK.shape
    G = k_BSGK.shape[2]
    q_BLGRK = q_BLHK.reshape(B, L, G, H // G, K)
    logits_BGRLS = jnp.einsum("BLGRK,BSGK->BGRLS", q_BLGRK, k_BSGK, preferred_element_type=jnp.float32) * scale
    logits_BHLS = logits_BGRLS.reshape(B, H, L, -1)
    if bias_BHLS is not None:
        logits_BHLS = logits_BHLS + bias_BHLS
    if mask_B1LS is not None:
        logits_BHLS = jnp.where(mask_B1LS, logits_BHLS, jnp.finfo(jnp.float32).min)
    probs_BHLS = dropout(jax.nn.softmax(logits_BHLS, axis=-1))
    probs_BGRLS = probs_BHLS.reshape(B, G, H // G, L, -1).astype(v_BSGK.dtype)
    out_BLGRK = jnp.einsum("BGRLS,BSGK->BLGRK", probs_BGRLS, v_BSGK)
    return out_BLGRK.reshape(B, L, H, K)


def _use_cudnn(q_BLHK, bias_BHLS, mask_B1LS) -> bool:
    """cuDNN flash attention: on GPU, half precision, head size a multiple of 8 up to 128, no mask or bias
    arrays (pure causal or full attention). `implementation=None` would pick XLA's unfused attention,
    which stores the [B, H, L, S] probabilities of every layer for the backward pass."""
    return (
        jax.default_backend() == "gpu"
        and q_BLHK.dtype in (jnp.bfloat16, jnp.float16)
        and q_BLHK.shape[-1] % 8 == 0
        and q_BLHK.shape[-1] <= 128
        and bias_BHLS is None
        and mask_B1LS is None
    )
