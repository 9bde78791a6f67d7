"""Chain-of-thought prompting (Wei et al. 2022) and self-consistency (Wang et al. 2023), against direct answering,
on the same questions and the same exemplars:

- direct:  "Q: <question>\nA: The answer is <answer>." exemplars, greedy answer;
- cot:     "Q: <question>\nA: <rationale> The answer is <answer>." exemplars, greedy rationale + answer;
- maj@k:   the cot prompt, k sampled continuations (temperature, seeds 0..k-1), majority vote of their answers.

Answers are extracted with lm-eval's own filters as its gsm8k-cot task does: "The answer is N" (strict), else
the last number in the text (flexible-extract); votes with lm-eval's MajorityVoteFilter (an unreadable answer
votes "[invalid]", as there). Compared after lm-eval's gsm8k normalisation (no "$", ",", trailing ".").

Tasks: `arith` (or `arith:N`), N two-step arithmetic word problems built here with their rationales (seeded,
offline), or a JSONL of {"question", "answer", "rationale"} records (rationale needed for exemplars only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chinchax.errors import UserError
from chinchax.evaluation import fewshot
from chinchax.evaluation.metrics import mean_and_stderr
from chinchax.evaluation.tasks import Task
from chinchax.jsonio import jsonl_records

STRICT = r"The answer is (\-?[0-9\.\,]*[0-9]+)"  # lm-eval gsm8k-cot-self-consistency's answer regex
FLEXIBLE = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"  # lm-eval gsm8k-cot "flexible-extract" (last match)
INVALID = "[invalid]"
UNTIL = ["\n\n", "Q:"]  # lm-eval gsm8k-cot's stop strings


@dataclass(frozen=True)
class CoTExample:
    question: str
    answer: str
    rationale: str = ""


NAMES = ["Ann", "Bo", "Cy", "Dee", "Eli", "Fay"]
THINGS = ["apples", "books", "coins", "pens", "shells", "stamps"]


def arithmetic_examples(n: int, seed: int = 0) -> list[CoTExample]:
    """Two-step word problems (a + b - c), each with a worked rationale: offline, seeded, distinct."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        a, b = (int(x) for x in rng.integers(2, 20, size=2))
        c = int(rng.integers(1, a + b))
        name, thing = NAMES[int(rng.integers(len(NAMES)))], THINGS[int(rng.integers(len(THINGS)))]
        q = f"{name} has {a} {thing}, gets {b} more and gives away {c}. How many {thing} does {name} have now?"
        if q in seen:
            continue
        seen.add(q)
        r = f"{name} starts with {a} {thing}. {a} + {b} = {a + b}. {a + b} - {c} = {a + b - c}."
        out.append(CoTExample(q, str(a + b - c), r))
    return out


def _parse(record: dict, where: str) -> CoTExample:
    if "question" not in record:
        raise UserError(f"{where}: a chain-of-thought record needs 'question', 'answer' and optionally 'rationale'")
    if record.get("answer") in (None, ""):
        raise UserError(f"{where}: the record has no gold answer ('answer' is missing or empty); every scored "
                        "question needs one")
    return CoTExample(str(record["question"]), str(record["answer"]), str(record.get("rationale", "")))


MAX_ARITH = 100_000  # of about 233k distinct questions (18 x 18 (a, b) x ~20 c x 6 names x 6 things)


def _arith_count(spec: str) -> int:
    """N of `arith:N`: a whole number of questions, 1 to MAX_ARITH (N <= 0 would score nothing, or the
    exemplars, and numpy warns on the empty means)."""
    if ":" not in spec:
        return 64
    text = spec.split(":", 1)[1]
    try:
        n = int(text)
    except ValueError:
        n = None
    if n is None or not 1 <= n <= MAX_ARITH:
        raise UserError(f"--cot {spec!r}: N must be a whole number of questions from 1 to {MAX_ARITH:,}, not "
                        f"{text!r}; e.g. --cot arith:64 (or --cot arith for 64)")
    return n


def load_cot_task(spec: str, seed: int = 0) -> Task:
    """`arith[:N]` (built here; default 64 questions, 32 exemplars) or a JSONL file (+ `<name>.train.jsonl`)."""
    if spec == "arith" or spec.startswith("arith:"):
        n = _arith_count(spec)
        examples = arithmetic_examples(n + 32, seed)
        return Task("arith", "cot", examples[:n], examples[n:])
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"chain-of-thought task {spec!r} is neither 'arith[:N]' nor an existing JSONL file")

    def read(p: Path) -> list[CoTExample]:
        return [_parse(record, where) for where, record in jsonl_records(p, what="chain-of-thought task file")]

    examples = read(path)
    if not examples:
        raise UserError(f"chain-of-thought task file {path} holds no questions")
    name = path.name.removesuffix(".jsonl")
    train = path.with_name(f"{name}.train.jsonl")
    if train.is_file():
        return Task(name, "cot", examples, read(train))
    return Task(name, "cot", examples, examples, shots_are_examples=True)


def exemplar(e: CoTExample, style: str) -> str:
    if style == "cot" and not e.rationale:
        raise UserError(f"exemplar {e.question[:60]!r} has no 'rationale'; chain-of-thought exemplars need one")
    body = f"{e.rationale} " if style == "cot" else ""
    return f"Q: {e.question}\nA: {body}The answer is {e.answer}."


def prompts(task: Task, k: int, seed: int, style: str) -> list[str]:
    out = []
    for e in task.examples:
        picked = fewshot.draw(task.shots, e, k, seed, exclude_example=task.shots_are_examples, task_name=task.name)
        out.append(fewshot.SEPARATOR.join([*(exemplar(task.shots[j], style) for j in picked), f"Q: {e.question}\nA:"]))
    return out


def normalise(answer: str) -> str:
    return re.sub(r"\.$", "", answer.replace("$", "").replace(",", "").strip())


def _need_lm_eval():
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("chain-of-thought scoring uses lm-evaluation-harness's answer filters; install the eval "
                        "extra: pip install 'chinchax[eval]'") from None


def extract_answers(texts: list[str]) -> list[str]:
    """lm-eval's strict regex, falling back to its flexible last-number regex."""
    _need_lm_eval()
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(STRICT, group_select=0, fallback=INVALID).apply([[t] for t in texts], None)
    flexible = RegexFilter(FLEXIBLE, group_select=-1, fallback=INVALID).apply([[t] for t in texts], None)
    return [normalise(s[0] if s[0] != INVALID else f[0]) if (s[0], f[0]) != (INVALID, INVALID) else INVALID
            for s, f in zip(strict, flexible, strict=True)]


def majority(answers_per_question: list[list[str]]) -> list[str]:
    from lm_eval.filters.selection import MajorityVoteFilter

    return [r[0] for r in MajorityVoteFilter().apply(answers_per_question, None)]


def evaluate_cot(model, tokenizer, task: Task, *, shots: int, seed: int = 0, samples: int = 5,
                 temperature: float = 0.7, max_new_tokens: int = 48, limit: int | None = None,
                 batch_size: int = 8) -> dict:
    from chinchax.evaluation.generation_tasks import continue_texts
    from chinchax.model.decoding import SamplingConfig

    if task.kind != "cot":
        raise UserError(f"task {task.name!r} is a {task.kind} task; chain-of-thought needs question/answer records")
    examples = list(task.examples)[:limit] if limit else list(task.examples)
    sub = Task(task.name, task.kind, examples, task.shots, task.shots_are_examples)
    gold = [normalise(e.answer) for e in examples]
    greedy = SamplingConfig(max_new_tokens=max_new_tokens)
    notes: dict = {}

    def run(texts, sampling):
        return continue_texts(model, tokenizer, texts, sampling, batch_size=batch_size, until=UNTIL,
                              name=task.name, notes=notes)

    direct = extract_answers(run(prompts(sub, shots, seed, "direct"), greedy))
    cot_prompts = prompts(sub, shots, seed, "cot")
    cot_texts = run(cot_prompts, greedy)
    cot = extract_answers(cot_texts)
    sampled = [extract_answers(run(cot_prompts, SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                                               seed=s))) for s in range(samples)]
    voted = majority([list(v) for v in zip(*sampled, strict=True)]) if samples else [INVALID] * len(examples)
    out = {"task": task.name, "kind": "cot", "shots": shots, "examples": len(examples), "samples": samples,
           "temperature": temperature, **notes}
    for name, answers in (("direct_acc", direct), ("cot_acc", cot), (f"maj{samples}_acc", voted)):
        out[name], out[f"{name}_stderr"] = mean_and_stderr([float(a == g) for a, g in zip(answers, gold, strict=True)])
    out["valid_cot_answers"] = float(np.mean([a != INVALID for a in cot]))
    out["examples_shown"] = [{"question": e.question, "gold": g, "direct": d, "cot": t, "cot_answer": c, "maj": v}
                             for e, g, d, t, c, v in zip(examples[:3], gold, direct, cot_texts, cot, voted, strict=False)]
    return out
