"""FLAN-style task mixtures: templates, zero- and few-shot formats, examples-proportional mixing with a cap
(T5, Raffel et al. 2020, sec. 3.5.2: rate_m = min(e_m, K) / sum_n min(e_n, K)), held-out task clusters
(FLAN, Wei et al. 2022: every task of a held-out cluster is kept out of training, for zero-shot eval).

    tasks = instruction_tasks.code_tasks(open_documents(DataConfig(source="stdlib"), "train"))
    mix = build_mixture(tasks, MixtureConfig(rate_cap=2000, held_out_clusters=("summarization",)))
    source = register_mixture("flan-code", mix)       # data.source for `chinchax finetune`
    write_jsonl("mix/train.jsonl", mix.train)       # or files, for any other tool

A formatted example is a (prompt, target) pair; as a training document it is prompt + " " + target + EOS
through the trainer's causal-LM pipeline. The registered source holds `PromptTarget` records, so
`data.loss_on=targets` puts only the target's tokens (and the EOS) in the loss, as FLAN and T5 train;
with `data.loss_on=all` every token counts, the prompt's too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chinchax import jsonio
from chinchax.data.instruction_tasks import Example, Task
from chinchax.errors import UserError
from chinchax.fileio import write_text_atomic


@dataclass(frozen=True)
class MixtureConfig:
    rate_cap: int = 3000  # K: a task counts as at most K examples when setting mixing rates
    held_out_clusters: tuple[str, ...] = ()
    shots: tuple[int, ...] = (0, 2)  # formats drawn per example: zero-shot and k-shot
    n_examples: int | None = None  # training examples drawn; None = sum of the capped task sizes
    validation_fraction: float = 0.1  # of each held-in task, for in-distribution validation
    seed: int = 0


@dataclass(frozen=True)
class Formatted:
    prompt: str
    target: str
    task: str
    cluster: str
    shots: int

    def document(self) -> str:
        return f"{self.prompt} {self.target}"


@dataclass
class Mixture:
    train: list[Formatted]
    validation: list[Formatted]  # held-in tasks' validation examples (zero-shot)
    held_out: list[Formatted]  # every example of the held-out clusters (zero-shot)
    rates: dict[str, float] = field(default_factory=dict)


def mixing_rates(sizes: dict[str, int], cap: int) -> dict[str, float]:
    """Examples-proportional mixing with an artificial dataset size limit K (T5)."""
    if cap <= 0:
        raise UserError(f"rate_cap={cap} must be a positive number of examples (T5 used 2^21 at its scale)")
    capped = {k: min(n, cap) for k, n in sizes.items() if n > 0}
    total = sum(capped.values())
    if not total:
        raise UserError("the mixture has no examples: every held-in task is empty")
    return {k: n / total for k, n in capped.items()}


def format_example(task: Task, example: Example, template: str, exemplars: Sequence[Example] = ()) -> str:
    """A prompt: k solved exemplars (same template), then the example's instruction."""
    parts = [f"{template.format(**ex.fields)} {ex.target}" for ex in exemplars]
    parts.append(template.format(**example.fields))
    return "\n\n".join(parts)


def _split(task: Task, fraction: float, rng: random.Random) -> tuple[list[Example], list[Example]]:
    examples = list(task.examples)
    rng.shuffle(examples)
    n_val = int(round(len(examples) * fraction))
    return examples[n_val:], examples[:n_val]


def build_mixture(tasks: Sequence[Task], cfg: MixtureConfig) -> Mixture:
    clusters = {t.cluster for t in tasks}
    unknown = [c for c in cfg.held_out_clusters if c not in clusters]
    if unknown:
        raise UserError(f"held_out_clusters names {unknown}, which no task belongs to; clusters: {sorted(clusters)}")
    if any(s < 0 for s in cfg.shots) or not cfg.shots:
        raise UserError(f"shots={list(cfg.shots)} must be a non-empty list of numbers >= 0 (0 = zero-shot)")
    rng = random.Random(cfg.seed)
    held_in = {t.name for t in tasks if t.cluster not in cfg.held_out_clusters}
    if not held_in:
        raise UserError("every task's cluster is held out: nothing is left to train on")
    pools, validation, held_out = {}, [], []
    for t in tasks:
        if t.name in held_in:
            train, val = _split(t, cfg.validation_fraction, rng)
            pools[t.name] = (t, train)
            validation += [Formatted(format_example(t, ex, t.templates[0]), ex.target, t.name, t.cluster, 0) for ex in val]
        else:
            held_out += [Formatted(format_example(t, ex, t.templates[0]), ex.target, t.name, t.cluster, 0)
                         for ex in t.examples]
    rates = mixing_rates({name: len(p[1]) for name, p in pools.items()}, cfg.rate_cap)
    n = cfg.n_examples if cfg.n_examples is not None else sum(min(len(p[1]), cfg.rate_cap) for p in pools.values())
    names = sorted(rates)
    order = {name: rng.sample(range(len(pools[name][1])), len(pools[name][1])) for name in names}
    cursor = dict.fromkeys(names, 0)
    train = []
    for name in rng.choices(names, weights=[rates[k] for k in names], k=n):
        task, examples = pools[name]
        i = order[name][cursor[name] % len(examples)]  # without replacement until a task is used up
        cursor[name] += 1
        shots = rng.choice(cfg.shots)
        others = [e for j, e in enumerate(examples) if j != i]
        exemplars = rng.sample(others, min(shots, len(others)))
        template = rng.choice(task.templates)
        train.append(Formatted(format_example(task, examples[i], template, exemplars), examples[i].target,
                               task.name, task.cluster, len(exemplars)))
    return Mixture(train, validation, held_out, rates)


def register_mixture(name: str, mixture: Mixture, *, eos: str = "\n") -> str:
    """Register the mixture as an in-process `memory:` data source (train / validation / held_out) of
    PromptTarget records: prompt + " " | target + `eos` (the text that ends an answer at generation)."""
    from chinchax.data.pipeline import register_memory_source
    from chinchax.data.sources import PromptTarget

    def records(examples: Sequence[Formatted]) -> list[PromptTarget]:
        return [PromptTarget(f.prompt + " ", f.target + eos) for f in examples]

    splits = {"train": records(mixture.train)}
    if mixture.validation:
        splits["validation"] = records(mixture.validation)
    if mixture.held_out:
        splits["held_out"] = records(mixture.held_out)
    return register_memory_source(name, splits)


def write_jsonl(path: str | Path, examples: Sequence[Formatted]) -> None:
    lines = [jsonio.dumps({"text": f.document(), "prompt": f.prompt, "target": f.target, "task": f.task,
                           "cluster": f.cluster, "shots": f.shots}) for f in examples]
    write_text_atomic(path, "\n".join(lines) + "\n")
