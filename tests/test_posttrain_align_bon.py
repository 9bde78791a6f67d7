"""Best-of-n: the unbiased estimator against brute force over all subsets, the KL formula, and a run against a
reward model of the policy's vocabulary (another vocabulary is refused)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.posttrain import gold, policy_bon


def test_estimator_equals_the_mean_over_every_subset():
    rng = np.random.default_rng(0)
    proxy, gold_ = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    for n in (1, 2, 4, 7):
        brute = np.mean([
            np.mean([gold_[p, list(s)][np.argmax(proxy[p, list(s)])] for s in itertools.combinations(range(7), n)])
            for p in range(3)
        ])
        row = policy_bon.best_of_n_curve(proxy, gold_, [n])[0]
        assert row["gold"] == pytest.approx(brute, rel=1e-9)
        assert row["kl"] == pytest.approx(math.log(n) - (n - 1) / n) and row["d"] == pytest.approx(math.sqrt(row["kl"]))
    assert policy_bon.best_of_n_curve(proxy, proxy, [7])[0]["gold"] == pytest.approx(proxy.max(1).mean())
    with pytest.raises(UserError, match="1 <= n <= N"):
        policy_bon.best_of_n_weights(7, 8)


def test_gold_score_parts():
    assert gold.gold_score("def f(a, b):\n    ", "return a + b\n") == 1.0
    parts = gold.gold_parts("def f(a, b):\n    ", "return a +\n  x = (\n")
    assert parts == {"compiles": 0.0, "indent": 0.5, "uses_args": 0.5}
    assert gold.argument_names("def g(self, a, *args, b=3, **kw):\n    ") == ["a", "args", "b", "kw"]
    pairs = gold.gold_pairs(["def f(a):\n    "] * 3, ["return a\n", "x\n", "same\n"], ["(\n", "y\n", "same\n"])
    assert [(p.chosen, p.rejected) for p in pairs] == [("return a\n", "(\n")]  # ties and identical pairs dropped


@pytest.mark.slow
def test_best_of_n_with_a_reward_model_and_vocabulary_check(tmp_path):
    from chinchax.data.tokenizers import ByteTokenizer
    from chinchax.experiments.alignment_policy import TEST_TEXTS, pretrain_policy
    from chinchax.model.config import ModelConfig
    from chinchax.posttrain import policy, reward

    pretrain_policy(tmp_path / "policy", TEST_TEXTS, steps=10)
    base = policy.load_policy(tmp_path / "policy")
    cfg = ModelConfig(vocab_size=384, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64)
    proxy = reward.LoadedReward(reward.build(cfg, 0), ByteTokenizer(), 64, {})
    prompts = ["def add(a, b):\n    ", "def first(items):\n    "]
    rows = policy_bon.best_of_n(base.model, base.tokenizer, prompts, ns=[1, 2, 4], proxy=proxy,
                                gold=gold.gold_scores, max_new_tokens=12, seed=1)
    assert [r["n"] for r in rows] == [1, 2, 4]
    assert rows[0]["proxy"] <= rows[1]["proxy"] <= rows[2]["proxy"]  # the proxy's best of more samples
    assert all(0.0 <= r["gold"] <= 1.0 for r in rows)

    class OtherVocab(ByteTokenizer):
        hash = "0" * 64

    with pytest.raises(UserError, match="another vocabulary"):
        policy_bon.best_of_n(base.model, base.tokenizer, prompts, ns=[2], gold=gold.gold_scores, max_new_tokens=4,
                             proxy=reward.LoadedReward(proxy.model, OtherVocab(), 64, {}))
