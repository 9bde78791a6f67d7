"""Multiple choice by log-likelihood: score every choice as a continuation of the (k-shot) prompt.

Metrics (each with its standard error over examples):
- `acc`: the choice with the highest total log-probability is the label;
- `acc_norm`: the same after dividing by the choice's UTF-8 length in bytes (lm-evaluation-harness's
  acc_norm: comparable across tokenizers);
- `acc_per_token`: after dividing by the choice's number of tokens.
"""

from __future__ import annotations

import numpy as np

from chinchax.errors import UserError
from chinchax.evaluation import fewshot
from chinchax.evaluation.metrics import mean_and_stderr
from chinchax.evaluation.scoring import Scorer
from chinchax.evaluation.tasks import Task


def evaluate_multiple_choice(scorer: Scorer, tokenizer, task: Task, *, shots: int = 0, seed: int = 0,
                             limit: int | None = None) -> dict:
    if task.kind != "multiple_choice":
        raise UserError(f"task {task.name!r} is a {task.kind} task, not multiple choice")
    examples = list(task.examples)[:limit] if limit else list(task.examples)
    contexts = fewshot.prompts(Task(task.name, task.kind, examples, task.shots, task.shots_are_examples), shots, seed)
    pairs, owner = [], []
    for i, (example, context) in enumerate(zip(examples, contexts, strict=True)):
        context_ids = tokenizer.encode(context)
        for choice in example.choices:
            choice_ids = tokenizer.encode(choice)
            if not choice_ids:
                raise UserError(f"task {task.name!r} example {i} has an empty choice")
            pairs.append((context_ids, choice_ids))
            owner.append(i)
    scores = scorer.score(pairs)
    correct = {"acc": [], "acc_norm": [], "acc_per_token": []}
    start = 0
    for example in examples:
        n = len(example.choices)
        chunk = scores[start : start + n]
        start += n
        logprob = np.asarray([s.logprob for s in chunk])
        n_bytes = np.asarray([max(len(c.encode("utf-8")), 1) for c in example.choices])
        n_tokens = np.asarray([s.n_tokens for s in chunk])
        correct["acc"].append(float(np.argmax(logprob) == example.label))
        correct["acc_norm"].append(float(np.argmax(logprob / n_bytes) == example.label))
        correct["acc_per_token"].append(float(np.argmax(logprob / n_tokens) == example.label))
    out = {"task": task.name, "kind": task.kind, "shots": shots, "examples": len(examples),
           "chance": float(np.mean([1.0 / len(e.choices) for e in examples]))}
    for name, values in correct.items():
        out[name], out[f"{name}_stderr"] = mean_and_stderr(values)
    return out
