"""Measures that mean the same thing for every architecture and objective (`chinchax compare`).

Training losses of different objectives measure different tasks (a span-corruption loss is over ~15% of
the tokens, given the rest), so a comparison at equal compute needs measures every family is scored on
identically. Built once, offline, from held-out documents, and handed to every run unchanged:

- conditional bits per byte: pairs (prefix, continuation) drawn (seeded) from the non-overlapping windows
  of the documents (`losses.conditional_pairs` on each window; not only documents' beginnings, which in
  source code are mostly license and docstring boilerplate); each model scores the continuation given the prefix the natural way for its
  variant (`scoring.Scorer`: causal or prefix attention over the prefix in a decoder, the prefix to the
  encoder of an encoder-decoder). nats / ln 2 / UTF-8 bytes of the continuations, so tokenizers compare.
- next-line multiple choice: a line of a document, then the true next line among distractor lines drawn
  from other documents with the same indentation (so indentation alone does not give the answer away);
  scored by `multiple_choice.evaluate_multiple_choice` (acc, acc_norm, standard errors), zero-shot and
  k-shot with shots from a disjoint pool of documents.

Encoder-only (masked LM) models are refused: they define no likelihood of a continuation, only a
pseudo-log-likelihood (Salazar et al. 2020), which is not on the same scale as the others' bits per byte.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.evaluation.losses import conditional_pairs
from chinchax.evaluation.tasks import MultipleChoice, Task

LINE_CHARS = (8, 48)  # a line is a usable context or choice when its stripped length is in this range
TASK_NAME = "next_line"


@dataclass(frozen=True)
class MeasureSet:
    """The fixed held-out items every run of a comparison is scored on."""

    pairs: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]  # (prefix ids, continuation ids)
    pair_bytes: tuple[int, ...]  # UTF-8 bytes of each continuation
    task: Task  # next-line multiple choice: examples and a disjoint shot pool
    shots: tuple[int, ...]  # k of each multiple-choice evaluation (0 = zero-shot)

    @property
    def fingerprint(self) -> str:
        """Changes whenever an item changes: stored measures with another fingerprint are recomputed."""
        items = {"pairs": self.pairs, "shots": self.shots,
                 "mc": [(e.context, e.choices, e.label) for e in self.task.examples],
                 "mc_shots": [(e.context, e.choices, e.label) for e in self.task.shots]}
        return hashlib.sha256(jsonio.dumps(items).encode()).hexdigest()[:16]


def build_measure_set(documents: Sequence[str], tokenizer, *, n_pairs: int, input_len: int, target_len: int,
                      n_choice_examples: int, n_choices: int = 4, shots: Sequence[int] = (0, 2),
                      seed: int = 0) -> MeasureSet:
    """Pairs from the even-numbered documents, multiple-choice examples from the odd ones (the first
    half of those for examples, the second for shots): three disjoint pools of held-out text. A
    document gives several pairs and examples (held-out splits of source files hold few, long documents)."""
    from chinchax.train.evaluate import token_byte_lengths

    if n_pairs < 2 or n_choice_examples < 2:
        raise UserError(f"n_pairs={n_pairs} and n_choice_examples={n_choice_examples} must each be >= 2")
    byte_lengths = token_byte_lengths(tokenizer)
    if byte_lengths is None:
        raise UserError(f"tokenizer {tokenizer!r} cannot say how many bytes its tokens are; bits per byte "
                        "need a byte or SentencePiece tokenizer")
    rng = np.random.default_rng(seed)
    span = input_len + target_len
    windows = []  # every non-overlapping span-token window of the pair documents, from a seeded offset
    for text in documents[0::2]:
        ids = tokenizer.encode(text)
        if len(ids) >= span:
            start = int(rng.integers(0, len(ids) % span + 1))
            windows += [ids[i : i + span] for i in range(start, len(ids) - span + 1, span)]
    if len(windows) < n_pairs:
        raise UserError(f"the held-out split holds only {len(windows)} windows of {span} tokens for "
                        f"n_pairs={n_pairs}; lower n_pairs or input/target lengths, or use a bigger split")
    cut_docs = [windows[i] for i in sorted(rng.choice(len(windows), n_pairs, replace=False))]
    pairs = conditional_pairs(cut_docs, input_len=input_len, target_len=target_len)
    pair_bytes = tuple(int(byte_lengths[np.asarray(c)].sum()) for _, c in pairs)
    odd = list(documents[1::2])
    half = len(odd) // 2
    n_shot_examples = max(4 * max(shots, default=0), 8)
    examples = next_line_examples(odd[:half], n_choice_examples, n_choices, rng)
    shot_pool = next_line_examples(odd[half:], n_shot_examples, n_choices, rng)
    task = Task(TASK_NAME, "multiple_choice", tuple(examples), tuple(shot_pool))
    return MeasureSet(tuple((tuple(p), tuple(c)) for p, c in pairs), pair_bytes, task, tuple(shots))


def _usable(line: str) -> bool:
    return LINE_CHARS[0] <= len(line.strip()) <= LINE_CHARS[1]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


def next_line_examples(documents: Sequence[str], n: int, n_choices: int, rng: np.random.Generator) -> list:
    """`n` examples "<line>\\n" -> which line comes next, one per document while they
    last (then a second per document, ...): the true next line and `n_choices - 1` distractor lines of
    the same indentation from other documents."""
    lines_by_doc = [doc.splitlines() for doc in documents]
    pool: dict[str, list[tuple[int, str]]] = {}  # indentation -> (document, line)
    candidates = []  # per document: positions i where lines i and i+1 are both usable
    for d, lines in enumerate(lines_by_doc):
        for line in lines:
            if _usable(line):
                pool.setdefault(_indent(line), []).append((d, line))
        spots = [i for i in range(len(lines) - 1) if _usable(lines[i]) and _usable(lines[i + 1])]
        candidates.append([int(i) for i in rng.permutation(spots)])
    examples = []
    for round_ in range(max((len(c) for c in candidates), default=0)):
        for d in rng.permutation(len(lines_by_doc)):
            if len(examples) == n or round_ >= len(candidates[d]):
                continue
            i = candidates[d][round_]
            lines = lines_by_doc[d]
            answer = lines[i + 1]
            others = [x for doc, x in pool.get(_indent(answer), []) if doc != d and x != answer]
            others = list(dict.fromkeys(others))  # unique lines, in a fixed order
            if len(others) < n_choices - 1:
                continue
            distractors = [others[j] for j in rng.choice(len(others), n_choices - 1, replace=False)]
            label = int(rng.integers(n_choices))
            choices = distractors[:label] + [answer] + distractors[label:]
            examples.append(MultipleChoice(f"{lines[i]}\n", tuple(choices), label))
        if len(examples) == n:
            break
    if len(examples) < n:
        raise UserError(f"only {len(examples)} next-line examples could be built (need {n}); use more held-out "
                        "documents or fewer examples")
    return examples


def measure_model(model, tokenizer, mset: MeasureSet, *, batch_size: int = 32) -> dict:
    """Every measure of one model: conditional bits per byte (with per-pair values for paired bootstraps)
    and next-line accuracy at each k of `mset.shots`."""
    from chinchax.evaluation.multiple_choice import evaluate_multiple_choice
    from chinchax.evaluation.scoring import Scorer

    if model.cfg.variant == "encoder_only":
        raise UserError("an encoder-only (masked LM) model defines no likelihood of a continuation, only a "
                        "pseudo-log-likelihood, so its bits per byte are not comparable; compare decoders and "
                        "encoder-decoders here and score encoder-only models with `chinchax eval`")
    scorer = Scorer(model, bos_id=tokenizer.bos_id, mask_id=tokenizer.mask_id, pad_id=tokenizer.pad_id,
                    batch_size=batch_size)
    scores = scorer.score(mset.pairs)
    nll = np.asarray([-s.logprob for s in scores], np.float64)
    n_bytes = np.asarray(mset.pair_bytes, np.float64)
    out = {
        "fingerprint": mset.fingerprint,
        "conditional_bpb": conditional_bpb(nll, n_bytes),
        "conditional_bpb_stderr": _ratio_stderr(nll / math.log(2), n_bytes),
        "pair_nll": nll.tolist(),
        "pair_tokens": [s.n_tokens for s in scores],
        "pair_bytes": list(mset.pair_bytes),
    }
    for k in mset.shots:
        mc = evaluate_multiple_choice(scorer, tokenizer, mset.task, shots=k, seed=0)
        out[f"mc{k}"] = {key: mc[key] for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "examples",
                                                  "chance")}
    return out


def conditional_bpb(nll: np.ndarray, n_bytes: np.ndarray) -> float:
    """Total nats / ln 2 / total bytes (a ratio of sums, as bits per byte of a corpus is)."""
    return float(np.sum(nll) / math.log(2) / np.sum(n_bytes))


def _ratio_stderr(bits: np.ndarray, n_bytes: np.ndarray) -> float:
    from chinchax.train.evaluate import summarize

    return summarize(bits, n_bytes)[1]
