"""Tasks (JSONL, TFDS adapters), k-shot prompts, multiple-choice accuracy, ROUGE/BLEU wiring."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flax import nnx

from chinchax.data.tokenizers import ByteTokenizer
from chinchax.errors import UserError
from chinchax.evaluation import fewshot, tasks
from chinchax.evaluation.generation_tasks import evaluate_generation
from chinchax.evaluation.metrics import bleu, mean_and_stderr, rouge
from chinchax.evaluation.multiple_choice import evaluate_multiple_choice
from chinchax.evaluation.scoring import Score, Scorer
from chinchax.model import Transformer
from chinchax.model.config import load_model_config
from chinchax.model.decoding import SamplingConfig

TOK = ByteTokenizer()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


MC = [{"context": f"q{i}:", "choices": [" yes", " no", " maybe"], "label": i % 3} for i in range(6)]


def test_jsonl_task_with_a_train_sibling_and_without(tmp_path):
    task = tasks.load_task(str(write_jsonl(tmp_path / "quiz.jsonl", MC)))
    assert task.name == "quiz" and task.kind == "multiple_choice" and task.shots_are_examples
    assert task.examples[4] == tasks.MultipleChoice("q4:", (" yes", " no", " maybe"), 1)
    write_jsonl(tmp_path / "quiz.train.jsonl", MC[:2])
    task = tasks.load_task(str(tmp_path / "quiz.jsonl"))
    assert len(task.shots) == 2 and not task.shots_are_examples
    gen = tasks.load_task(str(write_jsonl(tmp_path / "g.jsonl", [{"prompt": "a", "reference": "b"}])))
    assert gen.kind == "generation" and gen.examples[0].references == ("b",)


@pytest.mark.parametrize(
    "record,match",
    [
        ({"context": "c", "choices": ["a", "b"], "label": 2}, "label"),
        ({"context": "c", "choices": ["a", "b"]}, "no gold answer"),
        ({"context": "c", "choices": ["a"], "label": 0}, "at least 2"),
        ({"question": "c"}, "unknown record"),
        ({"prompt": "p"}, "no gold answer"),
        ({"prompt": "p", "references": []}, "no gold answer"),
    ],
)
def test_bad_task_records_are_user_errors(tmp_path, record, match):
    with pytest.raises(UserError, match=match):
        tasks.load_task(str(write_jsonl(tmp_path / "bad.jsonl", [record])))


def test_bad_task_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        tasks.load_task(str(tmp_path / "missing.jsonl"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="broken.jsonl:1"):
        tasks.load_task(str(tmp_path / "broken.jsonl"))
    write_jsonl(tmp_path / "mixed.jsonl", [MC[0], {"prompt": "p", "reference": "r"}])
    with pytest.raises(UserError, match="mixes"):
        tasks.load_task(str(tmp_path / "mixed.jsonl"))
    with pytest.raises(UserError, match="unknown TFDS task"):
        tasks.load_task("tfds:not_a_task")
    for name in ("piqa", "super_glue/copa"):  # a builder this install has / one it lacks (needs TensorFlow)
        with pytest.raises(UserError, match="not prepared") as e:
            tasks.load_task(f"tfds:{name}", data_dir=str(tmp_path / "tfds"))
        assert len(str(e.value)) < 600


def test_k_shot_prompts_are_seeded_per_example_and_never_show_the_answer_of_the_question():
    task = tasks.Task("quiz", "multiple_choice", [tasks.MultipleChoice(**{**r, "choices": tuple(r["choices"])}) for r in MC],
                      [], shots_are_examples=True)
    task = tasks.Task(task.name, task.kind, task.examples, task.examples, shots_are_examples=True)
    prompts = fewshot.prompts(task, 2, seed=0)
    for i, prompt in enumerate(prompts):
        parts = prompt.split("\n\n")
        assert len(parts) == 3 and parts[-1] == f"q{i}:"
        shown = {p.split(":")[0] for p in parts[:2]}
        assert f"q{i}" not in shown and len(shown) == 2
        for part in parts[:2]:  # each shot is solved with its own label
            j = int(part[1 : part.index(":")])
            assert part == f"q{j}:" + MC[j]["choices"][MC[j]["label"]]
    assert fewshot.prompts(task, 2, seed=0) == prompts
    assert fewshot.prompts(task, 2, seed=1) != prompts
    assert fewshot.prompts(task, 0) == [f"q{i}:" for i in range(6)]
    with pytest.raises(UserError, match="shots"):
        fewshot.prompts(task, 6)  # only 5 others to draw from


class FixedScorer:
    """Returns given (logprob, n_tokens) per pair, to test the metric arithmetic alone."""

    def __init__(self, values):
        self.values = values

    def score(self, pairs):
        assert len(pairs) == len(self.values)
        return [Score(lp, n, False) for lp, n in self.values]


def test_accuracy_raw_and_length_normalised():
    task = tasks.Task("t", "multiple_choice", [
        tasks.MultipleChoice("a", (" x", " longer choice"), 1),  # raw prefers x; per byte prefers the long one
        tasks.MultipleChoice("b", (" x", " y"), 0),
    ], [])
    # example 0: " x" (2 bytes, 1 token) -2.0 ; " longer choice" (14 bytes, 3 tokens) -7.0
    # example 1: " x" -1.0 ; " y" -3.0
    scorer = FixedScorer([(-2.0, 1), (-7.0, 3), (-1.0, 1), (-3.0, 1)])
    out = evaluate_multiple_choice(scorer, TOK, task)
    assert out["acc"] == 0.5 and out["acc_norm"] == 1.0 and out["acc_per_token"] == 0.5
    assert out["acc_stderr"] == pytest.approx(math.sqrt(0.5 * 0.5 / 1))
    assert out["chance"] == 0.5 and out["examples"] == 2


def test_acc_norm_is_per_character_and_acc_bytes_per_byte_as_lm_eval_defines_them():
    task = tasks.Task("t", "multiple_choice", [tasks.MultipleChoice("c", (" \u00e9\u00e9", " abc"), 1)], [])
    # " éé": 3 characters, 5 bytes, -3.3 ; " abc": 4 characters, 4 bytes, -4.2
    out = evaluate_multiple_choice(FixedScorer([(-3.3, 2), (-4.2, 4)]), TOK, task)
    assert (out["acc"], out["acc_norm"], out["acc_bytes"], out["acc_per_token"]) == (0.0, 1.0, 0.0, 1.0)


def test_pairs_are_tokenized_like_lm_eval_template_lm():
    from chinchax.evaluation.multiple_choice import encode_pair

    ctx, cont = encode_pair(TOK, "Question: 2+2? ", "4", "decoder_only")  # trailing space moves to the continuation
    assert ctx == TOK.encode("Question: 2+2?") and cont == TOK.encode(" 4")
    assert encode_pair(TOK, "", " yes", "decoder_only") == ([], TOK.encode(" yes"))  # scored from BOS alone
    assert encode_pair(TOK, "a ", "b", "encoder_decoder") == (TOK.encode("a"), TOK.encode(" b"))


def test_mean_and_stderr_of_accuracies():
    values = [1, 0, 1, 1, 0, 1, 1, 1]
    p = np.mean(values)
    mean, se = mean_and_stderr(values)
    assert mean == p and se == pytest.approx(math.sqrt(p * (1 - p) / (len(values) - 1)))


def biased_model(token: int):
    """A tiny decoder whose output bias makes `token` by far the most likely next token everywhere."""
    cfg = load_model_config("tiny-gpt2", ["vocab_size=384", "d_model=32", "n_heads=4", "d_ff=64", "max_len=64",
                                          "output_bias=true"])
    m = Transformer(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    m.output_bias_V[...] = m.output_bias_V[...].at[token].set(30.0)
    m.eval()
    return m


def test_multiple_choice_with_a_real_model_picks_what_the_model_prefers():
    m = biased_model(TOK.encode("x")[0])
    examples = [tasks.MultipleChoice("ctx", ("xx", "ab"), 0), tasks.MultipleChoice("ctx", ("cd", "xx"), 1),
                tasks.MultipleChoice("other", ("ab", "xx"), 0)]
    out = evaluate_multiple_choice(Scorer(m, bos_id=TOK.bos_id, batch_size=8), TOK, tasks.Task("t", "multiple_choice", examples, []))
    assert out["acc"] == pytest.approx(2 / 3) and out["acc_norm"] == pytest.approx(2 / 3)


def test_generation_task_scores_the_continuation_cut_at_eos_or_the_separator():
    m = biased_model(TOK.encode("x")[0])
    task = tasks.Task("g", "generation", [tasks.GenerationExample("say", ("xxxxx",)),
                                           tasks.GenerationExample("say", ("nothing alike", "xxxxx"))], [])
    out = evaluate_generation(m, TOK, task, SamplingConfig(max_new_tokens=5), batch_size=2)
    assert [s["prediction"] for s in out["samples"]] == ["xxxxx", "xxxxx"]
    assert out["rouge1"] == 100.0 and out["rougeL"] == 100.0  # the best reference counts
    task = tasks.Task("g", "generation", [tasks.GenerationExample("say", ("xxxxx",)), tasks.GenerationExample("say", ("yy",))], [])
    out = evaluate_generation(m, TOK, task, SamplingConfig(max_new_tokens=5), batch_size=2)
    assert out["rouge1"] == 50.0 and out["rouge1_stderr"] == pytest.approx(50.0)


def test_rouge_and_bleu_agree_with_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    preds = ["the cat sat on the mat", "a quick brown fox jumps"]
    refs = [["the cat was sitting on the mat", "a cat sat on a mat"], ["the quick brown fox jumped over"]]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out = rouge(preds, refs)
    for t in ("rouge1", "rouge2", "rougeL"):
        best = [max(scorer.score(r, p)[t].fmeasure for r in rs) * 100 for p, rs in zip(preds, refs, strict=True)]
        assert out[t] == pytest.approx(np.mean(best))
    expected = sacrebleu.corpus_bleu(preds, [[refs[0][0], refs[1][0]], [refs[0][1], refs[1][0]]]).score
    assert bleu(preds, refs)["bleu"] == pytest.approx(expected)
    assert bleu(["same words here ok"], [["same words here ok"]])["bleu"] == pytest.approx(100.0)


def test_tfds_adapters_phrase_tasks_like_lm_eval():
    copa = tasks.TFDS_TASKS["super_glue/copa"][0]({
        "premise": b"The man broke his toe.", "choice1": b"He dropped a hammer on his foot.",
        "choice2": b"He got a hole in his sock.", "question": b"cause", "label": 0})
    assert copa == tasks.MultipleChoice("The man broke his toe because",
                                        (" he dropped a hammer on his foot.", " he got a hole in his sock."), 0)
    hs = tasks.TFDS_TASKS["hellaswag"][0]({"activity_label": b"Baking", "context": b"She mixes [title] the dough.",
                                          "endings": [b"It rises.", b"It sings."], "label": 0})
    assert hs.context == "Baking: She mixes. the dough." and hs.choices == (" It rises.", " It sings.")
    piqa = tasks.TFDS_TASKS["piqa"][0]({"goal": b"Open a jar", "sol1": b"twist", "sol2": b"shout", "label": 1})
    assert piqa == tasks.MultipleChoice("Question: Open a jar\nAnswer:", (" twist", " shout"), 1)


def test_tfds_task_is_read_from_a_prepared_array_record_dataset(tmp_path, monkeypatch):
    """The real read path (builder lookup, as_data_source, bytes features) on a dataset prepared here, with
    PIQA's features and adapter (registered under a test name: nothing is downloaded)."""
    import tensorflow_datasets as tfds

    class ChinchaxEvalPiqaLike(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "goal": tfds.features.Text(), "sol1": tfds.features.Text(), "sol2": tfds.features.Text(),
                "label": tfds.features.ClassLabel(num_classes=2)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples("train", 4), "validation": self._generate_examples("val", 3)}

        def _generate_examples(self, split, n):
            for i in range(n):
                yield i, {"goal": f"{split} goal {i} ü", "sol1": f"a{i}", "sol2": f"b{i}", "label": i % 2}

    data_dir = str(tmp_path / "tfds")
    ChinchaxEvalPiqaLike(data_dir=data_dir, file_format="array_record").download_and_prepare()
    monkeypatch.setitem(tasks.TFDS_TASKS, "chinchax_eval_piqa_like", tasks.TFDS_TASKS["piqa"])
    task = tasks.load_task("tfds:chinchax_eval_piqa_like", data_dir=data_dir)
    assert task.kind == "multiple_choice" and len(task.examples) == 3 and len(task.shots) == 4
    assert sorted(task.examples, key=lambda e: e.context)[0] == tasks.MultipleChoice(
        "Question: val goal 0 ü\nAnswer:", (" a0", " b0"), 0)
    assert all(e.context.startswith("Question: train goal") for e in task.shots)
