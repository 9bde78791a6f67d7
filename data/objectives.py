"""Pretraining objectives: token ids -> the batch keys of docs/interfaces.md. Pure NumPy, one row at a time.

Every function takes an explicit `np.random.Generator` (the pipeline hands grain's per-element generator),
so a row's randomness depends only on the seed and the row's index: that is what makes resume exact.

Decoder rows are packed first (segment_ids 1.. per document, 0 = padding; positions restart per document)
and then turned into examples segment by segment:
  - causal LM: targets = the tokens, inputs = the tokens shifted right by one INSIDE each segment with
    `bos_id` as the start token, loss on every real token (the first token is predicted from BOS), or,
    with per-token weights (data.loss_on=targets), on the tokens of weight 1 only.
  - prefix LM: per segment of n tokens a split point p uniform over {1, ..., n-1} (T5/UL2); the first p
    tokens are the bidirectional prefix, the loss covers the n - p tokens after it. Because inputs are
    shifted right, the last prefix token sits at input position p, so `prefix_mask` is True on positions
    0..p (p + 1 of them, as seqio's PrefixLM converter does) and `loss_weights` on positions p..n-1.
    Position p's target is the first suffix token, which no prefix position can see.
Encoder-decoder examples are made per document and packed afterwards (see `encoder_decoder_example`).
Span corruption follows T5's `random_spans_noise_mask` / `random_spans_helper` (no random roll, so the
corrupted lengths are exact); masked LM follows BERT (80% mask token, 10% random token, 10% unchanged).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """The ids objectives need; built from any chinchax tokenizer with `from_tokenizer`."""

    vocab_size: int
    pad_id: int
    eos_id: int
    bos_id: int
    unk_id: int
    mask_id: int | None  # None: the tokenizer has no mask token (a loaded tokenizer.json such as GPT-2's)
    sentinel_ids: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer) -> SpecialTokens:
        return cls(
            vocab_size=int(tokenizer.vocab_size),
            pad_id=int(tokenizer.pad_id),
            eos_id=int(tokenizer.eos_id),
            bos_id=int(tokenizer.bos_id),
            unk_id=int(tokenizer.unk_id),
            mask_id=None if tokenizer.mask_id is None else int(tokenizer.mask_id),
            sentinel_ids=tuple(int(i) for i in tokenizer.sentinel_ids),
        )

    @functools.cached_property
    def special_ids(self) -> np.ndarray:
        ids = [self.pad_id, self.eos_id, self.bos_id, self.unk_id, self.mask_id, *self.sentinel_ids]
        ids = [i for i in ids if i is not None]
        return np.unique(np.asarray(ids, dtype=np.int32))

    @functools.cached_property
    def regular_ids(self) -> np.ndarray:
        """Ids of ordinary tokens: what BERT's 10% random replacement draws from."""
        return np.setdiff1d(np.arange(self.vocab_size, dtype=np.int32), self.special_ids)


# --- helpers on packed rows ------------------------------------------------------------------------------


def shift_right_by_segment(tokens_L: np.ndarray, segment_ids_L: np.ndarray, start_id: int) -> np.ndarray:
    """Decoder inputs: each segment's tokens shifted right by one, starting with `start_id`; padding -> 0."""
    inputs_L = np.empty_like(tokens_L)
    inputs_L[0] = start_id
    inputs_L[1:] = tokens_L[:-1]
    starts = np.ones_like(segment_ids_L, dtype=bool)
    starts[1:] = segment_ids_L[1:] != segment_ids_L[:-1]
    inputs_L[starts] = start_id
    inputs_L[segment_ids_L == 0] = 0
    return inputs_L


def segment_lengths(segment_ids_L: np.ndarray) -> np.ndarray:
    """Lengths of segments 1..K (index k-1 holds segment k)."""
    return np.bincount(segment_ids_L, minlength=1)[1:]


def _row(tokens_L, segment_ids_L, positions_L, inputs_L, loss_L) -> Batch:
    return {
        "inputs": inputs_L.astype(np.int32),
        "targets": tokens_L.astype(np.int32),
        "loss_weights": loss_L.astype(np.float32),
        "segment_ids": segment_ids_L.astype(np.int32),
        "positions": positions_L.astype(np.int32),
    }


# --- causal LM and prefix LM (decoders) ------------------------------------------------------------------


def causal_lm(tokens_L, segment_ids_L, positions_L, *, bos_id: int) -> Batch:
    inputs_L = shift_right_by_segment(tokens_L, segment_ids_L, bos_id)
    return _row(tokens_L, segment_ids_L, positions_L, inputs_L, segment_ids_L > 0)


def causal_lm_batch(tokens_BL, segment_ids_BL, positions_BL, *, bos_id: int, token_weights_BL=None) -> Batch:
    """causal_lm of every row of a batch at once (the same arrays as row by row, in a few numpy calls).

    `token_weights_BL` (data.loss_on=targets): 0/1 per token; the loss counts a position when its target
    (the token itself: inputs are the shifted ones) has weight 1. None: every real token."""
    inputs_BL = np.empty_like(tokens_BL)
    inputs_BL[:, 0] = bos_id
    inputs_BL[:, 1:] = tokens_BL[:, :-1]
    starts_BL = np.ones_like(segment_ids_BL, dtype=bool)
    starts_BL[:, 1:] = segment_ids_BL[:, 1:] != segment_ids_BL[:, :-1]
    inputs_BL[starts_BL] = bos_id
    inputs_BL[segment_ids_BL == 0] = 0
    loss_BL = segment_ids_BL > 0
    if token_weights_BL is not None:
        loss_BL &= token_weights_BL > 0
    return _row(tokens_BL, segment_ids_BL, positions_BL, inputs_BL, loss_BL)


def prefix_lm_with_split(tokens_L, segment_ids_L, positions_L, prefix_lengths_K, *, bos_id: int) -> Batch:
    """Decoder prefix LM with given prefix lengths per segment (0 = no prefix, plain causal LM)."""
    prefix_lengths_K = np.asarray(prefix_lengths_K)
    real_L = segment_ids_L > 0
    p_L = np.where(real_L, prefix_lengths_K[np.maximum(segment_ids_L, 1) - 1], 0)
    prefix_mask_L = real_L & (p_L > 0) & (positions_L <= p_L)
    loss_L = real_L & (positions_L >= p_L)
    row = _row(tokens_L, segment_ids_L, positions_L, shift_right_by_segment(tokens_L, segment_ids_L, bos_id), loss_L)
    row["prefix_mask"] = prefix_mask_L
    return row


def random_prefix_lengths(lengths_K: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A split point uniform over {1, ..., n-1} per document of n tokens (0 for n < 2: nothing to split)."""
    lengths_K = np.asarray(lengths_K, dtype=np.int64)
    p_K = rng.integers(1, np.maximum(lengths_K, 2))
    return np.where(lengths_K >= 2, p_K, 0)


def prefix_lm(tokens_L, segment_ids_L, positions_L, rng: np.random.Generator, *, bos_id: int) -> Batch:
    p_K = random_prefix_lengths(segment_lengths(segment_ids_L), rng)
    return prefix_lm_with_split(tokens_L, segment_ids_L, positions_L, p_K, bos_id=bos_id)


def split_prefix(tokens_n: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Encoder-decoder prefix LM: (encoder tokens, decoder targets) of one document, n >= 2."""
    (p,) = random_prefix_lengths(np.array([len(tokens_n)]), rng)
    return tokens_n[:p], tokens_n[p:]


# --- encoder-decoder rows --------------------------------------------------------------------------------


def encoder_decoder_example(packed: Batch, *, bos_id: int) -> Batch:
    """Packed pairs {encoder_inputs, targets} (+ grain's *_segment_ids / *_positions) -> batch keys.

    Segment k of the decoder belongs to segment k of the encoder (the packer numbers both sides alike).
    """
    targets_L, segment_ids_L = packed["targets"], packed["targets_segment_ids"]
    row = _row(
        targets_L,
        segment_ids_L,
        packed["targets_positions"],
        shift_right_by_segment(targets_L, segment_ids_L, bos_id),
        segment_ids_L > 0,
    )
    row["encoder_inputs"] = packed["encoder_inputs"].astype(np.int32)
    row["encoder_segment_ids"] = packed["encoder_inputs_segment_ids"].astype(np.int32)
    row["encoder_positions"] = packed["encoder_inputs_positions"].astype(np.int32)
    return row


# --- span corruption (T5) --------------------------------------------------------------------------------


def span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window, exactly as T5's random_spans_noise_mask computes them."""
    num_noise_tokens = int(round(length * noise_density))
    num_noise_tokens = min(max(num_noise_tokens, 1), length - 1)
    num_noise_spans = max(int(round(num_noise_tokens / mean_noise_span_length)), 1)
    return num_noise_tokens, num_noise_spans


def span_corruption_lengths(raw_length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(inputs length, targets length), both with their EOS, of a corrupted window of `raw_length` tokens."""
    num_noise, num_spans = span_counts(raw_length, noise_density, mean_noise_span_length)
    inputs_length = (raw_length - num_noise) + num_spans + 1  # one sentinel per span, EOS
    targets_length = num_noise + num_spans + 1
    return inputs_length, targets_length


def span_corruption_raw_length(
    max_inputs_length: int, max_targets_length: int | None, noise_density: float, mean_noise_span_length: float
) -> int:
    """Longest raw window whose corrupted inputs (and targets) fit (T5's random_spans_helper).

    `max_targets_length=None` means the inputs and targets share one sequence of `max_inputs_length`
    (span corruption for decoders: inputs and targets concatenated as a prefix-LM row).
    """

    def fits(raw: int) -> bool:
        inputs, targets = span_corruption_lengths(raw, noise_density, mean_noise_span_length)
        if max_targets_length is None:
            return inputs + targets <= max_inputs_length
        return inputs <= max_inputs_length and targets <= max_targets_length

    raw = 2
    if not fits(raw):
        raise ValueError(f"no window fits {max_inputs_length} input / {max_targets_length} target tokens")
    while fits(raw + 1):
        raw += 1
    return raw


def random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split `num_items` into `num_segments` positive lengths, every composition equally likely."""
    cuts = rng.choice(num_items - 1, size=num_segments - 1, replace=False) + 1
    edges = np.concatenate([[0], np.sort(cuts), [num_items]])
    return np.diff(edges)


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's noise mask: alternating non-noise / noise spans, starting with non-noise, ending with noise."""
    num_noise, num_spans = span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(num_noise, num_spans, rng)
    nonnoise_lengths = random_segmentation(length - num_noise, num_spans, rng)
    interleaved = np.stack([nonnoise_lengths, noise_lengths], axis=1).reshape(-1)
    is_noise = np.tile([False, True], num_spans)
    return np.repeat(is_noise, interleaved)


def corrupt_spans(
    tokens_n: np.ndarray, noise_mask_n: np.ndarray, sentinel_ids: Sequence[int], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs: each noise span -> one sentinel; targets: sentinel_i + span i, for every span. Both + EOS."""
    starts = noise_mask_n.copy()
    starts[1:] &= ~noise_mask_n[:-1]
    span_index_n = np.cumsum(starts) - 1
    if span_index_n[-1] >= len(sentinel_ids):
        raise ValueError(f"{span_index_n[-1] + 1} noise spans but only {len(sentinel_ids)} sentinel ids")
    sentinels = np.asarray(sentinel_ids, dtype=tokens_n.dtype)
    with_sentinels_n = np.where(starts, sentinels[np.maximum(span_index_n, 0)], tokens_n)
    eos = np.array([eos_id], dtype=tokens_n.dtype)
    # Inputs keep non-noise tokens and the first position of each noise span (now its sentinel).
    inputs = np.concatenate([with_sentinels_n[~noise_mask_n | starts], eos])
    # Targets: at each span start the sentinel followed by the span's tokens.
    noise_tokens = tokens_n[noise_mask_n]
    noise_starts = starts[noise_mask_n]
    targets = np.empty(len(noise_tokens) + int(noise_starts.sum()), dtype=tokens_n.dtype)
    out_positions = np.arange(len(noise_tokens)) + np.cumsum(noise_starts)
    targets[out_positions] = noise_tokens
    targets[out_positions[noise_starts] - 1] = sentinels[: int(noise_starts.sum())]
    return inputs, np.concatenate([targets, eos])


def span_corruption(
    tokens_n: np.ndarray,
    rng: np.random.Generator,
    *,
    noise_density: float,
    mean_noise_span_length: float,
    sentinel_ids: Sequence[int],
    eos_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    mask_n = random_spans_noise_mask(len(tokens_n), noise_density, mean_noise_span_length, rng)
    return corrupt_spans(tokens_n, mask_n, sentinel_ids, eos_id)


def decoder_prefix_row(prefix: np.ndarray, suffix: np.ndarray, length: int, *, bos_id: int) -> Batch:
    """One prefix-LM decoder row (prefix + suffix, one segment, padded): span corruption for decoders."""
    n = len(prefix) + len(suffix)
    if n > length:
        raise ValueError(f"prefix {len(prefix)} + suffix {len(suffix)} tokens exceed the row of {length}")
    tokens_L = np.zeros(length, np.int32)
    tokens_L[:n] = np.concatenate([prefix, suffix])
    segment_ids_L = (np.arange(length) < n).astype(np.int32)
    positions_L = np.where(segment_ids_L > 0, np.arange(length), 0).astype(np.int32)
    return prefix_lm_with_split(tokens_L, segment_ids_L, positions_L, np.array([len(prefix)]), bos_id=bos_id)


def pad_row(tokens_n: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A single sequence as a one-segment packed row: (tokens, segment_ids, positions), each [length]."""
    n = len(tokens_n)
    if n > length:
        raise ValueError(f"{n} tokens do not fit a row of {length}")
    tokens_L = np.zeros(length, np.int32)
    tokens_L[:n] = tokens_n
    segment_ids_L = (np.arange(length) < n).astype(np.int32)
    positions_L = np.where(segment_ids_L > 0, np.arange(length), 0).astype(np.int32)
    return tokens_L, segment_ids_L, positions_L


# --- masked LM (BERT) ------------------------------------------------------------------------------------


def masked_lm(
    tokens_L,
    segment_ids_L,
    positions_L,
    rng: np.random.Generator,
    *,
    special: SpecialTokens,
    mlm_probability: float = 0.15,
) -> Batch:
    """Each ordinary token is chosen with `mlm_probability`; chosen: 80% mask, 10% random, 10% kept.

    Padding and special tokens (EOS between documents, ...) are never chosen. The loss counts only the
    chosen positions; targets are the original tokens.
    """
    candidates_L = (segment_ids_L > 0) & ~np.isin(tokens_L, special.special_ids)
    chosen_L = candidates_L & (rng.random(tokens_L.shape) < mlm_probability)
    action_L = rng.random(tokens_L.shape)
    masked_L = chosen_L & (action_L < 0.8)
    randomized_L = chosen_L & (action_L >= 0.8) & (action_L < 0.9)
    regular = special.regular_ids
    inputs_L = tokens_L.copy()
    inputs_L[masked_L] = special.mask_id
    inputs_L[randomized_L] = regular[rng.integers(0, len(regular), size=int(randomized_L.sum()))]
    return _row(tokens_L, segment_ids_L, positions_L, inputs_L, chosen_L)

