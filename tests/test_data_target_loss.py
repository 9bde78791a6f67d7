"""data.loss_on=targets: the loss counts an instruction example's target tokens (and the EOS that ends it)
only, through tokenization, the three packings and batching; loss_on=all batches are unchanged.

The records are built so that a token's role shows in the token itself: prompts are lowercase, digits,
spaces and colons; targets are uppercase letters and a newline. A weight is then right iff it is 1 exactly
on the uppercase/newline/EOS tokens of real (non-padding) positions.
"""

import json
import string
from pathlib import Path

import numpy as np
import pytest
import yaml

from chinchax import configlib
from chinchax.data import pipeline as P
from chinchax.data.config import DataConfig
from chinchax.data.mixtures import Formatted, Mixture, register_mixture
from chinchax.data.sources import PromptTarget, open_source
from chinchax.data.tokenizers import load_tokenizer
from chinchax.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TOK = load_tokenizer("byte")
TARGET_IDS = np.array([*TOK.encode(string.ascii_uppercase + "\n"), TOK.eos_id], np.int32)
L = 16


def records(n: int, seed: int = 0) -> list[PromptTarget]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        prompt = f"q{i}: " + "".join(rng.choice(list("abcxyz "), size=rng.integers(0, 12)))
        target = "".join(rng.choice(list("ABCXYZ"), size=rng.integers(0, 9))) + "\n"
        out.append(PromptTarget(prompt, target))
    return out


RECORDS = records(120)
SOURCE = P.register_memory_source("target-loss", {"train": RECORDS, "validation": RECORDS[:24]})


def cfg(**kw) -> DataConfig:
    return DataConfig(**{"source": SOURCE, "tokenizer": "byte", "seq_len": L, "eval_batches": 2, **kw}).validate()


def take(c: DataConfig, n: int, *, shuffle: bool = True) -> list[dict]:
    it = iter(P.build_dataset(c, TOK, batch_size=4, split="train", seed=c.seed, shuffle=shuffle))
    return [next(it) for _ in range(n)]


def expected_weights(batch: dict) -> np.ndarray:
    return ((batch["segment_ids"] > 0) & np.isin(batch["targets"], TARGET_IDS)).astype(np.float32)


def expected_stream(recs) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and weights of the records back to back, tokenized here without the pipeline."""
    tokens, weights = [], []
    for r in recs:
        p, t = TOK.encode(r.prompt), [*TOK.encode(r.target), TOK.eos_id]
        tokens += [*p, *t]
        weights += [0] * len(p) + [1] * len(t)
    return np.array(tokens, np.int32), np.array(weights, np.float32)


@pytest.mark.parametrize("packing", ["concat", "first_fit", "none"])
def test_weights_are_one_exactly_on_target_tokens(packing):
    batches = take(cfg(loss_on="targets", packing=packing), 12)
    for b in batches:
        np.testing.assert_array_equal(b["loss_weights"], expected_weights(b))
        assert b["loss_weights"].dtype == np.float32
    weights = np.concatenate([b["loss_weights"] for b in batches])
    real = np.concatenate([b["segment_ids"] for b in batches]) > 0
    assert 0 < weights.sum() < real.sum()  # some prompt tokens are left out, some target tokens are in
    if packing != "none":  # rows hold several documents: weights must not leak across their boundaries
        assert max(int(b["segment_ids"].max()) for b in batches) >= 2


def test_concat_stream_carries_weights_across_row_boundaries():
    batches = take(cfg(loss_on="targets", packing="concat"), 10, shuffle=False)
    rows = [(b["targets"][r], b["loss_weights"][r], b["segment_ids"][r]) for b in batches for r in range(4)]
    got_tokens = np.concatenate([t[s > 0] for t, _, s in rows])
    got_weights = np.concatenate([w[s > 0] for _, w, s in rows])
    tokens, weights = expected_stream(RECORDS)
    np.testing.assert_array_equal(got_tokens, tokens[: len(got_tokens)])
    np.testing.assert_array_equal(got_weights, weights[: len(got_weights)])
    # a target cut by a row boundary: its tail opens the next row, still weighted
    assert any(prev[1][-1] == 1 and nxt[1][0] == 1 for prev, nxt in zip(rows[:-1], rows[1:], strict=True))


def test_first_fit_keeps_each_piece_with_its_own_weights():
    pieces = {}
    for r in RECORDS:
        tokens, weights = expected_stream([r])
        for i in range(0, len(tokens), L):  # documents longer than a row are cut into row-sized pieces
            pieces[tuple(tokens[i : i + L])] = weights[i : i + L]
    assert any(len(expected_stream([r])[0]) > L for r in RECORDS)
    for b in take(cfg(loss_on="targets", packing="first_fit"), 12):
        for r in range(4):
            for seg in range(1, int(b["segment_ids"][r].max()) + 1):
                at = b["segment_ids"][r] == seg
                key = tuple(b["targets"][r][at])
                assert key in pieces
                np.testing.assert_array_equal(b["loss_weights"][r][at], pieces[key])


@pytest.mark.parametrize("packing", ["concat", "first_fit", "none"])
def test_loss_on_all_is_bitwise_unchanged(packing):
    # A mixture registers PromptTarget records now; with loss_on=all they must batch exactly like the
    # strings it registered before (prompt + " " + target + "\n"), train and eval, iterator state too.
    mix = Mixture([Formatted(r.prompt.rstrip(), r.target.rstrip("\n"), "t", "c", 0) for r in RECORDS],
                  [Formatted(r.prompt.rstrip(), r.target.rstrip("\n"), "t", "c", 0) for r in RECORDS[:24]], [])
    as_records = register_mixture("target-loss-mix", mix)
    as_text = P.register_memory_source("target-loss-text", {
        "train": [f.document() + "\n" for f in mix.train], "validation": [f.document() + "\n" for f in mix.validation]})
    a, b = cfg(source=as_records, packing=packing, shuffle_rows=4), cfg(source=as_text, packing=packing, shuffle_rows=4)
    assert a.loss_on is None and DataConfig(loss_on="all") == DataConfig()
    ita, itb = P.train_iterator(a, TOK, global_batch_size=4), P.train_iterator(b, TOK, global_batch_size=4)
    for _ in range(6):
        x, y = next(ita), next(itb)
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
            assert x[k].dtype == y[k].dtype
    assert ita.get_state() == itb.get_state()
    for x, y in zip(P.eval_batches(a, TOK, global_batch_size=4), P.eval_batches(b, TOK, global_batch_size=4), strict=True):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("packing", ["concat", "first_fit", "none"])
def test_weighted_packing_packs_as_plain_packing(packing):
    # Records whose prompt is empty weigh every token: their batches must equal loss_on=all's on the same text.
    texts = [r.prompt + r.target for r in RECORDS]
    whole = P.register_memory_source("target-loss-whole", {"train": [PromptTarget("", t) for t in texts]})
    plain = P.register_memory_source("target-loss-plain", {"train": texts})
    x_batches = take(cfg(source=whole, loss_on="targets", packing=packing), 8)
    y_batches = take(cfg(source=plain, packing=packing), 8)
    for x, y in zip(x_batches, y_batches, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_eval_batches_weigh_targets_too():
    batches = P.eval_batches(cfg(loss_on="targets"), TOK, global_batch_size=4)
    assert len(batches) == 2
    for b in batches:
        np.testing.assert_array_equal(b["loss_weights"], expected_weights(b))


def test_jsonl_prompt_target_records_split_as_the_text_corpus(tmp_path):
    from chinchax.data.mixtures import write_jsonl

    path = tmp_path / "sft.jsonl"  # fields prompt, target, and text = prompt + " " + target
    write_jsonl(path, [Formatted(r.prompt.rstrip(), r.target.rstrip("\n"), "t", "c", 0) for r in RECORDS])
    c = cfg(source=f"text:{path}", data_dir=str(tmp_path / "data"), loss_on="targets")
    for split in ("train", "validation"):
        records = P.open_prompt_target_documents(c, split)
        texts = open_source(f"text:{path}", split, tmp_path / "data")  # loss_on=all's documents
        assert sorted(r.text for r in records) == sorted(texts[i] for i in range(len(texts)))
    b = next(iter(P.build_dataset(c, TOK, batch_size=4, split="train", seed=0, shuffle=True)))
    np.testing.assert_array_equal(b["loss_weights"], expected_weights(b))
    assert b["loss_weights"].sum() > 0


def test_bad_input_names_the_key_and_the_fix(tmp_path):
    plain = P.register_memory_source("target-loss-bad", {"train": ["just text"] * 4})
    with pytest.raises(UserError, match=r"data.loss_on=targets needs records with prompt and target.*loss_on=all"):
        take(cfg(source=plain, loss_on="targets"), 1)
    with pytest.raises(UserError, match=r"data.loss_on=targets.*'stdlib' holds plain text"):
        take(cfg(source="stdlib", loss_on="targets"), 1)
    no_target = tmp_path / "a.jsonl"
    no_target.write_text('{"prompt": "p", "answer": "x"}\n')
    with pytest.raises(UserError, match=r"a.jsonl:1: .*string 'target' field.*loss_on=all"):
        take(cfg(source=f"text:{no_target}", loss_on="targets"), 1)
    txt = tmp_path / "b.txt"
    txt.write_text("prose\n")
    with pytest.raises(UserError, match=r"JSONL files.*b.txt"):
        take(cfg(source=f"text:{txt}", loss_on="targets"), 1)
    with pytest.raises(UserError, match=r"data.loss_on=targets.*data.objective='prefix_lm'.*objective=causal_lm"):
        cfg(loss_on="targets", objective="prefix_lm")
    with pytest.raises(UserError, match=r"data.loss_on='prompt' is not valid; choose one of all, targets"):
        cfg(loss_on="prompt")


def test_resuming_a_run_from_before_the_key_is_allowed(tmp_path):
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.trainer import check_resume_compatible

    exp = configlib.load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [f"trainer.run_dir={tmp_path}"])
    old = configlib.to_dict(exp)
    del old["data"]["loss_on"]  # a config.yaml written before data.loss_on existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))  # as configlib.dump_yaml
    check_resume_compatible(tmp_path, exp)
    check_resume_compatible(tmp_path, exp.replace(data=exp.data.replace(loss_on="all")))
    with pytest.raises(UserError, match="data.loss_on"):
        check_resume_compatible(tmp_path, exp.replace(data=exp.data.replace(loss_on="targets")))


# --- through the trainer ----------------------------------------------------------------------------------


class RecordingPrograms:
    """The trainer's compiled programs, noting each train step's loss_tokens metric and batch."""

    def __init__(self, inner, log: list):
        self.inner, self.log = inner, log

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train_step(self, batch_keys, *args):  # (one step per call: the trainer's default)
        step = self.inner.train_step(batch_keys, *args)

        def recorded(state, batch, lr):
            new_state, metrics = step(state, batch, lr)
            self.log.append((float(metrics["loss_tokens"]), np.asarray(batch["targets"]),
                             np.asarray(batch["segment_ids"])))
            return new_state, metrics

        return recorded


def train_targets(run_dir: Path, steps: int, log: list) -> dict:
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.programs import programs_for
    from chinchax.train.trainer import train

    exp = configlib.load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [
        "model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.n_layers=1", "model.max_len=32",
        f"data.source={SOURCE}", "data.seq_len=32", "data.loss_on=targets", "data.eval_batches=1",
        "trainer.batch_size=4", f"trainer.steps={steps}", "trainer.checkpoint_every=3", "trainer.log_every=1",
        "trainer.eval_every=3", "trainer.progress_bar=false", "optimizer.learning_rate=1e-2",
        "optimizer.schedule=constant", "optimizer.warmup_steps=0", f"trainer.run_dir={run_dir}"])
    return train(exp, programs=lambda cfg, mesh: RecordingPrograms(programs_for(cfg, mesh), log))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    whole, staged = [], []
    train_targets(root / "whole", 6, whole)
    train_targets(root / "staged", 3, staged)
    train_targets(root / "staged", 6, staged)  # resumes from the step-3 checkpoint and its iterator state
    return root, whole, staged


def test_trainer_loss_counts_only_target_tokens(runs):
    root, whole, _ = runs
    assert len(whole) == 6
    for loss_tokens, targets, segment_ids in whole:
        n_target = int(((segment_ids > 0) & np.isin(targets, TARGET_IDS)).sum())
        assert loss_tokens == n_target < int((segment_ids > 0).sum())
    rows = [json.loads(x) for x in (root / "whole" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]  # it trains
    assert yaml.safe_load((root / "whole" / "config.yaml").read_text())["data"]["loss_on"] == "targets"


def test_resume_with_target_loss_is_exact(runs):
    from chinchax.train.checkpoint import load_numpy_state
    from chinchax.train.metrics import TIMING_FIELDS

    root, whole, staged = runs
    assert len(staged) == 6
    for (a, ta, sa), (b, tb, sb) in zip(whole, staged, strict=True):  # the same batches, step by step
        assert a == b
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(sa, sb)

    def rows(name):
        lines = (root / name / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k not in TIMING_FIELDS} for x in lines]

    assert rows("whole") == rows("staged")
    import jax

    pa, pb = (load_numpy_state(root / name / "checkpoints" / "6")["params"] for name in ("whole", "staged"))
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sentencepiece_tokenizes_prompt_and_target_apart(tmp_path):
    from chinchax.data.tokenizers import train_sentencepiece

    docs = [f"q{i % 7}: what is it A: yes it is\n" for i in range(400)] + ["lowercase words and more\n"] * 50
    tok = train_sentencepiece(docs, tmp_path / "sp.model", vocab_size=420, num_threads=1)
    record = PromptTarget("q3: what is it A: ", "yes it is\n")
    joint, prompt, target = (list(tok.encode(x)) for x in (record.text, record.prompt, record.target))
    assert joint != prompt + target  # a piece (" yes") straddles the boundary when tokenized together
    source = P.register_memory_source("target-loss-sp", {"train": [record] * 8})
    c = cfg(source=source, tokenizer=str(tmp_path / "sp.model"), seq_len=32, packing="none", loss_on="targets")
    b = next(iter(P.build_dataset(c, tok, batch_size=2, split="train", seed=0, shuffle=False)))
    for r in range(2):
        weighted = b["loss_weights"][r] > 0
        assert list(b["targets"][r][weighted]) == [*target, tok.eos_id]
        assert tok.decode(b["targets"][r][~weighted & (b["segment_ids"][r] > 0)]) == record.prompt


def test_finetune_study_refuses_to_reuse_runs_of_other_loss_tokens(tmp_path):
    from chinchax.experiments.finetune_study import _check_reused

    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"source": "memory:x"}}))  # before the key
    _check_reused(tmp_path, "all")
    with pytest.raises(UserError, match=r"data.loss_on=all.*finetune.loss_on=targets.*another --out"):
        _check_reused(tmp_path, "targets")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"data": {"loss_on": "targets"}}))
    _check_reused(tmp_path, "targets")
    _check_reused(tmp_path / "absent", "targets")  # a new run: nothing to compare
