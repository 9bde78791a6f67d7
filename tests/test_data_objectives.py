"""Objectives: exact structure of every row and the exact statistics of the random choices.

Frequencies are checked against their exact expectation with a tolerance of 5 standard errors of the
number of trials actually drawn (a false alarm has probability < 1e-6; seeds are fixed anyway).
"""

import math

import numpy as np
import pytest
from scipy.special import comb

from chinchax.data import objectives as obj

SPECIAL = obj.SpecialTokens(
    vocab_size=361, pad_id=0, eos_id=1, bos_id=2, unk_id=3, mask_id=4, sentinel_ids=tuple(range(5, 105))
)


def tol(n: int, p: float) -> float:
    return 5.0 * math.sqrt(p * (1.0 - p) / n)


def packed_row(lengths, length, rng, first=105, last=361):
    """A packed row of random ordinary tokens with segments of the given lengths, then padding."""
    tokens = np.zeros(length, np.int32)
    segment_ids = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    start = 0
    for k, n in enumerate(lengths, start=1):
        tokens[start : start + n] = rng.integers(first, last, n)
        segment_ids[start : start + n] = k
        positions[start : start + n] = np.arange(n)
        start += n
    return tokens, segment_ids, positions


# --- causal LM -------------------------------------------------------------------------------------------


def test_causal_lm_shifts_inside_segments_and_weights_every_real_token():
    rng = np.random.default_rng(0)
    tokens, seg, pos = packed_row([5, 3, 4], 16, rng)
    row = obj.causal_lm(tokens, seg, pos, bos_id=SPECIAL.bos_id)
    np.testing.assert_array_equal(row["targets"], tokens)
    expected = np.concatenate([[2], tokens[0:4], [2], tokens[5:7], [2], tokens[8:11], [0, 0, 0, 0]])
    np.testing.assert_array_equal(row["inputs"], expected)
    np.testing.assert_array_equal(row["loss_weights"], (seg > 0).astype(np.float32))
    np.testing.assert_array_equal(row["segment_ids"], seg)
    np.testing.assert_array_equal(row["positions"], pos)
    assert {k: v.dtype for k, v in row.items()} == {
        "inputs": np.int32, "targets": np.int32, "loss_weights": np.float32,
        "segment_ids": np.int32, "positions": np.int32,
    }


def test_causal_lm_of_a_batch_equals_row_by_row():
    rng = np.random.default_rng(1)
    layouts = [[5, 3, 4], [16], [1, 1, 2], [7], [2, 9, 5]]  # with padding, a full row, one-token documents
    rows = [packed_row(lengths, 16, rng) for lengths in layouts]
    batch = obj.causal_lm_batch(*(np.stack(parts) for parts in zip(*rows, strict=True)), bos_id=SPECIAL.bos_id)
    for i, row in enumerate(rows):
        one = obj.causal_lm(*row, bos_id=SPECIAL.bos_id)
        for key, value in one.items():
            np.testing.assert_array_equal(batch[key][i], value)
            assert batch[key].dtype == value.dtype


# --- prefix LM -------------------------------------------------------------------------------------------


def test_prefix_lm_split_is_uniform_over_each_document_and_loss_only_on_suffix():
    rng = np.random.default_rng(1)
    lengths = [10, 4]
    tokens, seg, pos = packed_row(lengths, 16, rng)
    n_samples = 12000
    rows = [obj.prefix_lm(tokens, seg, pos, rng, bos_id=SPECIAL.bos_id) for _ in range(n_samples)]
    counts = {}
    for k, n in enumerate(lengths, start=1):
        in_seg = seg == k
        loss = np.stack([r["loss_weights"][in_seg] for r in rows]) > 0
        prefix = np.stack([r["prefix_mask"][in_seg] for r in rows])
        p = np.argmax(loss, axis=1)  # first loss position = split point
        np.testing.assert_array_equal(loss, np.arange(n)[None] >= p[:, None])
        np.testing.assert_array_equal(prefix, np.arange(n)[None] <= p[:, None])
        counts[n] = np.bincount(p, minlength=n + 1)
        for r, p_i in zip(rows[:200], p[:200], strict=True):
            # prefix positions only ever see prefix tokens: their inputs are BOS, t_0 .. t_{p-1}
            inputs = r["inputs"][in_seg][r["prefix_mask"][in_seg]]
            np.testing.assert_array_equal(inputs, np.concatenate([[2], tokens[in_seg][:p_i]]))
    for r in rows:
        assert not r["prefix_mask"][seg == 0].any() and not r["loss_weights"][seg == 0].any()
    for n in lengths:
        assert counts[n][0] == 0 and counts[n][n] == 0  # both sides always non-empty
        freq = counts[n][1:n] / n_samples
        assert np.all(np.abs(freq - 1 / (n - 1)) < tol(n_samples, 1 / (n - 1))), (n, freq)


def test_prefix_lm_with_one_token_document_is_plain_causal():
    tokens, seg, pos = packed_row([1, 3], 6, np.random.default_rng(2))
    row = obj.prefix_lm(tokens, seg, pos, np.random.default_rng(0), bos_id=2)
    assert not row["prefix_mask"][0] and row["loss_weights"][0] == 1.0


def test_split_prefix_for_encoder_decoder_keeps_every_token_once():
    rng = np.random.default_rng(3)
    tokens = np.arange(100, 108)
    seen = np.zeros(9, int)
    for _ in range(7000):
        enc, dec = obj.split_prefix(tokens, rng)
        np.testing.assert_array_equal(np.concatenate([enc, dec]), tokens)
        seen[len(enc)] += 1
    assert seen[0] == 0 and seen[8] == 0
    freq = seen[1:8] / 7000
    assert np.all(np.abs(freq - 1 / 7) < tol(7000, 1 / 7))


def test_encoder_decoder_example_shifts_decoder_per_segment():
    packed = {
        "encoder_inputs": np.array([11, 12, 13, 21, 0], np.int32),
        "encoder_inputs_segment_ids": np.array([1, 1, 1, 2, 0], np.int32),
        "encoder_inputs_positions": np.array([0, 1, 2, 0, 0], np.int32),
        "targets": np.array([14, 15, 22, 23, 0, 0], np.int32),
        "targets_segment_ids": np.array([1, 1, 2, 2, 0, 0], np.int32),
        "targets_positions": np.array([0, 1, 0, 1, 0, 0], np.int32),
    }
    row = obj.encoder_decoder_example(packed, bos_id=2)
    np.testing.assert_array_equal(row["inputs"], [2, 14, 2, 22, 0, 0])
    np.testing.assert_array_equal(row["loss_weights"], [1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(row["encoder_segment_ids"], [1, 1, 1, 2, 0])


# --- span corruption -------------------------------------------------------------------------------------


def test_span_corruption_lengths_match_t5_random_spans_helper():
    # T5's published setting: 512 encoder tokens <- raw windows of 568, targets 114.
    assert obj.span_corruption_raw_length(512, 114, 0.15, 3.0) == 568
    assert obj.span_corruption_lengths(568, 0.15, 3.0) == (512, 114)
    # the raw length is the LONGEST that fits
    raw = obj.span_corruption_raw_length(256, None, 0.15, 3.0)
    assert sum(obj.span_corruption_lengths(raw, 0.15, 3.0)) <= 256
    assert sum(obj.span_corruption_lengths(raw + 1, 0.15, 3.0)) > 256


def test_noise_mask_has_exact_density_and_span_count_and_t5_layout():
    rng = np.random.default_rng(4)
    for length in (20, 57, 100, 568):
        n_noise, n_spans = round(length * 0.15), max(round(round(length * 0.15) / 3.0), 1)
        for _ in range(50):
            mask = obj.random_spans_noise_mask(length, 0.15, 3.0, rng)
            assert mask.shape == (length,) and mask.sum() == n_noise
            runs = np.flatnonzero(np.diff(mask.astype(int)) == 1).size + int(mask[0])
            assert runs == n_spans
            assert not mask[0] and mask[-1]  # T5: starts with non-noise, ends with noise


def test_noise_span_lengths_follow_uniform_random_segmentation():
    # 100 tokens -> 15 noise tokens in 5 spans. Every composition of 15 into 5 positive parts is equally
    # likely, so one span has length j with probability C(15-j-1, 3) / C(14, 4); the mean is exactly 3.
    rng = np.random.default_rng(5)
    lengths = []
    for _ in range(3000):
        mask = obj.random_spans_noise_mask(100, 0.15, 3.0, rng)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
        lengths.extend(edges[1::2] - edges[0::2])
    lengths = np.array(lengths)
    assert len(lengths) == 3000 * 5 and lengths.mean() == 3.0
    for j in range(1, 12):
        p = comb(15 - j - 1, 3) / comb(14, 4)
        assert abs(np.mean(lengths == j) - p) < tol(len(lengths), p), j


def test_random_segmentation_draws_every_composition_equally():
    rng = np.random.default_rng(6)
    draws = [tuple(obj.random_segmentation(5, 3, rng)) for _ in range(12000)]
    compositions = {(a, b, 5 - a - b) for a in range(1, 4) for b in range(1, 4) if 5 - a - b >= 1}
    assert set(draws) == compositions and len(compositions) == 6
    for c in compositions:
        assert abs(draws.count(c) / 12000 - 1 / 6) < tol(12000, 1 / 6)


def test_corrupted_inputs_and_targets_reconstruct_the_window():
    rng = np.random.default_rng(7)
    sentinels = SPECIAL.sentinel_ids
    for length in (30, 568):
        window = rng.integers(105, 361, length).astype(np.int32)
        inputs, targets = obj.span_corruption(
            window, rng, noise_density=0.15, mean_noise_span_length=3.0, sentinel_ids=sentinels, eos_id=1
        )
        assert (len(inputs), len(targets)) == obj.span_corruption_lengths(length, 0.15, 3.0)
        assert inputs[-1] == 1 and targets[-1] == 1
        used = [t for t in inputs if t in sentinels]
        assert used == list(sentinels[: len(used)])  # sentinels in order, <extra_id_0> first
        assert [t for t in targets if t in sentinels] == used and targets[0] == sentinels[0]
        # replace each sentinel of the inputs by the target span it stands for
        spans, current = {}, None
        for t in targets[:-1]:
            if t in sentinels:
                current = t
                spans[current] = []
            else:
                spans[current].append(t)
        rebuilt = [x for t in inputs[:-1] for x in (spans[t] if t in sentinels else [t])]
        np.testing.assert_array_equal(rebuilt, window)


def test_too_many_spans_for_the_sentinels_is_an_error():
    window = np.arange(105, 305)
    with pytest.raises(ValueError, match="sentinel"):
        obj.span_corruption(window, np.random.default_rng(0), noise_density=0.5, mean_noise_span_length=1.0,
                            sentinel_ids=(5, 6, 7), eos_id=1)


def test_decoder_prefix_row_for_span_corruption_on_decoders():
    prefix, suffix = np.array([11, 12, 5, 1]), np.array([5, 13, 1])
    row = obj.decoder_prefix_row(prefix, suffix, 10, bos_id=2)
    np.testing.assert_array_equal(row["targets"], [11, 12, 5, 1, 5, 13, 1, 0, 0, 0])
    np.testing.assert_array_equal(row["inputs"], [2, 11, 12, 5, 1, 5, 13, 0, 0, 0])
    np.testing.assert_array_equal(row["prefix_mask"], [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(row["loss_weights"], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])


# --- masked LM -------------------------------------------------------------------------------------------


def test_masked_lm_chooses_15_percent_and_replaces_80_10_10():
    rng = np.random.default_rng(8)
    tokens, seg, pos = packed_row([200, 150, 100], 512, rng)
    tokens[[199, 349, 449]] = SPECIAL.eos_id  # document ends: never chosen
    candidates = (seg > 0) & (tokens != SPECIAL.eos_id)
    n_rows = 300
    chosen_total = masked = randomized = kept = 0
    for _ in range(n_rows):
        row = obj.masked_lm(tokens, seg, pos, rng, special=SPECIAL, mlm_probability=0.15)
        chosen = row["loss_weights"] > 0
        inputs = row["inputs"]
        assert not chosen[~candidates].any()
        np.testing.assert_array_equal(row["targets"], tokens)
        np.testing.assert_array_equal(inputs[~chosen], tokens[~chosen])  # unchosen never change
        assert not np.isin(inputs[chosen & (inputs != SPECIAL.mask_id)], SPECIAL.special_ids).any()
        chosen_total += chosen.sum()
        masked += (inputs[chosen] == SPECIAL.mask_id).sum()
        randomized += ((inputs[chosen] != SPECIAL.mask_id) & (inputs[chosen] != tokens[chosen])).sum()
        kept += (inputs[chosen] == tokens[chosen]).sum()
    n_candidates = n_rows * candidates.sum()
    assert abs(chosen_total / n_candidates - 0.15) < tol(n_candidates, 0.15)
    n_regular = len(SPECIAL.regular_ids)
    # a random replacement equals the original with probability 1 / n_regular
    expected = {"mask": 0.8, "random": 0.1 * (1 - 1 / n_regular), "kept": 0.1 + 0.1 / n_regular}
    observed = {"mask": masked, "random": randomized, "kept": kept}
    for key, p in expected.items():
        assert abs(observed[key] / chosen_total - p) < tol(chosen_total, p), (key, observed[key] / chosen_total)


def test_special_tokens_partition_the_vocabulary():
    assert len(SPECIAL.special_ids) == 105
    assert len(SPECIAL.regular_ids) == 361 - 105
    assert SPECIAL.regular_ids.min() == 105
