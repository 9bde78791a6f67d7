"""Packing token sequences into fixed-length rows, on grain IterDatasets (all checkpointable).

Every packer takes an IterDataset of 1-D int32 token arrays (one per document, EOS included) and yields
rows `{"tokens", "segment_ids", "positions"}` of length L: segment_ids number the documents of a row
1, 2, ... (0 = padding) and positions restart at 0 in each, so attention never has to cross documents.

  - concat:    grain's ConcatThenSplitIterDataset: documents back to back, split at row boundaries; no
               padding except at the very end of a finite stream. A document cut by a row boundary
               continues as a new segment (positions restart) in the next row.
  - first_fit: documents longer than a row are cut into row-sized pieces first; then grain's
               FirstFitPackIterDataset keeps every piece whole, filling `num_bins` rows at a time and
               emitting them (shuffled with the seed) once a piece fits none of them.
  - none:      one document (piece) per row, padded.

`pack_weighted` packs documents that carry a per-token loss weight beside their tokens ({"tokens",
"weights"}, the same length: data.loss_on=targets) with the same three packings: grain packs both features
alike, so every weight stays on its token, across row boundaries too; rows gain a "weights" key.

`pack_pairs` does the same for encoder-decoder examples `{"encoder_inputs", "targets"}`: both sides are
packed together, so segment k of the decoder row belongs to segment k of the encoder row.
`concat_windows` cuts the concatenated stream into windows of exactly `length` tokens (T5's
reduce_concat_tokens + split_tokens, used by span corruption).
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
from grain import experimental as grain_exp

from chinchax.data.objectives import pad_row


@dataclasses.dataclass(frozen=True)
class SplitLong(grain_exp.FlatMapTransform):
    """Cuts a token array into pieces of at most `max_len` (documents longer than a row)."""

    max_len: int
    max_fan_out: int = 1 << 20

    def flat_map(self, tokens_n: np.ndarray):
        return [tokens_n[i : i + self.max_len] for i in range(0, len(tokens_n), self.max_len)]


def split_long(ds: grain.IterDataset, max_len: int) -> grain.IterDataset:
    return grain_exp.FlatMapIterDataset(ds, SplitLong(max_len))


def _rename(prefix: str, out: str):
    def rename(element: dict) -> dict:
        return {
            out: element[prefix],
            f"{out}_segment_ids" if out != "tokens" else "segment_ids": element[f"{prefix}_segment_ids"],
            f"{out}_positions" if out != "tokens" else "positions": element[f"{prefix}_positions"],
        }

    return rename


def _as_tokens(tokens_n: np.ndarray) -> dict:
    return {"tokens": np.asarray(tokens_n, dtype=np.int32)}


def _single_row(length: int):
    def to_row(tokens_n: np.ndarray) -> dict:
        tokens_L, segment_ids_L, positions_L = pad_row(tokens_n, length)
        return {"tokens": tokens_L, "segment_ids": segment_ids_L, "positions": positions_L}

    return to_row


def pack_tokens(
    ds: grain.IterDataset, *, length: int, packing: str, num_bins: int = 16, seed: int = 0
) -> grain.IterDataset:
    """Token arrays -> rows {tokens, segment_ids, positions} of `length` (see the module docstring)."""
    if packing == "concat":
        packed = grain_exp.ConcatThenSplitIterDataset(ds.map(_as_tokens), length_struct={"tokens": length})
        return packed.map(_rename("tokens", "tokens"))
    if packing == "first_fit":
        packed = grain_exp.FirstFitPackIterDataset(
            split_long(ds, length).map(_as_tokens),
            length_struct={"tokens": length},
            num_packing_bins=num_bins,
            seed=seed,
            shuffle_bins=True,
        )
        return packed.map(_rename("tokens", "tokens"))
    if packing == "none":
        return split_long(ds, length).map(_single_row(length))
    raise ValueError(f"unknown packing {packing!r}")


@dataclasses.dataclass(frozen=True)
class SplitLongWeighted(grain_exp.FlatMapTransform):
    """SplitLong for {"tokens", "weights"} documents: both cut at the same places."""

    max_len: int
    max_fan_out: int = 1 << 20

    def flat_map(self, doc: dict):
        n = len(doc["tokens"])
        return [{k: v[i : i + self.max_len] for k, v in doc.items()} for i in range(0, n, self.max_len)]


def _weighted_row(element: dict) -> dict:
    return {"tokens": element["tokens"], "segment_ids": element["tokens_segment_ids"],
            "positions": element["tokens_positions"], "weights": element["weights"]}


def _single_weighted_row(length: int):
    def to_row(doc: dict) -> dict:
        tokens_L, segment_ids_L, positions_L = pad_row(doc["tokens"], length)
        weights_L = np.zeros(length, np.int32)
        weights_L[: len(doc["weights"])] = doc["weights"]
        return {"tokens": tokens_L, "segment_ids": segment_ids_L, "positions": positions_L, "weights": weights_L}

    return to_row


def pack_weighted(
    ds: grain.IterDataset, *, length: int, packing: str, num_bins: int = 16, seed: int = 0
) -> grain.IterDataset:
    """{"tokens", "weights"} documents -> rows {tokens, segment_ids, positions, weights} of `length`."""
    lengths = {"tokens": length, "weights": length}
    if packing == "concat":
        return grain_exp.ConcatThenSplitIterDataset(ds, length_struct=lengths).map(_weighted_row)
    pieces = grain_exp.FlatMapIterDataset(ds, SplitLongWeighted(length))
    if packing == "first_fit":
        packed = grain_exp.FirstFitPackIterDataset(
            pieces, length_struct=lengths, num_packing_bins=num_bins, seed=seed, shuffle_bins=True
        )
        return packed.map(_weighted_row)
    if packing == "none":
        return pieces.map(_single_weighted_row(length))
    raise ValueError(f"unknown packing {packing!r}")


def _pad_pair(encoder_length: int, decoder_length: int):
    def to_row(pair: dict) -> dict:
        enc = pad_row(pair["encoder_inputs"], encoder_length)
        dec = pad_row(pair["targets"], decoder_length)
        return {
            "encoder_inputs": enc[0],
            "encoder_inputs_segment_ids": enc[1],
            "encoder_inputs_positions": enc[2],
            "targets": dec[0],
            "targets_segment_ids": dec[1],
            "targets_positions": dec[2],
        }

    return to_row


def pack_pairs(
    ds: grain.IterDataset,
    *,
    encoder_length: int,
    decoder_length: int,
    packing: str,
    num_bins: int = 16,
    seed: int = 0,
) -> grain.IterDataset:
    """{encoder_inputs, targets} examples (each side fits its row) -> packed rows with grain's key names
    (`encoder_inputs_segment_ids`, `targets_positions`, ...); "concat" examples are one per row."""
    if packing == "first_fit":
        return grain_exp.FirstFitPackIterDataset(
            ds,
            length_struct={"encoder_inputs": encoder_length, "targets": decoder_length},
            num_packing_bins=num_bins,
            seed=seed,
            shuffle_bins=True,
        )
    if packing in ("none", "concat"):
        return ds.map(_pad_pair(encoder_length, decoder_length))
    raise ValueError(f"unknown packing {packing!r}")


def _window_tokens(row: dict) -> np.ndarray:
    return row["tokens"][row["segment_ids"] > 0]


def concat_windows(ds: grain.IterDataset, length: int) -> grain.IterDataset:
    """Windows of exactly `length` consecutive tokens of the concatenated stream (the last may be shorter)."""
    packed = grain_exp.ConcatThenSplitIterDataset(ds.map(_as_tokens), length_struct={"tokens": length})
    return packed.map(_rename("tokens", "tokens")).map(_window_tokens)
