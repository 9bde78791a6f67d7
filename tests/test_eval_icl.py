"""In-context learning across scale: `chinchax eval SWEEP_DIR --task T --shots 0,1,4` scores every run of a
sweep at every k, writes icl.csv/icl.json whose numbers are each run's eval.json, and plots them against N
and compute; bad input (--shots larger than the pool, prompts longer than the context) is said clearly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from chinchax import configlib
from chinchax.cli import main
from chinchax.data.pipeline import register_memory_source
from chinchax.train.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
DOCS = [f"Is {i} even? {'yes' if i % 2 == 0 else 'no'}. {i} plus 1 is {i + 1}." for i in range(40)]
MC = [{"context": f"Is {i} even?", "choices": [" yes", " no"], "label": i % 2} for i in range(8)]
GEN = [{"prompt": f"{i} plus 1 is", "references": [f" {i + 1}."]} for i in range(6)]


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def train_run(path: Path, d_model: int) -> None:
    from chinchax.train.trainer import train

    register_memory_source("eval_icl_test", {"train": DOCS, "validation": DOCS[:8]})
    train(configlib.load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [
        f"model.d_model={d_model}", "model.n_layers=1", "model.n_heads=2", f"model.d_ff={2 * d_model}",
        "model.max_len=64", "data.source=memory:eval_icl_test", "data.seq_len=32", "data.eval_batches=1",
        "trainer.batch_size=4", "trainer.steps=4", "trainer.checkpoint_every=4", "trainer.eval_every=0",
        "trainer.progress_bar=false", "optimizer.warmup_steps=1", f"trainer.run_dir={path}"]))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("icl_sweep") / "runs" / "d16"
    train_run(path, 16)
    return path


@pytest.fixture(scope="module")
def sweep(small_run):
    root = small_run.parents[1]
    train_run(root / "runs" / "d32", 32)
    return root


@pytest.mark.slow
def test_sweep_icl_table_and_plots_hold_every_run_and_k(sweep, tmp_path):
    mc, gen = write_jsonl(tmp_path / "yesno.jsonl", MC), write_jsonl(tmp_path / "plus.jsonl", GEN)
    assert main(["eval", str(sweep), "--task", str(mc), "--task", str(gen), "--shots", "0,1,4",
                 "--max-new-tokens", "4", "--batch-size", "8"]) == 0
    out = sweep / "icl"
    rows = list(csv.DictReader((out / "icl.csv").open()))
    assert rows == [{k: str(v) if v is not None else "" for k, v in r.items()}
                    for r in json.loads((out / "icl.json").read_text())["rows"]]
    for run in ("d16", "d32"):
        info = json.loads((sweep / "runs" / run / "run.json").read_text())
        results = json.loads((sweep / "runs" / run / "eval.json").read_text())["results"]
        assert set(results) == {f"{t}/{k}shot" for t in ("yesno", "plus") for k in (0, 1, 4)}
        mine = [r for r in rows if r["run"] == run]
        assert {int(r["n_params"]) for r in mine} == {info["n_params"]}
        assert {float(r["flops"]) for r in mine} == {info["flops_6nd"]}
        for r in mine:  # every table value is the run's own eval.json number, with its standard error
            m = results[f"{r['task']}/{r['shots']}shot"]
            assert float(r["value"]) == m[r["metric"]] and float(r["stderr"]) == m[f"{r['metric']}_stderr"]
        assert {(r["task"], r["metric"]) for r in mine} >= {("yesno", "acc"), ("yesno", "acc_norm"),
                                                            ("plus", "rougeL"), ("plus", "bleu")}
    n = json.loads((sweep / "runs" / "d16" / "run.json").read_text())["n_params"]
    assert n < json.loads((sweep / "runs" / "d32" / "run.json").read_text())["n_params"]
    from chinchax.evaluation.icl_curves import default_out

    assert default_out([sweep / "runs" / "d16", sweep / "runs" / "d32"], None) == sweep.absolute() / "icl"
    assert default_out([tmp_path / "a"], None) == tmp_path.absolute() / "icl"
    for png in ("yesno_acc", "yesno_acc_norm", "plus_rougeL", "plus_bleu"):
        assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*"))  # no temporary files left


@pytest.mark.slow
def test_chain_of_thought_across_the_sweep_reports_each_method(sweep, tmp_path):
    assert main(["eval", str(sweep), "--cot", "arith:4", "--shots", "0,1", "--cot-samples", "2",
                 "--max-new-tokens", "8", "--out", str(tmp_path / "cot")]) == 0
    rows = json.loads((tmp_path / "cot" / "icl.json").read_text())["rows"]
    assert {(r["run"], r["shots"], r["metric"]) for r in rows} == {
        (run, k, m) for run in ("d16", "d32") for k in (0, 1) for m in ("direct_acc", "cot_acc", "maj2_acc")}
    for k in (0, 1):
        assert (tmp_path / "cot" / f"arith_cot_{k}shot.png").is_file()
    results = json.loads((sweep / "runs" / "d32" / "eval.json").read_text())["results"]["arith/cot/1shot"]
    assert results["examples"] == 4 and 0 <= results["cot_acc"] <= 1 and results["samples"] == 2


def test_shots_larger_than_the_pool_fail_before_any_model_loads(tmp_path, capsys):
    mc = write_jsonl(tmp_path / "yesno.jsonl", MC)
    assert main(["eval", str(tmp_path / "no_run_needed"), "--task", str(mc), "--shots", "0,8"]) == 2
    err = capsys.readouterr().err
    assert "--shots 8 is larger than task 'yesno'" in err and "pool of 7" in err and "question itself" in err
    write_jsonl(tmp_path / "yesno.train.jsonl", MC[:3])
    assert main(["eval", str(tmp_path), "--task", str(mc), "--shots", "4"]) == 2
    assert "pool of 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", str(tmp_path), "--task", str(mc), "--shots", "1,-2"])
    assert "every k must be >= 0" in capsys.readouterr().err
    (tmp_path / "empty_sweep" / "runs").mkdir(parents=True)
    assert main(["eval", str(tmp_path / "empty_sweep"), "--task", str(mc)]) == 2
    assert "no run directories under runs/" in capsys.readouterr().err


def test_prompts_longer_than_the_context_are_cut_on_the_left_and_said(small_run, tmp_path, capsys):
    long = [{"context": "Is it even? " * 8 + f"Is {i} even?", "choices": [" yes", " no"], "label": i % 2} for i in range(3)]
    task = write_jsonl(tmp_path / "long.jsonl", long)
    run = small_run
    assert main(["eval", str(run), "--task", str(task), "--shots", "0"]) == 0
    err = capsys.readouterr().err
    assert "3 of 3 prompts are longer than the model's context of 64 tokens" in err
    assert "kept the last tokens of the prompt" in err and "dropping up to" in err
    result = json.loads((run / "eval.json").read_text())["results"]["long/0shot"]
    assert result["truncated_prompts"] == 3 and result["max_tokens_dropped"] == len("Is it even? " * 8 + "Is 0 even?") + 4 - 64
    gen = write_jsonl(tmp_path / "longgen.jsonl", [{"prompt": "one two three " * 6, "references": ["four"]}])
    assert main(["eval", str(run), "--task", str(gen), "--max-new-tokens", "8"]) == 0
    err = capsys.readouterr().err
    assert "1 of 1 prompts are longer than the model's context of 64 tokens" in err
    assert json.loads((run / "eval.json").read_text())["results"]["longgen/0shot"]["max_tokens_dropped"] == 84 - (64 - 1 - 8)
    assert main(["eval", str(run), "--task", str(gen), "--max-new-tokens", "63"]) == 2
    assert "max_new_tokens=63 leaves no room for a prompt" in capsys.readouterr().err
