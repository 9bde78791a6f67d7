"""Collecting a sweep: results.csv / curves.csv from run.json + metrics.jsonl, and the sweep CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

from chinchax.cli import main
from chinchax.scaling import executors
from chinchax.scaling.results import FAILED_MARKER, RESULT_COLUMNS, SweepDir, collect, write_atomic

_spec = importlib.util.spec_from_file_location("sweep_fakes", Path(__file__).with_name("sweep_fakes.py"))
fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakes)


def _read(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_collect_writes_the_table_fit_reads(tmp_path, monkeypatch):
    s = SweepDir(tmp_path / "sweep")
    plan = fakes.fake_plan(4)
    s.write_plan(plan)
    monkeypatch.setenv("FAKE_FAIL", "r3")
    executors.run_local(plan, s, max_retries=0, train_command=fakes.fake_train_command(tmp_path), progress=False)
    # A resumed run logs some steps twice and may leave a line cut by the kill: keep the last, skip the cut.
    with (s.run_dir("r0") / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "loss": 99.0, "tokens": 64, "flops_6nd": 1.0, "flops_6nd_non_embedding": 1.0}\n')
        f.write('{"step": 3, "loss": 1.0, "tok')
    rows, curves = collect(s, plan)
    table = _read(s.root / "results.csv")
    assert [r["run"] for r in table] == ["r0", "r1", "r2"]  # r3 failed: not in the table
    assert list(table[0])[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    for row, run in zip(table, plan.runs, strict=False):
        run_json = json.loads((s.run_dir(run.run_id) / "run.json").read_text())
        assert float(row["loss"]) == pytest.approx(run_json["eval_loss"])  # eval loss, not train loss
        assert float(row["flops"]) == pytest.approx(run_json["flops_6nd"])  # the plan's N convention (total)
        assert int(row["n_params"]) == run_json["n_params"]
        assert int(row["n_tokens"]) == run_json["n_tokens"]
        assert float(row["budget"]) == run.budget and int(row["d_model"]) == run.d_model
    curve = _read(s.root / "curves.csv")
    r0 = [c for c in curve if c["run"] == "r0"]
    assert [int(c["step"]) for c in r0] == list(range(1, plan.runs[0].steps + 1))
    assert float(r0[1]["loss"]) == 99.0  # step 2 as logged last
    assert {c["run"] for c in curve} == {"r0", "r1", "r2"}
    assert all(float(c["flops"]) > 0 and int(c["n_tokens"]) > 0 for c in curve)


def test_collect_non_embedding_convention(tmp_path):
    import dataclasses

    s = SweepDir(tmp_path / "sweep")
    plan = dataclasses.replace(fakes.fake_plan(2), n_convention="non_embedding")
    s.write_plan(plan)
    executors.run_local(plan, s, train_command=fakes.fake_train_command(tmp_path), progress=False)
    rows, _ = collect(s)
    for row in rows:
        run_json = json.loads((s.run_dir(row["run"]) / "run.json").read_text())
        assert row["flops"] == run_json["flops_6nd_non_embedding"]


def test_chinchax_fit_reads_results_csv(tmp_path):
    table_mod = pytest.importorskip("chinchax.scaling.table")
    s = SweepDir(tmp_path / "sweep")
    plan = fakes.fake_plan(4)
    s.write_plan(plan)
    executors.run_local(plan, s, train_command=fakes.fake_train_command(tmp_path), progress=False)
    collect(s, plan)
    frame = table_mod.load_table(s.root / "results.csv")
    assert len(frame) == 4
    assert {"n_params", "n_tokens", "loss", "flops"} <= set(frame.columns)


def test_write_atomic_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "x.json"
    write_atomic(target, "old")

    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # fails while writing
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_sweep_cli_plan_run_status_collect(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(
        "model: {preset: tiny-gpt2, vocab_size: 384, max_len: 32}\n"
        "data: {seq_len: 32}\n"
        "trainer: {steps: 10, batch_size: 4}\n"
    )
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "name: cli\nexperiment: base.yaml\nbudgets: [1e10, 3e10]\n"
        "shape: {aspect_ratio: 16, head_dim: 16}\nsizes: {per_budget: 3, span: 6, min_steps: 5}\n"
    )
    out = tmp_path / "out"
    assert main(["sweep", "plan", str(sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["runs"]) == 6 and all(r["run_id"] in printed for r in plan["runs"])
    assert main(["sweep", "status", str(out)]) == 0
    assert "planned 6" in capsys.readouterr().out
    fake = shlex.join(fakes.fake_train_command(tmp_path))
    assert main(["sweep", "run", str(sweep), "--out", str(out), "--train-command", fake]) == 0
    assert "done 6" in capsys.readouterr().out
    assert main(["sweep", "collect", str(sweep), "--out", str(out)]) == 0
    assert "6 of 6 runs finished" in capsys.readouterr().out
    assert len(_read(out / "results.csv")) == 6
    # Bad input names the problem.
    assert main(["sweep", "plan", str(sweep), "budgets=[]", "--out", str(out)]) == 2
    assert "no budgets" in capsys.readouterr().err
    assert main(["sweep", "status", str(tmp_path / "nowhere")]) == 2
    assert main(["sweep", "run", str(sweep), "--out", str(tmp_path / "out2"), "--executor", "tpu", "--dry-run"]) == 0
    assert "gcloud compute tpus queued-resources create" in capsys.readouterr().out


def test_sweep_run_exits_75_when_a_run_was_stopped_by_a_signal_and_none_failed(tmp_path, capsys):
    """A trainer stopped by SIGTERM/SIGINT exits 75 after saving (train/preemption.py): the run is interrupted,
    not failed, and `sweep run` says so with the same exit code, so a job script can tell "resubmit" from "fix";
    a failed run still makes it 1."""
    base = tmp_path / "base.yaml"
    base.write_text("model: {preset: tiny-gpt2, vocab_size: 384, max_len: 32}\ndata: {seq_len: 32}\n"
                    "trainer: {steps: 10, batch_size: 4}\n")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: stop\nexperiment: base.yaml\nbudgets: [1e10]\n"
                     "shape: {aspect_ratio: 16, head_dim: 16}\nsizes: {per_budget: 3, span: 6, min_steps: 5}\n")
    out = tmp_path / "out"
    assert main(["sweep", "plan", str(sweep), "--out", str(out)]) == 0
    first = json.loads((out / "plan.json").read_text())["runs"][0]["run_id"]
    stopper = tmp_path / "stopper.py"  # the first run is "preempted"; the others train as the fake does
    stopper.write_text(
        "import pathlib, sys, yaml\n"
        "d = pathlib.Path(yaml.safe_load(open(sys.argv[1]))['trainer']['run_dir'])\n"
        f"if d.name == '{first}':\n"
        "    (d / 'interrupted.json').write_text('{\"step\": 3, \"signal\": \"SIGTERM\"}')\n"
        "    print('chinchax train: stopped by SIGTERM at step 3 (exit code 75)', file=sys.stderr); sys.exit(75)\n"
        f"exec(open({fakes.fake_train_command(tmp_path)[1]!r}).read())\n"
    )
    capsys.readouterr()
    cmd = shlex.join([sys.executable, str(stopper)])
    assert main(["sweep", "run", str(sweep), "--out", str(out), "--train-command", cmd]) == 75
    captured = capsys.readouterr()
    assert "done 2" in captured.out and "interrupted 1" in captured.out
    assert "1 runs interrupted by a signal" in captured.err and first in captured.err
    assert not (SweepDir(out).run_dir(first) / FAILED_MARKER).exists() and SweepDir(out).state(first) == "interrupted"
    # A failure outranks an interruption: exit 1.
    sweep2 = tmp_path / "sweep2.yaml"
    sweep2.write_text(sweep.read_text().replace("name: stop", "name: stop2"))
    out2 = tmp_path / "out2"
    assert main(["sweep", "plan", str(sweep2), "--out", str(out2)]) == 0
    first2 = json.loads((out2 / "plan.json").read_text())["runs"][0]["run_id"]
    mixed = tmp_path / "mixed.py"
    mixed.write_text(
        "import sys, yaml\n"
        f"sys.exit(75 if yaml.safe_load(open(sys.argv[1]))['trainer']['run_dir'].endswith('{first2}') else 1)\n"
    )
    cmd = shlex.join([sys.executable, str(mixed)])
    assert main(["sweep", "run", str(sweep2), "--out", str(out2), "--train-command", cmd, "--max-retries", "0"]) == 1


def test_collect_adds_eval_json_columns(tmp_path):
    """Downstream metrics from `chinchax eval` (RUN_DIR/eval.json) become results.csv columns, so
    `chinchax fit` can fit them against compute too; runs without them get empty cells."""
    from chinchax.evaluation.results import record

    s = SweepDir(tmp_path / "sweep")
    plan = fakes.fake_plan(3)
    s.write_plan(plan)
    executors.run_local(plan, s, max_retries=0, train_command=fakes.fake_train_command(tmp_path), progress=False)
    record(s.run_dir("r0"), 10, "copa/0shot", {"acc": 0.61, "acc_stderr": 0.05, "note": "text is skipped"})
    record(s.run_dir("r1"), 10, "copa/0shot", {"acc": 0.55, "acc_stderr": 0.05})
    collect(s, plan)
    table = {r["run"]: r for r in _read(s.root / "results.csv")}
    assert float(table["r0"]["eval/copa/0shot/acc"]) == 0.61
    assert float(table["r1"]["eval/copa/0shot/acc_stderr"]) == 0.05
    assert table["r2"]["eval/copa/0shot/acc"] == ""
    assert "eval/copa/0shot/note" not in table["r0"]


@pytest.mark.parametrize("law", ["chinchilla-3", "kaplan"])
def test_fit_of_sweep_dir_equals_fit_of_its_results_csv(tmp_path, capsys, law):
    """`chinchax fit SWEEP` and `chinchax fit SWEEP/results.csv` read the same rows (scaling/run_rows.py):
    the plan's N convention for flops and its planned budgets, not 6·N_total·D and budgets guessed by rounding."""
    import dataclasses

    from chinchax.scaling.table import load_table

    s = SweepDir(tmp_path / "sweep")
    plan = dataclasses.replace(fakes.fake_plan(6), n_convention="non_embedding")
    s.write_plan(plan)
    executors.run_local(plan, s, train_command=fakes.fake_train_command(tmp_path), progress=False)
    collect(s, plan)
    from_dir, from_csv = load_table(s.root), load_table(s.root / "results.csv")
    core = ["run", "n_params", "n_params_non_embedding", "n_tokens", "flops", "loss", "budget"]
    pd = pytest.importorskip("pandas")
    pd.testing.assert_frame_equal(from_dir[core], from_csv[core])
    assert list(from_dir["budget"]) == [r.budget for r in plan.runs]  # planned, not guessed
    run_json = json.loads((s.run_dir("r0") / "run.json").read_text())
    assert from_dir["flops"].iloc[0] == run_json["flops_6nd_non_embedding"] != run_json["flops_6nd"]
    fits = []
    for source in (s.root, s.root / "results.csv"):
        out = tmp_path / f"{source.name}.{law}.json"
        assert main(["fit", str(source), "--law", law, "--bootstrap", "4", "--coarse-grid", "--out", str(out)]) == 0
        fits.append(json.loads(out.read_text()))
    printed = capsys.readouterr().out
    assert fits[0]["params"] == fits[1]["params"] and fits[0]["intervals"] == fits[1]["intervals"]
    assert fits[0]["n_runs"] == fits[1]["n_runs"] == 6, printed
