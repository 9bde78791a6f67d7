"""k-shot prompts: k solved examples from a task's shot split, then the question (lm-evaluation-harness style).

    prompt = "<context_1><answer_1>\n\n<context_2><answer_2>\n\n<context>"

The shots of each example are drawn with their own generator, seeded by (seed, a hash of the example's own
content), so a prompt depends neither on which other examples are evaluated nor on their order, and every
model of a sweep sees the same prompts. When the shots come from the scored split itself, records equal to
the question are left out of the pool (lm-evaluation-harness's rule: `ContextSampler.rm_eval_doc`). The same
draw is offered to lm-evaluation-harness as a sampler (`lm_eval_model.ChinchaxShotSampler`), so both
harnesses build byte-identical prompts.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np

from chinchax.errors import UserError
from chinchax.evaluation.tasks import MultipleChoice, Task

SEPARATOR = "\n\n"  # lm-eval's default fewshot_delimiter


def solved(example) -> str:
    if isinstance(example, MultipleChoice):
        return example.context + example.choices[example.label]
    return example.prompt + example.references[0]


def question(example) -> str:
    return example.context if isinstance(example, MultipleChoice) else example.prompt


def example_key(example) -> int:
    """A stable 32-bit hash of an example's content (not of Python's per-process hash)."""
    return zlib.crc32(json.dumps(asdict(example), sort_keys=True).encode("utf-8"))


def shot_pool(shots: Sequence, example, exclude_example: bool) -> list[int]:
    return [i for i, s in enumerate(shots) if not (exclude_example and s == example)]


def draw(shots: Sequence, example, k: int, seed: int, *, exclude_example: bool, task_name: str = "task") -> list[int]:
    """Indices into `shots` of the k shots shown before `example`."""
    if k == 0:
        return []
    pool = shot_pool(shots, example, exclude_example)
    if k > len(pool):
        raise UserError(f"task {task_name!r} has {len(pool)} examples to draw {k} shots from (the question itself "
                        "excluded); lower --shots or add a <name>.train.jsonl with more solved examples")
    rng = np.random.default_rng([seed, example_key(example)])
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=False)]


def shot_indices(task: Task, index: int, k: int, seed: int) -> list[int]:
    return draw(task.shots, task.examples[index], k, seed, exclude_example=task.shots_are_examples, task_name=task.name)


def prompts(task: Task, k: int, seed: int = 0, separator: str = SEPARATOR) -> list[str]:
    """The k-shot prompt of every example of the task (the question's context last, no answer)."""
    out = []
    for i, example in enumerate(task.examples):
        shots: Sequence[str] = [solved(task.shots[j]) for j in shot_indices(task, i, k, seed)]
        out.append(separator.join([*shots, question(example)]))
    return out


def report_truncation(task_name: str, n_truncated: int, n_total: int, most_dropped: int, max_len: int,
                      how: str = "kept the last tokens of the prompt (left truncation, as lm-evaluation-harness)") -> dict:
    """Say on stderr that prompts did not fit the model's context and how they were cut; the counts also go
    into the task's metrics so a table shows them."""
    if n_truncated:
        print(f"[chinchax eval] {task_name}: {n_truncated} of {n_total} prompts are longer than the model's context "
              f"of {max_len} tokens; {how}, dropping up to {most_dropped} tokens. Fewer --shots keep whole prompts.",
              file=sys.stderr)
    return {"truncated_prompts": n_truncated, "max_tokens_dropped": most_dropped, "context_len": max_len}
