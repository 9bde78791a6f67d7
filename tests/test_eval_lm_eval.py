"""chinchax as an lm-evaluation-harness model: the lm_eval CLI on a local JSONL task gives the same
accuracies, standard errors and per-choice log-likelihoods as `chinchax eval`; rolling log-likelihood and
generate_until follow lm-eval's definitions; decoder and encoder-decoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from chinchax import configlib
from chinchax.cli import main
from chinchax.data.pipeline import register_memory_source
from chinchax.errors import UserError
from chinchax.train.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
DOCS = [f"Is {i} even? {'yes' if i % 2 == 0 else 'no'}. Is {i + 1} odd? {'no' if i % 2 else 'yes'}." for i in range(40)]


def trained_run(path: Path, *overrides: str) -> Path:
    """A tiny decoder trained for 6 steps on yes/no sentences (memory source; the run dir is a real one)."""
    from chinchax.train.trainer import train

    register_memory_source("eval_lm_eval_test", {"train": DOCS, "validation": DOCS[:8]})
    cfg = configlib.load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [
        "model.d_model=32", "model.n_layers=1", "model.n_heads=4", "model.d_ff=64", "model.max_len=64",
        "data.source=memory:eval_lm_eval_test", "data.seq_len=32", "data.eval_batches=1", "trainer.batch_size=4",
        "trainer.steps=6", "trainer.checkpoint_every=6", "trainer.eval_every=0", "trainer.progress_bar=false",
        "optimizer.warmup_steps=1", f"trainer.run_dir={path}", *overrides])
    train(cfg)
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# choices carry their own leading space (chinchax's format); "é" makes characters and bytes differ (acc_norm vs acc_bytes)
GEN = [{"prompt": f"Is {i} even?", "references": [" yes." if i % 2 == 0 else " no."]} for i in range(5)]
MC = [{"context": f"Is {i} even?", "choices": [" yes", " no", " perhaps é"], "label": i % 2} for i in range(10)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("lm_eval") / "run")


@pytest.fixture(scope="module")
def lm(run):
    from chinchax.evaluation.lm_eval_model import ChinchaxLM

    return ChinchaxLM(run=str(run), batch_size=4)


def req(*args):
    return SimpleNamespace(args=args)


@pytest.mark.slow
def test_lm_eval_cli_equals_chinchax_eval_on_a_local_jsonl_task(run, tmp_path):
    from chinchax.evaluation.lm_eval_model import export_task

    task = write_jsonl(tmp_path / "parity.jsonl", MC)
    gen = write_jsonl(tmp_path / "plus.jsonl", GEN)
    held = write_jsonl(tmp_path / "held.jsonl", MC[:4])  # its shots come from a separate file
    write_jsonl(tmp_path / "held.train.jsonl", MC[4:])
    include = tmp_path / "lm_eval_tasks"
    for path in (task, gen, held):
        export_task(path, include)
    out = tmp_path / "lm_eval_out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "chinchax.evaluation.lm_eval_main", "--model", "chinchax", "--model_args",
         f"run={run}", "--batch_size", "4", "--include_path", str(include), "--tasks", "chinchax_parity,chinchax_plus,chinchax_held",
         "--num_fewshot", "2", "--seed", "0,1234,1234,7", "--output_path", str(out), "--log_samples"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results_file = next(out.rglob("results_*.json"))
    got = json.loads(results_file.read_text())["results"]["chinchax_parity"]

    assert main(["eval", str(run), "--task", str(task), "--shots", "2", "--seed", "7", "--batch-size", "4"]) == 0
    ours = json.loads((run / "eval.json").read_text())["results"]["parity/2shot"]
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert got[f"{metric},none"] == ours[metric], metric
        assert got[f"{metric}_stderr,none"] == pytest.approx(ours[f"{metric}_stderr"], rel=1e-12), metric

    assert main(["eval", str(run), "--task", str(held), "--shots", "2", "--seed", "7", "--batch-size", "4"]) == 0
    ours = json.loads((run / "eval.json").read_text())["results"]["held/2shot"]
    got = json.loads(results_file.read_text())["results"]["chinchax_held"]
    assert [got[f"{m},none"] for m in ("acc", "acc_norm", "acc_bytes")] == [ours[m] for m in ("acc", "acc_norm", "acc_bytes")]
    held_samples = sorted((json.loads(line) for line in next(out.rglob("samples_chinchax_held_*.jsonl")).read_text()
                           .splitlines()), key=lambda s: s["doc_id"])
    from chinchax.evaluation import fewshot
    from chinchax.evaluation.tasks import load_task

    held_prompts = fewshot.prompts(load_task(str(held)), 2, seed=7)
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in held_samples] == held_prompts
    assert all(p.count("\n\n") == 2 and p.split("\n\n")[0].split("?")[0] in {f"Is {i} even" for i in range(4, 10)}
               for p in held_prompts)  # shots from the train file

    # the same prompts and the same log-likelihood of every choice
    from chinchax.evaluation.multiple_choice import score_pairs
    from chinchax.evaluation.scoring import Scorer

    samples = [json.loads(line) for line in next(out.rglob("samples_chinchax_parity_*.jsonl")).read_text().splitlines()]
    samples.sort(key=lambda s: s["doc_id"])
    ctask = load_task(str(task))
    prompts = fewshot.prompts(ctask, 2, seed=7)
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in samples] == prompts
    tok = __import__("chinchax.data.tokenizers", fromlist=["ByteTokenizer"]).ByteTokenizer()
    from chinchax.evaluation.run_loading import load_run

    loaded = load_run(run)
    scores, _ = score_pairs(Scorer(loaded.model, bos_id=tok.bos_id, mask_id=tok.mask_id, batch_size=4), tok,
                            [(p, c) for p, e in zip(prompts, ctask.examples, strict=True) for c in e.choices])
    theirs = [float(r[0][0]) for s in samples for r in s["resps"]]
    assert theirs == pytest.approx([s.logprob for s in scores], rel=1e-6)

    # generate_until through the CLI: the same 2-shot prompts, the same greedy continuations as chinchax's
    from chinchax.evaluation.generation_tasks import continue_texts
    from chinchax.model.decoding import SamplingConfig

    gen_samples = sorted((json.loads(line) for line in next(out.rglob("samples_chinchax_plus_*.jsonl")).read_text()
                          .splitlines()), key=lambda s: s["doc_id"])
    gen_prompts = fewshot.prompts(load_task(str(gen)), 2, seed=7)
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in gen_samples] == gen_prompts
    expected = continue_texts(loaded.model, tok, gen_prompts, SamplingConfig(max_new_tokens=32), batch_size=4)
    assert [s["resps"][0][0] for s in gen_samples] == expected


def test_loglikelihood_rolling_predicts_every_token_once_from_bos(lm):
    short = "Is 4 even? yes."
    (rolled,) = lm.loglikelihood_rolling([req(short)])
    (direct, _), = lm.loglikelihood([req("", short)])
    assert rolled == pytest.approx(direct, rel=1e-6)
    long = " ".join(DOCS[:6])  # > 3 * max_len=64 tokens: several windows
    tokens = lm.tok.encode(long)
    windows = lm.rolling_windows(long)
    assert len(windows) > 2 and [t for _, pred in windows for t in pred] == tokens
    assert all(len(ctx) + len(pred) <= lm.max_length for ctx, pred in windows)
    (rolled,) = lm.loglikelihood_rolling([req(long)])
    assert rolled == pytest.approx(sum(s.logprob for s in lm.scorer.score(windows)), rel=1e-9)
    assert rolled < direct < 0


def test_generate_until_is_greedy_decoding_cut_at_the_stop_strings(lm):
    from chinchax.model.decoding import SamplingConfig, generate

    prompts = ["Is 6 even?", "Is 7"]
    expected = generate(lm.model, [[lm.tok.bos_id, *lm.tok.encode(p)] for p in prompts],
                        SamplingConfig(max_new_tokens=12, stop_tokens=(lm.tok.eos_id,)))
    full = [lm.tok.decode(t) for t in expected.as_lists()]
    out = lm.generate_until([req(p, {"until": ["\n\n"], "max_gen_toks": 12}) for p in prompts])
    assert out == [f.split("\n\n")[0] for f in full]
    stop = full[0][3:5]  # a stop string the model does produce: the text ends right before it
    cut = lm.generate_until([req(prompts[0], {"until": [stop], "max_gen_toks": 12})])
    assert cut == [full[0][: full[0].index(stop)]]


@pytest.mark.slow
def test_encoder_decoder_runs_score_and_generate_through_the_same_class(tmp_path):
    from chinchax.evaluation.lm_eval_model import ChinchaxLM
    from chinchax.evaluation.scoring import Scorer

    path = trained_run(tmp_path / "t5", "model.preset=tiny-t5", "model.vocab_size=384", "model.d_model=32",
                       "model.head_dim=8", "model.d_ff=64", "data.objective=span_corruption")
    lm = ChinchaxLM(run=str(path), batch_size=4)
    assert lm.model.cfg.variant == "encoder_decoder"
    got = lm.loglikelihood([req("Is 2 even?", " yes"), req("Is 2 even?", " no")])
    direct = Scorer(lm.model, bos_id=lm.tok.bos_id, mask_id=lm.tok.mask_id, batch_size=4).score(
        [(lm.tok.encode("Is 2 even?"), lm.tok.encode(" yes")), (lm.tok.encode("Is 2 even?"), lm.tok.encode(" no"))])
    assert [g[0] for g in got] == pytest.approx([d.logprob for d in direct], rel=1e-6)
    (text,) = lm.generate_until([req("Is 2 even?", {"until": ["\n\n"], "max_gen_toks": 4})])
    assert isinstance(text, str) and "\n\n" not in text


def test_lm_eval_task_export_from_the_cli(tmp_path, capsys):
    import yaml

    write_jsonl(tmp_path / "quiz.jsonl", MC)
    write_jsonl(tmp_path / "quiz.train.jsonl", MC[:3])
    assert main(["lm-eval-task", str(tmp_path / "quiz.jsonl"), str(tmp_path / "out")]) == 0
    assert "--include_path" in capsys.readouterr().out
    text = (tmp_path / "out" / "chinchax_quiz.yaml").read_text()
    cfg = yaml.safe_load(text.replace("!function ", ""))
    assert cfg["task"] == "chinchax_quiz" and cfg["fewshot_split"] == "test" and cfg["target_delimiter"] == ""
    assert cfg["dataset_kwargs"]["data_files"]["train"] == str(tmp_path / "quiz.train.jsonl")
    assert cfg["fewshot_config"]["sampler"] == "chinchax_quiz_shots.Sampler"  # a module beside the YAML
    assert str(tmp_path / "quiz.train.jsonl") in (tmp_path / "out" / "chinchax_quiz_shots.py").read_text()
    write_jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "reference": "b"}])
    assert main(["lm-eval-task", str(tmp_path / "g.jsonl"), str(tmp_path / "out")]) == 2
    assert "needs 'references' lists" in capsys.readouterr().err
    write_jsonl(tmp_path / "nogold.jsonl", [{"context": "c", "choices": ["a", "b"]}])
    assert main(["lm-eval-task", str(tmp_path / "nogold.jsonl"), str(tmp_path / "out")]) == 2
    assert "no gold answer" in capsys.readouterr().err


def test_model_args_errors_name_the_fix(tmp_path):
    from chinchax.evaluation.lm_eval_model import ChinchaxLM

    with pytest.raises(UserError, match="run=RUN_DIR"):
        ChinchaxLM()
    with pytest.raises(UserError, match="unknown chinchax model_args"):
        ChinchaxLM(run=str(tmp_path), pretrained="gpt2")
    with pytest.raises(UserError, match="run directory"):
        ChinchaxLM(run=str(tmp_path))


def test_registered_in_lm_eval_and_long_prompts_are_cut_on_the_left_and_reported(lm, capsys):
    from lm_eval.api.registry import get_model

    from chinchax.evaluation.lm_eval_model import ChinchaxLM

    assert get_model("chinchax") is ChinchaxLM
    long_context = "Is 3 even? no. " * 10  # 150 bytes > max_len=64
    (cut, _), = lm.loglikelihood([req(long_context, " yes")])
    err = capsys.readouterr().err
    assert "1 of 1 prompts are longer than the model's context of 64 tokens" in err and "last tokens" in err
    # lm-eval moves the context's trailing space into the continuation: "  yes" (5 tokens), 59 context tokens kept
    kept = long_context.rstrip()[-(64 - len("  yes")):]
    (same, _), = lm.loglikelihood([req(kept, "  yes")])
    assert cut == pytest.approx(same, rel=1e-6)
    assert np.isfinite(cut)
