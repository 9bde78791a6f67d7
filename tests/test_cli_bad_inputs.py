"""No input crashes a command (issue 28, item 4): every subcommand that reads a user file (YAML, JSONL, JSON, CSV,
run and model dirs) answers the same bad files (bytes that are not UTF-8, a file cut short, the wrong type) with
exit code 2 and one line that names the file, never a traceback; numeric arguments are range-checked.

In-process through `chinchax.cli.main`, with arguments chosen so that the file is read before any model is built
or trained (the whole file runs in seconds). A new command that reads a file belongs in READERS below.
"""

from __future__ import annotations

import pytest

from chinchax.cli import main

# The same bad files for every reader, as bytes. Each is bad for YAML, JSON lines and JSON alike.
BAD = {
    # Latin-1, not UTF-8 (a valid record otherwise): the classic "exported from a spreadsheet" file
    "not_utf8": b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n',
    # cut short in the middle of its last record (a copy interrupted, a full disk)
    "truncated": b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "cho',
    # well-formed, but a list where a mapping / an object is needed
    "wrong_type": b"[1, 2, 3]\n",
}
# CSV tables: the cut-short file is a valid (shorter) table, so it is not among them.
BAD_CSV = {
    "not_utf8": b"n_params,n_tokens,flops,loss\n1e6,2e7,1.2e14,3.1\n\xe9,2,3,4\n",
    "wrong_type": b"n_params,n_tokens,flops,loss\nabc,2e7,1.2e14,3.1\n",
}
BAD_JSON = {**BAD, "truncated": b'{"law": "chinchilla-3", "params": {"E": 1.6'}

# (name, argv with FILE where the bad file goes, DIR for a scratch folder). A run dir or model dir is built
# around FILE by `_place` when the argv says RUN (FILE is its config.yaml) or CONVERTED (its conversion.json).
READERS = [
    # experiment / sweep / study YAMLs
    ("train", ["train", "FILE"]),
    ("compare", ["compare", "FILE", "--out", "DIR/compare"]),
    ("sweep plan", ["sweep", "plan", "FILE", "--out", "DIR/sweep"]),
    ("sweep run", ["sweep", "run", "FILE", "--out", "DIR/sweep"]),
    ("sweep plan, base experiment", ["sweep", "plan", "BASE_SWEEP", "--out", "DIR/sweep"]),
    ("model info", ["model", "info", "FILE"]),
    ("finetune config", ["finetune", "DIR", "FILE"]),
    ("reward train", ["reward", "train", "FILE"]),
    ("align dpo", ["align", "dpo", "FILE"]),
    ("align ppo", ["align", "ppo", "FILE"]),
    ("align study", ["align", "study", "--config", "FILE", "--out", "DIR/study"]),
    # JSON-lines files
    ("eval --task", ["eval", "DIR/no_run", "--task", "FILE.jsonl"]),
    ("eval --cot", ["eval", "DIR/no_run", "--cot", "FILE.jsonl"]),
    ("lm-eval-task", ["lm-eval-task", "FILE.jsonl", "DIR/lm_eval"]),
    ("reward eval", ["reward", "eval", "DIR/no_run", "FILE.jsonl"]),
    ("reward train data", ["reward", "train", "reward.train_file=FILE.jsonl"]),
    ("align dpo data", ["align", "dpo", "dpo.train_file=FILE.jsonl", "dpo.policy=DIR/no_run"]),
    ("align ppo prompts", ["align", "ppo", "ppo.prompts_file=FILE.jsonl", "ppo.policy=DIR/no_run",
                           "ppo.reward_model=DIR/no_run"]),
    ("align bon", ["align", "bon", "--policy", "DIR/no_run", "--reward-model", "DIR/no_run", "--prompts",
                   "FILE.jsonl"]),
    # run dirs (config.yaml) and converted model dirs (conversion.json)
    ("eval run dir", ["eval", "RUN", "--loss"]),
    ("generate run dir", ["generate", "RUN", "--prompt", "x"]),
    ("quantize run dir", ["quantize", "RUN", "--format", "int8"]),
    ("finetune base run dir", ["finetune", "RUN", "experiments/finetune_tiny.yaml"]),
    ("eval converted dir", ["eval", "CONVERTED", "--loss"]),
    ("finetune converted base", ["finetune", "CONVERTED", "experiments/finetune_tiny.yaml"]),
    # JSON documents
    ("predict", ["predict", "FILE.json", "--flops", "1e20"]),
    ("optimal --hparams-law", ["optimal", "--flops", "1e20", "--hparams-law", "FILE.json"]),
    ("plot --fit", ["plot", "frontier", "--fit", "FILE.json", "--out", "DIR/plots"]),
    ("data info --tokenizer (a tokenizer.json)", ["data", "info", "stdlib", "--tokenizer", "FILE.json"]),
    # CSV tables
    ("fit", ["fit", "FILE.csv"]),
    ("fit-hparams", ["fit-hparams", "FILE.csv"]),
    ("plot --table", ["plot", "isoflop", "--table", "FILE.csv", "--out", "DIR/plots"]),
]


def _place(argv: list[str], content: bytes, tmp_path) -> tuple[list[str], str]:
    """argv with the bad file written where it says; returns it and the path the message must name."""
    out, named = [], ""
    for arg in argv:
        arg = arg.replace("DIR", str(tmp_path))  # before any path goes in
        if "FILE" in arg:
            suffix = next((s for s in (".jsonl", ".json", ".csv") if arg.endswith("FILE" + s)), ".yaml")
            path = tmp_path / f"bad{suffix}"
            path.write_bytes(content)
            arg, named = arg.replace("FILE" + (suffix if suffix != ".yaml" else ""), str(path)), str(path)
        elif arg == "BASE_SWEEP":  # a valid sweep whose base experiment is the bad file
            path = tmp_path / "bad.yaml"
            path.write_bytes(content)
            sweep = tmp_path / "sweep.yaml"
            sweep.write_text(f"name: s\nexperiment: {path}\nbudgets: [1e10]\nsizes: {{per_budget: 3}}\n")
            arg, named = str(sweep), str(path)
        elif arg == "RUN":
            run = tmp_path / "run"
            (run / "checkpoints").mkdir(parents=True)
            (run / "config.yaml").write_bytes(content)
            arg, named = str(run), str(run / "config.yaml")
        elif arg == "CONVERTED":
            model_dir = tmp_path / "converted"
            (model_dir / "params").mkdir(parents=True)
            (model_dir / "model.yaml").write_text("preset: tiny-gpt2\n")
            (model_dir / "conversion.json").write_bytes(content)
            arg, named = str(model_dir), str(model_dir / "conversion.json")
        out.append(arg)
    return out, named


def _cases():
    for name, argv in READERS:
        if any(a.endswith("FILE.csv") for a in argv):
            files = BAD_CSV
        elif any(a.endswith("FILE.json") for a in argv) or "CONVERTED" in argv:
            files = BAD_JSON
        else:
            files = BAD
        for kind, content in files.items():
            yield pytest.param(argv, content, id=f"{name}-{kind}")


def _one_line_error(capsys, code: int, named: str) -> str:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in captured.err.splitlines() if line.startswith("chinchax ") and ": error: " in line]
    assert len(errors) == 1, captured.err[-3000:]
    assert named in errors[0], (named, errors[0])
    return errors[0]


@pytest.mark.parametrize(("argv", "content"), list(_cases()))
def test_a_bad_file_is_one_line_naming_it(argv, content, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/...) land in the test's folder
    argv, named = _place(argv, content, tmp_path)
    argv = [a if a != "experiments/finetune_tiny.yaml" else str(_repo() / a) for a in argv]
    line = _one_line_error(capsys, main(argv), named)
    if content == BAD["not_utf8"]:  # the place of the first bad byte, and the fix
        assert ":1:16 is not UTF-8 text (byte 0xe9)" in line and "save it as UTF-8" in line, line


def _repo():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


def test_yaml_and_json_lines_errors_say_where(tmp_path, capsys):
    """file:line:column of the first byte that is not UTF-8 / of the YAML or JSON error, and the fix."""
    path = tmp_path / "x.yaml"
    path.write_bytes(b"model:\n  d_model: 64\n  name: caf\xe9\n")
    assert main(["train", str(path)]) == 2
    assert f"{path}:3:12 is not UTF-8 text (byte 0xe9)" in capsys.readouterr().err
    path.write_text("model:\n  d_model: [64, 128\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:1 is not valid YAML" in err and "cut short" in err and len(err.strip().splitlines()) == 1
    task = tmp_path / "t.jsonl"
    task.write_text('{"context": "a", "choices": ["x", "y"], "label": 0}\n{"context": "b", "choi')
    assert main(["eval", str(tmp_path), "--task", str(task)]) == 2
    err = capsys.readouterr().err
    assert f"{task}:2:" in err and "cut short" in err


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--limit=-1", "--loss"], ["--limit=-1", ">= 1"]),  # was: silently dropped the last example
        (["--limit=0", "--loss"], ["--limit=0", ">= 1"]),
        (["--cot", "arith:abc"], ["arith:abc", "whole number"]),  # was: ValueError traceback
        (["--cot", "arith:0"], ["arith:0", "from 1"]),  # was: null accuracies and numpy warnings
        (["--cot", "arith:-3"], ["arith:-3", "from 1"]),  # was: scored 26 examples
        (["--cot", "arith:10000000"], ["arith:10000000", "100,000"]),  # was: looped for ever (too few questions)
    ],
    ids=["limit=-1", "limit=0", "cot=arith:abc", "cot=arith:0", "cot=arith:-3", "cot=arith:10000000"],
)
def test_eval_numeric_arguments_are_range_checked_before_any_model_loads(args, words, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "no_run"), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    for word in words:
        assert word in err, (word, err)


@pytest.fixture
def sweep_yaml(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {preset: tiny-gpt2, vocab_size: 384, max_len: 32}\n"
                                        "data: {seq_len: 32}\ntrainer: {steps: 10, batch_size: 4}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nexperiment: base.yaml\nbudgets: [1e10, 3e10]\n"
                     "shape: {aspect_ratio: 16, head_dim: 16}\nsizes: {per_budget: 3, span: 6, min_steps: 5}\n")
    return sweep


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("budgets=[nan]", ["budgets=[nan]", "finite"]),  # was: ValueError traceback from the ladder
        ("budgets=[inf]", ["budgets=[inf]", "finite"]),
        ("budgets=[1e10,-3e10]", ["positive"]),
        ("budgets=[0.0]", ["positive"]),
        ("sizes.per_budget=1", ["sizes.per_budget=1", "approach 2", "at least 3"]),  # was: planned silently
        ("sizes.per_budget=2", ["sizes.per_budget=2", "approach 2", "sizes.per_budget=3 or more"]),
        ("sizes.mode=explicit", ["sizes.n_params", "at least 3"]),  # set below with 2 sizes
        ("sizes.span=nan", ["sizes.tokens_per_param", "sizes.span"]),  # was: ValueError traceback
        ("hparams.base_lr=nan", ["hparams.base_lr"]),  # was: planned at lr nan
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_sweep_plan_numbers_are_range_checked(override, words, sweep_yaml, tmp_path, capsys):
    extra = ["sizes.n_params=[1e5,1e6]"] if override == "sizes.mode=explicit" else []
    assert main(["sweep", "plan", str(sweep_yaml), override, *extra, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "out" / "plan.json").exists()


def test_a_compare_sweep_with_two_sizes_per_budget_is_planned_with_a_warning(sweep_yaml, tmp_path, capsys):
    """Families make it a `chinchax compare` study (approach 3 per family): allowed, with the reason printed."""
    out = tmp_path / "out"
    assert main(["sweep", "plan", str(sweep_yaml), "sizes.per_budget=2", "families={a: [], b: []}",
                 "--out", str(out)]) == 0
    assert "warning: sizes.per_budget=2" in capsys.readouterr().err and (out / "plan.json").is_file()
    assert main(["sweep", "plan", str(sweep_yaml), "--out", str(out)]) == 0  # 3 sizes: no word
    assert "warning" not in capsys.readouterr().err
