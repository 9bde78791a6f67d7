"""Multiple choice by log-likelihood: score every choice as a continuation of the (k-shot) prompt.

Metrics (each with its standard error over examples), as lm-evaluation-harness defines them:
- `acc`: the choice with the highest total log-probability is the label;
- `acc_norm`: the same after dividing by the choice's length in characters (lm-eval's acc_norm);
- `acc_bytes`: after dividing by its UTF-8 length in bytes (lm-eval's acc_bytes: comparable across tokenizers);
- `acc_per_token`: after dividing by its number of tokens (chinchax's own; tokenizer-dependent).

Pairs are tokenized the way lm-eval's TemplateLM does (`encode_pair`), and `score_pairs` is what the lm-eval
model class calls too, so `chinchax eval` and `lm_eval --model chinchax` score the same token ids.
"""

from __future__ import annotations

import numpy as np

from chinchax.errors import UserError
from chinchax.evaluation import fewshot
from chinchax.evaluation.metrics import mean_and_stderr
from chinchax.evaluation.tasks import Task


def encode_pair(tokenizer, context: str, continuation: str, variant: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval's TemplateLM._encode_pair: trailing spaces of the context move
    to the continuation; decoders encode the whole text and split it at the context's length (so a token that
    would straddle the boundary is tokenized as in running text); an encoder-decoder encodes both apart.
    No BOS here: the scorer shifts BOS in itself. An empty context scores the continuation from BOS alone."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context or variant == "encoder_decoder":
        return tokenizer.encode(context) if context else [], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return whole[: len(context_ids)], whole[len(context_ids):]


def dropped_tokens(scorer, pairs) -> list[int]:
    """Tokens the scorer will cut from each pair's context (it keeps the last ones)."""
    max_len = getattr(scorer, "max_len", None)
    if max_len is None:
        return [0] * len(pairs)
    joint = getattr(getattr(scorer, "cfg", None), "variant", "decoder_only") != "encoder_decoder"
    return [max(0, len(c) + len(x) - max_len) if joint else max(0, len(c) - max_len) for c, x in pairs]


def score_pairs(scorer, tokenizer, texts: list[tuple[str, str]], *, name: str = "requests",
                prompt_of: list[int] | None = None):
    """Scores of (context, continuation) strings; announces and counts truncated prompts (`prompt_of`: the
    prompt each pair belongs to, so a question with 4 choices counts once)."""
    variant = getattr(getattr(scorer, "cfg", None), "variant", "decoder_only")
    pairs = [encode_pair(tokenizer, c, x, variant) for c, x in texts]
    for i, (_, continuation) in enumerate(pairs):
        if not continuation:
            raise UserError(f"{name}: continuation {texts[i][1]!r} is empty after tokenization; nothing to score")
    dropped = dropped_tokens(scorer, pairs)
    prompt_of = list(range(len(pairs))) if prompt_of is None else prompt_of
    n_cut = len({p for p, d in zip(prompt_of, dropped, strict=True) if d})
    note = fewshot.report_truncation(name, n_cut, len(set(prompt_of)), max(dropped, default=0),
                                     getattr(scorer, "max_len", 0))
    return scorer.score(pairs), note


def evaluate_multiple_choice(scorer, tokenizer, task: Task, *, shots: int = 0, seed: int = 0,
                             limit: int | None = None) -> dict:
    if task.kind != "multiple_choice":
        raise UserError(f"task {task.name!r} is a {task.kind} task, not multiple choice")
    examples = list(task.examples)[:limit] if limit else list(task.examples)
    contexts = fewshot.prompts(Task(task.name, task.kind, examples, task.shots, task.shots_are_examples), shots, seed)
    texts, prompt_of = [], []
    for i, (example, context) in enumerate(zip(examples, contexts, strict=True)):
        texts += [(context, choice) for choice in example.choices]
        prompt_of += [i] * len(example.choices)
    scores, note = score_pairs(scorer, tokenizer, texts, name=task.name, prompt_of=prompt_of)
    correct = {"acc": [], "acc_norm": [], "acc_bytes": [], "acc_per_token": []}
    start = 0
    for example in examples:
        n = len(example.choices)
        chunk = scores[start : start + n]
        start += n
        logprob = np.asarray([s.logprob for s in chunk])
        n_chars = np.asarray([max(len(c), 1) for c in example.choices], np.float64)
        n_bytes = np.asarray([max(len(c.encode("utf-8")), 1) for c in example.choices], np.float64)
        n_tokens = np.asarray([s.n_tokens for s in chunk])
        correct["acc"].append(float(np.argmax(logprob) == example.label))
        correct["acc_norm"].append(float(np.argmax(logprob / n_chars) == example.label))
        correct["acc_bytes"].append(float(np.argmax(logprob / n_bytes) == example.label))
        correct["acc_per_token"].append(float(np.argmax(logprob / n_tokens) == example.label))
    out = {"task": task.name, "kind": task.kind, "shots": shots, "examples": len(examples),
           "chance": float(np.mean([1.0 / len(e.choices) for e in examples])), **note}
    for name, values in correct.items():
        out[name], out[f"{name}_stderr"] = mean_and_stderr(values)
    return out
