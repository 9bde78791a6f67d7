"""Evaluation inside a run: loss on the fixed validation batches, its standard error, bits per byte.

eval_loss = sum(weighted token losses) / sum(weights) over all validation rows. Its standard error
treats rows as the independent samples (tokens of a row are correlated): the ratio-estimator variance
var_r(loss_r - eval_loss * w_r) / (n * mean(w)^2). Bits per byte (causal LM only, where every byte of the
text is predicted once) = total nats / ln 2 / UTF-8 bytes of the predicted tokens; special tokens
(EOS, BOS, pad) carry no bytes.
"""

from __future__ import annotations

import math

import numpy as np


def token_byte_lengths(tokenizer) -> np.ndarray | None:
    """UTF-8 bytes of every token id (0 for specials), or None if the tokenizer cannot say."""
    vocab = tokenizer.vocab_size
    specials = {tokenizer.pad_id, tokenizer.eos_id, tokenizer.bos_id, tokenizer.unk_id, tokenizer.mask_id}
    specials |= set(getattr(tokenizer, "sentinel_ids", ()))
    lengths = np.zeros(vocab, np.int64)
    if getattr(tokenizer, "kind", None) == "byte":
        from chinchax.data.tokenizers import BYTE_OFFSET

        lengths[BYTE_OFFSET:] = 1  # one id per UTF-8 byte above the offset; specials and sentinels below
        return lengths
    if hasattr(tokenizer, "token_byte_lengths"):  # a Hugging Face tokenizer.json knows its own scheme
        return tokenizer.token_byte_lengths()
    if not hasattr(tokenizer, "id_to_piece"):
        return None
    for i in range(vocab):
        if i in specials:
            continue
        piece = tokenizer.id_to_piece(i)
        if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:  # byte fallback
            lengths[i] = 1
        elif not (piece.startswith("<") and piece.endswith(">")):
            lengths[i] = len(piece.replace("\u2581", " ").encode("utf-8"))
    return lengths


def summarize(loss_sums: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """(mean loss per weighted token, its standard error over rows)."""
    keep = weights > 0
    loss_sums, weights = loss_sums[keep].astype(np.float64), weights[keep].astype(np.float64)
    n = len(weights)
    if n == 0:
        return float("nan"), float("nan")
    mean = loss_sums.sum() / weights.sum()
    if n == 1:
        return float(mean), float("nan")
    resid = loss_sums - mean * weights
    stderr = math.sqrt(resid.var(ddof=1) / n) / weights.mean()
    return float(mean), float(stderr)


def count_bytes(targets: list[np.ndarray], weights: list[np.ndarray], byte_lengths: np.ndarray) -> float:
    """UTF-8 bytes of the predicted (weighted) target tokens."""
    return sum(float((byte_lengths[t] * (w > 0)).sum()) for t, w in zip(targets, weights, strict=True))


def bits_per_byte(total_nats: float, n_bytes: float) -> float | None:
    return total_nats / math.log(2) / n_bytes if n_bytes else None
