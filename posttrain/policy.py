"""What every alignment method needs from a chinchax model, built from its public pieces (`embed`, `encode`,
`decoder`, `logits`): final hidden states of prompt + completion rows, per-token log-probabilities of the
completion, sampling completions with `model.decoding.generate`, and the KL to a reference policy.

Batches are the arrays of `posttrain.preference.encode_sequences` (tokens, segments, completion, last, and
encoder/encoder_segments for encoder-decoders).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from chinchax.errors import UserError
from chinchax.model.losses import token_cross_entropy


def hidden_states(backbone, batch: dict) -> jax.Array:
    """[B, L, D] final hidden states of the rows (the model's public `hidden_states`). Padding is its own
    segment (id 0), so real tokens never attend to it; a prefix-LM decoder sees its prompt bidirectionally,
    as it was trained; an encoder-decoder reads the prompt with its encoder."""
    cfg = backbone.cfg
    kwargs = {"segment_ids": batch["segments"]}
    if cfg.variant == "encoder_decoder":
        kwargs.update(encoder_inputs=batch["encoder"], encoder_segment_ids=batch["encoder_segments"])
    if cfg.variant == "decoder_only" and cfg.attention == "prefix":
        kwargs["prefix_mask"] = (batch["segments"] > 0) & (batch["completion"] == 0)
    return backbone.hidden_states(batch["tokens"], **kwargs)


def token_logps(backbone, batch: dict, hidden_BLD=None) -> tuple[jax.Array, jax.Array]:
    """(log p of each next token [B, L-1], mask [B, L-1]: 1 where that token belongs to the completion).
    Position t predicts token t+1; float32."""
    if backbone.cfg.variant == "encoder_only":
        raise UserError("an encoder-only model is not a policy (it cannot generate); use it as a reward model")
    hidden_BLD = hidden_states(backbone, batch) if hidden_BLD is None else hidden_BLD
    logits_BLV = backbone.logits(hidden_BLD[:, :-1])
    targets_BT = batch["tokens"][:, 1:]
    ce_BT, _ = token_cross_entropy(logits_BLV, targets_BT)  # the one cross-entropy: log p = -ce
    logp_BT = -ce_BT
    mask_BT = batch["completion"][:, 1:].astype(jnp.float32)
    return logp_BT * mask_BT, mask_BT


def check_same_vocabulary(policy_tokenizer, reward_tokenizer, *, what: str = "reward model") -> None:
    """A reward model reads the policy's completions as text re-tokenized with its own tokenizer; a different
    tokenizer would still run but score something else than it was trained on when ids differ. Refuse."""
    if policy_tokenizer.hash != reward_tokenizer.hash:
        raise UserError(
            f"the {what} uses another vocabulary ({reward_tokenizer!r}, hash {reward_tokenizer.hash[:12]}) than "
            f"the policy ({policy_tokenizer!r}, hash {policy_tokenizer.hash[:12]}); train the {what} with the "
            "policy's tokenizer (reward.tokenizer / --init from a run of the same tokenizer)"
        )


def to_device(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in batch.items()}


# --- rollouts as exact token rows -----------------------------------------------------------------------


def generate_rows(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, temperature: float, seed: int):
    """Sample one completion per prompt; returns (texts, rows, scored): `rows` are `encode_sequences`-style
    arrays of exactly the sampled tokens ([bos] + prompt + completion, EOS only if it was sampled) and
    `scored` the same rows ending in EOS as a reward model reads them (it was trained on rows with EOS), both
    right-padded to a fixed width so every rollout batch has one shape. A reward model of the same tokenizer
    reads the sampled ids, not a re-encoding of the decoded text (which differs for special or invalid bytes)."""
    from chinchax.model.decoding import SamplingConfig, generate

    if model.cfg.variant != "decoder_only":
        raise UserError(
            f"policy optimisation here supports decoder-only policies; model.variant={model.cfg.variant!r} "
            "(reward models take any variant)"
        )
    ids = [tokenizer.encode(p) for p in prompts]
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, stop_tokens=(tokenizer.eos_id,), seed=seed
    )
    result = generate(model, [[tokenizer.bos_id, *i] for i in ids], sampling, pad_id=tokenizer.pad_id)
    gens = result.as_lists()
    width = max(len(i) for i in ids) + 2 + max_new_tokens
    texts = [tokenizer.decode([t for t in g if t != tokenizer.eos_id]) for g in gens]
    ended = [g if g and g[-1] == tokenizer.eos_id else [*g, tokenizer.eos_id] for g in gens]
    return texts, _rows(tokenizer, ids, gens, width), _rows(tokenizer, ids, ended, width)


def _rows(tokenizer, prompt_ids, completions, width: int) -> dict[str, np.ndarray]:
    B = len(prompt_ids)
    rows = {
        "tokens": np.zeros((B, width), np.int32),
        "segments": np.zeros((B, width), np.int32),
        "completion": np.zeros((B, width), np.float32),
        "last": np.zeros((B,), np.int32),
    }
    for b, (p, g) in enumerate(zip(prompt_ids, completions, strict=True)):
        row = [tokenizer.bos_id, *p, *g]
        rows["tokens"][b, : len(row)] = row
        rows["segments"][b, : len(row)] = 1
        rows["completion"][b, len(p) + 1 : len(row)] = 1.0
        rows["last"][b] = len(row) - 1
    return rows


@partial(jax.jit, static_argnums=0)
def _token_logps_jit(graphdef, params, rest, batch):
    from flax import nnx

    return token_logps(nnx.merge(graphdef, params, rest), batch)


def model_token_logps(model, batch: dict, params=None):
    """(token log-probs [B, T], mask [B, T]) of `model` (or of `params` in its structure), jitted once per
    model structure and batch shape."""
    from flax import nnx

    graphdef, own, rest = nnx.split(model, nnx.Param, ...)
    return _token_logps_jit(graphdef, own if params is None else params, rest, to_device(batch))


def load_policy(run_dir):
    """The pretrained (or aligned) policy of a run directory: chinchax.evaluation's LoadedRun."""
    from chinchax.evaluation.run_loading import load_run

    run = load_run(run_dir)
    if run.config.model.variant != "decoder_only":
        raise UserError(
            f"{run_dir} holds a {run.config.model.variant} model; policy optimisation here takes decoder-only "
            "policies (train an encoder or encoder-decoder as a reward model instead)"
        )
    return run


def policy_run_config(init_cfg, *, run_dir, steps: int, optimizer_cfg, seed: int):
    """The config.yaml of an aligned policy: its base run's config with this run's optimizer, length and
    directory, so `chinchax eval`, sweeps and `load_run` read an aligned policy like a pretrained one."""
    import dataclasses

    trainer = dataclasses.replace(init_cfg.trainer, run_dir=str(run_dir), steps=steps, tokens=None, seed=seed)
    return dataclasses.replace(init_cfg, optimizer=optimizer_cfg, trainer=trainer)


def write_policy_config(run_dir, exp_cfg) -> None:
    from pathlib import Path

    from chinchax import rundir

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    rundir.write_run_config(run_dir, exp_cfg)


def decay_mask(model_cfg, mesh, seed: int):
    from chinchax.train.state import model_parts

    return model_parts(model_cfg, mesh, seed).decay_mask


def update_scales(model_cfg, mesh, seed: int):
    """µP's (lr, gradient) multipliers of the policy's parameters, or None (SP): a µP base keeps training
    with its own multipliers, and its exported optimizer state has the shape `load_run` expects."""
    from chinchax.train.state import model_parts

    return model_parts(model_cfg, mesh, seed).update_scales
