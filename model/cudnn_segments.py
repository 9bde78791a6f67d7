"""Packed and padded rows for cuDNN's fused attention on GPU.

Packed rows number their documents 1, 2, ... in `segment_ids` (0 = padding, always at the end of a row:
data/packing.py). XLA's attention takes that as a [B, 1, L, S] mask and, on GPU, falls back to the unfused
path that keeps every [B, H, L, S] probability for the backward pass. cuDNN's flash attention instead takes
the row's layout: for each row the start (`offsets`) and length (`seqlens`) of at most M segments, padded
with -1 (jax's `cudnn.fused_attention_stablehlo.dot_product_attention`, the function behind
`jax.nn.dot_product_attention(implementation="cudnn")`, which exposes only padding, not packing). M must
be static, as MaxText's `max_segments_per_seq`; `check_segments_fit` is the host-side guard that a batch
does not hold more (a row with more segments than M would silently lose the extra ones).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def segment_layout(segment_ids_BL: jax.Array, max_segments: int) -> tuple[jax.Array, jax.Array]:
    """Segment ids [B, L] -> (seqlens [B, M], offsets [B, M + 1]), int32, unused slots -1.

    A segment is a maximal run of one non-zero id; padding (0) belongs to none."""
    ids_BL = segment_ids_BL.astype(jnp.int32)
    edge_B1 = jnp.full((ids_BL.shape[0], 1), -1, jnp.int32)
    prev_BL = jnp.concatenate([edge_B1, ids_BL[:, :-1]], axis=1)
    next_BL = jnp.concatenate([ids_BL[:, 1:], edge_B1], axis=1)
    real_BL = ids_BL != 0
    first_M = jax.vmap(lambda row: jnp.nonzero(row, size=max_segments, fill_value=-1)[0])
    starts_BM = first_M(real_BL & (ids_BL != prev_BL)).astype(jnp.int32)
    ends_BM = first_M(real_BL & (ids_BL != next_BL)).astype(jnp.int32)
    seqlens_BM = jnp.where(starts_BM >= 0, ends_BM - starts_BM + 1, -1)
    offsets_BM1 = jnp.concatenate([starts_BM, edge_B1], axis=1)
    return seqlens_BM, offsets_BM1


def count_segments(segment_ids_BL: np.ndarray) -> int:
    """The most segments any row of a host batch holds."""
    ids_BL = np.asarray(segment_ids_BL)
    starts_BL = (ids_BL != 0) & (ids_BL != np.pad(ids_BL[:, :-1], ((0, 0), (1, 0)), constant_values=-1))
    return int(starts_BL.sum(axis=1).max(initial=0))


def check_segments_fit(segment_ids_BL: np.ndarray, max_segments: int, *, key: str = "segment_ids") -> None:
    n = count_segments(segment_ids_BL)
    if n > max_segments:
        raise ValueError(
            f"a row of the batch's {key} holds {n} segments, more than model.attention_max_segments="
            f"{max_segments} that cuDNN's packed attention was compiled for: raise it to at least {n}, "
            "or set it to 0 to use XLA's (unfused) attention for packed batches"
        )


def cudnn_segment_attention(
    q_BLHK: jax.Array,
    k_BSGK: jax.Array,
    v_BSGK: jax.Array,
    *,
    q_segment_ids_BL: jax.Array,
    kv_segment_ids_BS: jax.Array,
    max_segments: int,
    scale: float,
    is_causal: bool,
) -> jax.Array:
    """cuDNN flash attention within segments (GPU, half precision). Outputs at padding positions are
    zeros (XLA's path lets padding attend to padding instead); no loss is taken there."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention

    q_seqlens_BM, q_offsets_BM1 = segment_layout(q_segment_ids_BL, max_segments)
    kv_seqlens_BM, kv_offsets_BM1 = segment_layout(kv_segment_ids_BS, max_segments)
    return dot_product_attention(
        q_BLHK,
        k_BSGK,
        v_BSGK,
        None,
        None,
        q_seqlens_BM,
        kv_seqlens_BM,
        q_offsets_BM1,
        kv_offsets_BM1,
        scale=scale,
        mask_type=MaskType.PADDING_CAUSAL if is_causal else MaskType.PADDING,
        qkv_layout="BTNH",
    )


def layout_mask(seqlens_BM: jax.Array, offsets_BM1: jax.Array, L: int, S: int, *, causal: bool) -> jax.Array:
    """The [B, 1, L, S] boolean mask a (seqlens, offsets) layout means, query segment i seeing key segment
    i only (with positions counted from each segment's start when causal): what cuDNN computes, written
    out so the layout can be checked against `segment_mask` on any backend."""
    pos_L, pos_S = jnp.arange(L), jnp.arange(S)
    starts_BM, lens_BM = offsets_BM1[:, :-1], seqlens_BM
    used_BM = starts_BM >= 0
    in_q_BML = used_BM[..., None] & (pos_L >= starts_BM[..., None]) & (pos_L < (starts_BM + lens_BM)[..., None])
    in_k_BMS = used_BM[..., None] & (pos_S >= starts_BM[..., None]) & (pos_S < (starts_BM + lens_BM)[..., None])
    mask_BLS = jnp.einsum("BML,BMS->BLS", in_q_BML.astype(jnp.int32), in_k_BMS.astype(jnp.int32)) > 0
    if causal:
        mask_BLS = mask_BLS & (pos_L[:, None] >= pos_S[None, :])
    return mask_BLS[:, None]
