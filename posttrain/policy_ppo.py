"""RLHF of a chinchax decoder against a reward model: PPO with a per-token KL penalty to the frozen initial
policy (Ziegler et al. 2019; Ouyang et al. 2022), or RLOO (Ahmadian et al. 2024) and GRPO (Shao et al. 2024)
as the critic-free variants (`ppo.algorithm`).

    chinchax align ppo CONFIG.yaml ppo.policy=runs/base ppo.reward_model=runs/rm ppo.prompts_file=p.jsonl \
        trainer.run_dir=runs/ppo

One loop step = one rollout batch: sample a completion per prompt (RLOO: `samples_per_prompt` of each) with
the current policy (`model.decoding.generate`), score it with the reward model, take the log-probabilities
of the policy and the reference and the values, then (inside one jitted step) per-token rewards
-kl_coef * KL_t with the score on the last token, GAE, whitened advantages and `ppo_epochs` passes over
`minibatches` of the batch with the clipped policy loss + vf_coef * clipped value loss. The value head is a
linear layer on the policy's final hidden states (a shared trunk; trl uses a separate value model, which
doubles the memory). With `kl_target` set, the KL coefficient adapts (Ziegler et al.); it is part of the
checkpointed state, and rollouts are seeded by the step, so a resumed run repeats the uninterrupted one.

The aligned policy is exported to <run_dir>/policy/, an ordinary run dir (config.yaml + a checkpoint),
for `chinchax eval` and `load_run`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax import rundir
from chinchax.errors import UserError
from chinchax.jsonio import write_json
from chinchax.model.layers import param
from chinchax.posttrain import align_loop, align_losses, policy
from chinchax.train.config import OptimizerConfig, TrainerConfig

ALGORITHMS = ("ppo", "rloo", "grpo")


class PolicyWithValue(nnx.Module):
    def __init__(self, backbone, *, rngs: nnx.Rngs):
        self.policy = backbone
        self.value_D = param(rngs, nnx.initializers.zeros, (backbone.cfg.d_model,), ("embed",))
        self.value_bias = param(rngs, nnx.initializers.zeros, (1,), (None,))

    def __call__(self, batch: dict):
        """(token log-probs [B, T], completion mask [B, T], values [B, T]); position t scores token t+1."""
        hidden_BLD = policy.hidden_states(self.policy, batch)
        logp_BT, mask_BT = policy.token_logps(self.policy, batch, hidden_BLD)
        values_BT = jnp.einsum("BTD,D->BT", hidden_BLD[:, :-1].astype(jnp.float32), self.value_D[...])
        return logp_BT, mask_BT, (values_BT + self.value_bias[...][0]) * mask_BT


@dataclass(frozen=True)
class PPOSettings:
    policy: str = ""  # run dir of the initial policy (also the frozen reference)
    reward_model: str = ""  # run dir of a reward model (`chinchax reward train`)
    prompts_file: str = ""  # JSONL with a "prompt" per line (a preference file works)
    algorithm: str = "ppo"  # ppo | rloo | grpo
    samples_per_prompt: int = 1  # rloo, grpo: >= 2
    max_new_tokens: int = 32
    temperature: float = 1.0
    kl_coef: float = 0.05
    kl_target: float | None = None  # set: adaptive KL coefficient towards this KL per sequence
    kl_horizon: int = 10000
    kl_estimator: str = "k1"
    clip_eps: float = 0.2
    clip_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    ppo_epochs: int = 2
    minibatches: int = 2
    whiten_advantages: bool = True
    eval_every: int = 0

    def check(self, batch_size: int) -> PPOSettings:
        """Not `validate`: it needs the batch size, so the config loader cannot call it alone."""
        align_losses.check_kl_coef(self.kl_coef)
        if self.algorithm not in ALGORITHMS:
            raise UserError(f"ppo.algorithm={self.algorithm!r}: choose one of {ALGORITHMS}")
        if self.algorithm in ("rloo", "grpo") and self.samples_per_prompt < 2:
            raise UserError(
                f"ppo.algorithm={self.algorithm} needs ppo.samples_per_prompt >= 2 (its baseline is the other samples)"
            )
        if self.kl_target is not None and not self.kl_target > 0:
            raise UserError(f"ppo.kl_target={self.kl_target} must be > 0, or null for a fixed kl_coef")
        if self.kl_estimator not in align_losses.KL_ESTIMATORS:
            raise UserError(f"ppo.kl_estimator={self.kl_estimator!r}: choose one of {align_losses.KL_ESTIMATORS}")
        if not (0 < self.clip_eps < 1 and self.clip_value > 0 and self.vf_coef >= 0):
            raise UserError("ppo.clip_eps must be in (0, 1), ppo.clip_value > 0 and ppo.vf_coef >= 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise UserError(f"ppo.gamma={self.gamma} and ppo.lam={self.lam} must be in [0, 1]")
        if self.ppo_epochs < 1 or self.minibatches < 1 or self.max_new_tokens < 1 or self.temperature <= 0:
            raise UserError("ppo.ppo_epochs, ppo.minibatches, ppo.max_new_tokens must be >= 1 and ppo.temperature > 0")
        if (batch_size * self.samples_per_prompt) % self.minibatches:
            raise UserError(
                f"the rollout batch of trainer.batch_size * ppo.samples_per_prompt = {batch_size * self.samples_per_prompt} "
                f"rows does not split into ppo.minibatches={self.minibatches}"
            )
        return self


@dataclass(frozen=True)
class PPORunConfig:
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-4, warmup_steps=0, weight_decay=0.0, schedule="constant")
    )
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=50, batch_size=16, log_every=5))
    ppo: PPOSettings = field(default_factory=PPOSettings)


def read_prompts(path: str | Path) -> list[str]:
    from chinchax.jsonio import jsonl_records

    path = Path(path)
    if not path.is_file():
        raise UserError(f"prompts file {path} does not exist; give a JSONL file with a \"prompt\" on each line")
    prompts = []
    for where, row in jsonl_records(path, what="prompts file"):  # not UTF-8, not JSON, not an object: UserError
        if not isinstance(row.get("prompt"), str):
            raise UserError(f"{where} has no string \"prompt\"; each line must be {{\"prompt\": \"...\"}}")
        prompts.append(row["prompt"])
    if not prompts:
        raise UserError(f"{path} holds no prompts")
    return prompts


def _ppo_math(s: PPOSettings, score_B, logp_BT, ref_BT, values_BT, mask_BT, kl_coef):
    """(advantages, returns, per-token KL) of one rollout batch. PPO and RLOO put the KL penalty in the reward;
    GRPO (Shao et al. 2024; trl's GRPOTrainer) normalises scores within each prompt's group and puts
    kl_coef * k3 in the loss instead (`loss_fn`)."""
    if s.algorithm == "ppo":
        rewards_BT, kl_BT = align_losses.rlhf_token_rewards(
            score_B, logp_BT, ref_BT, mask_BT, kl_coef=kl_coef, estimator=s.kl_estimator
        )
        adv_BT, returns_BT = align_losses.gae(rewards_BT, values_BT, mask_BT, gamma=s.gamma, lam=s.lam)
    elif s.algorithm == "grpo":
        kl_BT = align_losses.kl_estimate(logp_BT, ref_BT, "k3") * mask_BT
        K = s.samples_per_prompt
        group_PK = score_B.reshape(K, -1).T  # rows are k-major
        adv_PK = (group_PK - group_PK.mean(axis=1, keepdims=True)) / (group_PK.std(axis=1, ddof=1, keepdims=True) + 1e-4)
        adv_BT = adv_PK.T.reshape(-1)[:, None] * mask_BT
        return jax.lax.stop_gradient(adv_BT), jnp.zeros_like(adv_BT), kl_BT
    else:
        kl_BT = align_losses.kl_estimate(logp_BT, ref_BT, s.kl_estimator) * mask_BT
        seq_B = score_B - kl_coef * jnp.sum(kl_BT, axis=1)
        K = s.samples_per_prompt
        adv_B = align_losses.rloo_advantages(seq_B.reshape(K, -1).T).T.reshape(-1)  # rows are k-major
        adv_BT = adv_B[:, None] * mask_BT
        returns_BT = jnp.zeros_like(adv_BT)
    if s.whiten_advantages:
        adv_BT = align_losses.masked_whiten(adv_BT, mask_BT)
    return jax.lax.stop_gradient(adv_BT), jax.lax.stop_gradient(returns_BT), kl_BT


def train_ppo(
    cfg: PPORunConfig, *, prompts: Sequence[str] | None = None, evaluate: Callable[[int, object], dict] | None = None
) -> dict:
    """Train (or resume) PPO/RLOO; returns run.json. `prompts` (in-process) replaces ppo.prompts_file."""
    from chinchax import configlib
    from chinchax.posttrain import reward

    s = cfg.ppo.check(cfg.trainer.batch_size)
    if not s.policy or not s.reward_model:
        raise UserError("give ppo.policy (the policy's run dir) and ppo.reward_model (a reward-model run dir)")
    if cfg.trainer.steps is None:
        raise UserError("PPO trains for trainer.steps; set it")
    prompts = list(prompts) if prompts is not None else read_prompts(s.prompts_file)
    run_dir = Path(cfg.trainer.run_dir)
    base, ref = policy.load_policy(s.policy), policy.load_policy(s.policy)
    rm = reward.load_reward(s.reward_model)
    policy.check_same_vocabulary(base.tokenizer, rm.tokenizer)
    config = _run_config(cfg, s, prompts)
    align_loop.check_or_write_config(run_dir, config, resume_safe=frozenset({"ppo.eval_every"}))
    mesh = align_loop.make_mesh(cfg.trainer.mesh)
    model = PolicyWithValue(base.model, rngs=nnx.Rngs(params=cfg.trainer.seed))
    graphdef, params, rest = align_loop.split_params(model)
    tx, lrs = _optimizer(cfg, base, mesh, params)
    batch_for_step = _batch_source(cfg, s, prompts, base.tokenizer, graphdef, rest, ref, rm)
    step_fn = _step_fn(cfg, s, _loss_fn(s, graphdef, rest), tx)

    every = s.eval_every
    eval_steps = frozenset(range(every, cfg.trainer.steps + 1, every)) if every else frozenset()
    state, rows = align_loop.run_loop(
        run_dir=run_dir, trainer_cfg=cfg.trainer, params=params, tx=tx, lr_by_step=lrs, step_fn=step_fn,
        batch_for_step=batch_for_step, config=config, tag=s.algorithm,
        evaluate=None if evaluate is None else (lambda st, p: evaluate(st, align_loop.merge(graphdef, p, rest).policy)),
        eval_steps=eval_steps, extra_state={"kl_coef": jnp.float32(s.kl_coef)}, mesh=mesh,
    )
    export_policy(run_dir / "policy", base, state["params"]["policy"], cfg)
    train_rows = [r for r in rows if not r.get("eval")]
    result = {
        "kind": s.algorithm, "config": configlib.to_dict(cfg), "policy": s.policy, "reward_model": s.reward_model,
        "final": train_rows[-1] if train_rows else None, "evals": [r for r in rows if r.get("eval")],
        "kl_coef_final": float(state["kl_coef"]),
    }
    write_json(run_dir / rundir.RUN_JSON, result)
    return result


def _run_config(cfg: PPORunConfig, s: PPOSettings, prompts: list[str]) -> dict:
    """The settings a resumed run must share with the run it resumes (its config.yaml)."""
    return {
        **{f"ppo.{k}": v for k, v in dataclasses.asdict(s).items()},
        **{f"optimizer.{k}": v for k, v in dataclasses.asdict(cfg.optimizer).items()},
        "trainer.steps": cfg.trainer.steps, "trainer.batch_size": cfg.trainer.batch_size, "trainer.seed": cfg.trainer.seed,
        "prompts_hash": align_loop.config_hash({"prompts": prompts}), "kind": s.algorithm,
    }


def _optimizer(cfg: PPORunConfig, base, mesh, params):
    """(tx, learning rate by step): weight decay and µP multipliers as the policy's pretraining had them; the
    value head decays nothing and takes the given lr."""
    mask_tree = {k: (policy.decay_mask(base.config.model, mesh, 0) if k == "policy" else jax.tree.map(lambda _: False, v))
                 for k, v in params.items()}
    scales = policy.update_scales(base.config.model, mesh, 0)
    if scales is not None:  # µP base: the policy keeps its multipliers, the value head takes the given lr
        scales = tuple({k: (s if k == "policy" else jax.tree.map(lambda _: 1.0, v)) for k, v in params.items()}
                       for s in scales)
    return align_loop.optimizer(cfg.optimizer, cfg.trainer.steps, mask_tree, scales)


def _batch_source(cfg: PPORunConfig, s: PPOSettings, prompts: list[str], tok, graphdef, rest, ref, rm):
    """batch_for_step(step, params): K samples of B prompts from the current policy, with their log-probs,
    values, reference log-probs and reward-model scores."""
    from chinchax.posttrain import reward

    B, K = cfg.trainer.batch_size, s.samples_per_prompt
    forward = jax.jit(lambda p, batch: align_loop.merge(graphdef, p, rest)(batch))

    def batch_for_step(step: int, params):
        order = np.random.default_rng([cfg.trainer.seed, step]).permutation(len(prompts))
        chosen = [prompts[i] for i in np.resize(order, B)]
        current = align_loop.merge(graphdef, params, rest)
        rows, scored = [], []
        for k in range(K):  # k-major: rows k*B .. (k+1)*B-1 are sample k of every prompt
            _, r, sc = policy.generate_rows(current.policy, tok, chosen, max_new_tokens=s.max_new_tokens,
                                            temperature=s.temperature, seed=(cfg.trainer.seed * 7919 + step) * K + k)
            rows.append(r)
            scored.append(sc)
        rows = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
        scored = {key: np.concatenate([r[key] for r in scored]) for key in scored[0]}
        batch = policy.to_device(rows)
        logp, mask, values = forward(params, batch)
        ref_logp, _ = policy.model_token_logps(ref.model, rows)
        batch.update(old_logp=logp, ref_logp=ref_logp, old_values=values, mask=mask,
                     score=jnp.asarray(reward.score_encoded(rm.model, scored, batch_size=B * K)))
        return batch

    return batch_for_step


def _loss_fn(s: PPOSettings, graphdef, rest):
    """loss_fn(params, minibatch, kl_coef) -> (loss, metrics): clipped policy loss, the value loss for PPO,
    the k3 KL term for GRPO."""

    def loss_fn(params, mb, kl_coef):
        logp, _, values = align_loop.merge(graphdef, params, rest)(mb)
        pg, clipfrac, approx_kl = align_losses.ppo_policy_loss(logp, mb["old_logp"], mb["adv"], mb["mask"],
                                                              clip_eps=s.clip_eps)
        vf = jnp.zeros(())
        if s.algorithm == "ppo":
            vf, _ = align_losses.ppo_value_loss(values, mb["old_values"], mb["returns"], mb["mask"],
                                                clip_value=s.clip_value)
        loss = pg + s.vf_coef * vf
        if s.algorithm == "grpo":  # trl's GRPO: + beta * k3 per token, same masked mean
            loss = loss + kl_coef * align_losses.masked_mean(align_losses.kl_estimate(logp, mb["ref_logp"], "k3"),
                                                             mb["mask"])
        return loss, {"policy_loss": pg, "value_loss": vf, "clipfrac": clipfrac, "approx_kl": approx_kl}

    return loss_fn


def _step_fn(cfg: PPORunConfig, s: PPOSettings, loss_fn, tx):
    """step_fn(state, batch, lr): advantages, then ppo_epochs x minibatches updates in one scan, then the
    adaptive KL coefficient."""
    B, K = cfg.trainer.batch_size, s.samples_per_prompt

    def step_fn(state, batch, lr):
        adv, returns, kl_BT = _ppo_math(s, batch["score"], batch["old_logp"], batch["ref_logp"],
                                        batch["old_values"], batch["mask"], state["kl_coef"])
        keys = ("tokens", "segments", "completion", "last", "old_logp", "old_values", "mask", "ref_logp")
        data = {**{k: batch[k] for k in keys},
                "adv": adv, "returns": returns}
        rows, M = B * K, s.minibatches

        def one_update(state, xs):
            epoch, m = xs
            perm = jax.random.permutation(jax.random.fold_in(jax.random.key(cfg.trainer.seed), state["step"] * 1000 + epoch), rows)
            idx = jax.lax.dynamic_slice_in_dim(perm, m * (rows // M), rows // M)
            mb = jax.tree.map(lambda x: x[idx], data)
            (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], mb, state["kl_coef"])
            direction, opt_state = tx.update(grads, state["opt_state"], state["params"])
            params = jax.tree.map(lambda p, u: p + u * lr.astype(u.dtype), state["params"], direction)
            return {**state, "params": params, "opt_state": opt_state}, aux

        xs = (jnp.repeat(jnp.arange(s.ppo_epochs), M), jnp.tile(jnp.arange(M), s.ppo_epochs))
        new, aux = jax.lax.scan(one_update, state, xs)
        seq_kl = jnp.sum(kl_BT, axis=1)
        kl_coef = state["kl_coef"]
        if s.kl_target is not None:
            kl_coef = align_losses.adaptive_kl_coef(kl_coef, jnp.mean(seq_kl), target=s.kl_target,
                                                    horizon=s.kl_horizon, n_steps=rows)
        new = {**new, "step": state["step"] + 1, "kl_coef": kl_coef}
        metrics = {k: jnp.mean(v) for k, v in aux.items()}
        metrics.update(score=jnp.mean(batch["score"]), kl=jnp.mean(seq_kl), kl_coef=state["kl_coef"],
                       learning_rate=lr, mean_length=jnp.mean(jnp.sum(batch["mask"], axis=1)))
        return new, metrics

    return step_fn


def export_policy(out_dir: Path, base, params, cfg: PPORunConfig) -> None:
    """The aligned policy as an ordinary run dir (config.yaml + one checkpoint with a fresh optimizer state:
    what `load_run` reads; PPO's own optimizer moments stay in the PPO run's checkpoints)."""
    import shutil

    from chinchax.train.checkpoint import Checkpointer
    from chinchax.train.optimizer import make_optimizer

    if out_dir.exists():  # a finished run exported again (e.g. rerun after completion): replace it whole
        shutil.rmtree(out_dir)
    exp = policy.policy_run_config(base.config, run_dir=out_dir, steps=cfg.trainer.steps,
                                   optimizer_cfg=cfg.optimizer, seed=cfg.trainer.seed)
    policy.write_policy_config(out_dir, exp)
    mesh = align_loop.make_mesh(cfg.trainer.mesh)
    tx, _ = make_optimizer(cfg.optimizer, cfg.trainer.steps, policy.decay_mask(base.config.model, mesh, 0),
                           policy.update_scales(base.config.model, mesh, 0))
    ckpt = Checkpointer(out_dir / "checkpoints", max_to_keep=1)
    try:
        state = {"step": jnp.asarray(cfg.trainer.steps, jnp.int32), "params": params, "opt_state": tx.init(params)}
        ckpt.save(cfg.trainer.steps, state, {"exported_from": "ppo"})
    finally:
        ckpt.close()
