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
