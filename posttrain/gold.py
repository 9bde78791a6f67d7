"""A synthetic gold standard that runs offline, in the role of Gao et al.'s gold reward model: a programmatic
score of Python function bodies written for prompts taken from the embedded corpus.

Prompts are the signature lines of functions in the Python standard library (the `stdlib` source, or any
Python text), e.g. "def join(a, *p):\n    ". A completion is the body a policy writes after it. Its gold
score, in [0, 1], is the mean of three checks that a researcher can read and that a small proxy can only
approximate from labelled pairs:
- `compiles`: the share of the body's lines that compile on their own as statements of a function (a line
  ending in ':' gets an indented `pass`, an else/elif/except/finally line its opening clause);
- `indent`: the share of non-empty lines indented by a positive multiple of 4 spaces (a function body);
- `uses_args`: the share of the function's argument names that the body mentions (it keeps the function's
  arguments; a function without arguments scores 1).
The score is deterministic, so gold labels of pairs are exact (ties are dropped, they carry no preference).
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Sequence

import numpy as np

from chinchax.errors import UserError
from chinchax.posttrain.preference import Pair

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def function_prompts(documents: Sequence[str], *, limit: int, max_chars: int = 60) -> list[str]:
    """Signature prompts "def name(args):\\n    " of module-level and method functions, in document order."""
    out: list[str] = []
    for text in documents:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and not node.decorator_list:
                args = ast.unparse(node.args)
                prompt = f"def {node.name}({args}):\n    "
                if len(prompt) <= max_chars and "\n" not in args:
                    out.append(prompt)
                    if len(out) >= limit:
                        return out
    return out


def stdlib_prompts(split: str, n: int, *, seed: int = 0) -> list[str]:
    """`n` distinct prompts from the stdlib corpus' `split` ('train' or 'validation'), shuffled by `seed`."""
    from chinchax.data.sources import open_source

    source = open_source("stdlib", split)
    order = np.random.default_rng(seed).permutation(len(source))
    prompts: list[str] = []
    seen: set[str] = set()
    for start in range(0, len(order), 64):
        for p in function_prompts(source.__getitems__(order[start : start + 64]), limit=10 * n):
            if p not in seen:
                seen.add(p)
                prompts.append(p)
        if len(prompts) >= n:
            return prompts[:n]
    raise UserError(f"the stdlib {split} split has only {len(prompts)} usable function signatures, fewer than {n}")


def argument_names(prompt: str) -> list[str]:
    head = prompt.split("(", 1)[1].rsplit(")", 1)[0] if "(" in prompt else ""
    names = []
    for part in head.split(","):
        name = part.strip().lstrip("*").split("=")[0].split(":")[0].strip()
        if name and name not in ("self", "cls", "/") and _NAME.fullmatch(name):
            names.append(name)
    return names


def _line_compiles(line: str) -> bool:
    # Inside a function (return/yield are legal), with an opener for clauses that continue a statement.
    code = line.strip()
    if code.endswith(":"):
        code += "\n        pass"
    word = _NAME.match(code)
    opener = {"else": "if 1:\n        pass\n    ", "elif": "if 1:\n        pass\n    ",
              "except": "try:\n        pass\n    ", "finally": "try:\n        pass\n    "}
    code = "def _gold():\n    " + opener.get(word.group() if word else "", "") + code
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(code, "<gold>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def gold_parts(prompt: str, completion: str) -> dict[str, float]:
    # The prompt ends with the first line's indentation: the body is that plus the completion.
    indent = prompt[len(prompt.rstrip(" ")) :]
    lines = [ln for ln in (indent + completion).split("\n") if ln.strip()]
    if not lines:
        return {"compiles": 0.0, "indent": 0.0, "uses_args": 0.0}
    args = argument_names(prompt)
    body_names = set(_NAME.findall(completion))
    lead = [len(ln) - len(ln.lstrip(" ")) for ln in lines]
    return {
        "compiles": float(np.mean([_line_compiles(ln) for ln in lines])),
        "indent": float(np.mean([n > 0 and n % 4 == 0 for n in lead])),
        "uses_args": float(np.mean([a in body_names for a in args])) if args else 1.0,
    }


def gold_score(prompt: str, completion: str) -> float:
    return float(np.mean(list(gold_parts(prompt, completion).values())))


def gold_scores(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    return np.asarray([gold_score(p, c) for p, c in zip(prompts, completions, strict=True)], np.float64)


def gold_pairs(prompts: Sequence[str], first: Sequence[str], second: Sequence[str]) -> list[Pair]:
    """Preference pairs labelled by the gold score (ties and identical completions dropped)."""
    pairs = []
    for p, a, b in zip(prompts, first, second, strict=True):
        ga, gb = gold_score(p, a), gold_score(p, b)
        if a and b and a != b and ga != gb:
            pairs.append(Pair(p, a, b) if ga > gb else Pair(p, b, a))
    return pairs
