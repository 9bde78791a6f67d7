"""Dotted `key=value` overrides are accepted anywhere on the command line, also after options
(`sweep run X --executor ray budgets=[...]`); anything else unrecognized is still an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chinchax.cli import _parse, build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_overrides_after_options_are_kept_in_order():
    args = _parse(build_parser(), ["sweep", "run", "s.yaml", "a.b=1", "--executor", "ray", "budgets=[1e12]",
                                   "--parallel", "2", "trainer.steps=3"])
    assert args.executor == "ray" and args.parallel == 2
    assert args.overrides == ["a.b=1", "budgets=[1e12]", "trainer.steps=3"]  # later ones win, as typed
    args = _parse(build_parser(), ["train", "e.yaml", "trainer.steps=5"])
    assert args.overrides == ["trainer.steps=5"]


@pytest.mark.parametrize("argv", [
    ["sweep", "run", "s.yaml", "--executor", "ray", "--no-such-option"],
    ["sweep", "run", "s.yaml", "--executor", "ray", "not_an_override"],
    ["sweep", "status", "some/dir", "--out", "x", "budgets=[1]"],  # status takes no overrides
])
def test_other_strays_are_still_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(build_parser(), argv)
    assert e.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_sweep_plan_applies_an_override_given_after_an_option(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "plan", str(REPO / "experiments" / "demo_sweep.yaml"), "--out", str(out),
                 "budgets=[4.7e+10]"]) == 0
    plan = json.loads((out / "plan.json").read_text())
    assert {run["budget"] for run in plan["runs"]} == {4.7e10}
