"""The grain pipeline: batch contract, determinism, exact resume (state and orbax), epochs, hosts, eval."""

import importlib.util
import logging
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from chinchax.configlib import load_config
from chinchax.data import pipeline as P
from chinchax.data.config import DataConfig
from chinchax.data.tokenizers import BYTE_OFFSET, load_tokenizer
from chinchax.errors import UserError

TOK = load_tokenizer("byte")
RNG = np.random.default_rng(0)
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def random_doc(i):
    n = int(RNG.integers(1, 25))
    return f"doc{i:03d} " + " ".join(RNG.choice(WORDS, n))


TRAIN = [random_doc(i) for i in range(120)]
VALID = [random_doc(1000 + i) for i in range(30)]
SOURCE = P.register_memory_source("pipeline-test", {"train": TRAIN, "validation": VALID})
ID_DOCS = P.register_memory_source("ids", {"train": [f"d{i:02d}" for i in range(20)], "validation": ["v0"]})

COMBOS = [  # (objective, variant, packing)
    ("causal_lm", "decoder_only", "concat"),
    ("causal_lm", "decoder_only", "first_fit"),
    ("prefix_lm", "decoder_only", "first_fit"),
    ("prefix_lm", "encoder_decoder", "first_fit"),
    ("prefix_lm", "encoder_decoder", "concat"),
    ("span_corruption", "encoder_decoder", "concat"),
    ("span_corruption", "decoder_only", "concat"),
    ("masked_lm", "encoder_only", "none"),
]


def cfg_for(objective="causal_lm", packing="concat", **kw):
    return DataConfig(source=SOURCE, objective=objective, packing=packing, seq_len=48, **kw).validate()


_spec = importlib.util.spec_from_file_location("batch_checks", Path(__file__).with_name("batch_checks.py"))
_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_checks)
take, assert_same = _checks.take, _checks.assert_same


@pytest.mark.parametrize("objective,variant,packing", COMBOS)
def test_batches_follow_the_contract(objective, variant, packing):
    cfg = cfg_for(objective, packing, encoder_seq_len=40)
    it = P.train_iterator(cfg, TOK, global_batch_size=4, variant=variant)
    shapes = P.batch_shapes(cfg, 4, variant)
    for batch in take(it, 3):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == shapes
        real = batch["segment_ids"] > 0
        assert not batch["loss_weights"][~real].any() and batch["loss_weights"].sum() > 0
        assert np.all(batch["inputs"][~real] == 0) and np.all(batch["targets"][~real] == 0)
        assert batch["targets"].max() < TOK.vocab_size and batch["inputs"].min() >= 0
        for row_seg, row_pos in zip(batch["segment_ids"], batch["positions"], strict=True):
            for k in range(1, row_seg.max() + 1):
                np.testing.assert_array_equal(row_pos[row_seg == k], np.arange((row_seg == k).sum()))
        if variant == "encoder_decoder":
            assert batch["encoder_segment_ids"].max(axis=1).tolist() == batch["segment_ids"].max(axis=1).tolist()


def test_same_config_gives_the_same_stream_and_the_seed_changes_it():
    cfg = cfg_for("prefix_lm", "first_fit")
    a = take(P.train_iterator(cfg, TOK, global_batch_size=4), 4)
    assert_same(a, take(P.train_iterator(cfg, TOK, global_batch_size=4), 4))
    b = take(P.train_iterator(cfg.replace(seed=1), TOK, global_batch_size=4), 4)
    assert any(not np.array_equal(x["targets"], y["targets"]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("objective,variant,packing", COMBOS)
def test_resumed_iterator_yields_exactly_the_uninterrupted_batches(objective, variant, packing):
    cfg = cfg_for(objective, packing, encoder_seq_len=40)
    it = P.train_iterator(cfg, TOK, global_batch_size=4, variant=variant)
    take(it, 3)
    state = it.get_state()
    expected = take(it, 4)
    fresh = P.train_iterator(cfg, TOK, global_batch_size=4, variant=variant)
    fresh.set_state(state)
    assert_same(take(fresh, 4), expected)


def test_iterator_state_round_trips_through_an_orbax_checkpoint(tmp_path):
    cfg = cfg_for("masked_lm", "first_fit")
    it = P.train_iterator(cfg, TOK, global_batch_size=4)
    take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("state", "data")) as mngr:
        mngr.save(5, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"w": np.arange(3.0)}), data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = take(it, 3)
    fresh = P.train_iterator(cfg, TOK, global_batch_size=4)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("state", "data")) as mngr:
        restored = mngr.restore(5, args=ocp.args.Composite(
            state=ocp.args.StandardRestore({"w": np.zeros(3)}), data=grain.checkpoint.CheckpointRestore(fresh)))
    np.testing.assert_array_equal(restored.state["w"], np.arange(3.0))
    assert_same(take(restored.data, 3), expected)


def doc_ids(batch):
    """Document names of a 'none'-packed batch of the `ids` source (one document per row)."""
    return [bytes((row[row > 0][:-1] - BYTE_OFFSET).astype(np.uint8)).decode() for row in batch["targets"]]


def test_epochs_cover_every_document_once_and_reshuffle():
    cfg = DataConfig(source=ID_DOCS, packing="none", seq_len=8)
    rows = [d for b in take(P.train_iterator(cfg, TOK, global_batch_size=4), 15) for d in doc_ids(b)]
    epochs = [rows[0:20], rows[20:40], rows[40:60]]
    everything = sorted(f"d{i:02d}" for i in range(20))
    assert all(sorted(e) == everything for e in epochs)
    assert epochs[0] != everything and epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_hosts_read_disjoint_shares_of_every_epoch():
    cfg = DataConfig(source=ID_DOCS, packing="none", seq_len=8)
    shares = []
    for host in range(2):
        it = P.train_iterator(cfg, TOK, global_batch_size=4, process_index=host, process_count=2)
        batches = take(it, 5)
        assert all(b["targets"].shape == (2, 8) for b in batches)
        shares.append([d for b in batches for d in doc_ids(b)])
    assert set(shares[0]).isdisjoint(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(f"d{i:02d}" for i in range(20))


def test_eval_batches_are_fixed_by_the_data_config_alone(caplog):
    cfg = cfg_for("span_corruption", eval_batches=3)
    first = P.eval_batches(cfg, TOK, global_batch_size=4)
    assert len(first) == 3
    assert_same(first, P.eval_batches(cfg, TOK, global_batch_size=4))
    assert_same(first, P.eval_batches(cfg.replace(seed=7), TOK, global_batch_size=4))  # not the train seed
    halves = [P.eval_batches(cfg, TOK, global_batch_size=4, process_index=i, process_count=2) for i in range(2)]
    merged = [{k: np.concatenate([h0[k], h1[k]]) for k in h0} for h0, h1 in zip(*halves, strict=True)]
    assert_same(first, merged)  # the global eval set does not depend on the number of hosts
    # validation text, not train text
    text = bytes((first[0]["encoder_inputs"][0][:8] - BYTE_OFFSET).astype(np.uint8))
    assert text.startswith(b"doc1")
    with caplog.at_level(logging.WARNING):
        many = P.eval_batches(cfg.replace(eval_batches=40), TOK, global_batch_size=4)
    assert len(many) == 40 and "cycling" in caplog.text


def test_bad_combinations_are_user_errors():
    with pytest.raises(UserError, match="does not train a model.variant='encoder_only'"):
        P.train_iterator(cfg_for("causal_lm"), TOK, global_batch_size=4, variant="encoder_only")
    with pytest.raises(UserError, match="data.packing=concat"):
        P.train_iterator(cfg_for("span_corruption", "first_fit"), TOK, global_batch_size=4)
    with pytest.raises(UserError, match="multiple of the 3 processes"):
        P.train_iterator(cfg_for(), TOK, global_batch_size=4, process_count=3)
    with pytest.raises(UserError, match="never registered"):
        P.train_iterator(DataConfig(source="memory:nope"), TOK, global_batch_size=4)
    with pytest.raises(UserError, match="too short for span corruption"):
        P.train_iterator(cfg_for("span_corruption").replace(seq_len=5), TOK, global_batch_size=4,
                         variant="decoder_only")
    with pytest.raises(UserError, match="sentinel ids"):
        P.train_iterator(cfg_for("span_corruption").replace(seq_len=2048, mean_noise_span_length=1.0), TOK,
                         global_batch_size=4)


def test_data_config_loads_from_yaml_mapping_with_overrides():
    @__import__("dataclasses").dataclass(frozen=True)
    class Experiment:
        data: DataConfig = DataConfig()

    cfg = load_config(Experiment, {"data": {"objective": "masked_lm"}}, ["data.seq_len=128"]).data
    assert (cfg.objective, cfg.seq_len, cfg.packing) == ("masked_lm", 128, "concat")
    with pytest.raises(UserError, match="data.objective='mlm' is not valid"):
        load_config(Experiment, {"data": {"objective": "mlm"}})
    with pytest.raises(UserError, match="noise_density"):
        DataConfig(noise_density=1.5).validate()


def test_text_files_through_the_real_source_and_byte_tokenizer(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"f{i:02d}.txt").write_text(f"file {i}: " + "the quick brown fox jumps over the lazy dog. " * (i % 5 + 1))
    cfg = DataConfig(source=f"text:{corpus}/*.txt", data_dir=str(tmp_path / "data"), seq_len=64).validate()
    it = P.train_iterator(cfg, TOK, global_batch_size=2)
    batch = next(it)
    text = TOK.decode(batch["targets"][0][batch["segment_ids"][0] > 0].tolist())
    assert "quick brown fox" in text
    assert len(P.eval_batches(cfg, TOK, global_batch_size=2)) == cfg.eval_batches


def test_row_shuffle_mixes_documents_into_batches_and_resumes_exactly():
    cfg = cfg_for("causal_lm", "concat").replace(seq_len=8)
    plain = take(P.train_iterator(cfg, TOK, global_batch_size=4), 30)
    mixed_cfg = cfg.replace(shuffle_rows=64)
    it = P.train_iterator(mixed_cfg, TOK, global_batch_size=4)
    mixed = take(it, 30)
    # the first window (64 rows = 16 batches) holds the same rows in another order
    rows = lambda batches: [tuple(r) for b in batches for r in b["targets"].tolist()]  # noqa: E731
    assert sorted(rows(mixed[:16])) == sorted(rows(plain[:16]))
    moved = sum(a != b for a, b in zip(rows(mixed[:16]), rows(plain[:16]), strict=True))
    assert moved > 48  # almost every row left its place
    state = it.get_state()
    expected = take(it, 5)
    fresh = P.train_iterator(mixed_cfg, TOK, global_batch_size=4)
    fresh.set_state(state)
    assert_same(take(fresh, 5), expected)
    # eval rows sample the documents with a fixed seed: the same for every run whatever its data.seed
    evals = P.eval_batches(mixed_cfg, TOK, global_batch_size=4)
    assert_same(evals, P.eval_batches(mixed_cfg.replace(seed=7), TOK, global_batch_size=4))
    assert rows(evals) != rows(P.eval_batches(cfg, TOK, global_batch_size=4))
    with pytest.raises(UserError, match="shuffle_rows"):
        cfg.replace(shuffle_rows=-1)


def test_eval_batches_of_a_built_corpus_are_made_once_a_process_and_again_when_it_changes(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(100):  # validation takes ~2% of the files (cycled to fill the batches)
        (corpus / f"f{i:02d}.txt").write_text(f"file {i:02d} " + "lorem ipsum dolor " * 20)
    cfg = DataConfig(source=f"text:{corpus}", data_dir=str(tmp_path / "data"), seq_len=32, eval_batches=2).validate()
    first = P.eval_batches(cfg, TOK, global_batch_size=4)
    assert all(not v.flags.writeable for b in first for v in b.values())  # shared: nobody may change them
    built = []
    real_build = P.build_dataset
    monkeypatch.setattr(P, "build_dataset", lambda *a, **k: built.append(1) or real_build(*a, **k))
    assert P.eval_batches(cfg, TOK, global_batch_size=4) is first and not built
    halves = [P.eval_batches(cfg, TOK, global_batch_size=4, process_index=i, process_count=2) for i in range(2)]
    assert built and [h["inputs"].shape[0] for h in halves[0]] == [2, 2]  # another host's rows: another entry
    # the corpus changes: its manifest hash does, and so do the validation batches
    for f in corpus.iterdir():
        f.write_text(f.read_text().replace("lorem", "LOREM"))
    changed = P.eval_batches(cfg, TOK, global_batch_size=4)
    text = bytes((changed[0]["inputs"][0] - BYTE_OFFSET).clip(0, 255).astype(np.uint8))
    assert b"LOREM" in text and b"lorem" not in text


def test_eval_batches_of_memory_sources_are_never_reused():
    name = P.register_memory_source("memo-a", {"train": TRAIN, "validation": VALID})
    cfg = cfg_for(eval_batches=2).replace(source=name)
    first = P.eval_batches(cfg, TOK, global_batch_size=4)
    P.register_memory_source("memo-a", {"train": TRAIN, "validation": [d.upper() for d in VALID]})
    again = P.eval_batches(cfg, TOK, global_batch_size=4)  # same name, other documents: other batches
    assert not np.array_equal(first[0]["inputs"], again[0]["inputs"])
