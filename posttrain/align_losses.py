"""The alignment losses, pure JAX on arrays: Bradley-Terry, DPO/IPO, PPO (clipped policy loss, clipped value
loss, GAE, whitening), the KL estimators and the best-of-n KL. Each is tested against Hugging Face trl on
identical inputs where trl 1.16 still has it (tests/test_posttrain_align_losses.py).

Letters: B = sequences, T = completion tokens. `mask_BT` is 1 on completion tokens and 0 on padding.
Masked means are over all real tokens of the batch (trl's `masked_mean` / GRPO's "bnpo" reduction).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from chinchax.errors import UserError

DPO_LOSS_TYPES = ("sigmoid", "ipo")
KL_ESTIMATORS = ("k1", "k2", "k3")


def masked_mean(x, mask):
    mask = mask.astype(x.dtype)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_whiten(x_BT, mask_BT, *, shift_mean: bool = True, eps: float = 1e-8):
    """(x - mean) / std over the real tokens (unbiased variance, as trl's masked_whiten and PPO practice)."""
    mask = mask_BT.astype(x_BT.dtype)
    n = jnp.maximum(jnp.sum(mask), 2.0)
    mean = jnp.sum(x_BT * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    var = jnp.sum(jnp.square(x_BT - mean) * mask) / (n - 1.0)
    out = (x_BT - mean) * jax.lax.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * mask


# --- reward models ----------------------------------------------------------------------------------------


def bradley_terry_loss(reward_chosen_B, reward_rejected_B, margin_B=None):
    """-log sigmoid(r_chosen - r_rejected [- margin]), averaged: the reward model's loss (trl RewardTrainer)."""
    logits_B = reward_chosen_B - reward_rejected_B
    if margin_B is not None:
        logits_B = logits_B - margin_B
    return jnp.mean(optax.losses.sigmoid_binary_cross_entropy(logits_B, jnp.ones_like(logits_B)))


# --- direct preference optimisation -----------------------------------------------------------------------


def dpo_loss(
    policy_chosen_B,
    policy_rejected_B,
    ref_chosen_B,
    ref_rejected_B,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    chosen_tokens_B=None,
    rejected_tokens_B=None,
):
    """(loss, metrics) of DPO (Rafailov et al. 2023; `sigmoid`) or IPO (Azar et al. 2023; `ipo`) from summed
    completion log-probabilities. IPO divides each log-ratio by its completion's token count, as trl does
    (confirmed with the IPO authors, trl's comment says), so beta means the same at every length."""
    if loss_type not in DPO_LOSS_TYPES:
        raise UserError(f"loss_type={loss_type!r} is not a preference loss here; choose one of {DPO_LOSS_TYPES}")
    chosen_ratio_B = policy_chosen_B - ref_chosen_B
    rejected_ratio_B = policy_rejected_B - ref_rejected_B
    if loss_type == "sigmoid":
        losses_B = -jax.nn.log_sigmoid(beta * (chosen_ratio_B - rejected_ratio_B))
    else:
        if chosen_tokens_B is None or rejected_tokens_B is None:
            raise ValueError("IPO needs the completions' token counts (chosen_tokens_B, rejected_tokens_B)")
        delta_B = chosen_ratio_B / jnp.maximum(chosen_tokens_B, 1.0) - rejected_ratio_B / jnp.maximum(
            rejected_tokens_B, 1.0
        )
        losses_B = jnp.square(delta_B - 1.0 / (2.0 * beta))
    chosen_reward_B, rejected_reward_B = beta * chosen_ratio_B, beta * rejected_ratio_B
    metrics = {
        "reward_chosen": jnp.mean(chosen_reward_B),
        "reward_rejected": jnp.mean(rejected_reward_B),
        "reward_accuracy": jnp.mean((chosen_reward_B > rejected_reward_B).astype(jnp.float32)),
        "reward_margin": jnp.mean(chosen_reward_B - rejected_reward_B),
    }
    return jnp.mean(losses_B), metrics


# --- PPO ----------------------------------------------------------------------------------------------------


def kl_estimate(logp_BT, ref_logp_BT, estimator: str = "k1"):
    """Per-token estimates of KL(policy || reference) from samples of the policy (Schulman's note
    "Approximating KL divergence"): k1 = log p - log q (unbiased, noisy; trl PPO's default), k2 = (log r)^2 / 2,
    k3 = r - 1 - log r with r = q/p (unbiased, never negative; trl GRPO's)."""
    if estimator not in KL_ESTIMATORS:
        raise UserError(f"kl estimator {estimator!r} is unknown; choose one of {KL_ESTIMATORS}")
    log_ratio_BT = ref_logp_BT - logp_BT  # log q/p
    if estimator == "k1":
        return -log_ratio_BT
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio_BT)
    return jnp.exp(log_ratio_BT) - log_ratio_BT - 1.0


def ppo_policy_loss(logp_BT, old_logp_BT, advantages_BT, mask_BT, *, clip_eps: float):
    """(loss, clip fraction, approx KL): PPO's clipped surrogate, -min(r A, clip(r, 1-eps, 1+eps) A),
    as a mean over real tokens."""
    ratio_BT = jnp.exp(logp_BT - old_logp_BT)
    unclipped_BT = -advantages_BT * ratio_BT
    clipped_BT = -advantages_BT * jnp.clip(ratio_BT, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(jnp.maximum(unclipped_BT, clipped_BT), mask_BT)
    clipfrac = masked_mean((clipped_BT > unclipped_BT).astype(jnp.float32), mask_BT)
    approx_kl = 0.5 * masked_mean(jnp.square(logp_BT - old_logp_BT), mask_BT)
    return loss, clipfrac, approx_kl


def ppo_value_loss(values_BT, old_values_BT, returns_BT, mask_BT, *, clip_value: float):
    """(loss, clip fraction): 0.5 * max((V - R)^2, (V_clipped - R)^2), V clipped to old +- clip_value."""
    clipped_BT = old_values_BT + jnp.clip(values_BT - old_values_BT, -clip_value, clip_value)
    err1_BT = jnp.square(values_BT - returns_BT)
    err2_BT = jnp.square(clipped_BT - returns_BT)
    loss = 0.5 * masked_mean(jnp.maximum(err1_BT, err2_BT), mask_BT)
    return loss, masked_mean((err2_BT > err1_BT).astype(jnp.float32), mask_BT)


def gae(rewards_BT, values_BT, mask_BT, *, gamma: float, lam: float):
    """(advantages, returns) by generalized advantage estimation (Schulman et al. 2016):
    delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1}, R_t = A_t + V_t.
    Tokens after a completion's end have value and reward 0 (masked), so its last token bootstraps from 0."""
    mask = mask_BT.astype(values_BT.dtype)
    rewards_TB = (rewards_BT * mask).T
    values_TB = (values_BT * mask).T
    next_values_TB = jnp.concatenate([values_TB[1:], jnp.zeros_like(values_TB[:1])], axis=0)
    deltas_TB = rewards_TB + gamma * next_values_TB - values_TB

    def back(carry_B, delta_B):
        adv_B = delta_B + gamma * lam * carry_B
        return adv_B, adv_B

    _, adv_TB = jax.lax.scan(back, jnp.zeros_like(deltas_TB[0]), deltas_TB, reverse=True)
    adv_BT = adv_TB.T
    return adv_BT * mask, (adv_BT + values_BT) * mask


def rlhf_token_rewards(score_B, logp_BT, ref_logp_BT, mask_BT, *, kl_coef, estimator: str = "k1"):
    """(rewards, kl): per-token reward -kl_coef * KL_t, plus the sequence score on its last real token
    (Ziegler et al. 2019; trl's PPO)."""
    kl_BT = kl_estimate(logp_BT, ref_logp_BT, estimator) * mask_BT
    rewards_BT = -kl_coef * kl_BT
    T = mask_BT.shape[1]
    last_B = T - 1 - jnp.argmax(mask_BT[:, ::-1] > 0, axis=1)  # the last completion token (after any prompt)
    rewards_BT = rewards_BT.at[jnp.arange(score_B.shape[0]), last_B].add(score_B)
    return rewards_BT, kl_BT


def rloo_advantages(scores_BK):
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each of K samples of a prompt is baselined by the
    mean of the other K-1."""
    K = scores_BK.shape[-1]
    if K < 2:
        raise UserError("RLOO needs at least 2 samples per prompt (policy.samples_per_prompt >= 2)")
    baseline_BK = (jnp.sum(scores_BK, axis=-1, keepdims=True) - scores_BK) / (K - 1)
    return scores_BK - baseline_BK


# --- KL coefficient -----------------------------------------------------------------------------------------


def check_kl_coef(kl_coef: float) -> float:
    if not (kl_coef >= 0 and math.isfinite(kl_coef)):
        raise UserError(
            f"kl_coef={kl_coef} must be a finite number >= 0 (0 = no KL penalty to the reference policy)"
        )
    return float(kl_coef)


def adaptive_kl_coef(coef, kl, *, target: float, horizon: int, n_steps: int):
    """One update of Ziegler et al.'s controller (AdaptiveKLController.update), traceable under jit."""
    error = jnp.clip(kl / target - 1.0, -0.2, 0.2)
    return coef * (1.0 + error * n_steps / horizon)


class AdaptiveKLController:
    """Ziegler et al. 2019: move the KL coefficient so the measured KL tracks `target`, by at most 20% of
    the error per horizon: coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon.
    `target=None` keeps the coefficient fixed."""

    def __init__(self, init_kl_coef: float, target: float | None = None, horizon: int = 10000):
        self.value = check_kl_coef(init_kl_coef)
        if target is not None and not target > 0:
            raise UserError(f"the adaptive KL target={target} must be > 0 (or null for a fixed coefficient)")
        if horizon < 1:
            raise UserError(f"the adaptive KL horizon={horizon} must be >= 1")
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || base) = log n - (n - 1)/n (Stiennon et al. 2020; Gao et al. 2022, eq. 1): an upper
    bound, exact when no two samples tie."""
    if n < 1:
        raise UserError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n
