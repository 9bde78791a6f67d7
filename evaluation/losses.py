"""Losses that compare across runs and architectures.

- `validation_loss`: nats per token on fixed batches (`chinchax.data.pipeline.eval_batches` gives every run
  of a sweep the same ones), its standard error, and bits per byte. The arithmetic is the trainer's
  (`chinchax.model.losses`, `chinchax.train.evaluate`), so `chinchax eval --loss` reproduces run.json's eval_loss exactly.
- `conditional_loss`: nats per target token of a target given an input, each variant scored the natural
  way (`chinchax.evaluation.scoring`), on pairs cut from the validation split with a fixed rule
  (`conditional_pairs`), so every model of a comparison sees the same (input, target) tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import numpy as np
from flax import nnx

from chinchax.evaluation.scoring import Scorer, batch_logits
from chinchax.model import MODEL_INPUT_KEYS
from chinchax.model.losses import weighted_row_losses
from chinchax.train.evaluate import bits_per_byte, count_bytes, summarize


@partial(jax.jit, static_argnames=("graphdef",))
def _row_losses(graphdef, state, batch: dict) -> dict:
    return weighted_row_losses(batch_logits(graphdef, state, batch), batch["targets"], batch["loss_weights"])


def validation_loss(model, batches: Sequence[dict], *, byte_lengths: np.ndarray | None = None) -> dict:
    """{"loss", "loss_stderr", "tokens", "bits_per_byte"?} over the rows of `batches` (standard error over
    rows, the ratio estimator of `train.evaluate.summarize`). `byte_lengths[id]` = UTF-8 bytes of a token
    (`train.evaluate.token_byte_lengths(tokenizer)`); bits per byte only make sense when every byte of the
    text is predicted once (causal LM batches)."""
    graphdef, state = nnx.split(model)
    sums, weights = [], []
    for batch in batches:
        model_batch = {k: np.asarray(v) for k, v in batch.items() if k in MODEL_INPUT_KEYS or k in ("targets", "loss_weights")}
        out = jax.device_get(_row_losses(graphdef, state, model_batch))
        sums.append(np.asarray(out["loss_sum_B"], np.float64))
        weights.append(np.asarray(out["weight_B"], np.float64))
    loss_sums, w = np.concatenate(sums), np.concatenate(weights)
    mean, stderr = summarize(loss_sums, w)
    result = {"loss": mean, "loss_stderr": stderr, "tokens": float(w.sum()), "rows": int((w > 0).sum())}
    if byte_lengths is not None:
        n_bytes = count_bytes([b["targets"] for b in batches], [b["loss_weights"] for b in batches], byte_lengths)
        result["bits_per_byte"] = bits_per_byte(float(loss_sums.sum()), n_bytes)
    return result


def conditional_pairs(
    documents: Sequence[Sequence[int]], *, input_len: int, target_len: int, max_pairs: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """(input, target) token pairs: the first `input_len` tokens of each document as input, the next
    `target_len` as target. Documents shorter than input_len + target_len are split in the same
    proportion (at least one token each side); documents of one token are skipped. Deterministic."""
    pairs = []
    for doc in documents:
        doc = list(doc)[: input_len + target_len]
        if len(doc) < 2:
            continue
        if len(doc) == input_len + target_len:
            cut = input_len
        else:
            cut = min(max(1, round(len(doc) * input_len / (input_len + target_len))), len(doc) - 1)
        pairs.append((doc[:cut], doc[cut:]))
        if max_pairs is not None and len(pairs) == max_pairs:
            break
    return pairs


def conditional_loss(scorer: Scorer, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict:
    """Nats per target token of target given input (standard error over pairs), and the pairs' count."""
    scores = scorer.score(pairs)
    nll = np.asarray([-s.logprob for s in scores])
    n = np.asarray([s.n_tokens for s in scores], np.float64)
    mean, stderr = summarize(nll, n)
    return {
        "conditional_loss": mean,
        "conditional_loss_stderr": stderr,
        "conditional_bits_per_token": mean / math.log(2),
        "pairs": len(pairs),
        "target_tokens": int(n.sum()),
    }
