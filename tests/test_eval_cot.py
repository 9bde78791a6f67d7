"""Chain-of-thought prompting: exemplars with rationales vs direct ones, lm-eval's answer extraction and
majority vote, and the accuracy arithmetic of direct / cot / maj@k (decoding replaced by an oracle here;
tests/test_eval_icl.py runs real models of a sweep)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from chinchax.errors import UserError
from chinchax.evaluation import chain_of_thought as cot
from chinchax.evaluation import generation_tasks


def test_answer_extraction_prefers_the_answer_phrase_then_the_last_number():
    texts = ["3 + 4 = 7. 7 - 2 = 5. The answer is 5.", "3 + 4 = 7 so 9", "no digits", "The answer is 1,200.",
             "The answer is -3", "The answer is 12 and then 40"]
    assert cot.extract_answers(texts) == ["5", "9", "[invalid]", "1200", "-3", "12"]
    assert cot.majority([["3", "4", "3"], ["[invalid]", "5", "[invalid]"], ["2", "6"]]) == ["3", "[invalid]", "2"]


def test_arithmetic_task_is_offline_seeded_and_correct():
    task = cot.load_cot_task("arith:10", seed=3)
    assert task.kind == "cot" and len(task.examples) == 10 and len(task.shots) == 32
    assert cot.load_cot_task("arith:10", seed=3) == task and cot.load_cot_task("arith:10", seed=4) != task
    for e in [*task.examples, *task.shots]:
        a, b, c = (int(x) for x in re.findall(r"\d+", e.question)[:3])
        assert e.answer == str(a + b - c) and e.rationale.endswith(f"= {a + b - c}.")
    assert not set(task.examples) & set(task.shots)


def test_cot_and_direct_prompts_show_the_same_exemplars_with_and_without_rationales():
    task = cot.load_cot_task("arith:5")
    direct, chain = cot.prompts(task, 3, 0, "direct"), cot.prompts(task, 3, 0, "cot")
    for d, c, e in zip(direct, chain, task.examples, strict=True):
        assert d.endswith(f"Q: {e.question}\nA:") and c.endswith(f"Q: {e.question}\nA:")
        d_shots, c_shots = d.split("\n\n")[:-1], c.split("\n\n")[:-1]
        assert len(d_shots) == len(c_shots) == 3
        for ds, cs in zip(d_shots, c_shots, strict=True):
            q = ds.split("\nA:")[0]
            assert cs.startswith(q + "\nA: ") and " starts with " in cs and " starts with " not in ds
            assert ds.endswith(cs[cs.rindex("The answer is"):])


def test_bad_cot_tasks_say_what_is_missing(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n" + json.dumps({"question": "3+3?"}) + "\n")
    with pytest.raises(UserError, match=r"q.jsonl:2: the record has no gold answer"):
        cot.load_cot_task(str(path))
    path.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n" + json.dumps({"question": "3+3?", "answer": "6"}) + "\n")
    task = cot.load_cot_task(str(path))
    with pytest.raises(UserError, match="no 'rationale'"):
        cot.prompts(task, 1, 0, "cot")
    assert cot.prompts(task, 1, 0, "direct")[0] == "Q: 3+3?\nA: The answer is 6.\n\nQ: 2+2?\nA:"
    with pytest.raises(UserError, match="neither 'arith"):
        cot.load_cot_task(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="1 examples to draw 2 shots"):
        cot.prompts(task, 2, 0, "direct")


def test_accuracies_of_direct_cot_and_majority_vote(monkeypatch):
    """An oracle decoder: greedy direct answers are wrong, greedy rationales are right, and the sampled
    rationales (seed s) are right for seeds 0 and 2 only: maj@3 right, maj@2 tied -> first answer (lm-eval)."""
    task = cot.load_cot_task("arith:6")
    by_question = {e.question: e for e in task.examples}
    calls = []

    def fake(model, tokenizer, texts, sampling, **kwargs):
        calls.append((sampling.temperature, sampling.seed, kwargs["until"]))
        out = []
        for t in texts:
            e = by_question[t.rsplit("Q: ", 1)[1].removesuffix("\nA:")]
            style = "cot" if " starts with " in t or sampling.temperature > 0 else "direct"
            wrong = str(int(e.answer) + 1)
            if style == "direct":
                out.append(f" The answer is {wrong}.")
            elif sampling.temperature == 0 or sampling.seed in (0, 2):
                out.append(f" {e.rationale} The answer is {e.answer}.")
            else:
                out.append(f" I think {wrong}")
        return out

    monkeypatch.setattr(generation_tasks, "continue_texts", fake)
    model, tok = SimpleNamespace(), SimpleNamespace()
    out = cot.evaluate_cot(model, tok, task, shots=2, samples=3, temperature=0.7)
    assert out["direct_acc"] == 0.0 and out["cot_acc"] == 1.0 and out["maj3_acc"] == 1.0
    assert out["cot_acc_stderr"] == 0.0 and out["valid_cot_answers"] == 1.0 and out["examples"] == 6
    assert [c[:2] for c in calls] == [(0.0, 0), (0.0, 0), (0.7, 0), (0.7, 1), (0.7, 2)]
    assert all(c[2] == ["\n\n", "Q:"] for c in calls)
    out = cot.evaluate_cot(model, tok, task, shots=1, samples=2, temperature=0.7, limit=4)
    assert out["maj2_acc"] == 1.0 and out["examples"] == 4  # a 1-1 tie goes to the first sample (seed 0)
