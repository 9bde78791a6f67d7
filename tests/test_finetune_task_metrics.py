"""Instruction tasks scored by their own metric (evaluation/task_metrics.py) and the fine-tuning study's
held-out scores: ROUGE-L against rouge-score's documented values and hand-counted LCS, dispatch by metric,
the soft-prompt decoder against the KV-cache decoder, and the study's summary on a toy run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from chinchax.data.instruction_tasks import Example, Task
from chinchax.errors import UserError
from chinchax.evaluation import task_metrics


def test_rouge_l_identical_disjoint_and_hand_counted_lcs():
    assert task_metrics.rouge_l("returns the parsed header", "returns the parsed header") == 1.0
    assert task_metrics.rouge_l("open a socket", "close every file") == 0.0
    # target [the cat lay on a mat], prediction [the cat sat on the mat]: LCS "the cat on mat" = 4 of 6 and 6
    assert task_metrics.rouge_l("the cat sat on the mat", "the cat lay on a mat") == pytest.approx(2 * 4 / (6 + 6))
    # LCS is in order, not a bag: [b a] vs [a b] share one in-order token of 2 and 2 (ROUGE-1 would say 1.0)
    assert task_metrics.rouge_l("beta alpha", "alpha beta") == pytest.approx(2 * 1 / (2 + 2))
    # rouge-score's README: rougeL precision 0.625 (5/8), recall 5/9 for these two sentences (stemmer on)
    p, r = 5 / 8, 5 / 9
    assert task_metrics.rouge_l("The quick brown dog jumps on the log.",
                                "The quick brown fox jumps over the lazy dog") == pytest.approx(2 * p * r / (p + r))


def test_metrics_dispatch_and_unknown_metric_is_refused():
    preds, targets = ["the cat sat", " Parse a header.  "], ["the cat sat down", "Parse a header."]
    assert task_metrics.per_example("exact_match", preds, targets) == [0.0, 1.0]
    assert task_metrics.per_example("rouge", preds, targets) == pytest.approx([2 * 3 / (3 + 4), 1.0])
    with pytest.raises(UserError, match=r"'bleu'.*exact_match, rouge, accuracy"):
        task_metrics.check_metric("bleu")
    task = Task("t", "c", ("{doc}",), [Example({"doc": "x"}, "y")], metric="bleu")
    with pytest.raises(UserError, match=r"unknown task metric 'bleu'.*known metrics"):
        task_metrics.score_task(None, None, task)  # refused before any model work
    with pytest.raises(UserError, match="likelihood"):
        task_metrics.per_example("accuracy", preds, targets)


# --- the study on a toy run -----------------------------------------------------------------------------

# --quick with one base and the two generation paths (merged weights: full; soft prompt: prompt_tuning)
TINY = ["base.d_models=[32]", "base.steps=10", "finetune.steps=4", "finetune.eval_at=[1,2,4]", "finetune.methods=[full,prompt_tuning]",
        "finetune.eval_batches=1", "mixture.n_examples=64", "bootstrap=4", "held_out.examples=6",
        "held_out.max_new_tokens=8", "held_out.batch_size=4"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from chinchax.experiments import finetune_study

    out = tmp_path_factory.mktemp("ftm") / "ft"
    assert finetune_study.main(["--quick", "--out", str(out), *TINY]) == 0
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_quick_summary_holds_the_held_out_metric_per_method(study):
    out, summary = study
    assert summary["held_out_tasks"] == {"function_summary": {"cluster": "summarization", "metric": "rouge",
                                                              "examples": 6}}
    last = max(r["d_f"] for r in summary["rows"])
    scored = {(r["method"], r["d_model"]): r["held_out"] for r in summary["rows"] if r["d_f"] == last}
    assert set(scored) == {("full", 32), ("prompt_tuning", 32)}
    for held in scored.values():
        h = held["function_summary"]
        assert h["metric"] == "rouge" and h["examples"] == 6
        assert 0.0 <= h["score"] <= 1.0 and math.isfinite(h["stderr"])
        assert all(isinstance(s["prediction"], str) and "\n" not in s["prediction"] for s in h["samples"])
    assert all(r["held_out"] == {} for r in summary["rows"] if r["d_f"] < last)  # --quick: the last D_f only
    assert summary["not_fitted"] == ["full", "prompt_tuning"] and summary["fits"] == {}  # one base size
    report = (out / "report.md").read_text()
    assert "Held-out task function_summary (cluster summarization, zero-shot): ROUGE-L F" in report


@pytest.mark.slow
def test_staged_run_scores_every_d_f_with_the_losses_of_one_run(study):
    """held_out.every_d_f: the fine-tune stops at each D_f and keeps its model; the losses are those of the
    unstaged run (a constant rate: extending a run equals running it at the new length)."""
    from chinchax.configlib import load_config
    from chinchax.experiments import finetune_study

    out, summary = study
    cfg = load_config(finetune_study.StudyConfig, None, [*finetune_study.QUICK, *TINY, "held_out.every_d_f=true",
                                                          "finetune.eval_at=[2,4]"])
    source, _, tasks = finetune_study.mixture_source(cfg)
    run_dir = out / "staged" / "d32-full"
    _, models = finetune_study.finetune_run(cfg, out / "bases" / "d32", "full", source, run_dir)
    assert models == {2: run_dir / "at" / "step2", 4: run_dir / "merged"}
    staged = {r["step"]: r["loss"] for r in finetune_study.collect(run_dir, [2, 4], 8)}
    one_run = {r["step"]: r["loss"] for r in summary["rows"] if r["method"] == "full" and r["step"] in (2, 4)}
    assert staged == one_run
    final = finetune_study.score_held_out(cfg, tasks, models[4])["function_summary"]
    in_study = next(r for r in summary["rows"] if (r["method"], r["d_model"], r["step"]) == ("full", 32, 4))
    assert final["score"] == in_study["held_out"]["function_summary"]["score"]
    early = finetune_study.score_held_out(cfg, tasks, models[2])["function_summary"]
    assert early["metric"] == "rouge" and 0.0 <= early["score"] <= 1.0


@pytest.mark.slow
def test_soft_prompt_decoder_equals_kv_cache_decoder_and_accuracy_equals_mc_scorer(study):
    """With an empty soft prompt the uncached greedy loop must produce the KV-cache decoder's text, and
    accuracy must be chinchax eval's multiple-choice `acc` on the same prompts and options."""
    from flax import nnx

    from chinchax.data.mixtures import format_example
    from chinchax.evaluation.multiple_choice import evaluate_multiple_choice
    from chinchax.evaluation.run_loading import load_run
    from chinchax.evaluation.scoring import Scorer
    from chinchax.evaluation.tasks import MultipleChoice
    from chinchax.evaluation.tasks import Task as EvalTask
    from chinchax.model import Transformer

    out, _ = study
    full = load_run(out / "finetunes" / "d32-full" / "merged", soft_prompt=True)
    model, tok = full.model, full.tokenizer
    assert not isinstance(model, task_metrics.SoftPrompted)
    # a random model of the same shape: the toy fine-tunes emit only spaces, which would make this vacuous
    random_model = Transformer(model.cfg, rngs=nnx.Rngs(params=3, dropout=1))
    random_model.eval()
    texts = ["def add(a, b):\n    return a + b\nSummary: ", "Docstring:\nRead the file.\nFunction name: ", "x"]
    cached = task_metrics.generate_texts(random_model, tok, texts, max_new_tokens=12, batch_size=4)
    empty = task_metrics.SoftPrompted(random_model, np.zeros((0, model.cfg.d_model), np.float32))
    uncached = task_metrics.generate_texts(empty, tok, texts, max_new_tokens=12, batch_size=4)
    assert any(c.strip() for c in cached), cached
    assert uncached == cached

    prompted = load_run(out / "finetunes" / "d32-prompt_tuning" / "merged", soft_prompt=True).model
    assert isinstance(prompted, task_metrics.SoftPrompted) and prompted.prompt_PD[...].shape[0] > 0

    names = ["read_file", "parse_header", "open_socket", "close_all"]
    examples = [Example({"doc": d, "options": ", ".join(names)}, t, tuple(names)) for d, t in
                [("Read the file.", "read_file"), ("Parse a header.", "parse_header"), ("Open a socket.", "open_socket"),
                 ("Close all files.", "close_all"), ("Read it all.", "read_file")]]
    task = Task("identifier_choice", "multiple_choice", ("{doc}\nWhich function is this? Options: {options}\nAnswer:",),
                examples, metric="accuracy")
    got = task_metrics.score_task(model, tok, task, batch_size=4)
    mc = EvalTask("mc", "multiple_choice", [MultipleChoice(format_example(task, e, task.templates[0]),
                                                           tuple(" " + n for n in names), names.index(e.target))
                                            for e in examples])
    want = evaluate_multiple_choice(Scorer(model, bos_id=tok.bos_id, mask_id=tok.mask_id, batch_size=4), tok, mc)
    assert got["metric"] == "accuracy" and got["examples"] == 5
    assert got["score"] == pytest.approx(want["acc"]) and got["stderr"] == pytest.approx(want["acc_stderr"])
