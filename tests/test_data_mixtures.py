"""FLAN-style instruction data: code tasks parsed from Python source, templates and few-shot formats,
examples-proportional mixing with a cap (T5), held-out clusters, JSONL tasks."""

from __future__ import annotations

import inspect
import json
import textwrap

import numpy as np
import pytest

from chinchax.data import instruction_tasks as it
from chinchax.data.mixtures import MixtureConfig, build_mixture, mixing_rates, register_mixture, write_jsonl
from chinchax.errors import UserError


@pytest.fixture(scope="module")
def sources():
    import argparse
    import json as json_mod
    import random
    import shutil

    return [inspect.getsource(m) for m in (textwrap, random, shutil, argparse, json_mod.decoder)]


@pytest.fixture(scope="module")
def tasks(sources):
    return it.code_tasks(sources, seed=0)


def test_code_tasks_are_right_by_construction(sources, tasks):
    by = {t.name: t for t in tasks}
    assert {t.cluster for t in tasks} == {"naming", "summarization", "completion", "multiple_choice"}
    assert all(len(t) >= 20 for t in tasks), [(t.name, len(t)) for t in tasks]
    text = "\n".join(sources)
    for ex in by["docstring_to_name"].examples[:20]:
        assert f"def {ex.target}(" in text  # the target is a real function of the corpus
        assert ex.fields["doc"] in text
    for ex in by["identifier_choice"].examples[:20]:
        assert len(set(ex.options)) == 4 and ex.target in ex.options
    for ex in by["next_line"].examples[:20]:
        assert ex.target.strip() and ex.target not in ex.fields["code"].splitlines()[-1:]
    for ex in by["function_summary"].examples[:20]:
        assert ex.target not in ex.fields["code"]  # the docstring is taken out of the code


def test_rates_are_examples_proportional_with_a_cap():
    rates = mixing_rates({"small": 100, "big": 10_000, "mid": 500}, cap=1000)
    assert rates == pytest.approx({"small": 100 / 1600, "big": 1000 / 1600, "mid": 500 / 1600})
    assert mixing_rates({"a": 10, "b": 30}, cap=10**6) == pytest.approx({"a": 0.25, "b": 0.75})  # no cap: proportional
    with pytest.raises(UserError, match="rate_cap"):
        mixing_rates({"a": 1}, cap=0)


def test_mixture_follows_the_rates_and_holds_clusters_out(tasks):
    cfg = MixtureConfig(rate_cap=40, held_out_clusters=("summarization",), shots=(0, 2), n_examples=3000)
    mix = build_mixture(tasks, cfg)
    assert {f.cluster for f in mix.train} == {"naming", "completion", "multiple_choice"}
    assert {f.cluster for f in mix.held_out} == {"summarization"}
    assert len(mix.held_out) == len(next(t for t in tasks if t.cluster == "summarization"))
    assert sum(mix.rates.values()) == pytest.approx(1.0)
    counts = {k: sum(f.task == k for f in mix.train) for k in mix.rates}
    for name, rate in mix.rates.items():  # within 4 binomial standard errors of its rate
        se = np.sqrt(rate * (1 - rate) / 3000)
        assert abs(counts[name] / 3000 - rate) < 4 * se, (name, counts[name] / 3000, rate)
    shots = {f.shots for f in mix.train}
    assert shots == {0, 2}
    two = next(f for f in mix.train if f.shots == 2)
    assert two.prompt.count("\n\n") >= 2  # two solved exemplars before the question
    used = {f.prompt.split("\n")[0][:20] for f in mix.train if f.task == "docstring_to_name" and f.shots == 0}
    assert len(used) >= 2  # several templates per task


def test_mixture_is_deterministic_and_registers_as_a_source(tasks, tmp_path):
    from chinchax.data.config import DataConfig
    from chinchax.data.pipeline import open_documents

    cfg = MixtureConfig(rate_cap=30, n_examples=200, seed=3)
    a, b = build_mixture(tasks, cfg), build_mixture(tasks, cfg)
    assert a.train == b.train
    assert build_mixture(tasks, MixtureConfig(rate_cap=30, n_examples=200, seed=4)).train != a.train
    source = register_mixture("mix-test", a)
    docs = open_documents(DataConfig(source=source), "train")
    assert len(docs) == 200 and docs[0].startswith(a.train[0].prompt)
    write_jsonl(tmp_path / "train.jsonl", a.train)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert rows[0]["text"] == a.train[0].document() and len(rows) == 200


def test_jsonl_task_and_bad_input(tasks, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"q": "2+2?", "a": "4"}\n{"q": "3+3?", "a": "6"}\n')
    task = it.jsonl_task(path, name="arith", cluster="math", input_field="q", target_field="a",
                         templates=("Question: {q}\nAnswer:", "{input} ="))
    assert len(task) == 2 and task.examples[1].target == "6"
    mix = build_mixture([*tasks, task], MixtureConfig(held_out_clusters=("math",), n_examples=10))
    assert [f.prompt for f in mix.held_out] == ["Question: 2+2?\nAnswer:", "Question: 3+3?\nAnswer:"]
    with pytest.raises(UserError, match="no 'answer' field"):
        it.jsonl_task(path, name="x", cluster="y", input_field="q", target_field="answer")
    with pytest.raises(UserError, match="names 'z'"):
        it.jsonl_task(path, name="x", cluster="y", input_field="q", target_field="a", templates=("{z}",))
    with pytest.raises(UserError, match="no task belongs to"):
        build_mixture(tasks, MixtureConfig(held_out_clusters=("poetry",)))
    with pytest.raises(UserError, match="nothing is left"):
        build_mixture(tasks, MixtureConfig(held_out_clusters=tuple({t.cluster for t in tasks})))
