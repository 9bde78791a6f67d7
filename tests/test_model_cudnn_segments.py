"""cuDNN's packed-attention layout (model/cudnn_segments.py), checked on CPU: the (seqlens, offsets) a batch
of packed rows turns into must mean exactly the model's segment mask on every non-padding query."""

import numpy as np
import pytest

from chinchax.model.attention import attention_mask
from chinchax.model.cudnn_segments import check_segments_fit, count_segments, layout_mask, segment_layout


def packed_rows(rng, B, L, max_docs):
    rows = np.zeros((B, L), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, L + 1), size=rng.integers(1, max_docs + 1), replace=False))
        start = 0
        for i, end in enumerate(cuts[:-1] if rng.random() < 0.5 else cuts, start=1):  # some rows end padded
            rows[b, start:end] = i
            start = end
    return rows


@pytest.mark.parametrize("causal", [True, False])
def test_layout_means_the_segment_mask(causal):
    rng = np.random.default_rng(0)
    ids_BL = packed_rows(rng, B=16, L=24, max_docs=6)
    seqlens_BM, offsets_BM1 = segment_layout(ids_BL, max_segments=6)
    got_B1LS = np.asarray(layout_mask(seqlens_BM, offsets_BM1, 24, 24, causal=causal))
    want_B1LS = np.asarray(attention_mask(ids_BL, ids_BL, causal=causal))
    real_BL = ids_BL != 0
    # padded queries: the model lets them see padding (no empty softmax row); cuDNN zeroes them. No loss there.
    np.testing.assert_array_equal(got_B1LS[:, 0][real_BL], want_B1LS[:, 0][real_BL])
    assert not got_B1LS[:, 0][~real_BL].any()


def test_layout_values_and_unused_slots():
    ids_BL = np.array([[1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], np.int32)
    seqlens_BM, offsets_BM1 = segment_layout(ids_BL, max_segments=3)
    np.testing.assert_array_equal(np.asarray(seqlens_BM), [[2, 3, -1], [6, -1, -1], [-1, -1, -1]])
    np.testing.assert_array_equal(np.asarray(offsets_BM1), [[0, 2, -1, -1], [0, -1, -1, -1], [-1] * 4])
    assert np.asarray(seqlens_BM).dtype == np.int32 and np.asarray(offsets_BM1).dtype == np.int32


def test_too_many_segments_is_refused_on_the_host():
    ids_BL = np.array([[1, 2, 3, 4, 0, 0], [1, 1, 1, 2, 2, 0]], np.int32)
    assert count_segments(ids_BL) == 4
    check_segments_fit(ids_BL, 4)
    with pytest.raises(ValueError, match=r"holds 4 segments.*attention_max_segments=3.*at least 4"):
        check_segments_fit(ids_BL, 3)
    # what the guard prevents: a layout of M=3 silently drops the fourth document
    seqlens_BM, _ = segment_layout(ids_BL, max_segments=3)
    assert np.asarray(seqlens_BM)[0].tolist() == [1, 1, 1]


@pytest.mark.parametrize("variant", ["decoder_only", "encoder_only"])
def test_model_hands_packed_rows_to_the_segment_kernel(monkeypatch, variant):
    """With model.attention_max_segments, packed rows reach the fused kernel as segment ids (not a mask).
    cuDNN cannot run on CPU: a stand-in computes what it computes (attention under the layout's mask), and
    the model's outputs must equal the masked XLA path's on every real token."""
    import jax
    from flax import nnx

    from chinchax.model import attention
    from chinchax.model.config import ModelConfig
    from chinchax.model.transformer import Transformer

    calls = []

    def stand_in(q, k, v, *, q_segment_ids_BL, kv_segment_ids_BS, max_segments, scale, is_causal):
        calls.append(is_causal)
        seqlens, offsets = segment_layout(q_segment_ids_BL, max_segments)
        mask = layout_mask(seqlens, offsets, q.shape[1], k.shape[1], causal=is_causal)
        return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=scale)

    monkeypatch.setattr(attention, "_use_cudnn", lambda *args: True)
    monkeypatch.setattr(attention, "cudnn_segment_attention", stand_in)
    attn = "causal" if variant == "decoder_only" else "bidirectional"
    cfg = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=24, variant=variant,
                      attention=attn, position="rope", norm="rmsnorm")  # fmt: skip
    rng = np.random.default_rng(1)
    ids_BL = packed_rows(rng, B=4, L=24, max_docs=4)
    positions_BL = np.zeros_like(ids_BL)
    for b in range(4):
        for s in set(ids_BL[b].tolist()):
            positions_BL[b, ids_BL[b] == s] = np.arange((ids_BL[b] == s).sum())
    tokens_BL = rng.integers(1, 64, (4, 24)).astype(np.int32)
    fused = Transformer(cfg.replace(attention_max_segments=4), rngs=nnx.Rngs(0))
    masked = Transformer(cfg, rngs=nnx.Rngs(0))
    got = fused(tokens_BL, segment_ids=ids_BL, positions=positions_BL)
    assert calls and all(c == (variant == "decoder_only") for c in calls)
    n_calls = len(calls)
    monkeypatch.setattr(attention, "_use_cudnn", lambda *args: False)  # the reference: XLA with the mask
    want = masked(tokens_BL, segment_ids=ids_BL, positions=positions_BL)
    assert len(calls) == n_calls
    real_BL = ids_BL != 0
    np.testing.assert_allclose(np.asarray(got)[real_BL], np.asarray(want)[real_BL], atol=1e-5, rtol=1e-5)
