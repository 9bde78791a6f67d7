"""The transformer family: encoder-only, decoder-only (causal or prefix-LM) and encoder-decoder.

    model = Transformer(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    logits_BLV = model(inputs, segment_ids=..., positions=..., prefix_mask=...)         # decoder / encoder
    logits_BLV = model(inputs, encoder_inputs=..., encoder_segment_ids=..., ...)        # encoder-decoder

The layers of a stack are one `Block` with a leading `layers` axis on every parameter, run with
`nnx.scan` (one compiled block however deep the model; `scan_layers=False` unrolls the same scan).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from chinchax.model.attention import Attention, RelativePositionBias, alibi_bias, attention_mask
from chinchax.model.config import ModelConfig
from chinchax.model.layers import Mlp, Norm, activation_fn, compute_dtype, dense_init, param

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

    def __init__(self, cfg: ModelConfig, *, cross: bool, rngs: nnx.Rngs):
        self.cfg = cfg
        self.self_attention_norm = Norm(cfg, rngs=rngs)
        self.self_attention = Attention(cfg, rngs=rngs)
        if cross:
            self.cross_attention_norm = Norm(cfg, rngs=rngs)
            self.cross_attention = Attention(cfg, rngs=rngs)
        self.mlp_norm = Norm(cfg, rngs=rngs)
        self.mlp = Mlp(cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def _residual(self, x_BLD, norm: Norm, branch) -> jax.Array:
        if self.cfg.norm_position == "pre":
            out = x_BLD + self.dropout(branch(norm(x_BLD)))
        else:
            out = norm(x_BLD + self.dropout(branch(x_BLD)))
        return constrain(out, ("batch", "length", "embed"))

    def __call__(self, x_BLD: jax.Array, ctx: dict) -> jax.Array:
        x_BLD = self._residual(
            x_BLD,
            self.self_attention_norm,
            lambda h: self.self_attention(
                h,
                positions_BL=ctx["positions_BL"],
                mask_B1LS=ctx["mask_B1LS"],
                bias_BHLS=ctx["bias_BHLS"],
                is_causal=ctx["is_causal"],
                within_causal=ctx["within_causal"],
            ),
        )
        if "encoder_BSD" in ctx:
            x_BLD = self._residual(
                x_BLD,
                self.cross_attention_norm,
                lambda h: self.cross_attention(
                    h, positions_BL=None, mask_B1LS=ctx["cross_mask_B1LS"], kv_BSD=ctx["encoder_BSD"]
                ),
            )
        return self._residual(x_BLD, self.mlp_norm, self.mlp)


class Stack(nnx.Module):
    """A stack of blocks with what belongs to it alone: position table or bias, embedding norm, final norm."""

    def __init__(self, cfg: ModelConfig, *, n_layers: int, causal: bool, cross: bool, rngs: nnx.Rngs):
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
            return Block(cfg, cross=cross, rngs=rngs)

        self.blocks = make_blocks(rngs)
        if cfg.final_norm:
            self.final_norm = Norm(cfg, rngs=rngs)

    def __call__(
        self,
        x_BLD: jax.Array,
        *,
        positions_BL: jax.Array,
        segment_ids_BL: jax.Array | None,
        prefix_mask_BL: jax.Array | None = None,
        encoder_BSD: jax.Array | None = None,
        encoder_segment_ids_BS: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.cfg
        if cfg.position == "learned":
            table_PD = self.position_embedding_PD[...]
            x_BLD = x_BLD + table_PD[positions_BL + cfg.position_offset].astype(x_BLD.dtype)
        if cfg.embedding_norm:
            x_BLD = self.embed_norm(x_BLD)
        x_BLD = constrain(self.embed_dropout(x_BLD), ("batch", "length", "embed"))

        # Pure causal attention without packing or padding takes the fused causal path (no mask array).
        is_causal = self.causal and segment_ids_BL is None and prefix_mask_BL is None
        ctx = {
            "positions_BL": positions_BL,
            "is_causal": is_causal,
            "within_causal": self.causal and prefix_mask_BL is None,
            "mask_B1LS": None
            if is_causal
            else attention_mask(
                segment_ids_BL,
                segment_ids_BL,
                causal=self.causal,
                prefix_mask_BL=prefix_mask_BL,
                shape=(x_BLD.shape[0], x_BLD.shape[1], x_BLD.shape[1]),
            ),
            "bias_BHLS": None,
        }
        if cfg.position == "t5_relative":
            ctx["bias_BHLS"] = self.relative_bias(positions_BL, positions_BL)
        elif cfg.position == "alibi":
            ctx["bias_BHLS"] = alibi_bias(positions_BL, positions_BL, cfg.n_heads)
        if encoder_BSD is not None:
            ctx["encoder_BSD"] = encoder_BSD
            q_segments = segment_ids_BL if segment_ids_BL is not None else jnp.ones(x_BLD.shape[:2], jnp.int32)
            kv_segments = (
                encoder_segment_ids_BS
                if encoder_segment_ids_BS is not None
                else jnp.ones(encoder_BSD.shape[:2], jnp.int32)
            )
            ctx["cross_mask_B1LS"] = attention_mask(q_segments, kv_segments, causal=False)

        def body(x_BLD, block: Block):
            return block(x_BLD, ctx)

        if cfg.remat != "none":
            body = nnx.remat(body, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        scan = nnx.scan(
            body,
            in_axes=(nnx.Carry, 0),
            out_axes=nnx.Carry,
            transform_metadata={nnx.PARTITION_NAME: "layers"},
            unroll=1 if cfg.scan_layers else self.n_layers,
        )
        x_BLD = scan(x_BLD, self.blocks)
        if cfg.final_norm:
            x_BLD = self.final_norm(x_BLD)
        return x_BLD


class Transformer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg = cfg.validate()
        self.cfg = cfg
        V, D = cfg.vocab_size, cfg.d_model
        self.embedding_VD = param(rngs, nnx.initializers.normal(0.02), (V, D), ("vocab", "embed"))
        if cfg.n_token_types:
            self.token_type_embedding_TD = param(
                rngs, nnx.initializers.normal(0.02), (cfg.n_token_types, D), (None, "embed")
            )
        if cfg.variant == "encoder_decoder":
            self.encoder = Stack(cfg, n_layers=cfg.encoder_layers, causal=False, cross=False, rngs=rngs)
            self.decoder = Stack(cfg, n_layers=cfg.n_layers, causal=True, cross=True, rngs=rngs)
        elif cfg.variant == "encoder_only":
            self.encoder = Stack(cfg, n_layers=cfg.n_layers, causal=False, cross=False, rngs=rngs)
        else:
            self.decoder = Stack(cfg, n_layers=cfg.n_layers, causal=True, cross=False, rngs=rngs)
        if cfg.mlm_transform:
            self.mlm_dense_DD = param(rngs, dense_init(), (D, D), ("embed", None))
            self.mlm_dense_bias_D = param(rngs, nnx.initializers.zeros, (D,), (None,))
            self.mlm_norm = Norm(cfg, kind="layernorm", rngs=rngs)
        if not cfg.tie_embeddings:
            self.unembedding_DV = param(rngs, dense_init(), (D, V), ("embed", "vocab"))
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
            x_BLD = jnp.einsum("BLD,DE->BLE", x_BLD, self.mlm_dense_DD[...].astype(dtype))
            x_BLD = self.mlm_norm(activation_fn(cfg.activation)(x_BLD + self.mlm_dense_bias_D[...].astype(dtype)))
        if cfg.tie_embeddings:
            if cfg.scale_tied_logits:
                x_BLD = x_BLD * jnp.asarray(cfg.d_model**-0.5, dtype)
            logits_BLV = jnp.einsum(
                "BLD,VD->BLV", x_BLD, self.embedding_VD[...].astype(dtype), preferred_element_type=jnp.float32
            )
        else:
            logits_BLV = jnp.einsum(
                "BLD,DV->BLV", x_BLD, self.unembedding_DV[...].astype(dtype), preferred_element_type=jnp.float32
            )
        if cfg.output_bias:
            logits_BLV = logits_BLV + self.output_bias_V[...]
        return constrain(logits_BLV, ("batch", "length", "vocab"))

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
    ) -> jax.Array:
        cfg = self.cfg
        if cfg.variant == "encoder_only":
            hidden_BLD = self.encode(
                inputs, encoder_segment_ids_BS=segment_ids, encoder_positions_BS=positions, token_types_BS=token_types
            )
            return self.logits(hidden_BLD)
        encoder_BSD = None
        if cfg.variant == "encoder_decoder":
            if encoder_inputs is None:
                raise ValueError("an encoder_decoder model needs `encoder_inputs` in the batch")
            encoder_BSD = self.encode(
                encoder_inputs, encoder_segment_ids_BS=encoder_segment_ids, encoder_positions_BS=encoder_positions
            )
        if prefix_mask is not None and cfg.attention != "prefix":
            raise ValueError(
                f"the batch has a prefix_mask but model.attention={cfg.attention!r}: use model.attention=prefix "
                "for a prefix-LM decoder, or an objective without a prefix"
            )
        hidden_BLD = self.decoder(
            self.embed(inputs, token_types),
            positions_BL=_default_positions(inputs, positions),
            segment_ids_BL=segment_ids,
            prefix_mask_BL=prefix_mask,
            encoder_BSD=encoder_BSD,
            encoder_segment_ids_BS=encoder_segment_ids,
        )
        return self.logits(hidden_BLD)


def _default_positions(tokens_BL: jax.Array, positions_BL: jax.Array | None) -> jax.Array:
    if positions_BL is not None:
        return positions_BL
    return jnp.broadcast_to(jnp.arange(tokens_BL.shape[1], dtype=jnp.int32), tokens_BL.shape)
