"""DPO (Rafailov et al. 2023) and IPO (Azar et al. 2023) of a chinchax decoder on preference pairs.

    chinchax align dpo CONFIG.yaml dpo.policy=runs/base dpo.train_file=pairs.jsonl trainer.run_dir=runs/dpo

The reference is the initial policy, frozen; its completion log-probabilities are computed once before
training (trl's `precompute_ref_log_probs`), so a step runs the policy alone. The result is a run directory
like a pretraining run's (config.yaml, checkpoints of {step, params, opt_state}, metrics.jsonl), plus
align_config.yaml and run.json, so `chinchax eval` and `load_run` read the aligned policy unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from chinchax import rundir
from chinchax.errors import UserError
from chinchax.jsonio import write_json
from chinchax.posttrain import align_loop, align_losses, policy, preference
from chinchax.train.config import OptimizerConfig, TrainerConfig


@dataclass(frozen=True)
class DPOSettings:
    policy: str = ""  # the run directory of the initial policy (also the frozen reference)
    train_file: str = ""
    beta: float = 0.1
    loss_type: str = "sigmoid"  # sigmoid (DPO) | ipo
    max_len: int = 256
    eval_every: int = 0  # run `evaluate` every this many steps (0 = never; the study uses it)

    def validate(self) -> DPOSettings:
        if not self.policy:
            raise UserError("dpo.policy is empty; give the run directory of the policy to align")
        if not self.train_file:
            raise UserError("dpo.train_file is empty; give a JSONL file of {prompt, chosen, rejected} pairs")
        if not self.beta > 0:
            raise UserError(f"dpo.beta={self.beta} must be > 0 (the strength of the KL regularisation)")
        if self.loss_type not in align_losses.DPO_LOSS_TYPES:
            raise UserError(f"dpo.loss_type={self.loss_type!r}: choose one of {align_losses.DPO_LOSS_TYPES}")
        return self


@dataclass(frozen=True)
class DPORunConfig:
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-4, warmup_steps=0, weight_decay=0.0, schedule="constant")
    )
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=100, batch_size=16, log_every=10))
    dpo: DPOSettings = field(default_factory=DPOSettings)


def reference_logps(model, encoded: dict, batch_size: int) -> np.ndarray:
    """Summed completion log-probabilities of every row under the frozen model, [2N]."""
    n = encoded["tokens"].shape[0]
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        rows = {k: v[idx] for k, v in encoded.items() if k != "margin"}
        logp, _ = policy.model_token_logps(model, rows)
        out.append(np.asarray(logp.sum(axis=1))[: min(batch_size, n - start)])
    return np.concatenate(out).astype(np.float32)


def train_dpo(cfg: DPORunConfig, *, evaluate: Callable[[int, object], dict] | None = None) -> dict:
    """Train (or resume) DPO/IPO; returns run.json. `evaluate(step, model)` (optional) is logged every
    dpo.eval_every steps."""
    from chinchax import configlib

    settings = cfg.dpo.validate()
    if cfg.trainer.steps is None:
        raise UserError("DPO trains for trainer.steps; set it (trainer.tokens is for pretraining)")
    run_dir = Path(cfg.trainer.run_dir)
    pairs = preference.read_preferences(settings.train_file)  # a bad file fails before the policy loads
    base = policy.load_policy(settings.policy)
    model, tokenizer = base.model, base.tokenizer
    encoded = preference.encode_pairs(tokenizer, pairs, variant="decoder_only", max_len=settings.max_len)
    B, n = cfg.trainer.batch_size, len(pairs)
    ref_2N = reference_logps(model, encoded, 2 * B)
    encoded["ref_logps"] = ref_2N
    config = {
        **{f"dpo.{k}": v for k, v in dataclasses.asdict(settings).items()},
        **{f"optimizer.{k}": v for k, v in dataclasses.asdict(cfg.optimizer).items()},
        "trainer.steps": cfg.trainer.steps, "trainer.batch_size": B, "trainer.seed": cfg.trainer.seed,
        "kind": "dpo", "policy_step": base.step,
    }
    align_loop.check_or_write_config(run_dir, config, resume_safe=frozenset({"dpo.eval_every"}))
    mesh = align_loop.make_mesh(cfg.trainer.mesh)
    tx, lrs = align_loop.optimizer(cfg.optimizer, cfg.trainer.steps, policy.decay_mask(base.config.model, mesh, 0),
                                   policy.update_scales(base.config.model, mesh, 0))
    policy.write_policy_config(
        run_dir, policy.policy_run_config(base.config, run_dir=run_dir, steps=cfg.trainer.steps,
                                          optimizer_cfg=cfg.optimizer, seed=cfg.trainer.seed)
    )
    graphdef, params, rest = align_loop.split_params(model)

    def batch_for_step(step: int, _params):
        epoch, offset = divmod(step * B, n)
        order = np.concatenate(
            [np.random.default_rng([cfg.trainer.seed, epoch + e]).permutation(n) for e in range(2 + B // n)]
        )
        index = order[offset : offset + B]
        batch = preference.pair_batch({k: v for k, v in encoded.items() if k != "ref_logps"}, index)
        batch["ref_logps"] = ref_2N[np.concatenate([index, index + n])]
        return policy.to_device(batch)

    def loss_fn(params, batch):
        logp_2BT, mask_2BT = policy.token_logps(align_loop.merge(graphdef, params, rest), batch)
        seq_2B, tokens_2B = jnp.sum(logp_2BT, axis=1), jnp.sum(mask_2BT, axis=1)
        ref_2B = batch["ref_logps"]
        return align_losses.dpo_loss(
            seq_2B[:B], seq_2B[B:], ref_2B[:B], ref_2B[B:], beta=settings.beta, loss_type=settings.loss_type,
            chosen_tokens_B=tokens_2B[:B], rejected_tokens_B=tokens_2B[B:],
        )

    def step_fn(state, batch, lr):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
        state, grad_norm = align_loop.apply_gradients(state, grads, lr, tx)
        return state, {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr, **aux}

    every = settings.eval_every
    eval_steps = frozenset(range(every, cfg.trainer.steps + 1, every)) if every else frozenset()
    state, rows = align_loop.run_loop(
        run_dir=run_dir, trainer_cfg=cfg.trainer, params=params, tx=tx, lr_by_step=lrs, step_fn=step_fn,
        batch_for_step=batch_for_step, config=config, tag="dpo", mesh=mesh,
        evaluate=None if evaluate is None else (lambda s, p: evaluate(s, align_loop.merge(graphdef, p, rest))),
        eval_steps=eval_steps,
    )
    train_rows = [r for r in rows if not r.get("eval")]
    result = {
        "kind": "dpo",
        "config": configlib.to_dict(cfg),
        "policy": settings.policy,
        "pairs": n,
        "epochs": cfg.trainer.steps * B / n,
        "final": train_rows[-1] if train_rows else None,
        "evals": [r for r in rows if r.get("eval")],
    }
    write_json(run_dir / rundir.RUN_JSON, result)
    return result
