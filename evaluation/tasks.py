"""Evaluation tasks: multiple choice (context, choices, label) and generation (prompt, references).

A task spec is either
- a JSONL file: one object per line, `{"context": str, "choices": [str, ...], "label": int}` (multiple
  choice) or `{"prompt": str, "references": [str, ...]}` (generation; "reference": str also accepted).
  Few-shot examples come from a sibling file `<name>.train.jsonl` if it exists (else from the task
  itself, never the example being asked);
- `tfds:NAME`: a TFDS dataset prepared in `data_dir` (array_record format, read with `tfds.data_source`,
  no TensorFlow): super_glue/copa, hellaswag, piqa, each turned into (context, choices, label) the way
  lm-evaluation-harness phrases them. Nothing is downloaded here: an unprepared dataset is an error that
  says how to prepare it (once, with network: `tfds.builder(NAME, data_dir=...).download_and_prepare(
  file_format="array_record")`; builders that need TensorFlow must be prepared where it is installed).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chinchax import jsonio
from chinchax.errors import UserError


@dataclass(frozen=True)
class MultipleChoice:
    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class GenerationExample:
    prompt: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "multiple_choice" | "generation"
    examples: Sequence  # the split scored
    shots: Sequence = field(default_factory=tuple)  # where k-shot examples are drawn from
    shots_are_examples: bool = False  # shots come from the scored split: skip the example itself


# --- JSONL ------------------------------------------------------------------------------------------------


def _parse(record: dict, where: str):
    if "choices" in record:
        if "label" not in record or record["label"] is None:
            raise UserError(f"{where}: the record has no gold answer ('label' is missing); a multiple-choice record "
                            "needs 'context', 'choices' and 'label' (the index of the right choice)")
        if "context" not in record:
            raise UserError(f"{where}: a multiple-choice record needs 'context', 'choices' and 'label'; 'context' is missing")
        choices = tuple(str(c) for c in record["choices"])
        label = record["label"]
        if not isinstance(label, int) or not 0 <= label < len(choices):
            raise UserError(f"{where}: label={label!r} must be an index into its {len(choices)} choices")
        if len(choices) < 2:
            raise UserError(f"{where}: a multiple-choice record needs at least 2 choices")
        return MultipleChoice(str(record["context"]), choices, label)
    if "prompt" in record or "references" in record or "reference" in record:
        refs = record.get("references", record.get("reference"))
        refs = (refs,) if isinstance(refs, str) else tuple(str(r) for r in (refs or ()))
        if "prompt" not in record:
            raise UserError(f"{where}: a generation record needs 'prompt' and 'references' (or 'reference')")
        if not refs:
            raise UserError(f"{where}: the record has no gold answer: give 'references' (a list) or 'reference'")
        return GenerationExample(str(record["prompt"]), refs)
    raise UserError(
        f"{where}: unknown record with keys {sorted(record)}; use context/choices/label (multiple choice) "
        "or prompt/references (generation); question/answer/rationale records are chain-of-thought tasks (--cot FILE)"
    )


def read_jsonl(path: str | Path) -> list:
    path = Path(path)
    examples = [_parse(record, where) for where, record in jsonio.jsonl_records(path, what="task file")]
    if not examples:
        raise UserError(f"task file {path} holds no examples")
    kinds = {type(e) for e in examples}
    if len(kinds) > 1:
        raise UserError(f"{path} mixes multiple-choice and generation records; use one kind per file")
    return examples


def _kind(examples) -> str:
    return "multiple_choice" if isinstance(examples[0], MultipleChoice) else "generation"


def load_jsonl_task(path: str | Path, train_path: str | Path | None = None) -> Task:
    path = Path(path)
    examples = read_jsonl(path)
    name = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem
    sibling = path.with_name(f"{name}.train.jsonl")
    train_path = Path(train_path) if train_path else (sibling if sibling.is_file() and sibling != path else None)
    if train_path is not None:
        shots = read_jsonl(train_path)
        if _kind(shots) != _kind(examples):
            raise UserError(f"{train_path} and {path} hold different kinds of records")
        return Task(name, _kind(examples), examples, shots)
    return Task(name, _kind(examples), examples, examples, shots_are_examples=True)


# --- TFDS -------------------------------------------------------------------------------------------------


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _copa(r: dict) -> MultipleChoice:
    # lm-evaluation-harness: "<premise without the final period> because/therefore" + " <choice, lowercased first letter>"
    connector = {"cause": "because", "effect": "therefore"}[_text(r["question"])]
    premise = _text(r["premise"]).strip()
    premise = premise[:-1] if premise.endswith(".") else premise

    def choice(c):
        c = _text(c)
        return " " + c[0].lower() + c[1:]

    return MultipleChoice(f"{premise} {connector}", (choice(r["choice1"]), choice(r["choice2"])), int(r["label"]))


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag(r: dict) -> MultipleChoice:
    context = _hellaswag_clean(f"{_text(r['activity_label'])}: {_text(r['context'])}")
    return MultipleChoice(context, tuple(" " + _hellaswag_clean(_text(e)) for e in r["endings"]), int(r["label"]))


def _piqa(r: dict) -> MultipleChoice:
    return MultipleChoice(f"Question: {_text(r['goal'])}\nAnswer:", (" " + _text(r["sol1"]), " " + _text(r["sol2"])), int(r["label"]))


# name -> (record adapter, split scored, split for shots)
TFDS_TASKS: dict[str, tuple[Callable[[dict], MultipleChoice], str, str]] = {
    "super_glue/copa": (_copa, "validation", "train"),
    "hellaswag": (_hellaswag, "validation", "train"),
    "piqa": (_piqa, "validation", "train"),
}


def load_tfds_task(name: str, data_dir: str | None = None) -> Task:
    if name not in TFDS_TASKS:
        raise UserError(f"unknown TFDS task {name!r}; known: {', '.join(sorted(TFDS_TASKS))} (or pass a JSONL file)")
    import tensorflow_datasets as tfds

    from chinchax.data.sources import default_data_dir

    adapter, split, shot_split = TFDS_TASKS[name]
    data_dir = data_dir or default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        prepared = builder.is_prepared()
    except Exception as e:  # noqa: BLE001 - tfds raises many kinds for a missing dataset
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"TFDS dataset {name!r} is not prepared in {data_dir} and this tensorflow-datasets install cannot "
            f"build it ({first[:200]}); prepare it where TensorFlow is available (array_record format) and "
            "copy it there, or pass --data-dir"
        ) from None
    if not prepared:
        raise UserError(
            f"TFDS dataset {name!r} is not prepared in {data_dir}; prepare it once with network access "
            f"(tfds.builder({name!r}, data_dir=...).download_and_prepare(file_format='array_record')), "
            "or pass --data-dir"
        )
    try:
        examples = [adapter(r) for r in builder.as_data_source(split=split)]
        shots = [adapter(r) for r in builder.as_data_source(split=shot_split)]
    except Exception as e:  # noqa: BLE001
        raise UserError(f"TFDS dataset {name!r} in {data_dir} could not be read ({e}); it must be built with "
                        "file_format='array_record'") from None
    return Task(name.replace("/", "_"), "multiple_choice", examples, shots)


def load_task(spec: str, *, data_dir: str | None = None, train_path: str | None = None) -> Task:
    if spec.startswith("tfds:"):
        return load_tfds_task(spec[len("tfds:") :], data_dir)
    return load_jsonl_task(spec, train_path)
