"""Instruction tasks built offline from Python source (the embedded corpus), plus any JSONL, FLAN-style.

A task is a list of `Example(fields, target)` with a name, a cluster (FLAN's task clusters: a whole
cluster is held out for zero-shot evaluation) and several templates that turn the fields into an
instruction. The tasks from code, all parsed with `ast` (no model, no network):

    docstring_to_name   (cluster naming)           a function's docstring -> its name
    function_summary    (cluster summarization)    a function's code without its docstring -> the
                                                   docstring's first line (scored with ROUGE)
    next_line           (cluster completion)       a few lines of a function -> the next line
    identifier_choice   (cluster multiple_choice)  a docstring and four names -> the right one
"""

from __future__ import annotations

import ast
import random
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chinchax import jsonio
from chinchax.errors import UserError


@dataclass(frozen=True)
class Example:
    fields: dict  # what the templates format
    target: str
    options: tuple[str, ...] = ()  # multiple choice: the candidates (target among them)


@dataclass(frozen=True)
class Task:
    name: str
    cluster: str
    templates: tuple[str, ...]  # str.format templates over the example's fields
    examples: list[Example] = field(default_factory=list)
    metric: str = "exact_match"  # exact_match, rouge (summaries), accuracy (multiple choice)

    def __len__(self) -> int:
        return len(self.examples)


TEMPLATES = {
    "docstring_to_name": (
        "Docstring:\n{doc}\nFunction name:",
        "What is the name of the Python function documented as follows?\n{doc}\nAnswer:",
        "Write the name of a function that does this: {doc}\nName:",
    ),
    "function_summary": (
        "Summarize this function in one line.\n{code}\nSummary:",
        "{code}\nWhat does the function above do?",
        "Code:\n{code}\nOne-line docstring:",
    ),
    "next_line": (
        "Continue the code with its next line.\n{code}\nNext line:",
        "{code}\n# the next line is:",
        "Complete the following Python:\n{code}",
    ),
    "identifier_choice": (
        "{doc}\nWhich function is this? Options: {options}\nAnswer:",
        "Docstring: {doc}\nChoose the function name among {options}.\nAnswer:",
        "Pick the name that matches the description.\nDescription: {doc}\nCandidates: {options}\nAnswer:",
    ),
}
CLUSTERS = {
    "docstring_to_name": "naming",
    "function_summary": "summarization",
    "next_line": "completion",
    "identifier_choice": "multiple_choice",
}
METRICS = {"function_summary": "rouge", "identifier_choice": "accuracy"}


def _functions(sources: Iterable[str]):
    """(name, first docstring line, code without docstring, code lines) of documented functions."""
    for text in sources:
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue  # the corpus holds some Python 2 / template files
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("__"):
                continue
            doc = ast.get_docstring(node)
            if not doc or not doc.strip():
                continue
            first = doc.strip().splitlines()[0].strip()
            if len(first) < 12:
                continue
            segment = ast.get_source_segment(text, node)
            if not segment:
                continue
            body = node.body[1:]  # the docstring is the first statement
            lines = [ln for ln in textwrap.dedent(segment).splitlines() if ln.strip()]
            code_lines = [lines[0]] + [
                ln for b in body for ln in textwrap.indent(textwrap.dedent(ast.get_source_segment(text, b) or ""), "    ").splitlines()
                if ln.strip()
            ]
            yield node.name, first, "\n".join(code_lines), code_lines


def code_tasks(sources: Iterable[str], *, max_per_task: int | None = None, seed: int = 0) -> list[Task]:
    """The four tasks from the documented functions in `sources` (Python files as text)."""
    funcs = list(_functions(sources))
    if len(funcs) < 4:
        raise UserError(f"the sources hold {len(funcs)} documented functions; the code tasks need at least 4")
    rng = random.Random(seed)
    examples: dict[str, list[Example]] = {k: [] for k in TEMPLATES}
    names = sorted({f[0] for f in funcs})
    for name, doc, code, lines in funcs:
        examples["docstring_to_name"].append(Example({"doc": doc}, name))
        if len(lines) > 1:
            examples["function_summary"].append(Example({"code": code}, doc))
        if len(lines) >= 4:
            cut = rng.randrange(2, len(lines))
            examples["next_line"].append(Example({"code": "\n".join(lines[:cut])}, lines[cut].strip()))
        if len(names) >= 4:
            wrong = rng.sample([n for n in names if n != name], 3)
            options = wrong + [name]
            rng.shuffle(options)
            examples["identifier_choice"].append(Example({"doc": doc, "options": ", ".join(options)}, name, tuple(options)))
    tasks = []
    for task, exs in examples.items():
        rng.shuffle(exs)
        tasks.append(Task(task, CLUSTERS[task], TEMPLATES[task], exs[:max_per_task], METRICS.get(task, "exact_match")))
    return tasks


def jsonl_task(path: str | Path, *, name: str, cluster: str, input_field: str = "input",
               target_field: str = "target", templates: Sequence[str] = ("{input}",)) -> Task:
    """A task from a JSONL file: one object per line with `input_field` and `target_field`."""
    examples = []
    for where, record in jsonio.jsonl_records(path, what=f"JSONL task {name!r}:"):
        missing = [k for k in (input_field, target_field) if k not in record]
        if missing:
            raise UserError(f"{where} has no {missing[0]!r} field; set input_field/target_field to its keys "
                            f"({', '.join(record)})")
        examples.append(Example({**record, "input": record[input_field]}, str(record[target_field])))
    for t in templates:
        try:
            t.format(**examples[0].fields)
        except (KeyError, IndexError) as e:
            raise UserError(f"JSONL task {name!r}: template {t!r} names {e}, which the records lack") from None
    return Task(name, cluster, tuple(templates), examples)
