"""Reward models: a chinchax transformer of any variant with a scalar head, trained with the Bradley-Terry
loss on (chosen, rejected) pairs (Ouyang et al. 2022; trl's RewardTrainer).

    chinchax reward train CONFIG.yaml reward.train_file=pairs.jsonl trainer.run_dir=runs/rm [--init RUN_DIR]

The score of a row is `head · h_last + bias`, h_last the final hidden state at the row's last real token
(its EOS); for an encoder-decoder the prompt is the encoder's input and the completion the decoder's.
`--init` starts the backbone from a pretraining run (Gao et al. initialise reward models from pretrained
models), taking that run's model config and tokenizer; without it the backbone is freshly initialised.

The run dir holds align_config.yaml, checkpoints/, metrics.jsonl and run.json with the held-out accuracy,
Bradley-Terry loss, Brier score and expected calibration error (ECE, 10 bins) of P(chosen > rejected) =
sigmoid(r_chosen - r_rejected). Calibration is measured on both orders of every pair (p with label 1,
1 - p with label 0), since a file only ever holds the preferred answer first.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax import rundir
from chinchax.errors import UserError
from chinchax.jsonio import write_json
from chinchax.model.config import ModelConfig
from chinchax.model.layers import param
from chinchax.model.transformer import Transformer
from chinchax.posttrain import align_loop, align_losses, policy, preference
from chinchax.train.config import OptimizerConfig, TrainerConfig


class RewardModel(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.backbone = Transformer(cfg, rngs=rngs)
        D = cfg.d_model
        self.head_D = param(rngs, nnx.initializers.normal(1.0 / math.sqrt(D + 1)), (D,), ("embed",))
        self.head_bias = param(rngs, nnx.initializers.zeros, (1,), (None,))

    @property
    def cfg(self) -> ModelConfig:
        return self.backbone.cfg

    def __call__(self, batch: dict) -> jax.Array:
        """Scores [B], float32."""
        hidden_BLD = policy.hidden_states(self.backbone, batch)
        last_BD = jnp.take_along_axis(hidden_BLD, batch["last"][:, None, None], axis=1)[:, 0]
        return jnp.einsum("BD,D->B", last_BD.astype(jnp.float32), self.head_D[...]) + self.head_bias[...][0]


@dataclass(frozen=True)
class RewardSettings:
    train_file: str = ""
    eval_file: str | None = None  # None: hold out `eval_fraction` of train_file
    eval_fraction: float = 0.1
    init_from: str | None = None  # a pretraining run dir (its model config and tokenizer replace model/tokenizer)
    tokenizer: str = "byte"
    max_len: int = 256

    def validate(self) -> RewardSettings:
        if not self.train_file:
            raise UserError("reward.train_file is empty; give a JSONL file of {prompt, chosen, rejected} pairs")
        if self.eval_file is None and not 0.0 < self.eval_fraction < 1.0:
            raise UserError(f"reward.eval_fraction={self.eval_fraction} must be in (0, 1) without reward.eval_file")
        return self


@dataclass(frozen=True)
class RewardRunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(learning_rate=1e-3, warmup_steps=10, weight_decay=0.0)
    )
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(steps=200, batch_size=16, log_every=10))
    reward: RewardSettings = field(default_factory=RewardSettings)

    def validate(self) -> RewardRunConfig:
        if self.trainer.steps is None:
            raise UserError("a reward model trains for trainer.steps (trainer.tokens is for pretraining)")
        return self


def build(cfg: ModelConfig, seed: int, init_params=None) -> RewardModel:
    model = RewardModel(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
    if init_params is not None:
        nnx.update(model.backbone, nnx.State(init_params))
    return model


def _split_eval(pairs, fraction: float, seed: int):
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_eval = max(1, int(round(fraction * len(pairs))))
    if len(pairs) - n_eval < 1:
        raise UserError(f"{len(pairs)} pairs cannot be split into train and eval; give more pairs or reward.eval_file")
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


def calibration(p_chosen: np.ndarray, bins: int = 10) -> dict:
    """Accuracy, Bradley-Terry loss, Brier score and ECE of P(chosen preferred), on both orders of each pair."""
    p = np.clip(np.concatenate([p_chosen, 1.0 - p_chosen]), 1e-7, 1 - 1e-7)
    y = np.concatenate([np.ones_like(p_chosen), np.zeros_like(p_chosen)])
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = sum(
        abs(p[which == b].mean() - y[which == b].mean()) * np.mean(which == b) for b in range(bins) if np.any(which == b)
    )
    return {
        "accuracy": float(np.mean(p_chosen > 0.5)),
        "bt_loss": float(np.mean(-np.log(np.clip(p_chosen, 1e-7, 1.0)))),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": float(ece),
        "n_pairs": int(p_chosen.size),
    }


def score_encoded(model: RewardModel, encoded: dict, batch_size: int = 64) -> np.ndarray:
    """Scores of every row of `encode_sequences`-style arrays, in batches of a fixed size (one compile)."""
    width = encoded["tokens"].shape[1]
    if model.cfg.position == "learned" and width > model.cfg.max_len:
        raise UserError(
            f"rows of {width} tokens are longer than the reward model's learned position table "
            f"(model.max_len={model.cfg.max_len}); train it with a larger model.max_len or shorten the completions"
        )
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(batch))
    n = encoded["tokens"].shape[0]
    out = []
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n  # pad the last batch by wrapping
        batch = {k: v[idx] for k, v in encoded.items() if k != "margin"}
        out.append(np.asarray(fn(state, policy.to_device(batch)))[: min(batch_size, n - start)])
    return np.concatenate(out)


def evaluate_pairs(model: RewardModel, tokenizer, pairs, *, max_len: int) -> dict:
    encoded = preference.encode_pairs(tokenizer, pairs, variant=model.cfg.variant, max_len=max_len)
    scores = score_encoded(model, encoded)
    n = len(pairs)
    return calibration(1.0 / (1.0 + np.exp(-(scores[:n] - scores[n:]))))


def _resolve(cfg: RewardRunConfig):
    """(model config, tokenizer, initial backbone params or None)."""
    from chinchax.data.tokenizers import check_vocab_fits, load_tokenizer

    if cfg.reward.init_from:
        from chinchax.evaluation.run_loading import load_run

        run = load_run(cfg.reward.init_from)
        _, params = nnx.split(run.model, nnx.Param, ...)[:2]
        return run.config.model, run.tokenizer, nnx.to_pure_dict(params)
    tokenizer = load_tokenizer(cfg.reward.tokenizer)
    check_vocab_fits(tokenizer, cfg.model.vocab_size)
    return cfg.model, tokenizer, None


def train_reward(cfg: RewardRunConfig) -> dict:
    """Train (or resume) a reward model; returns its run.json."""
    from chinchax import configlib

    cfg = cfg.validate()
    settings = cfg.reward.validate()
    run_dir = Path(cfg.trainer.run_dir)
    pairs = preference.read_preferences(settings.train_file)  # bad files fail before any model is built
    eval_file_pairs = preference.read_preferences(settings.eval_file) if settings.eval_file else None
    model_cfg, tokenizer, init_params = _resolve(cfg)
    if eval_file_pairs is not None:
        train_pairs, eval_pairs = pairs, eval_file_pairs
    else:
        train_pairs, eval_pairs = _split_eval(pairs, settings.eval_fraction, cfg.trainer.seed)
    encoded = preference.encode_pairs(tokenizer, train_pairs, variant=model_cfg.variant, max_len=settings.max_len)
    config = {
        **{f"model.{k}": v for k, v in dataclasses.asdict(model_cfg).items()},
        **{f"optimizer.{k}": v for k, v in dataclasses.asdict(cfg.optimizer).items()},
        **{f"reward.{k}": v for k, v in dataclasses.asdict(settings).items()},
        "trainer.steps": cfg.trainer.steps,
        "trainer.batch_size": cfg.trainer.batch_size,
        "trainer.seed": cfg.trainer.seed,
        "tokenizer": tokenizer.describe(),
        "kind": "reward_model",
    }
    align_loop.check_or_write_config(run_dir, config)
    mesh = align_loop.make_mesh(cfg.trainer.mesh)
    model = align_loop.create_sharded(mesh, lambda: build(model_cfg, cfg.trainer.seed, init_params))
    graphdef, params, rest = align_loop.split_params(model)
    tx, lrs = align_loop.optimizer(cfg.optimizer, cfg.trainer.steps)
    B, n = cfg.trainer.batch_size, len(train_pairs)

    def batch_for_step(step: int, _params):
        epoch, offset = divmod(step * B, n)
        order = np.concatenate(
            [np.random.default_rng([cfg.trainer.seed, epoch + e]).permutation(n) for e in range(2 + B // n)]
        )
        return policy.to_device(preference.pair_batch(encoded, order[offset : offset + B]))

    def loss_fn(params, batch):
        scores_2B = align_loop.merge(graphdef, params, rest)(batch)
        chosen_B, rejected_B = scores_2B[:B], scores_2B[B:]
        loss = align_losses.bradley_terry_loss(chosen_B, rejected_B, batch["margin"])
        return loss, {"accuracy": jnp.mean((chosen_B > rejected_B).astype(jnp.float32)),
                      "margin": jnp.mean(chosen_B - rejected_B)}

    def step_fn(state, batch, lr):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
        state, grad_norm = align_loop.apply_gradients(state, grads, lr, tx)
        return state, {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr, **aux}

    state, rows = align_loop.run_loop(
        run_dir=run_dir, trainer_cfg=cfg.trainer, params=params, tx=tx, lr_by_step=lrs, step_fn=step_fn,
        batch_for_step=batch_for_step, config=config, tag="reward", mesh=mesh,
    )
    trained = align_loop.merge(graphdef, state["params"], rest)
    result = {
        "kind": "reward_model",
        "config": configlib.to_dict(cfg),
        "model": dataclasses.asdict(model_cfg),
        "tokenizer": tokenizer.describe(),
        "init_from": settings.init_from,
        "n_params": int(sum(x.size for x in jax.tree.leaves(state["params"]))),
        "steps": cfg.trainer.steps,
        "train_pairs": len(train_pairs),
        "final_train_loss": rows[-1]["loss"] if rows else None,
        "eval": evaluate_pairs(trained, tokenizer, eval_pairs, max_len=settings.max_len),
    }
    write_json(run_dir / rundir.RUN_JSON, result)
    return result


@dataclass
class LoadedReward:
    model: RewardModel
    tokenizer: object
    max_len: int
    run: dict


def load_reward(run_dir: str | Path) -> LoadedReward:
    """A trained reward model from its run dir (newest verified checkpoint)."""
    from chinchax.data.tokenizers import load_tokenizer

    run_dir = rundir.recognise(run_dir, accept=(rundir.REWARD,)).path
    fix = "train it again with `chinchax reward train` (same run dir: it resumes)"
    run = rundir.read_run_json(run_dir, fix=fix)
    path = run_dir / rundir.RUN_JSON
    try:
        model_cfg = ModelConfig(**run["model"])
        tok_desc = run["tokenizer"]
        spec = "byte" if tok_desc["kind"] == "byte" else f"spm:{tok_desc['path']}"
        optimizer_cfg = OptimizerConfig(**run["config"]["optimizer"])
        max_len = int(run["config"]["reward"]["max_len"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path} lacks or mistypes a field a reward model needs ({type(e).__name__}: {e}); "
                        f"{fix}") from None
    tokenizer = load_tokenizer(spec)
    model = build(model_cfg, 0)
    graphdef, params, rest = align_loop.split_params(model)
    tx, _ = align_loop.optimizer(optimizer_cfg, 1)
    _, params = align_loop.restore_params(run_dir, jax.device_put(params), tx)
    return LoadedReward(align_loop.merge(graphdef, params, rest), tokenizer, max_len, run)
