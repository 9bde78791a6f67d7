"""ConcatBatchesIterDataset equals grain's concat-pack -> window shuffle -> batch chain bitwise, and resumes."""

import importlib.util
import json
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from chinchax.data import pipeline as P
from chinchax.data.concat_batches import ConcatBatchesIterDataset, index_shuffle_all, per_row_chain
from chinchax.data.config import DataConfig
from chinchax.data.tokenizers import load_tokenizer

RNG = np.random.default_rng(5)
# Lengths 1..200 with seq_len 8-32: many documents span several rows, some are a single EOS-like token.
DOCS = [RNG.integers(1, 1000, int(n)).astype(np.int32) for n in RNG.integers(1, 200, 90)]
CASES = [  # (seq_len, batch, shuffle_rows, seed)
    (16, 4, 0, 0),
    (16, 4, 10, 7),  # window not a multiple of the batch: batches straddle windows
    (8, 3, 32, 123),
    (32, 5, 7, 4294967000),  # a host seed near 2**32 (_host_seed makes uint32s; 2**32 itself overflows)
    (8, 16, 4096, 11),  # the demo's window, larger than this finite stream
]


def stream(repeat: bool) -> grain.IterDataset:
    ds = grain.MapDataset.source(DOCS).shuffle(seed=3)
    return (ds.repeat(None) if repeat else ds).to_iter_dataset()


def reference(tokens, L, B, W, seed) -> grain.IterDataset:
    return per_row_chain(tokens, seq_len=L, batch_size=B, shuffle_rows=W, seed=seed)


def fast(tokens, L, B, W, seed) -> grain.IterDataset:
    return ConcatBatchesIterDataset(tokens, seq_len=L, batch_size=B, shuffle_rows=W, seed=seed)


_spec = importlib.util.spec_from_file_location("batch_checks", Path(__file__).with_name("batch_checks.py"))
_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_checks)
take, assert_same = _checks.take, _checks.assert_same


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "L{}-B{}-W{}-s{}".format(*c))
def case(request):
    L, B, W, seed = request.param
    n = 2 * (W // B + 1) + 40  # over two windows and then some
    return request.param, take(iter(reference(stream(True), L, B, W, seed)), n)


def test_endless_stream_is_bitwise_the_grain_chain(case):
    params, expected = case
    assert_same(take(iter(fast(stream(True), *params)), len(expected)), expected)


@pytest.mark.parametrize("params", CASES, ids=lambda c: "L{}-B{}-W{}-s{}".format(*c))
def test_finite_stream_to_its_end_is_the_grain_chain(params):
    expected = list(reference(stream(False), *params))
    got = list(fast(stream(False), *params))
    assert len(got) >= 1
    assert_same(got, expected)


def test_last_row_of_a_finite_stream_is_zero_padded():
    L, total = 7, sum(len(d) for d in DOCS)
    assert total % L, "the documents must leave a partial last row for this test"
    (last,) = list(fast(stream(False), L, total // L + 1, 0, 0))  # every row in one batch
    row = total // L
    for key in ("tokens", "segment_ids", "positions"):
        assert (last[key][row, total % L :] == 0).all(), key
    assert (last["segment_ids"][row, : total % L] > 0).all()


def test_an_empty_document_is_refused():
    docs = [np.arange(1, 5, dtype=np.int32), np.zeros(0, np.int32)]
    with pytest.raises(ValueError, match="empty document"):
        next(iter(fast(grain.MapDataset.source(docs).to_iter_dataset(), 4, 1, 0, 0)))


def test_state_resumes_exactly_at_several_points(case):
    params, expected = case
    W, B = params[2], params[1]
    points = sorted({0, 1, max(W // B, 1), max(W // B, 1) + 1, len(expected) - 12})  # mid-window, around its end
    for k in points:
        it = iter(fast(stream(True), *params))
        take(it, k)
        state = json.loads(json.dumps(it.get_state()))
        fresh = iter(fast(stream(True), *params))
        fresh.set_state(state)
        assert_same(take(fresh, 10), expected[k : k + 10])


def test_state_round_trips_through_a_grain_checkpoint(case, tmp_path):
    params, expected = case
    it = iter(fast(stream(True), *params))
    take(it, 5)
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        mngr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    take(it, 3)  # moves on; the restore must bring a fresh iterator back to batch 5
    fresh = iter(fast(stream(True), *params))
    with ocp.CheckpointManager(tmp_path / "ckpt", item_names=("data",)) as mngr:
        restored = mngr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    assert_same(take(restored.data, 10), expected[5:15])


# --- wired into build_dataset ----------------------------------------------------------------------------

TOK = load_tokenizer("byte")
TEXTS = [" ".join(["word"] * int(n)) + f" {i}" for i, n in enumerate(np.random.default_rng(1).integers(0, 40, 80))]
SOURCE = P.register_memory_source("concat-batches", {"train": TEXTS, "validation": TEXTS[:30]})


def chain(ds) -> set[type]:
    """The types of a dataset and all its ancestors."""
    return {type(ds)}.union(*(chain(p) for p in ds.parents))


def grain_batches(cfg, *, batch_size, split, seed, shuffle, repeat, process_index=0, process_count=1):
    """What build_dataset built for causal LM + concat before ConcatBatchesIterDataset (the reference)."""
    host_seed = P._host_seed(seed, process_index)
    tokens = P._token_stream(P.open_documents(cfg, split), P.Tokenize(TOK, TOK.eos_id),
                             shard=(process_index, process_count),
                             shuffle_seed=host_seed if shuffle else None, repeat=repeat)
    W = cfg.shuffle_rows if shuffle else 0
    return reference(tokens, cfg.seq_len, batch_size, W, host_seed).map(P.CausalLMBatch(TOK.bos_id))


@pytest.mark.parametrize("shuffle_rows,process", [(0, (0, 1)), (12, (0, 1)), (12, (1, 2))])
def test_train_iterator_uses_it_and_is_unchanged(shuffle_rows, process):
    cfg = DataConfig(source=SOURCE, seq_len=16, shuffle_rows=shuffle_rows, seed=9).validate()
    index, count = process
    it = P.train_iterator(cfg, TOK, global_batch_size=4 * count, process_index=index, process_count=count)
    ref = grain_batches(cfg, batch_size=4, split="train", seed=9, shuffle=True, repeat=True,
                        process_index=index, process_count=count)
    assert_same(take(it, 30), take(iter(ref), 30))
    assert ConcatBatchesIterDataset in chain(P.build_dataset(cfg, TOK, batch_size=4, split="train", seed=9,
                                                             shuffle=True))


@pytest.mark.parametrize("shuffle_rows", [0, 12])
def test_eval_batches_are_unchanged(shuffle_rows):
    cfg = DataConfig(source=SOURCE, seq_len=16, shuffle_rows=shuffle_rows, eval_batches=3).validate()
    ref = grain_batches(cfg, batch_size=4, split="validation", seed=P.EVAL_SEED, shuffle=shuffle_rows > 0,
                        repeat=False)
    assert_same(P.eval_batches(cfg, TOK, global_batch_size=4), take(iter(ref), 3))


def test_other_paths_stay_on_grain():
    for kw in ({"packing": "first_fit"}, {"objective": "masked_lm", "packing": "none"}):
        cfg = DataConfig(source=SOURCE, seq_len=16, **kw).validate()
        assert ConcatBatchesIterDataset not in chain(P.build_dataset(cfg, TOK, batch_size=4, split="train",
                                                                     seed=0, shuffle=True))


def test_worker_processes_give_the_same_batches_and_resume():
    cfg = DataConfig(source=SOURCE, seq_len=16, shuffle_rows=12, seed=9, worker_count=1).validate()
    ref = grain_batches(cfg, batch_size=4, split="train", seed=9, shuffle=True, repeat=True)
    expected = take(iter(ref), 20)
    it = P.train_iterator(cfg, TOK, global_batch_size=4)
    assert_same(take(it, 11), expected[:11])  # 44 rows: mid-window (12 rows a window)
    state = json.loads(json.dumps(it.get_state()))
    fresh = P.train_iterator(cfg, TOK, global_batch_size=4)
    fresh.set_state(state)
    assert_same(take(fresh, 9), expected[11:])


@pytest.mark.parametrize("n,seed", [(1, 5), (2, 9), (7, 3), (10, 0), (1000, 123456789), (4096, 11),
                                    (4096, 4294967295), (65536, 1), (70001, 77)])
def test_index_shuffle_all_is_grains_index_shuffle(n, seed):
    expected = [grain.experimental.index_shuffle(p, max_index=n - 1, seed=seed, rounds=4) for p in range(n)]
    np.testing.assert_array_equal(index_shuffle_all(n, seed), np.asarray(expected, np.uint64))
