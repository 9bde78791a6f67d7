"""Log-likelihood of a continuation given a context, computed the natural way for each model variant.

    scorer = Scorer(model, bos_id=tok.bos_id, mask_id=tok.mask_id)
    scores = scorer.score([(context_ids, continuation_ids), ...])   # list[Score]

The same quantity the models were trained on, so a causal decoder, a prefix-LM decoder and an
encoder-decoder trained with different objectives are compared on equal terms (Wang et al. 2022):
- decoder, causal: one row `context + continuation`, inputs shifted right with BOS (as in training);
  the log-probabilities of the continuation tokens are summed.
- decoder, prefix LM: the same row, with the context as the bidirectional prefix (`prefix_mask` on
  input positions 0..len(context), exactly the layout of `chinchax.data.objectives.prefix_lm`).
- encoder-decoder: the context is the encoder input, the decoder predicts the continuation from BOS.
- encoder-only: pseudo-log-likelihood (Salazar et al. 2020): each continuation token is masked in turn
  (one row per token) and scored from both sides; the sum over its tokens. Not a true likelihood, but the
  quantity a masked LM defines.

Rows are padded to a length bucket (multiple of 32) and a fixed batch size, so a task compiles once or a
few times. Contexts too long for the model keep their last tokens (as lm-evaluation-harness does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax.errors import UserError
from chinchax.model import MODEL_INPUT_KEYS
from chinchax.model.losses import token_cross_entropy

LENGTH_BUCKET = 32


@dataclass(frozen=True)
class Score:
    logprob: float  # sum of log p over the continuation tokens (nats)
    n_tokens: int
    is_greedy: bool  # every continuation token was the model's argmax


def _bucket(n: int, multiple: int = LENGTH_BUCKET) -> int:
    return -(-n // multiple) * multiple


def batch_logits(graphdef, state, batch: dict) -> jax.Array:
    """Float32 logits of the model (in eval mode) for a batch in the training layout (docs/interfaces.md)."""
    model = nnx.merge(graphdef, state)
    model.eval()
    kwargs = {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch and k != "inputs"}
    return model(batch["inputs"], **kwargs).astype(jnp.float32)


@partial(jax.jit, static_argnames=("graphdef",))
def _row_scores(graphdef, state, batch: dict) -> dict:
    logits_BLV = batch_logits(graphdef, state, batch)
    ce_BL, _ = token_cross_entropy(logits_BLV, batch["targets"])  # the training loss: log p = -ce
    target_logp_BL = -ce_BL
    w_BL = batch["loss_weights"]
    greedy_BL = (jnp.argmax(logits_BLV, axis=-1) == batch["targets"]) | (w_BL == 0)
    return {
        "logprob_B": jnp.sum(target_logp_BL * w_BL, axis=1),
        "n_B": jnp.sum(w_BL, axis=1),
        "greedy_B": jnp.all(greedy_BL, axis=1),
    }


class Scorer:
    """Scores (context, continuation) token-id pairs with one model; see the module docstring."""

    def __init__(self, model, *, bos_id: int, mask_id: int | None = None, pad_id: int = 0, batch_size: int = 16,
                 max_len: int | None = None):
        self.model = model
        self.cfg = model.cfg
        self.bos_id, self.mask_id, self.pad_id = bos_id, mask_id, pad_id
        self.batch_size = batch_size
        self.max_len = max_len or self.cfg.max_len
        if self.cfg.variant == "encoder_only" and mask_id is None:
            raise UserError("scoring an encoder-only model needs the tokenizer's mask_id (masked scoring)")
        self._graphdef, self._state = nnx.split(model)

    # --- rows, one variant at a time ---------------------------------------------------------------
    def _decoder_row(self, context, continuation) -> dict:
        room = self.max_len - len(continuation)
        if room < 0:
            raise UserError(f"a continuation of {len(continuation)} tokens is longer than max_len={self.max_len}")
        context = list(context)[max(0, len(context) - room) :]
        tokens = np.asarray(context + list(continuation), np.int32)
        inputs = np.concatenate([[self.bos_id], tokens[:-1]]).astype(np.int32)
        weights = np.zeros(len(tokens), np.float32)
        weights[len(context) :] = 1.0
        row = {"inputs": inputs, "targets": tokens, "loss_weights": weights}
        if self.cfg.attention == "prefix":
            p = len(context)  # positions 0..p are the prefix when p > 0 (objectives.prefix_lm_with_split)
            row["prefix_mask"] = (np.arange(len(tokens)) <= p) & (p > 0)
        return row

    def _encoder_decoder_row(self, context, continuation) -> dict:
        context = list(context)[-self.max_len :] or [self.pad_id]
        if len(continuation) > self.max_len:
            raise UserError(f"a continuation of {len(continuation)} tokens is longer than max_len={self.max_len}")
        targets = np.asarray(continuation, np.int32)
        return {
            "inputs": np.concatenate([[self.bos_id], targets[:-1]]).astype(np.int32),
            "targets": targets,
            "loss_weights": np.ones(len(targets), np.float32),
            "encoder_inputs": np.asarray(context, np.int32),
        }

    def _masked_rows(self, context, continuation) -> list[dict]:
        room = self.max_len - len(continuation)
        if room < 0:
            raise UserError(f"a continuation of {len(continuation)} tokens is longer than max_len={self.max_len}")
        context = list(context)[max(0, len(context) - room) :]
        tokens = np.asarray(context + list(continuation), np.int32)
        rows = []
        for i in range(len(context), len(tokens)):
            inputs = tokens.copy()
            inputs[i] = self.mask_id
            weights = np.zeros(len(tokens), np.float32)
            weights[i] = 1.0
            rows.append({"inputs": inputs, "targets": tokens, "loss_weights": weights})
        return rows

    def rows(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> tuple[list[dict], np.ndarray]:
        """Model rows for the pairs, and for each row the index of the pair it belongs to."""
        rows, owner = [], []
        for i, (context, continuation) in enumerate(pairs):
            if len(continuation) == 0:
                raise UserError(f"pair {i} has an empty continuation; there is nothing to score")
            top = max([*context, *continuation])
            if top >= self.cfg.vocab_size:
                raise UserError(f"pair {i} holds token id {top} but the model's vocab_size is {self.cfg.vocab_size}; "
                                "the tokenizer does not match the model")
            if self.cfg.variant == "encoder_only":
                made = self._masked_rows(context, continuation)
            elif self.cfg.variant == "encoder_decoder":
                made = [self._encoder_decoder_row(context, continuation)]
            else:
                made = [self._decoder_row(context, continuation)]
            rows += made
            owner += [i] * len(made)
        return rows, np.asarray(owner, np.int64)

    # --- batching and scoring ----------------------------------------------------------------------
    def _batch(self, rows: list[dict]) -> dict:
        """Right-pad rows into one batch of `batch_size` rows (segment 0 = padding, weight 0)."""
        B = self.batch_size
        L = _bucket(max(len(r["targets"]) for r in rows))
        batch = {
            "inputs": np.zeros((B, L), np.int32),
            "targets": np.zeros((B, L), np.int32),
            "loss_weights": np.zeros((B, L), np.float32),
            "segment_ids": np.zeros((B, L), np.int32),
        }
        if self.cfg.attention == "prefix" and self.cfg.variant == "decoder_only":
            batch["prefix_mask"] = np.zeros((B, L), bool)
        if self.cfg.variant == "encoder_decoder":
            S = _bucket(max(len(r["encoder_inputs"]) for r in rows))
            batch["encoder_inputs"] = np.zeros((B, S), np.int32)
            batch["encoder_segment_ids"] = np.zeros((B, S), np.int32)
        for b, row in enumerate(rows):
            n = len(row["targets"])
            for key in ("inputs", "targets", "loss_weights", "prefix_mask"):
                if key in row:
                    batch[key][b, :n] = row[key]
            batch["segment_ids"][b, :n] = 1
            if "encoder_inputs" in row:
                s = len(row["encoder_inputs"])
                batch["encoder_inputs"][b, :s] = row["encoder_inputs"]
                batch["encoder_segment_ids"][b, :s] = 1
        if self.cfg.variant == "encoder_decoder":
            # The decoder's segment i attends to the encoder's segment i: padded decoder rows use segment 1
            # too, so that every query has a key (they carry no weight).
            batch["segment_ids"][:] = 1
            batch["encoder_segment_ids"][len(rows) :, 0] = 1
        return batch

    def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[Score]:
        rows, owner = self.rows(pairs)
        order = np.argsort([len(r["targets"]) for r in rows], kind="stable")  # similar lengths together
        logprob = np.zeros(len(pairs))
        n_tokens = np.zeros(len(pairs), np.int64)
        greedy = np.ones(len(pairs), bool)
        for start in range(0, len(rows), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out = jax.device_get(_row_scores(self._graphdef, self._state, self._batch([rows[i] for i in chunk])))
            for j, i in enumerate(chunk):
                logprob[owner[i]] += float(out["logprob_B"][j])
                n_tokens[owner[i]] += int(round(float(out["n_B"][j])))
                greedy[owner[i]] &= bool(out["greedy_B"][j])
        return [Score(float(lp), int(n), bool(g)) for lp, n, g in zip(logprob, n_tokens, greedy, strict=True)]
