"""Parity of the alignment losses with Hugging Face trl 1.16 on identical inputs.

trl keeps these losses inside its trainers' `compute_loss` methods, so the tests call those methods
themselves on a stand-in trainer (`_fake_trainer`) and a stand-in model that returns fixed log-probabilities
or rewards: the arithmetic under test is trl's own code, not a copy of it. trl 1.16 no longer has a PPO
trainer (it was removed after 0.2x), so GAE and the value loss are checked against the textbook recurrence
(Schulman et al. 2016) written out in a loop; the clipped policy loss and the k3 KL estimator are trl's GRPO
code with per-token advantages.
"""

from __future__ import annotations

import math
import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.posttrain import align_losses as L

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

B, T = 6, 7


def _fake_trainer(**attrs):
    identity = lambda x, **_: x  # noqa: E731 - one process: gathers and reductions are the identity
    accelerator = types.SimpleNamespace(
        gather=identity, gather_for_metrics=identity, reduce=identity, sync_gradients=True, num_processes=1,
        device=torch.device("cpu"),
    )
    base = dict(
        model=types.SimpleNamespace(training=False), accelerator=accelerator, aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    base.update(attrs)
    return types.SimpleNamespace(**base)


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


def _mask(rng):
    lengths = rng.integers(1, T + 1, size=B)
    return (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)


def test_bradley_terry_equals_trl_reward_trainer(rng):
    from trl.trainer.reward_trainer import RewardTrainer

    chosen, rejected = rng.normal(size=B).astype(np.float32) * 3, rng.normal(size=B).astype(np.float32) * 3
    logits = torch.tensor(np.concatenate([chosen, rejected]))[:, None]
    model = lambda **_: types.SimpleNamespace(logits=logits)  # noqa: E731
    fake = _fake_trainer(args=types.SimpleNamespace(center_rewards_coefficient=None))
    inputs = {"input_ids": torch.zeros(2 * B, 3, dtype=torch.long), "attention_mask": torch.ones(2 * B, 3)}
    expected = RewardTrainer.compute_loss(fake, model, inputs).item()
    got = float(L.bradley_terry_loss(jnp.asarray(chosen), jnp.asarray(rejected)))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert fake._metrics["eval"]["accuracy"][0] == pytest.approx(float(np.mean(chosen > rejected)))
    # with a margin
    margin = rng.uniform(0, 1, size=B).astype(np.float32)
    inputs["margin"] = torch.tensor(margin)
    expected = RewardTrainer.compute_loss(fake, model, inputs).item()
    np.testing.assert_allclose(float(L.bradley_terry_loss(chosen, rejected, jnp.asarray(margin))), expected, rtol=1e-6)


def _trl_dpo(loss_type, beta, logp_2BT, ref_chosen, ref_rejected, mask_2BT):
    from trl.trainer.dpo_trainer import DPOTrainer

    logp = torch.tensor(logp_2BT)
    outputs = types.SimpleNamespace(
        log_probs=logp, entropy=torch.zeros_like(logp), mean_logits=torch.zeros_like(logp),
        is_top1=torch.zeros_like(logp, dtype=torch.bool),
    )
    fake = _fake_trainer(
        ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=[loss_type],
        loss_weights=[1.0], beta=beta, use_weighting=False, label_smoothing=0.0,
    )
    # trl shifts the completion mask by one (labels are the next tokens): give it a leading column.
    completion_mask = torch.tensor(np.concatenate([np.zeros((2 * B, 1), np.float32), mask_2BT], axis=1))
    inputs = {
        "input_ids": torch.zeros(2 * B, T + 1, dtype=torch.long), "attention_mask": torch.ones(2 * B, T + 1),
        "completion_mask": completion_mask, "ref_chosen_logps": torch.tensor(ref_chosen),
        "ref_rejected_logps": torch.tensor(ref_rejected),
    }
    return DPOTrainer._compute_loss(fake, lambda **_: outputs, inputs, False).item(), fake._metrics["eval"]


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_and_ipo_equal_trl(rng, loss_type, beta):
    mask = np.concatenate([_mask(rng), _mask(rng)])
    logp = (rng.normal(size=(2 * B, T)).astype(np.float32) - 2.0) * mask  # trl's log_probs are 0 off the mask
    ref = (logp.sum(1) + rng.normal(size=2 * B).astype(np.float32)).astype(np.float32)
    expected, metrics = _trl_dpo(loss_type, beta, logp, ref[:B], ref[B:], mask)
    seq = logp.sum(1)
    loss, ours = L.dpo_loss(
        seq[:B], seq[B:], ref[:B], ref[B:], beta=beta, loss_type=loss_type,
        chosen_tokens_B=mask[:B].sum(1), rejected_tokens_B=mask[B:].sum(1),
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(ours["reward_margin"]), metrics["rewards/margins"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(ours["reward_accuracy"]), metrics["rewards/accuracies"][0])


def _trl_grpo_policy_loss(logp, old_logp, ref_logp, adv, mask, *, eps, beta):
    from trl.trainer.grpo_trainer import GRPOTrainer

    logp_t = torch.tensor(logp)
    fake = _fake_trainer(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        beta=beta, loss_type="bnpo", epsilon_low=eps, epsilon_high=eps, use_vllm=False,
        args=types.SimpleNamespace(delta=None, use_bias_correction_kl=False), _entropy_bonus_enabled=False,
        current_gradient_accumulation_steps=1,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp_t, torch.zeros_like(logp_t), None),
    )
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": torch.tensor(mask),
        "advantages": torch.tensor(adv), "old_per_token_logps": torch.tensor(old_logp),
        "ref_per_token_logps": torch.tensor(ref_logp),
    }
    loss = GRPOTrainer._compute_loss(fake, None, inputs).item()
    return loss, fake._metrics["eval"]


def test_ppo_clipped_loss_and_k3_kl_equal_trl_grpo(rng):
    mask = _mask(rng)
    old = rng.normal(size=(B, T)).astype(np.float32) - 2
    logp = old + rng.normal(scale=0.4, size=(B, T)).astype(np.float32)  # ratios well outside 1 +- 0.2
    ref = old + rng.normal(scale=0.3, size=(B, T)).astype(np.float32)
    adv = rng.normal(size=(B, T)).astype(np.float32)
    eps = 0.2
    # beta = 0: the clipped surrogate alone, averaged over the batch's real tokens ("bnpo" = PPO's masked mean)
    expected, _ = _trl_grpo_policy_loss(logp, old, ref, adv, mask, eps=eps, beta=0.0)
    loss, clipfrac, _ = L.ppo_policy_loss(logp, old, adv, mask, clip_eps=eps)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert 0.0 < float(clipfrac) < 1.0  # the inputs exercise both branches
    # beta > 0: trl adds beta * k3 per token; so must the k3 estimator
    beta = 0.3
    expected, metrics = _trl_grpo_policy_loss(logp, old, ref, adv, mask, eps=eps, beta=beta)
    k3 = L.kl_estimate(jnp.asarray(logp), jnp.asarray(ref), "k3")
    np.testing.assert_allclose(float(loss + beta * L.masked_mean(k3, mask)), expected, rtol=1e-5)
    np.testing.assert_allclose(float(L.masked_mean(k3, mask)), metrics["kl"][0], rtol=1e-5)


def test_kl_estimators_against_exact_kl():
    # Sampled from p, k1 and k3 are unbiased for KL(p||q); k3 is never negative per sample.
    p, q = np.array([0.6, 0.3, 0.1]), np.array([0.3, 0.3, 0.4])
    exact = float(np.sum(p * np.log(p / q)))
    draws = jax.random.choice(jax.random.key(0), 3, shape=(200_000,), p=jnp.asarray(p))
    logp, logq = jnp.log(jnp.asarray(p))[draws], jnp.log(jnp.asarray(q))[draws]
    k1, k3 = L.kl_estimate(logp, logq, "k1"), L.kl_estimate(logp, logq, "k3")
    assert float(jnp.min(k3)) >= 0.0
    np.testing.assert_allclose([float(k1.mean()), float(k3.mean())], [exact, exact], rtol=0.03)
    with pytest.raises(UserError, match="k1"):
        L.kl_estimate(logp, logq, "k9")


def test_gae_matches_the_recurrence(rng):
    mask = _mask(rng)
    rewards = rng.normal(size=(B, T)).astype(np.float32) * mask
    values = rng.normal(size=(B, T)).astype(np.float32) * mask
    gamma, lam = 0.97, 0.9
    adv, ret = L.gae(rewards, values, mask, gamma=gamma, lam=lam)
    want = np.zeros((B, T), np.float32)
    for b in range(B):
        n = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[b, t + 1] if t + 1 < n else 0.0
            running = rewards[b, t] + gamma * next_value - values[b, t] + gamma * lam * running
            want[b, t] = running
    np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), (want + values) * mask, rtol=1e-5, atol=1e-6)


def test_value_loss_clips_around_old_values(rng):
    mask = _mask(rng)
    old = rng.normal(size=(B, T)).astype(np.float32)
    new = old + rng.normal(scale=0.5, size=(B, T)).astype(np.float32)
    ret = rng.normal(size=(B, T)).astype(np.float32)
    loss, frac = L.ppo_value_loss(new, old, ret, mask, clip_value=0.2)
    clipped = old + np.clip(new - old, -0.2, 0.2)
    per = np.maximum((new - ret) ** 2, (clipped - ret) ** 2)
    np.testing.assert_allclose(float(loss), 0.5 * (per * mask).sum() / mask.sum(), rtol=1e-5)
    assert 0.0 < float(frac) < 1.0


def test_whiten_rloo_bon_and_kl_controller():
    x = jnp.asarray([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 0.0, 0.0]])
    m = jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0]])
    w = L.masked_whiten(x, m)
    real = np.asarray(w)[np.asarray(m) == 1]
    np.testing.assert_allclose([real.mean(), real.std(ddof=1)], [0.0, 1.0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(L.rloo_advantages(jnp.asarray([[1.0, 2.0, 6.0]]))), [[-3.0, -1.5, 4.5]])
    assert L.best_of_n_kl(1) == 0.0
    assert L.best_of_n_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    ctl = L.AdaptiveKLController(0.1, target=1.0, horizon=10)
    assert ctl.update(10.0, 1) == pytest.approx(0.1 * 1.02)  # error clipped at +20%, 1/10 of the horizon
    assert L.AdaptiveKLController(0.1).update(10.0, 1) == 0.1  # fixed
    with pytest.raises(UserError, match="kl_coef=-0.1 must be"):
        L.AdaptiveKLController(-0.1)
    with pytest.raises(UserError, match="kl_coef"):
        L.check_kl_coef(float("nan"))


def test_token_rewards_put_the_score_on_the_last_completion_token():
    # completions start after a prompt (mask not left-aligned) and end before padding
    mask = jnp.asarray([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], jnp.float32)
    logp = jnp.full((2, 6), -1.0)
    ref = jnp.full((2, 6), -1.5)
    rewards, kl = L.rlhf_token_rewards(jnp.asarray([2.0, 3.0]), logp, ref, mask, kl_coef=0.1)
    np.testing.assert_allclose(np.asarray(kl), 0.5 * np.asarray(mask))
    want = -0.05 * np.asarray(mask)
    want[0, 4] += 2.0
    want[1, 2] += 3.0
    np.testing.assert_allclose(np.asarray(rewards), want, rtol=1e-6)
    coef = L.adaptive_kl_coef(jnp.float32(0.1), 10.0, target=1.0, horizon=10, n_steps=1)
    assert float(coef) == pytest.approx(L.AdaptiveKLController(0.1, 1.0, 10).update(10.0, 1))
