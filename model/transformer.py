"""The transformer family: encoder-only, decoder-only (causal or prefix-LM) and encoder-decoder.

    model = Transformer(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    logits_BLV = model(inputs, segment_ids=..., positions=..., prefix_mask=...)         # decoder / encoder
    logits_BLV = model(inputs, encoder_inputs=..., encoder_segment_ids=..., ...)        # encoder-decoder
    logits_BLV, cache = model(inputs, ..., cache=model.init_cache(B, S), cache_index=0)  # then one token at a time

The layers of a stack are one `Block` with a leading `layers` axis on every parameter, run with
`nnx.scan` (one compiled block however deep the model; `scan_layers=False` unrolls the same scan).
An optional KV cache (as in MaxText and Flax gemma) is scanned beside them, so training, scoring and
generation (model/decoding.py) run the same Block and Stack code.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from chinchax.model.attention import Attention, RelativePositionBias, alibi_bias, attention_mask
from chinchax.model.config import ModelConfig
from chinchax.model.layers import (
    LoraSpec,
    Mlp,
    Norm,
    activation_fn,
    compute_dtype,
    dense_init,
    param,
    project,
    tied_logits,
)
from chinchax.model.parametrization import multipliers

# The batch keys the model reads (docs/interfaces.md); the trainer passes exactly these.
MODEL_INPUT_KEYS = (
    "inputs",
    "segment_ids",
    "positions",
    "prefix_mask",
    "token_types",
    "encoder_inputs",
    "encoder_segment_ids",
    "encoder_positions",
)

# Parameters that Kaplan et al. exclude from N ("embedding" parameters): vocabulary-sized tables and
# projections, and learned position tables.
EMBEDDING_PARAM_NAMES = frozenset(
    {"embedding_VD", "unembedding_DV", "output_bias_V", "position_embedding_PD", "token_type_embedding_TD"}
)

# A decoder's KV cache (Stack.init_cache): per layer, keys (RoPE applied) and values of self-attention,
# `k`, `v` [layers, B, S, G, K], and once the encoder has run, its cross-attention keys and values
# `cross_k`, `cross_v` [layers, B, S_enc, G, K]; per slot, what the mask and position bias need:
# `segment_ids` [B, S] (0 = padding or not yet written), `positions` [B, S], `prefix` [B, S] (bidirectional
# prefix of a prefix-LM decoder); and `encoder_segment_ids` [B, S_enc].
CACHE_AXES = ("layers", "batch", "length", "kv_heads", "kv")
LAYER_CACHE_KEYS = ("k", "v", "cross_k", "cross_v")

REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
    """Pin an activation's sharding by logical names; a no-op unless the trainer set axis rules."""
    return nn.with_logical_constraint(x, names)


class Block(nnx.Module):
    """Self-attention, optional cross-attention, MLP; each residual branch pre- or post-normed."""

    def __init__(self, cfg: ModelConfig, *, cross: bool, rngs: nnx.Rngs, lora: LoraSpec | None = None):
        self.cfg = cfg
        self.self_attention_norm = Norm(cfg, rngs=rngs)
        self.self_attention = Attention(cfg, rngs=rngs, lora=lora)
        if cross:
            self.cross_attention_norm = Norm(cfg, rngs=rngs)
            self.cross_attention = Attention(cfg, rngs=rngs, lora=lora)
        self.mlp_norm = Norm(cfg, rngs=rngs)
        self.mlp = Mlp(cfg, rngs=rngs, lora=lora)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def _residual(self, x_BLD, norm: Norm, branch) -> jax.Array:
        scale = multipliers(self.cfg).branch  # depth scaling (µP with base n_layers); 1.0 otherwise

        def scaled(h_BLD):
            out_BLD = self.dropout(branch(h_BLD))
            return out_BLD if scale == 1.0 else out_BLD * jnp.asarray(scale, out_BLD.dtype)

        if self.cfg.norm_position == "pre":
            out = x_BLD + scaled(norm(x_BLD))
        else:
            out = norm(x_BLD + scaled(x_BLD))
        return constrain(out, ("batch", "length", "embed"))

    def __call__(self, x_BLD: jax.Array, ctx: dict, cache: dict | None = None):
        """x -> x, or with a layer's KV cache ({"k", "v"}, with "cross_k", "cross_v" once the encoder's
        keys are stored) -> (x, new cache)."""
        new_cache = {}

        def self_attention(h_BLD):
            kwargs = dict(
                positions_BL=ctx["positions_BL"],
                mask_B1LS=ctx["mask_B1LS"],
                bias_BHLS=ctx["bias_BHLS"],
                is_causal=ctx["is_causal"],
                within_causal=ctx["within_causal"],
            )
            if cache is None:
                return self.self_attention(h_BLD, **kwargs, segments=ctx.get("segments"))
            kv = {"k": cache["k"], "v": cache["v"]}
            out_BLD, kv = self.self_attention(h_BLD, **kwargs, cache=kv, cache_index=ctx["cache_index"])
            new_cache.update(kv)
            return out_BLD

        def cross_attention(h_BLD):
            kwargs = dict(positions_BL=None, mask_B1LS=ctx["cross_mask_B1LS"], kv_BSD=ctx.get("encoder_BSD"))
            if cache is None:
                return self.cross_attention(h_BLD, **kwargs)
            kv = {"k": cache["cross_k"], "v": cache["cross_v"]} if "cross_k" in cache else {}
            out_BLD, kv = self.cross_attention(h_BLD, **kwargs, cache=kv)
            new_cache.update(cross_k=kv["k"], cross_v=kv["v"])
            return out_BLD

        x_BLD = self._residual(x_BLD, self.self_attention_norm, self_attention)
        if "cross_mask_B1LS" in ctx:
            x_BLD = self._residual(x_BLD, self.cross_attention_norm, cross_attention)
        x_BLD = self._residual(x_BLD, self.mlp_norm, self.mlp)
        return x_BLD if cache is None else (x_BLD, new_cache)


class Stack(nnx.Module):
    """A stack of blocks with what belongs to it alone: position table or bias, embedding norm, final norm."""

    def __init__(
        self, cfg: ModelConfig, *, n_layers: int, causal: bool, cross: bool, rngs: nnx.Rngs, lora: LoraSpec | None = None
    ):
        self.cfg = cfg
        self.n_layers = n_layers
        self.causal = causal
        if cfg.position == "learned":
            rows = cfg.max_len + cfg.position_offset
            self.position_embedding_PD = param(rngs, nnx.initializers.normal(0.02), (rows, cfg.d_model), (None, "embed"))
        if cfg.position == "t5_relative":
            self.relative_bias = RelativePositionBias(cfg, bidirectional=not causal, rngs=rngs)
        if cfg.embedding_norm:
            self.embed_norm = Norm(cfg, kind="layernorm", rngs=rngs)
        self.embed_dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

        @nnx.split_rngs(splits=n_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, cross=cross, rngs=rngs, lora=lora)

        self.blocks = make_blocks(rngs)
        if cfg.final_norm:
            self.final_norm = Norm(cfg, rngs=rngs)

    def init_cache(self, batch: int, length: int) -> dict:
        """An empty KV cache of `length` slots (the layout is in the module docstring)."""
        cfg = self.cfg
        if not self.causal:
            raise ValueError("only a causal (decoder) stack keeps a KV cache")
        zeros = jnp.zeros((self.n_layers, batch, length, cfg.kv_heads, cfg.head_size), compute_dtype(cfg))
        zeros = constrain(zeros, CACHE_AXES)
        slots_BS = jnp.zeros((batch, length), jnp.int32)
        return {"k": zeros, "v": zeros, "segment_ids": slots_BS, "positions": slots_BS, "prefix": slots_BS.astype(bool)}

    def __call__(
        self,
        x_BLD: jax.Array,
        *,
        positions_BL: jax.Array,
        segment_ids_BL: jax.Array | None,
        prefix_mask_BL: jax.Array | None = None,
        encoder_BSD: jax.Array | None = None,
        encoder_segment_ids_BS: jax.Array | None = None,
        cache: dict | None = None,
        cache_index: jax.Array | int | None = None,
    ):
        """Hidden states [B, L, D]; with a `cache` (from `init_cache`) and `cache_index` (the slot of the
        first new token), (hidden states, new cache): the new tokens attend to every cached slot."""
        cfg = self.cfg
        if cfg.position == "learned":
            table_PD = self.position_embedding_PD[...]
            x_BLD = x_BLD + table_PD[positions_BL + cfg.position_offset].astype(x_BLD.dtype)
        if cfg.embedding_norm:
            x_BLD = self.embed_norm(x_BLD)
        x_BLD = constrain(self.embed_dropout(x_BLD), ("batch", "length", "embed"))
        ctx, cache = self._context(
            x_BLD.shape[:2], positions_BL, segment_ids_BL, prefix_mask_BL, encoder_BSD, encoder_segment_ids_BS,
            cache, cache_index,
        )
        layer_cache = None if cache is None else {k: v for k, v in cache.items() if k in LAYER_CACHE_KEYS}
        x_BLD, layer_cache = self._run_blocks(x_BLD, ctx, layer_cache)
        if cfg.final_norm:
            x_BLD = self.final_norm(x_BLD)
        if cache is None:
            return x_BLD
        cache.update({k: constrain(v, CACHE_AXES) for k, v in layer_cache.items()})
        return x_BLD, cache

    def _context(
        self, shape_BL, positions_BL, segment_ids_BL, prefix_mask_BL, encoder_BSD, encoder_segment_ids_BS,
        cache, cache_index,
    ) -> tuple[dict, dict | None]:
        """What every block reads (mask, position bias, encoder output) and, with a cache, the cache with
        the new tokens' per-slot entries written (their keys see themselves and every earlier slot)."""
        cfg = self.cfg
        B, L = shape_BL
        if cache is None:
            # Pure causal attention without packing or padding takes the fused causal path (no mask array).
            is_causal = self.causal and segment_ids_BL is None and prefix_mask_BL is None
            ctx = {"is_causal": is_causal, "within_causal": self.causal and prefix_mask_BL is None}
            kv_segment_ids_BS, kv_positions_BS, kv_prefix_BS, q_offset = segment_ids_BL, positions_BL, None, 0
            if cfg.attention_max_segments and segment_ids_BL is not None and prefix_mask_BL is None:
                # On GPU, attention takes these instead of the mask (cuDNN's packed layout); elsewhere the mask.
                ctx["segments"] = (segment_ids_BL, segment_ids_BL, cfg.attention_max_segments)
        else:
            if not self.causal or cache_index is None:
                raise ValueError("a KV cache needs a causal (decoder) stack and the `cache_index` of the new tokens")
            # The new tokens' segments, positions and prefix flags go into the cache beside their keys.
            segment_ids_BL = jnp.ones((B, L), jnp.int32) if segment_ids_BL is None else segment_ids_BL
            q_prefix_BL = jnp.zeros((B, L), bool) if prefix_mask_BL is None else prefix_mask_BL
            cache = dict(cache)
            for name, new_BL in (("segment_ids", segment_ids_BL), ("positions", positions_BL), ("prefix", q_prefix_BL)):
                cache[name] = jax.lax.dynamic_update_slice(cache[name], new_BL.astype(cache[name].dtype), (0, cache_index))
            ctx = {"is_causal": False, "within_causal": False, "cache_index": cache_index}
            kv_segment_ids_BS, kv_positions_BS, kv_prefix_BS = cache["segment_ids"], cache["positions"], cache["prefix"]
            q_offset = cache_index
        ctx["positions_BL"] = positions_BL
        ctx["mask_B1LS"] = (
            None
            if ctx["is_causal"]
            else attention_mask(
                segment_ids_BL,
                kv_segment_ids_BS,
                causal=self.causal,
                prefix_mask_BL=prefix_mask_BL,
                shape=(B, L, kv_positions_BS.shape[1]),
                kv_prefix_mask_BS=kv_prefix_BS,
                q_offset=q_offset,
            )
        )
        ctx["bias_BHLS"] = None
        if cfg.position == "t5_relative":
            ctx["bias_BHLS"] = self.relative_bias(positions_BL, kv_positions_BS)
        elif cfg.position == "alibi":
            ctx["bias_BHLS"] = alibi_bias(positions_BL, kv_positions_BS, cfg.n_heads)
        if encoder_BSD is not None:
            ctx["encoder_BSD"] = encoder_BSD
            if encoder_segment_ids_BS is None:
                encoder_segment_ids_BS = jnp.ones(encoder_BSD.shape[:2], jnp.int32)
            if cache is not None:
                cache["encoder_segment_ids"] = encoder_segment_ids_BS
        elif cache is not None and "encoder_segment_ids" in cache:
            encoder_segment_ids_BS = cache["encoder_segment_ids"]
        if "encoder_BSD" in ctx or (cache is not None and "cross_k" in cache):
            q_segments = segment_ids_BL if segment_ids_BL is not None else jnp.ones((B, L), jnp.int32)
            ctx["cross_mask_B1LS"] = attention_mask(q_segments, encoder_segment_ids_BS, causal=False)
        return ctx, cache

    def _run_blocks(self, x_BLD, ctx: dict, layer_cache: dict | None):
        """The blocks, scanned over their leading `layers` axis (and over the cache's, when there is one)."""

        def body(x_BLD, block: Block, *cache):
            return block(x_BLD, ctx, *cache)

        if self.cfg.remat != "none":
            body = nnx.remat(body, policy=REMAT_POLICIES[self.cfg.remat], prevent_cse=False)
        with_cache = layer_cache is not None
        scan = nnx.scan(
            body,
            in_axes=(nnx.Carry, 0, 0) if with_cache else (nnx.Carry, 0),
            out_axes=(nnx.Carry, 0) if with_cache else nnx.Carry,
            transform_metadata={nnx.PARTITION_NAME: "layers"},
            unroll=1 if self.cfg.scan_layers else self.n_layers,
        )
        if with_cache:
            return scan(x_BLD, self.blocks, layer_cache)
        return scan(x_BLD, self.blocks), None


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoraSpec | None = None):
        """`lora`: LoRA adapters on the blocks' kernels (fine-tuning, model/layers.LoraAdapter; their input
        dropout draws from the `lora_dropout` stream of `rngs`). None, the default, is the plain model."""
        cfg = cfg.validate()
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.d_model
        self.embedding_VD = param(rngs, nnx.initializers.normal(0.02), (V, D), ("vocab", "embed"))
        if cfg.n_token_types:
            self.token_type_embedding_TD = param(
                rngs, nnx.initializers.normal(0.02), (cfg.n_token_types, D), (None, "embed")
            )
        if cfg.variant == "encoder_decoder":
            self.encoder = Stack(cfg, n_layers=cfg.encoder_layers, causal=False, cross=False, rngs=rngs, lora=lora)
            self.decoder = Stack(cfg, n_layers=cfg.n_layers, causal=True, cross=True, rngs=rngs, lora=lora)
        elif cfg.variant == "encoder_only":
            self.encoder = Stack(cfg, n_layers=cfg.n_layers, causal=False, cross=False, rngs=rngs, lora=lora)
        else:
            self.decoder = Stack(cfg, n_layers=cfg.n_layers, causal=True, cross=False, rngs=rngs, lora=lora)
        if cfg.mlm_transform:
            self.mlm_dense_DD = param(rngs, dense_init(), (D, D), ("embed", None))
            self.mlm_dense_bias_D = param(rngs, nnx.initializers.zeros, (D,), (None,))
            self.mlm_norm = Norm(cfg, kind="layernorm", rngs=rngs)
        if not cfg.tie_embeddings:
            readout_init = nnx.initializers.zeros if cfg.mup_zero_readout else dense_init()
            self.unembedding_DV = param(rngs, readout_init, (D, V), ("embed", "vocab"))
        if cfg.output_bias:
            self.output_bias_V = param(rngs, nnx.initializers.zeros, (V,), ("vocab",))

    # --- pieces, public so that evaluation and decoding can reuse them ----------------------------
    def embed(self, tokens_BL: jax.Array, token_types_BL: jax.Array | None = None) -> jax.Array:
        dtype = compute_dtype(self.cfg)
        x_BLD = self.embedding_VD[...][tokens_BL].astype(dtype)
        if self.cfg.scale_embeddings:
            x_BLD = x_BLD * jnp.asarray(math.sqrt(self.cfg.d_model), dtype)
        if self.cfg.n_token_types:
            types_BL = jnp.zeros_like(tokens_BL) if token_types_BL is None else token_types_BL
            x_BLD = x_BLD + self.token_type_embedding_TD[...][types_BL].astype(dtype)
        return x_BLD

    def encode(self, encoder_inputs_BS, *, encoder_segment_ids_BS=None, encoder_positions_BS=None, token_types_BS=None):
        positions_BS = _default_positions(encoder_inputs_BS, encoder_positions_BS)
        x_BSD = self.embed(encoder_inputs_BS, token_types_BS)
        return self.encoder(x_BSD, positions_BL=positions_BS, segment_ids_BL=encoder_segment_ids_BS)

    def logits(self, x_BLD: jax.Array) -> jax.Array:
        """Final hidden states -> float32 logits over the vocabulary."""
        cfg, dtype = self.cfg, x_BLD.dtype
        if cfg.mlm_transform:
            x_BLD = project(x_BLD, self.mlm_dense_DD[...].astype(dtype))
            x_BLD = self.mlm_norm(activation_fn(cfg.activation)(x_BLD + self.mlm_dense_bias_D[...].astype(dtype)))
        readout_scale = multipliers(cfg).logits  # µP's output multiplier / width; 1.0 under SP
        if readout_scale != 1.0:
            x_BLD = x_BLD * jnp.asarray(readout_scale, dtype)
        if cfg.tie_embeddings:
            if cfg.scale_tied_logits:
                x_BLD = x_BLD * jnp.asarray(cfg.d_model**-0.5, dtype)
            logits_BLV = tied_logits(x_BLD, self.embedding_VD[...].astype(dtype))
        else:
            logits_BLV = project(x_BLD, self.unembedding_DV[...].astype(dtype), preferred_element_type=jnp.float32)
        if cfg.output_bias:
            logits_BLV = logits_BLV + self.output_bias_V[...]
        return constrain(logits_BLV, ("batch", "length", "vocab"))

    def init_cache(self, batch: int, length: int) -> dict:
        """An empty KV cache of the decoder for `batch` rows of up to `length` tokens (see CACHE_AXES)."""
        if self.cfg.variant == "encoder_only":
            raise ValueError("an encoder-only model has no decoder to cache")
        return self.decoder.init_cache(batch, length)

    def hidden_states(
        self,
        inputs: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        prefix_mask: jax.Array | None = None,
        token_types: jax.Array | None = None,
        encoder_inputs: jax.Array | None = None,
        encoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        cache: dict | None = None,
        cache_index: jax.Array | int | None = None,
    ):
        """The last stack's final hidden states [B, L, D]; with a `cache`, (hidden states, new cache).
        The arguments are `__call__`'s."""
        cfg = self.cfg
        if cfg.variant == "encoder_only":
            if cache is not None:
                raise ValueError("an encoder-only model has no KV cache")
            return self.encode(
                inputs, encoder_segment_ids_BS=segment_ids, encoder_positions_BS=positions, token_types_BS=token_types
            )
        encoder_BSD = None
        if cfg.variant == "encoder_decoder":
            if encoder_inputs is not None:
                encoder_BSD = self.encode(
                    encoder_inputs, encoder_segment_ids_BS=encoder_segment_ids, encoder_positions_BS=encoder_positions
                )
            elif cache is None or "cross_k" not in cache:
                raise ValueError(
                    "an encoder_decoder model needs `encoder_inputs` in the batch (or a cache that holds them)"
                )
        if prefix_mask is not None and cfg.attention != "prefix":
            raise ValueError(
                f"the batch has a prefix_mask but model.attention={cfg.attention!r}: use model.attention=prefix "
                "for a prefix-LM decoder, or an objective without a prefix"
            )
        return self.decoder(
            self.embed(inputs, token_types),
            positions_BL=_default_positions(inputs, positions, cache_index),
            segment_ids_BL=segment_ids,
            prefix_mask_BL=prefix_mask,
            encoder_BSD=encoder_BSD,
            encoder_segment_ids_BS=encoder_segment_ids,
            cache=cache,
            cache_index=cache_index,
        )

    def __call__(
        self,
        inputs: jax.Array,
        *,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        prefix_mask: jax.Array | None = None,
        token_types: jax.Array | None = None,
        encoder_inputs: jax.Array | None = None,
        encoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        cache: dict | None = None,
        cache_index: jax.Array | int | None = None,
    ):
        """Float32 logits [B, L, V]. With a `cache` (`init_cache`) and `cache_index` (the cache slot of
        inputs[:, 0]), (logits, new cache): training, scoring and decoding run this same pass. An
        encoder-decoder's first cached call takes `encoder_inputs` and stores the encoder's keys and
        values; later calls need them no more."""
        out = self.hidden_states(
            inputs,
            segment_ids=segment_ids,
            positions=positions,
            prefix_mask=prefix_mask,
            token_types=token_types,
            encoder_inputs=encoder_inputs,
            encoder_segment_ids=encoder_segment_ids,
            encoder_positions=encoder_positions,
            cache=cache,
            cache_index=cache_index,
        )
        if cache is None:
            return self.logits(out)
        hidden_BLD, cache = out
        return self.logits(hidden_BLD), cache


def _default_positions(tokens_BL: jax.Array, positions_BL: jax.Array | None, offset=None) -> jax.Array:
    """Given positions, else 0, 1, ... (from the cache slot `offset` when decoding)."""
    if positions_BL is not None:
        return positions_BL
    positions_L = jnp.arange(tokens_BL.shape[1], dtype=jnp.int32)
    if offset is not None:
        positions_L = positions_L + offset
    return jnp.broadcast_to(positions_L, tokens_BL.shape)
