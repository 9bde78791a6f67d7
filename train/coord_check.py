"""The coordinate check (microsoft/mup; OLMo-core): does every activation keep its size as the model widens?

Train the same family at several widths (or depths) for a few steps with one learning rate and record, before
each update, the mean |x| of every layer's output: the embeddings, each layer's attention logits, attention
output, MLP output and residual stream, and the logits. Under µP these curves are flat in width; under SP the
updates of hidden weights grow with width, and so do the activations after the first step.

The layers are run one by one from the model's own pieces (its embedding, each scanned block sliced out of the
stack, its norms and head), so each output can be measured; `coordinates` checks that the pieces put together
give the model's own logits. Decoder-only, pre-norm models (the families a scaling study widens).

Data: byte tokens of Python's standard library sources (no download, the same bytes everywhere).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax.errors import UserError
from chinchax.model.config import ModelConfig
from chinchax.model.parametrization import multipliers
from chinchax.train.config import OptimizerConfig


@dataclass(frozen=True)
class CoordCheckResult:
    """mean |x| per (size, seed, step, coordinate): `values[i, s, t, c]` for sizes[i], seeds[s], step t+1,
    coordinates[c]; sizes are widths (d_model) or depths (n_layers)."""

    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    coordinates: tuple[str, ...]
    values: np.ndarray

    def mean_over_seeds(self) -> np.ndarray:  # [size, step, coordinate]
        return self.values.mean(axis=1)

    def slopes(self) -> np.ndarray:
        """[step, coordinate]: least-squares slope of log mean|x| (seed-averaged) against log size; nan where a
        coordinate is exactly 0 at some size (a zero-initialised readout's logits at step 1)."""
        means = self.mean_over_seeds()
        log_size = np.log(np.asarray(self.sizes, float))
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(means)
            centred = log_size - log_size.mean()
            slopes = np.einsum("i,itc->tc", centred, logs - logs.mean(axis=0)) / np.sum(centred**2)
        return np.where(np.isfinite(logs).all(axis=0), slopes, np.nan)

    def to_json(self) -> dict:
        return {"sizes": list(self.sizes), "seeds": list(self.seeds), "coordinates": list(self.coordinates),
                "mean_abs": self.values.tolist()}


def corpus_tokens(n_tokens: int) -> np.ndarray:
    """Bytes of a few standard-library modules' sources, as token ids 0..255."""
    import argparse
    import collections
    import dataclasses as dataclasses_module
    import json

    text = "".join(inspect.getsource(m) for m in (argparse, collections, dataclasses_module, json.decoder))
    data = np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)
    if data.size < n_tokens:
        data = np.resize(data, n_tokens)
    return data[:n_tokens]


def coordinates(model, tokens_BL: jax.Array) -> dict[str, jax.Array]:
    """mean |x| of every layer's output on `tokens_BL` (no dropout), and `_logits`: the logits the pieces give."""
    cfg = model.cfg
    if cfg.variant != "decoder_only" or cfg.norm_position != "pre":
        raise UserError(
            f"the coordinate check runs decoder-only pre-norm models (got variant={cfg.variant}, "
            f"norm_position={cfg.norm_position})"
        )
    stack = model.decoder
    B, L = tokens_BL.shape
    positions_BL = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), (B, L))
    out = {}
    x_BLD = model.embed(tokens_BL)
    if cfg.position == "learned":
        x_BLD = x_BLD + stack.position_embedding_PD[...][positions_BL].astype(x_BLD.dtype)
    if cfg.embedding_norm:
        x_BLD = stack.embed_norm(x_BLD)
    out["embedding"] = jnp.abs(x_BLD).mean()
    ctx, _ = stack._context((B, L), positions_BL, None, None, None, None, None, None)
    m = multipliers(cfg)
    graphdef, blocks_state = nnx.split(stack.blocks)
    causal_LL = jnp.tril(jnp.ones((L, L), bool))

    def layer(x_BLD, block_state):  # one block, scanned over the stack (one compile whatever the depth)
        block = nnx.merge(graphdef, block_state)
        h_BLD = block.self_attention_norm(x_BLD)
        q_BLHK, k_BLGK, _ = block.self_attention.project_qkv(h_BLD, positions_BL)
        G = k_BLGK.shape[2]
        q_BLGRK = q_BLHK.reshape(B, L, G, -1, q_BLHK.shape[-1])
        logits_BGRLS = jnp.einsum("BLGRK,BSGK->BGRLS", q_BLGRK, k_BLGK) * m.attention_scale
        attention_logits = jnp.abs(logits_BGRLS).sum(where=causal_LL) / (
            np.prod(logits_BGRLS.shape[:3]) * causal_LL.sum()
        )
        attn_BLD = block.self_attention(
            h_BLD, positions_BL=positions_BL, mask_B1LS=ctx["mask_B1LS"], bias_BHLS=ctx["bias_BHLS"],
            is_causal=ctx["is_causal"], within_causal=ctx["within_causal"],
        )
        x_BLD = x_BLD + _scaled(attn_BLD, m.branch)
        mlp_BLD = block.mlp(block.mlp_norm(x_BLD))
        x_BLD = x_BLD + _scaled(mlp_BLD, m.branch)
        # the branches' own outputs, before depth scaling; the residual stream after the block
        sizes = (attention_logits, jnp.abs(attn_BLD).mean(), jnp.abs(mlp_BLD).mean(), jnp.abs(x_BLD).mean())
        return x_BLD, jnp.stack(sizes)

    x_BLD, per_layer_L4 = jax.lax.scan(layer, x_BLD, blocks_state)
    for i in range(cfg.n_layers):
        for k, kind in enumerate((*LAYER_KINDS, "residual")):
            out[f"layer{i}.{kind}"] = per_layer_L4[i, k]
    if cfg.final_norm:
        x_BLD = stack.final_norm(x_BLD)
    logits_BLV = model.logits(x_BLD)
    out["logits"] = jnp.abs(logits_BLV).mean()
    out["_logits"] = logits_BLV
    return out


def run_coord_check(
    base: ModelConfig,
    sizes: tuple[int, ...],
    *,
    axis: str = "width",
    seeds: tuple[int, ...] = (0, 1, 2),
    steps: int = 5,
    learning_rate: float = 1e-2,
    batch_size: int = 8,
    seq_len: int = 64,
) -> CoordCheckResult:
    """Train `base` resized to each of `sizes` (d_model with d_ff = 4 d_model and n_heads = d_model / head size
    for axis="width"; n_layers for axis="depth") for `steps` steps of Adam at a constant `learning_rate` (no
    warmup, no clipping, no weight decay: the raw update the parametrization scales), recording `coordinates`
    before each step. Every size sees the same batches."""
    from chinchax.sharding import single_device_mesh
    from chinchax.train import state as state_lib
    from chinchax.train.optimizer import make_direction
    from chinchax.train.step import train_step

    if axis not in ("width", "depth"):
        raise UserError(f"axis={axis!r}: choose width or depth")
    opt = OptimizerConfig(learning_rate=learning_rate, weight_decay=0.0, clip_norm=None, warmup_steps=0)
    tokens = corpus_tokens(steps * batch_size * (seq_len + 1)).reshape(steps, batch_size, seq_len + 1)
    batches = [
        {"inputs": jnp.asarray(t[:, :-1]), "targets": jnp.asarray(t[:, 1:]), "loss_weights": jnp.ones((batch_size, seq_len))}
        for t in tokens
    ]
    mesh = single_device_mesh()
    values, names = [], None
    for size in sizes:
        cfg = _resized(base, size, axis)
        parts = state_lib.model_parts(cfg, mesh, 0)
        tx = make_direction(opt, parts.decay_mask, parts.update_scales)
        init = jax.jit(state_lib.make_seeded_init_fn(cfg, tx))
        step = jax.jit(functools.partial(train_step, parts=parts, tx=tx, microbatches=1, z_loss=0.0))
        measure = jax.jit(
            lambda params, tokens, cfg=cfg, parts=parts: _comparable(
                coordinates(_eval_model(parts, params), tokens), cfg.n_layers, per_layer=axis == "width"
            )
        )
        per_seed = []
        for seed in seeds:
            state = init(jnp.int32(seed))
            rows = []
            for batch in batches:
                coords = jax.device_get(measure(state["params"], batch["inputs"]))
                names = names or tuple(coords)
                rows.append([float(coords[n]) for n in names])
                state, _ = step(state, batch, jnp.float32(learning_rate))
            per_seed.append(rows)
        values.append(per_seed)
    return CoordCheckResult(tuple(sizes), tuple(seeds), names, np.asarray(values))


def _eval_model(parts, params):
    model = parts.merge(params)
    model.eval()  # no dropout
    return model


def _scaled(x, scale: float):
    return x if scale == 1.0 else x * jnp.asarray(scale, x.dtype)


LAYER_KINDS = ("attention_logits", "attention_out", "mlp_out")


def _comparable(coords: dict, n_layers: int, per_layer: bool) -> dict:
    """The coordinates every size has: embedding, each layer kind averaged over layers, the last residual
    stream, logits; and with `per_layer` (a width check, where every size has the same layers) each layer's."""
    out = {"embedding": coords["embedding"]}
    for kind in LAYER_KINDS:
        out[kind] = sum(coords[f"layer{i}.{kind}"] for i in range(n_layers)) / n_layers
    out["residual"] = coords[f"layer{n_layers - 1}.residual"]
    out["logits"] = coords["logits"]
    if per_layer:
        out.update({k: v for k, v in coords.items() if k.startswith("layer")})
    return out


def _resized(base: ModelConfig, size: int, axis: str) -> ModelConfig:
    if axis == "depth":
        return base.replace(n_layers=size)
    head = base.head_size
    if size % head:
        raise UserError(f"width {size} is not a multiple of the head size {head}: widths keep the head size fixed")
    return base.replace(d_model=size, d_ff=4 * size, n_heads=size // head, head_dim=head)
