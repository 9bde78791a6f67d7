"""Preference pairs: read, check and tokenize (prompt, chosen, rejected) for reward models and DPO/IPO.

File format: JSON Lines, one pair per line, trl's explicit-prompt preference format:
    {"prompt": "def add(a, b):\n", "chosen": "    return a + b\n", "rejected": "    pass\n"}
An optional numeric "margin" is kept (trl's RewardTrainer subtracts it inside the Bradley-Terry loss).

Token layout (`encode_sequences`), the same for the reward model and the policy:
- decoder-only / encoder-only: one row [bos] + prompt + completion + [eos], right-padded;
  `segments` 1 on real tokens, 0 on padding; `completion` 1 on the completion's tokens (eos included);
  `last` the index of the last real token (where a reward model reads its score).
- encoder-decoder: the prompt goes to the encoder (`encoder`, `encoder_segments`) and the decoder row is
  [bos] + completion + [eos].
Pairs stack chosen rows first, then rejected rows ([2B, L]), as trl does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.fileio import write_text_atomic

REQUIRED_KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0


def read_preferences(path: str | Path) -> list[Pair]:
    """Every pair of a JSONL file; a missing key, an empty or identical completion is an error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"preference file {path} does not exist; give a JSONL file of {{prompt, chosen, rejected}}")
    pairs = [check_pair(row, where=where) for where, row in jsonio.jsonl_records(path, what="preference file")]
    if not pairs:
        raise UserError(f"{path} holds no preference pairs; each line needs prompt, chosen and rejected")
    return pairs


def check_pair(row, *, where: str) -> Pair:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with keys {REQUIRED_KEYS}, got {type(row).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in row or row[k] is None]
    if missing:
        raise UserError(
            f"{where}: the pair has no {', '.join(missing)}; every line needs {', '.join(REQUIRED_KEYS)} "
            "(an empty prompt is allowed as \"\")"
        )
    for key in REQUIRED_KEYS:
        if not isinstance(row[key], str):
            raise UserError(f"{where}: {key!r} must be a string, got {type(row[key]).__name__}")
    if not row["chosen"] or not row["rejected"]:
        raise UserError(f"{where}: an empty completion ({'chosen' if not row['chosen'] else 'rejected'}); drop the pair")
    if row["chosen"] == row["rejected"]:
        raise UserError(
            f"{where}: chosen and rejected are identical ({row['chosen'][:40]!r}), which carries no preference; "
            "drop the pair or fix the labelling"
        )
    margin = row.get("margin", 0.0)
    if not isinstance(margin, (int, float)) or not math.isfinite(margin):
        raise UserError(f"{where}: margin={margin!r} must be a finite number")
    return Pair(row["prompt"], row["chosen"], row["rejected"], float(margin))


def write_preferences(path: str | Path, pairs: Sequence[Pair]) -> None:
    lines = []
    for p in pairs:
        row = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
        if p.margin:
            row["margin"] = p.margin
        lines.append(jsonio.dumps(row) + "\n")
    write_text_atomic(path, "".join(lines))


def encode_sequences(
    tokenizer, prompts: Sequence[str], completions: Sequence[str], *, variant: str, max_len: int,
    encoder_len: int | None = None,
) -> dict[str, np.ndarray]:
    """Token arrays of prompt + completion rows (see the module docstring). Too long a row is an error:
    truncating a completion would change what was preferred."""
    rows_in, rows_out = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        p, c = tokenizer.encode(prompt), tokenizer.encode(completion) + [tokenizer.eos_id]
        if variant == "encoder_decoder":
            rows_in.append(p or [tokenizer.eos_id])
            rows_out.append(([tokenizer.bos_id], c))
        else:
            rows_out.append(([tokenizer.bos_id, *p], c))
    width = max(len(a) + len(b) for a, b in rows_out)
    if width > max_len:
        raise UserError(
            f"a prompt + completion is {width} tokens but max_len={max_len}; raise max_len (<= the model's "
            "model.max_len for learned positions) or shorten the texts"
        )
    B = len(rows_out)
    out = {
        "tokens": np.zeros((B, width), np.int32),
        "segments": np.zeros((B, width), np.int32),
        "completion": np.zeros((B, width), np.float32),
        "last": np.zeros((B,), np.int32),
    }
    for b, (head, tail) in enumerate(rows_out):
        row = head + tail
        out["tokens"][b, : len(row)] = row
        out["segments"][b, : len(row)] = 1
        out["completion"][b, len(head) : len(row)] = 1.0
        out["last"][b] = len(row) - 1
    if variant == "encoder_decoder":
        enc_width = max(len(r) for r in rows_in)
        if enc_width > (encoder_len or max_len):
            raise UserError(f"a prompt is {enc_width} tokens, longer than the encoder's {encoder_len or max_len}")
        out["encoder"] = np.zeros((B, enc_width), np.int32)
        out["encoder_segments"] = np.zeros((B, enc_width), np.int32)
        for b, row in enumerate(rows_in):
            out["encoder"][b, : len(row)] = row
            out["encoder_segments"][b, : len(row)] = 1
    return out


def encode_pairs(tokenizer, pairs: Sequence[Pair], *, variant: str, max_len: int) -> dict[str, np.ndarray]:
    """Chosen rows then rejected rows ([2B, L]) plus `margin` [B]."""
    prompts = [p.prompt for p in pairs] * 2
    completions = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    out = encode_sequences(tokenizer, prompts, completions, variant=variant, max_len=max_len)
    out["margin"] = np.asarray([p.margin for p in pairs], np.float32)
    return out


def pair_batch(encoded: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    """Rows of pairs `index` (chosen then rejected) from `encode_pairs` output."""
    n = encoded["margin"].shape[0]
    rows = np.concatenate([index, index + n])
    return {k: (v[index] if k == "margin" else v[rows]) for k, v in encoded.items()}
