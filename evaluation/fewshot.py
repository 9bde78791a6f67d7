"""k-shot prompts: k solved examples from a task's shot split, then the question (lm-evaluation-harness style).

    prompt = "<context_1><answer_1>\n\n<context_2><answer_2>\n\n<context>"

The shots of each example are drawn with their own seeded generator (seed, example index), so a prompt
does not depend on which other examples are evaluated, and every model of a sweep sees the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from chinchax.errors import UserError
from chinchax.evaluation.tasks import MultipleChoice, Task

SEPARATOR = "\n\n"


def solved(example) -> str:
    if isinstance(example, MultipleChoice):
        return example.context + example.choices[example.label]
    return example.prompt + example.references[0]


def question(example) -> str:
    return example.context if isinstance(example, MultipleChoice) else example.prompt


def shot_indices(task: Task, index: int, k: int, seed: int) -> list[int]:
    pool = len(task.shots) - (1 if task.shots_are_examples else 0)
    if k > pool:
        raise UserError(f"task {task.name!r} has {pool} examples to draw {k} shots from; lower --shots")
    rng = np.random.default_rng([seed, index])
    candidates = [i for i in range(len(task.shots)) if not (task.shots_are_examples and i == index)]
    return [candidates[i] for i in rng.choice(len(candidates), size=k, replace=False)]


def prompts(task: Task, k: int, seed: int = 0, separator: str = SEPARATOR) -> list[str]:
    """The k-shot prompt of every example of the task (the question's context last, no answer)."""
    out = []
    for i, example in enumerate(task.examples):
        shots: Sequence[str] = [solved(task.shots[j]) for j in shot_indices(task, i, k, seed)] if k else []
        out.append(separator.join([*shots, question(example)]))
    return out
