"""chinchax.rundir: every kind of run directory is told apart by its marker files, each missing piece is one
error naming the directory, what is missing and the fix; run.json is read one way, and old run dirs whose
files spelled a non-finite number "nan" still load. Files only: no model is built."""

from __future__ import annotations

import json

import pytest

from chinchax import jsonio, rundir
from chinchax.errors import UserError


def _files(root, *names, **texts):
    """Make `root` with empty files/folders (a name ending in / is a folder) and files with given text."""
    for name in names:
        path = root / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
    for name, text in texts.items():
        (root / name.replace("__", ".")).write_text(text)
    return root


def _model_dir(root, *extra):
    return _files(root, "model.yaml", "params/", *extra, conversion__json='{"tokenizer": "byte"}')


def test_each_kind_is_known_by_its_markers(tmp_path):
    trained = _files(tmp_path / "t", "config.yaml", "checkpoints/")
    converted = _model_dir(tmp_path / "c")
    quantized = _model_dir(tmp_path / "q", "quantization.json")
    prompt_model = _model_dir(tmp_path / "pm", "prompt_PD.npy")
    finetuned = _files(tmp_path / "f", "finetune.yaml", "config.yaml", "checkpoints/")
    _model_dir(finetuned / "merged")
    prompt_run = _files(tmp_path / "p", "finetune.yaml", "config.yaml", "checkpoints/")
    _model_dir(prompt_run / "merged", "prompt_PD.npy")
    reward = _files(tmp_path / "r", "checkpoints/", "run.json", align_config__yaml="kind: reward_model\n")
    dpo = _files(tmp_path / "d", "config.yaml", "checkpoints/", align_config__yaml="kind: dpo\n")
    expected = {trained: "trained", converted: "converted", quantized: "quantized", prompt_model: "prompt_tuned",
                finetuned: "finetuned", prompt_run: "prompt_tuned", reward: "reward", dpo: "trained"}
    for path, kind in expected.items():
        assert rundir.kind_of(path) == kind, path
        assert rundir.recognise(path).kind == kind
    assert rundir.recognise(finetuned).model_dir == finetuned / "merged"
    assert rundir.recognise(converted).model_dir == converted and rundir.recognise(trained).model_dir is None
    assert rundir.kind_of(tmp_path / "nothing") is None


@pytest.mark.parametrize("make, accept, message", [
    (lambda p: p, rundir.KINDS, r"neither a run directory \(no config.yaml: train one with `chinchax train`\)"),
    (lambda p: _files(p, "align_config.yaml", "policy/config.yaml"), rundir.KINDS, r"its trained policy is .*policy"),
    (lambda p: _files(p, "config.yaml"), rundir.KINDS, r"has no checkpoints/ yet; wait for the first checkpoint"),
    (lambda p: _files(p, "finetune.yaml", "config.yaml", "checkpoints/"), rundir.KINDS,
     r"fine-tune that has not finished \(no merged/ yet\): resume it with the same `chinchax finetune`"),
    (lambda p: _files(p, "model.yaml"), rundir.KINDS, r"has model.yaml but no params/ .*`chinchax model convert"),
    (lambda p: _files(p, "model.yaml", "params/", conversion__json='{"tokenizer": '), rundir.KINDS,
     r"conversion record .*conversion.json:1:\d+ is not valid JSON.*cut short.*chinchax model convert"),
    (lambda p: _files(p, "model.yaml", "params/", conversion__json='{"tokenizer": 3}'), rundir.KINDS,
     r"not a JSON object with a string 'tokenizer'"),
    (lambda p: _files(p, "checkpoints/", align_config__yaml="kind: reward_model\n"), rundir.KINDS,
     r"reward-model run that has not finished \(no run.json yet\); run the same `chinchax reward train`"),
    (lambda p: _files(p, "config.yaml", "checkpoints/"), (rundir.REWARD,),
     r"is a trained model, not a reward model; pass a run dir written by `chinchax reward train`"),
    (lambda p: _files(p, "checkpoints/", "run.json", align_config__yaml="kind: reward_model\n"),
     rundir.LANGUAGE_MODELS, r"is a reward model .*`chinchax reward eval .* PAIRS.jsonl`"),
    (lambda p: _model_dir(p, "prompt_PD.npy"), rundir.LANGUAGE_MODELS, r"is a prompt-tuned model: its soft prompt"),
])
def test_each_missing_piece_is_one_error_naming_the_dir_and_the_fix(tmp_path, make, accept, message):
    path = tmp_path / "run"
    path.mkdir()
    make(path)
    with pytest.raises(UserError, match=message) as e:
        rundir.recognise(path, accept=accept)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_run_json_must_be_there_or_may_be_missing(tmp_path):
    with pytest.raises(UserError, match=r"has no run.json: the run has not finished; run the same command again"):
        rundir.read_run_json(tmp_path)
    assert rundir.run_json_or_none(tmp_path) is None
    (tmp_path / "run.json").write_text('{"steps": 3, ')  # damaged: cut short
    with pytest.raises(UserError, match=r"run.json:1:\d+ is not valid JSON.*cut short.*; FIX"):
        rundir.read_run_json(tmp_path, fix="FIX")
    assert rundir.run_json_or_none(tmp_path) is None  # "not finished": running it again rewrites it
    (tmp_path / "run.json").write_text("[1, 2]")
    with pytest.raises(UserError, match=r"holds a JSON list, not an object"):
        rundir.read_run_json(tmp_path)
    jsonio.write_json(tmp_path / "run.json", {"steps": 3, "eval_loss": float("nan"), "mfu": float("inf")})
    assert json.loads((tmp_path / "run.json").read_text()) == {"steps": 3, "eval_loss": None, "mfu": None}
    assert rundir.read_run_json(tmp_path) == rundir.run_json_or_none(tmp_path) == {"steps": 3, "eval_loss": None,
                                                                                    "mfu": None}


def test_an_old_run_dir_with_nan_strings_still_loads(tmp_path):
    """Before null was the one spelling, metrics.jsonl rows held "nan"/"inf" strings: they read as None, a
    resumed logger rewrites them as null, and the run's results row is what it was."""
    from chinchax.scaling.run_rows import sweep_dir_rows
    from chinchax.train.metrics import MetricsLogger

    run = tmp_path / "sweep" / "a"
    run.mkdir(parents=True)
    old_rows = [{"step": 1, "loss": 3.0, "eval_loss_stderr": "nan"}, {"step": 2, "loss": 2.5, "mfu": "inf"}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old_rows))
    (run / "run.json").write_text(json.dumps({"status": "done", "eval_loss": "nan", "final_train_loss": 2.5,
                                              "n_params": 10, "n_tokens": 100, "flops_6nd": 6000.0}))
    assert jsonio.read_jsonl(run / "metrics.jsonl") == [{"step": 1, "loss": 3.0, "eval_loss_stderr": None},
                                                        {"step": 2, "loss": 2.5, "mfu": None}]
    assert rundir.read_run_json(run)["eval_loss"] is None
    MetricsLogger(run, resume_step=2, enabled=True).close()
    assert "nan" not in (run / "metrics.jsonl").read_text() and "null" in (run / "metrics.jsonl").read_text()
    [(row, _)] = sweep_dir_rows(tmp_path / "sweep")
    assert row["loss"] == 2.5 and row["flops"] == 6000.0  # the training loss, as when eval_loss was "nan"
