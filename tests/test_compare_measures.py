"""The held-out measure set of `chinchax compare` (chinchax.evaluation.comparable): built offline, the same
items for every family, scored per variant; on synthetic documents and tiny untrained models."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from flax import nnx

from chinchax.data.tokenizers import load_tokenizer
from chinchax.errors import UserError
from chinchax.evaluation.comparable import build_measure_set, measure_model
from chinchax.evaluation.scoring import Scorer
from chinchax.model import Transformer
from chinchax.model.config import load_model_config

SMALL = ["vocab_size=384", "d_model=16", "n_layers=1", "n_heads=2", "d_ff=32", "head_dim=8", "max_len=64",
         "n_kv_heads=null"]
VARIANTS = {
    "causal_decoder": ["variant=decoder_only", "attention=causal"],
    "prefix_decoder": ["variant=decoder_only", "attention=prefix"],
    "encoder_decoder": ["variant=encoder_decoder", "attention=causal"],
}


def documents(n: int = 24, seed: int = 0) -> list[str]:
    """Python-looking files: functions of a few lines at two indentation levels."""
    rng = np.random.default_rng(seed)
    words = ["value", "count", "item", "result", "total", "index", "name", "data", "left", "right"]
    docs = []
    for d in range(n):
        lines = []
        for f in range(int(rng.integers(3, 7))):
            a, b = rng.choice(words, 2, replace=False)
            lines += [f"def {a}_{d}_{f}({b}, other):", f"    {a} = {b} + other * {int(rng.integers(100))}",
                      f"    if {a} > {int(rng.integers(50))}:", f"        return {a} - {b}",
                      f"    return {b} // (other or 1)", ""]
        docs.append("\n".join(lines))
    return docs


@functools.cache
def tokenizer():
    return load_tokenizer("byte")


@functools.cache
def measure_set(seed: int = 0, shots: tuple[int, ...] = (0, 1)):
    return build_measure_set(documents(), tokenizer(), n_pairs=12, input_len=24, target_len=16,
                             n_choice_examples=10, shots=shots, seed=seed)


def test_pairs_are_fixed_length_windows_of_the_even_documents():
    mset = measure_set()
    assert len(mset.pairs) == 12
    even = "\n\n".join(documents()[0::2])
    for (prefix, continuation), n_bytes in zip(mset.pairs, mset.pair_bytes, strict=True):
        assert (len(prefix), len(continuation)) == (24, 16)
        text = tokenizer().decode(list(prefix) + list(continuation))
        assert text in even  # a contiguous window of one pair document
        assert n_bytes == len(tokenizer().decode(list(continuation)).encode("utf-8"))
    assert len(set(mset.pairs)) == 12  # non-overlapping windows: no pair twice


def test_next_line_examples_hold_the_true_line_among_same_indent_distractors():
    mset = measure_set()
    odd = documents()[1::2]
    pools = {"examples": odd[: len(odd) // 2], "shots": odd[len(odd) // 2 :]}
    for name, items in (("examples", mset.task.examples), ("shots", mset.task.shots)):
        for ex in items:
            assert len(ex.choices) == 4 and len(set(ex.choices)) == 4
            answer = ex.choices[ex.label]
            home = [d for d in pools[name] if ex.context + answer in d]
            assert home, f"{name}: the true next line follows its context in a document of its own pool"
            indent = answer[: len(answer) - len(answer.lstrip())]
            for i, c in enumerate(ex.choices):
                assert c[: len(c) - len(c.lstrip())] == indent
                if i != ex.label:
                    assert not any(ex.context + c in d for d in home), "a distractor is not the true next line"
    assert len(mset.task.examples) == 10
    assert {e.label for e in mset.task.examples} != {0}  # the answer's position is drawn


def test_measure_set_is_deterministic_and_fingerprinted():
    assert measure_set(0).fingerprint == build_measure_set(
        documents(), tokenizer(), n_pairs=12, input_len=24, target_len=16, n_choice_examples=10, shots=(0, 1)
    ).fingerprint
    assert measure_set(1).fingerprint != measure_set(0).fingerprint


def test_too_little_held_out_text_is_a_clear_error():
    with pytest.raises(UserError, match="windows of 40 tokens for n_pairs=500"):
        build_measure_set(documents(), tokenizer(), n_pairs=500, input_len=24, target_len=16, n_choice_examples=4)
    with pytest.raises(UserError, match="next-line examples could be built"):
        build_measure_set(documents(), tokenizer(), n_pairs=4, input_len=24, target_len=16, n_choice_examples=5000)


@functools.cache
def model(*overrides: str):
    m = Transformer(load_model_config("tiny-llama", SMALL + list(overrides)), rngs=nnx.Rngs(params=0, dropout=1))
    m.eval()
    return m


@pytest.mark.parametrize("family", sorted(VARIANTS))
def test_every_variant_scores_the_same_items_and_bits_per_byte_add_up(family):
    tok, mset = tokenizer(), measure_set()
    m = model(*VARIANTS[family])
    out = measure_model(m, tok, mset, batch_size=8)
    scores = Scorer(m, bos_id=tok.bos_id, mask_id=tok.mask_id, pad_id=tok.pad_id, batch_size=8).score(mset.pairs)
    nll = np.asarray([-s.logprob for s in scores])
    np.testing.assert_allclose(out["pair_nll"], nll, rtol=1e-5)
    assert out["pair_tokens"] == [16] * 12
    assert out["conditional_bpb"] == pytest.approx(nll.sum() / math.log(2) / sum(mset.pair_bytes), rel=1e-5)
    # an untrained model is near uniform over 384 ids: about log2(384) = 8.6 bits per (one-byte) token
    assert 7.0 < out["conditional_bpb"] < 10.0
    assert out["conditional_bpb_stderr"] > 0
    for k in mset.shots:
        mc = out[f"mc{k}"]
        assert mc["examples"] == 10 and mc["chance"] == pytest.approx(0.25)
        assert 0.0 <= mc["acc"] <= 1.0 and mc["acc_stderr"] >= 0
    assert out["fingerprint"] == mset.fingerprint


def test_encoder_only_is_refused_with_the_reason():
    with pytest.raises(UserError, match="pseudo-log-likelihood"):
        measure_model(model("variant=encoder_only", "attention=bidirectional"), tokenizer(), measure_set())
