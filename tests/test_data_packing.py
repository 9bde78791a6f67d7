"""Packing: rows keep every token, segment ids / positions mark documents exactly, state round-trips."""

import grain
import numpy as np
import pytest
from grain import experimental as grain_exp

from chinchax.data import packing as pk


def make_docs(lengths, seed=0):
    """Document d holds tokens 1000*(d+1) + 0..n-1, so every token names its document and offset."""
    return [np.arange(n, dtype=np.int32) + 1000 * (d + 1) for d, n in enumerate(lengths)]


def token_ds(docs):
    return grain.MapDataset.source(docs).to_iter_dataset()


def segments(row):
    """The token arrays of the segments of a packed row, in order."""
    seg = row["segment_ids"]
    return [row["tokens"][seg == k] for k in range(1, seg.max() + 1)]


def check_row(row, length):
    seg, pos, tokens = row["segment_ids"], row["positions"], row["tokens"]
    assert seg.shape == pos.shape == tokens.shape == (length,)
    real = seg > 0
    # segments are numbered 1.. in order, contiguous, padding only at the end
    assert np.all(np.diff(seg[real]) >= 0) and np.all(np.diff(seg[real]) <= 1) and (not real.any() or seg[0] == 1)
    if not real.all():
        assert not real[np.argmin(real) :].any()
    for k in range(1, seg.max() + 1):
        np.testing.assert_array_equal(pos[seg == k], np.arange((seg == k).sum()))
        # a segment is a contiguous run of ONE document
        assert len(np.unique(tokens[seg == k] // 1000)) == 1
        assert np.all(np.diff(tokens[seg == k]) == 1)
    assert np.all(tokens[~real] == 0) and np.all(pos[~real] == 0)


LENGTHS = [5, 17, 3, 30, 8, 1, 12, 16, 2, 40, 7, 9, 11, 4, 6]


def test_concat_then_split_keeps_the_stream_in_order_without_padding():
    docs = make_docs(LENGTHS)
    rows = list(pk.pack_tokens(token_ds(docs), length=16, packing="concat"))
    for row in rows:
        check_row(row, 16)
    stream = np.concatenate([row["tokens"][row["segment_ids"] > 0] for row in rows])
    np.testing.assert_array_equal(stream, np.concatenate(docs))
    assert all((row["segment_ids"] > 0).all() for row in rows[:-1])  # only the last row is padded


def test_first_fit_keeps_documents_whole_and_splits_only_long_ones():
    docs = make_docs(LENGTHS)
    rows = list(pk.pack_tokens(token_ds(docs), length=16, packing="first_fit", num_bins=4, seed=3))
    pieces = []
    for row in rows:
        check_row(row, 16)
        pieces.extend(segments(row))
    expected = [d[i : i + 16] for d in docs for i in range(0, len(d), 16)]
    key = lambda a: (int(a[0]), len(a))  # noqa: E731
    assert sorted(map(key, pieces)) == sorted(map(key, expected))  # each piece exactly once, whole
    # documents that fit a row are never split
    for d, n in enumerate(LENGTHS):
        if n <= 16:
            assert sum(1 for p in pieces if p[0] // 1000 == d + 1) == 1
    assert len(rows) < len(expected)  # it did pack several documents per row


def test_first_fit_is_deterministic_and_its_seed_shuffles_bins():
    docs = make_docs(LENGTHS)
    run = lambda seed: [r["tokens"].tolist() for r in pk.pack_tokens(  # noqa: E731
        token_ds(docs), length=16, packing="first_fit", num_bins=4, seed=seed)]
    assert run(1) == run(1)
    assert run(1) != run(2) and sorted(run(1)) == sorted(run(2))


def test_no_packing_puts_one_document_piece_per_row():
    docs = make_docs(LENGTHS)
    rows = list(pk.pack_tokens(token_ds(docs), length=16, packing="none"))
    assert len(rows) == sum(-(-n // 16) for n in LENGTHS)
    for row in rows:
        check_row(row, 16)
        assert row["segment_ids"].max() == 1


def test_pack_pairs_aligns_encoder_and_decoder_segments():
    rng = np.random.default_rng(0)
    pairs = []
    for d in range(40):
        pairs.append({
            "encoder_inputs": np.full(rng.integers(1, 9), d + 1, np.int32),
            "targets": np.full(rng.integers(1, 5), 100 + d + 1, np.int32),
        })
    ds = grain.MapDataset.source(pairs).to_iter_dataset()
    rows = list(pk.pack_pairs(ds, encoder_length=12, decoder_length=8, packing="first_fit", num_bins=3))
    seen = []
    for row in rows:
        enc_seg, dec_seg = row["encoder_inputs_segment_ids"], row["targets_segment_ids"]
        assert enc_seg.max() == dec_seg.max()
        for k in range(1, enc_seg.max() + 1):
            enc = row["encoder_inputs"][enc_seg == k]
            dec = row["targets"][dec_seg == k]
            assert len(set(enc)) == 1 and set(dec) == {enc[0] + 100}  # the pair stayed together
            np.testing.assert_array_equal(row["targets_positions"][dec_seg == k], np.arange(len(dec)))
            seen.append(int(enc[0]))
    assert sorted(seen) == list(range(1, 41))


def test_concat_windows_cut_the_stream_into_exact_windows():
    docs = make_docs(LENGTHS)
    windows = list(pk.concat_windows(token_ds(docs), 10))
    assert all(len(w) == 10 for w in windows[:-1]) and 0 < len(windows[-1]) <= 10
    np.testing.assert_array_equal(np.concatenate(windows), np.concatenate(docs))


@pytest.mark.parametrize("packing", ["concat", "first_fit", "none"])
def test_packer_state_restores_exactly(packing):
    docs = make_docs(LENGTHS * 3)
    ds = pk.pack_tokens(token_ds(docs), length=16, packing=packing, num_bins=4, seed=5)
    grain_exp.assert_equal_output_after_checkpoint(ds)
