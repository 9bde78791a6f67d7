"""Conditional log-likelihood per variant (chinchax.evaluation.scoring) and the losses built on it, against
independent full forward passes written out here (no padding, the training layout of each objective)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.data import objectives
from chinchax.errors import UserError
from chinchax.evaluation.losses import conditional_loss, conditional_pairs, validation_loss
from chinchax.evaluation.scoring import Scorer
from chinchax.model import Transformer
from chinchax.model.config import load_model_config

SMALL = ["vocab_size=64", "d_model=32", "n_layers=2", "n_heads=4", "d_ff=64", "head_dim=8", "max_len=32"]
BOS, MASK = 2, 4
W = 32  # reference rows are right-padded to this width (harmless for causal/prefix decoders: pads come last)


@functools.cache
def model(preset: str, *extra: str):
    m = Transformer(load_model_config(preset, SMALL + list(extra)), rngs=nnx.Rngs(params=0, dropout=1))
    m.eval()
    return m


@functools.cache
def _forward():
    return nnx.jit(lambda m, x, kw: m(x, **kw))


def log_probs(m, inputs, **kw) -> np.ndarray:
    return np.asarray(jax.nn.log_softmax(_forward()(m, jnp.asarray(inputs), {k: jnp.asarray(v) for k, v in kw.items()}), -1))


rng = np.random.default_rng(0)
PAIRS = [(rng.integers(10, 60, n).tolist(), rng.integers(10, 60, k).tolist()) for n, k in [(5, 3), (1, 6), (9, 2), (0, 4), (12, 7)]]


def decoder_reference(m, pairs, prefix: bool) -> np.ndarray:
    inputs = np.zeros((len(pairs), W), np.int32)
    prefix_mask = np.zeros((len(pairs), W), bool)
    for i, (ctx, cont) in enumerate(pairs):
        seq = [BOS] + ctx + cont
        inputs[i, : len(seq) - 1] = seq[:-1]
        prefix_mask[i, : len(ctx) + 1] = len(ctx) > 0
    logp = log_probs(m, inputs, **({"prefix_mask": prefix_mask} if prefix else {}))
    out = []
    for i, (ctx, cont) in enumerate(pairs):
        out.append(sum(logp[i, len(ctx) + j, t] for j, t in enumerate(cont)))
    return np.asarray(out)


@pytest.mark.parametrize("preset,extra,prefix", [("tiny-gpt2", (), False), ("tiny-llama", ("attention=prefix",), True)])
def test_decoder_scores_equal_the_training_layout(preset, extra, prefix):
    m = model(preset, *extra)
    scores = Scorer(m, bos_id=BOS, batch_size=4).score(PAIRS)  # 5 pairs: two batches, one with padding rows
    np.testing.assert_allclose([s.logprob for s in scores], decoder_reference(m, PAIRS, prefix), rtol=1e-5, atol=1e-4)
    assert [s.n_tokens for s in scores] == [len(c) for _, c in PAIRS]
    if prefix:  # the prefix really is read both ways: a causal read of the same rows scores differently
        assert np.abs(decoder_reference(m, PAIRS, False) - decoder_reference(m, PAIRS, True)).max() > 1e-3


def test_encoder_decoder_scores_the_target_given_the_encoder_input():
    m = model("tiny-t5", "relative_buckets=8", "relative_max_distance=16")
    pairs = [(rng.integers(10, 60, 6).tolist(), rng.integers(10, 60, k).tolist()) for k in (2, 5, 3)]
    scores = Scorer(m, bos_id=BOS, batch_size=2).score(pairs)
    inputs = np.zeros((3, W), np.int32)
    for i, (_, cont) in enumerate(pairs):
        inputs[i, : len(cont)] = [BOS] + cont[:-1]
    logp = log_probs(m, inputs, encoder_inputs=np.asarray([c for c, _ in pairs], np.int32))
    expected = [sum(logp[i, j, t] for j, t in enumerate(cont)) for i, (_, cont) in enumerate(pairs)]
    np.testing.assert_allclose([s.logprob for s in scores], expected, rtol=1e-5, atol=1e-4)


def test_encoder_only_uses_pseudo_log_likelihood():
    m = model("tiny-bert")
    pairs = [(rng.integers(10, 60, 4).tolist(), rng.integers(10, 60, 3).tolist()) for _ in range(2)]
    scores = Scorer(m, bos_id=BOS, mask_id=MASK, batch_size=4).score(pairs)
    rows, targets = [], []
    for ctx, cont in pairs:
        seq = ctx + cont
        for j in range(len(ctx), len(seq)):
            masked = list(seq)
            masked[j] = MASK
            rows.append(masked)
            targets.append((j, seq[j]))
    logp = log_probs(m, np.asarray(rows, np.int32))
    per_row = [logp[r, j, t] for r, (j, t) in enumerate(targets)]
    np.testing.assert_allclose([s.logprob for s in scores], [sum(per_row[:3]), sum(per_row[3:])], rtol=1e-5, atol=1e-4)
    with pytest.raises(UserError, match="mask_id"):
        Scorer(m, bos_id=BOS)


def test_long_contexts_keep_their_last_tokens_and_greedy_flag_is_right():
    m = model("tiny-gpt2")
    ctx, cont = rng.integers(10, 60, 40).tolist(), rng.integers(10, 60, 4).tolist()
    scorer = Scorer(m, bos_id=BOS, batch_size=4)  # the shapes of the tests above: no new compilation
    long, cut = scorer.score([(ctx, cont), (ctx[-28:], cont)])  # max_len 32 - 4 target tokens = 28 kept
    assert long == cut
    # the argmax continuation of a prompt is greedy; a continuation with one other token is not
    seq = [BOS] + ctx[-28:]
    logp = log_probs(m, np.asarray([seq + [0] * (W - len(seq))] * 5, np.int32))[0]
    best = int(np.argmax(logp[len(seq) - 1]))
    greedy, other = scorer.score([(ctx[-28:], [best]), (ctx[-28:], [(best + 1) % 64])])
    assert greedy.is_greedy and not other.is_greedy


def test_conditional_pairs_rule_and_loss_aggregation():
    docs = [list(range(30, 60)), list(range(10)), [7], list(range(20, 26))]
    pairs = conditional_pairs(docs, input_len=8, target_len=4)
    assert pairs[0] == (list(range(30, 38)), list(range(38, 42)))
    assert pairs[1] == (list(range(7)), [7, 8, 9])  # 10 tokens split 2:1 -> round(6.67) = 7
    assert pairs[2] == ([20, 21, 22, 23], [24, 25])  # the one-token document is skipped
    assert conditional_pairs(docs, input_len=8, target_len=4, max_pairs=1) == pairs[:1]

    m = model("tiny-gpt2")
    scorer = Scorer(m, bos_id=BOS, batch_size=4)
    out = conditional_loss(scorer, pairs)
    scores = scorer.score(pairs)
    total_nll, total_n = -sum(s.logprob for s in scores), sum(s.n_tokens for s in scores)
    assert out["conditional_loss"] == pytest.approx(total_nll / total_n, rel=1e-6)
    assert out["target_tokens"] == total_n == 4 + 3 + 2
    assert out["conditional_bits_per_token"] == pytest.approx(out["conditional_loss"] / math.log(2))
    assert out["conditional_loss_stderr"] > 0
    with pytest.raises(UserError, match="vocab"):
        scorer.score([([1, 2], [64])])


def test_validation_loss_matches_a_direct_computation():
    m = model("tiny-gpt2")
    batches = []
    for seed in range(3):
        r = np.random.default_rng(seed)
        tokens = r.integers(10, 60, (4, 16))
        segments = np.ones((4, 16), np.int32)
        segments[:, 12:] = 2
        segments[0, 14:] = 0  # padding
        positions = np.concatenate([np.arange(12), np.arange(4)])[None].repeat(4, 0)
        tokens[segments == 0] = 0
        rows = [objectives.causal_lm(t, s, p, bos_id=BOS) for t, s, p in zip(tokens, segments, positions * (segments > 0), strict=True)]
        batches.append({k: np.stack([row[k] for row in rows]) for k in rows[0]})
    byte_lengths = np.ones(64, np.int64)
    byte_lengths[:5] = 0
    out = validation_loss(m, batches, byte_lengths=byte_lengths)

    nll, weights, n_bytes = [], [], 0.0
    for b in batches:
        logits = _forward()(m, jnp.asarray(b["inputs"]), {k: jnp.asarray(b[k]) for k in ("segment_ids", "positions")})
        logp = np.asarray(jax.nn.log_softmax(logits, -1))
        ce = -np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
        nll.append((ce * b["loss_weights"]).sum(1))
        weights.append(b["loss_weights"].sum(1))
        n_bytes += float((byte_lengths[b["targets"]] * b["loss_weights"]).sum())
    nll, weights = np.concatenate(nll), np.concatenate(weights)
    mean = nll.sum() / weights.sum()
    assert out["loss"] == pytest.approx(mean, rel=1e-5)
    assert out["tokens"] == weights.sum() == 3 * (4 * 16 - 2)
    assert out["bits_per_byte"] == pytest.approx(nll.sum() / math.log(2) / n_bytes, rel=1e-5)
    resid = nll - mean * weights  # ratio-estimator standard error over rows
    assert out["loss_stderr"] == pytest.approx(np.sqrt(resid.var(ddof=1) / len(nll)) / weights.mean(), rel=1e-4)
