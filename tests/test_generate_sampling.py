"""Sampling filters (chinchax.model.decoding.sample_logits) on many draws: each strategy's defining property."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.model.decoding import SamplingConfig, sample_logits

V, DRAWS = 12, 4000
LOGITS_BV = jax.random.normal(jax.random.key(0), (2, V)) * 2.0


@jax.jit
def draws(temperature, top_k, top_p):
    keys = jax.random.split(jax.random.key(1), DRAWS)
    return jax.vmap(lambda k: sample_logits(LOGITS_BV, k, temperature=temperature, top_k=top_k, top_p=top_p))(keys)


def probs(temperature: float) -> np.ndarray:
    z = np.asarray(LOGITS_BV, np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def frequencies(tokens_DB: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(tokens_DB[:, b], minlength=V) / DRAWS for b in range(2)])


def test_top_k_never_leaves_the_k_most_likely_and_samples_all_of_them():
    tokens = np.asarray(draws(1.0, 3, 1.0))
    for b in range(2):
        top3 = set(np.argsort(-np.asarray(LOGITS_BV[b]))[:3].tolist())
        assert set(tokens[:, b].tolist()) == top3


def test_top_p_never_leaves_the_nucleus():
    p = probs(1.0)
    tokens = np.asarray(draws(1.0, 0, 0.7))
    for b in range(2):
        order = np.argsort(-p[b])
        mass_before = np.cumsum(p[b, order]) - p[b, order]
        nucleus = set(order[mass_before < 0.7].tolist())
        assert set(tokens[:, b].tolist()) == nucleus  # never outside, and every member is reachable
        assert p[b, list(nucleus)].sum() >= 0.7 and len(nucleus) < V


def test_plain_sampling_follows_the_tempered_softmax():
    """Frequencies within 5 binomial standard errors (4000 draws) of softmax(logits / T)."""
    for temperature in (0.5, 2.0):
        freq = frequencies(np.asarray(draws(temperature, 0, 1.0)))
        p = probs(temperature)
        np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / DRAWS) + 1e-9)


def test_top_k_renormalises_over_the_kept_tokens():
    freq = frequencies(np.asarray(draws(1.0, 2, 1.0)))
    p = probs(1.0)
    for b in range(2):
        top2 = np.argsort(-p[b])[:2]
        q = p[b, top2] / p[b, top2].sum()
        assert np.all(np.abs(freq[b, top2] - q) < 5 * np.sqrt(q * (1 - q) / DRAWS))


def test_temperature_to_zero_is_greedy():
    argmax = np.asarray(jnp.argmax(LOGITS_BV, -1))
    assert (np.asarray(draws(1e-4, 0, 1.0)) == argmax).all()
    assert (np.asarray(draws(0.0, 0, 1.0)) == argmax).all()  # exactly 0 = greedy
    assert (np.asarray(draws(1.0, 1, 1.0)) == argmax).all()  # top-1 = greedy
    assert (np.asarray(draws(1.0, 0, 1e-6)) == argmax).all()  # a tiny nucleus = greedy


def test_sampling_config_rejects_bad_values():
    for bad in (dict(max_new_tokens=0), dict(temperature=-1.0), dict(top_k=-2), dict(top_p=1.5), dict(top_p=0.0)):
        with pytest.raises(UserError):
            SamplingConfig(**bad).validate()
