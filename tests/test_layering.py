"""Imports follow the flow of data and never run back up it (DESIGN.md, "Who may import whom"), read from the
source with `ast`: every import, a function's own included, nothing is executed."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The halves of scaling/: the sweeps (planning, executors, collection, their CLI) and the fits (the rest:
# laws, fits, optimal allocation, plots; pure numerics on tables).
SWEEPS = {"cli", "sweep_cli", "sweep_config", "plan", "planned", "ladder", "executors", "results", "worker",
          "wandb_report"}
BELOW = {  # layer -> the layers it may import (itself included)
    "base": {"base"},  # the top-level modules: errors, fileio, jsonio, configlib, sharding, rundir, hostenv
    "model": {"base", "model"},
    "data": {"base", "data"},
    "train": {"base", "model", "data", "train"},
    "evaluation": {"base", "model", "data", "train", "evaluation"},
    "posttrain": {"base", "model", "data", "train", "evaluation", "posttrain"},
    "fits": {"base", "fits"},
    "sweeps": {"base", "model", "data", "train", "evaluation", "fits", "sweeps"},
    "experiments": {"base", "model", "data", "train", "evaluation", "posttrain", "fits", "sweeps", "experiments"},
    "benchmarks": {"base", "model", "data", "train", "evaluation", "posttrain", "fits", "sweeps", "experiments",
                   "benchmarks"},
    "cli": {"base", "cli"},  # the CLI gathers the other layers' commands by name (importlib), not by import
}
# The one import that runs up, and why: a sweep worker process runs `chinchax train CONFIG` in-process, through
# the CLI's own entry point, so that a run behaves as it does in a `chinchax train` subprocess.
ALLOWED_UP = {("scaling/worker.py", "chinchax.cli")}


def _layer(parts: tuple[str, ...]) -> str:
    """The layer of chinchax.<parts...> (a module path inside the package)."""
    top = parts[0] if parts else "base"
    if top == "scaling":
        return "sweeps" if len(parts) > 1 and parts[1] in SWEEPS else "fits"
    if top in BELOW:
        return top
    return "cli" if top == "cli" else "base"


def _imports(tree: ast.AST):
    """(line, dotted chinchax module) of every import of chinchax in the tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names if a.name.startswith("chinchax."))
        elif isinstance(node, ast.ImportFrom) and node.module == "chinchax":
            yield from ((node.lineno, f"chinchax.{a.name}") for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("chinchax."):
            yield node.lineno, node.module


def _sources():
    """Every module of the package, relative to its root (not tests/, nor the virtual environment)."""
    for top in sorted(REPO.iterdir()):
        if top.name.startswith(".") or top.name in ("tests", "scripts"):
            continue
        paths = [top] if top.suffix == ".py" else sorted(top.rglob("*.py")) if top.is_dir() else []
        yield from (path.relative_to(REPO) for path in paths)


def test_no_module_imports_a_layer_above_its_own():
    sources = list(_sources())
    assert len(sources) > 100 and Path("rundir.py") in sources  # the walk found the package
    wrong = []
    for rel in sources:
        own = _layer(rel.with_suffix("").parts if len(rel.parts) > 1 else (rel.stem,))
        for line, module in _imports(ast.parse((REPO / rel).read_text(), str(rel))):
            target = _layer(tuple(module.split(".")[1:]))
            if target not in BELOW[own] and (str(rel), module) not in ALLOWED_UP:
                wrong.append(f"{rel}:{line} ({own}) imports {module} ({target})")
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_what_they_forbid():
    """The checker itself: a posttrain module importing an experiment, an evaluation module importing
    posttrain, the fitting half importing the trainer, are all caught."""
    cases = [(("posttrain", "align_cli"), "chinchax.experiments.alignment_study"),
             (("evaluation", "task_metrics"), "chinchax.posttrain.prompt_tuning"),
             (("scaling", "fit_kaplan"), "chinchax.train.trainer"),
             (("rundir",), "chinchax.evaluation.run_loading")]
    for own, module in cases:
        assert _layer(tuple(module.split(".")[1:])) not in BELOW[_layer(own)], (own, module)
