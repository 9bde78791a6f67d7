"""`ModelConfig`: every architectural choice of the transformer family, validated up front.

One frozen dataclass describes GPT-2, BERT, T5, LLaMA, BLOOM and BART (see `model/presets/`).
`validate()` rejects impossible combinations with a message that names the key, the value and
what would be valid; the YAML/CLI loader (`chinchax.configlib`) calls it after every override.
`load_model_config("gpt2", ["n_layers=6"])` builds one from a preset (model/presets/), a YAML or a mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from chinchax.configlib import load_config
from chinchax.errors import UserError
from chinchax.model.presets import model_spec_to_dict

VARIANTS = ("encoder_only", "decoder_only", "encoder_decoder")
ATTENTIONS = ("causal", "prefix", "bidirectional")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
POSITIONS = ("learned", "rope", "t5_relative", "alibi", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu", "geglu", "geglu_tanh")
GATED_ACTIVATIONS = ("swiglu", "geglu", "geglu_tanh")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
PARAMETRIZATIONS = ("sp", "mup")


@dataclass(frozen=True)
class ModelConfig:
    # How chinchax.configlib turns a config section typed ModelConfig (a preset name, a YAML path or a
    # mapping with `preset:`) into plain keys: the presets are the model's business, not configlib's.
    expand_spec = staticmethod(model_spec_to_dict)

    name: str = "custom"
    # Architecture family. `attention` is the self-attention pattern of the (decoder) stack:
    # encoder_only needs "bidirectional"; decoder_only takes "causal" or "prefix" (bidirectional over
    # the prefix marked per example by the batch, causal after it); encoder_decoder's decoder is "causal".
    variant: str = "decoder_only"
    attention: str = "causal"
    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 8  # layers of the decoder (or of the encoder, for encoder_only)
    n_encoder_layers: int | None = None  # encoder_decoder only; None = n_layers
    n_heads: int = 8
    n_kv_heads: int | None = None  # None = n_heads (multi-head); 1 = multi-query; else grouped-query
    head_dim: int | None = None  # None = d_model // n_heads
    d_ff: int = 2048
    max_len: int = 1024  # context length: size of learned position tables, n_ctx for FLOP counts
    # Components.
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    final_norm: bool = True  # a norm after the last block (pre-norm models; BART has none)
    embedding_norm: bool = False  # a LayerNorm right after the embeddings (BLOOM, BERT, BART)
    position: str = "learned"
    position_offset: int = 0  # learned positions start at this row (BART: 2)
    rope_theta: float = 10000.0
    relative_buckets: int = 32  # T5 bucketed relative position bias
    relative_max_distance: int = 128
    activation: str = "gelu"
    use_bias: bool = True  # biases of the dense layers
    scale_attention: bool = True  # divide q·k by sqrt(head_dim); T5 folds it into its init instead
    tie_embeddings: bool = True
    scale_tied_logits: bool = False  # T5 v1.0: logits of a tied head times d_model**-0.5
    scale_embeddings: bool = False  # embeddings times sqrt(d_model) (BART option)
    n_token_types: int = 0  # BERT segment embeddings (2); 0 = none
    mlm_transform: bool = False  # BERT's head: dense + activation + LayerNorm before the vocab projection
    output_bias: bool = False  # a bias on the logits (BERT's decoder bias, BART's final_logits_bias)
    dropout: float = 0.0
    attention_dropout: float = 0.0
    # Numerics and memory. Parameters are always float32; softmax and logits are computed in float32.
    dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = True  # one compiled block scanned over layers: fast compiles for deep models
    # GPU: packed or padded rows take cuDNN's fused attention with up to this many documents per row
    # (model/cudnn_segments.py; the trainer refuses a batch with more). 0: XLA's masked attention, which
    # keeps every [B, H, L, S] probability for the backward pass.
    attention_max_segments: int = 0
    # Parametrization (model/parametrization.py): "sp" standard, "mup" maximal update (µP) relative to base
    # shapes, so the hyperparameters tuned at the base shapes transfer to wider (and, with depth scaling,
    # deeper) models. Base d_model and n_layers left None are this model's own (multiplier 1); the base head
    # size defaults to head_dim when set (fixed head size, heads added) else to base d_model / n_heads.
    parametrization: str = "sp"
    mup_base_d_model: int | None = None
    mup_base_n_layers: int | None = None
    mup_base_head_dim: int | None = None
    mup_depth_alpha: float = 1.0  # residual branches x (base_L / L)^alpha: 1 CompleteP, 0.5 depth-µP
    mup_output_multiplier: float = 1.0  # logits x this x base_d_model / d_model
    mup_zero_readout: bool = False  # untied readout initialised to zero (microsoft/mup's recommendation)
    mup_zero_query: bool = False  # query projection initialised to zero (uniform attention at init)

    # --- derived -----------------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def encoder_layers(self) -> int:
        if self.variant != "encoder_decoder":
            return 0
        return self.n_layers if self.n_encoder_layers is None else self.n_encoder_layers

    @property
    def gated(self) -> bool:
        return self.activation in GATED_ACTIVATIONS

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes).validate()

    # --- validation --------------------------------------------------------------------------------
    def validate(self) -> ModelConfig:
        def choose(key, allowed):
            value = getattr(self, key)
            if value not in allowed:
                raise UserError(f"model.{key}={value!r} is not valid; choose one of {', '.join(allowed)}")

        choose("variant", VARIANTS)
        choose("attention", ATTENTIONS)
        choose("norm", NORMS)
        choose("norm_position", NORM_POSITIONS)
        choose("position", POSITIONS)
        choose("activation", ACTIVATIONS)
        choose("dtype", DTYPES)
        choose("remat", REMAT_POLICIES)
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len"):
            if getattr(self, key) <= 0:
                raise UserError(f"model.{key}={getattr(self, key)} must be a positive integer")
        if self.attention_max_segments < 0:
            raise UserError(
                f"model.attention_max_segments={self.attention_max_segments} must be >= 0 (documents per row "
                "for cuDNN's packed attention on GPU; 0 = XLA's masked attention)"
            )
        for key in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"model.{key}={getattr(self, key)} must be in [0, 1)")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise UserError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; "
                f"pick n_heads among {_divisors(self.d_model)} or set model.head_dim explicitly"
            )
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise UserError(
                f"model.n_kv_heads={self.n_kv_heads} must divide model.n_heads={self.n_heads}; "
                f"valid values: {_divisors(self.n_heads)}"
            )
        if self.position == "rope" and self.head_size % 2:
            raise UserError(f"model.position='rope' needs an even head size, got {self.head_size}")
        if self.variant == "encoder_only" and self.attention != "bidirectional":
            raise UserError(
                f"model.attention={self.attention!r} is impossible for model.variant='encoder_only': "
                "an encoder attends both ways; set model.attention=bidirectional, or use "
                "model.variant=decoder_only for causal or prefix-LM attention"
            )
        if self.variant == "decoder_only" and self.attention == "bidirectional":
            raise UserError(
                "model.attention='bidirectional' is impossible for model.variant='decoder_only'; use "
                "'causal' or 'prefix', or model.variant=encoder_only for a bidirectional encoder"
            )
        if self.variant == "encoder_decoder" and self.attention != "causal":
            raise UserError(
                f"model.attention={self.attention!r} is not supported for model.variant='encoder_decoder': "
                "its decoder is causal and its encoder bidirectional; set model.attention=causal"
            )
        if self.n_encoder_layers is not None and self.variant != "encoder_decoder":
            raise UserError(
                f"model.n_encoder_layers={self.n_encoder_layers} only applies to "
                "model.variant='encoder_decoder'; remove it or change the variant"
            )
        if self.mlm_transform and self.variant != "encoder_only":
            raise UserError("model.mlm_transform=true is BERT's masked-LM head: use it with variant=encoder_only")
        if self.scale_tied_logits and not self.tie_embeddings:
            raise UserError("model.scale_tied_logits=true needs model.tie_embeddings=true")
        self._validate_parametrization()
        if self.position_offset and self.position != "learned":
            raise UserError("model.position_offset only applies to model.position='learned'")
        return self


    def _validate_parametrization(self) -> None:
        if self.parametrization not in PARAMETRIZATIONS:
            raise UserError(
                f"model.parametrization={self.parametrization!r} is not valid; choose one of {', '.join(PARAMETRIZATIONS)}"
            )
        mup_keys = ("mup_base_d_model", "mup_base_n_layers", "mup_base_head_dim", "mup_zero_readout", "mup_zero_query")
        if self.parametrization == "sp":
            given = [k for k in mup_keys if getattr(self, k)]
            given += [k for k, d in (("mup_depth_alpha", 1.0), ("mup_output_multiplier", 1.0)) if getattr(self, k) != d]
            if given:
                raise UserError(
                    f"model.{given[0]} only applies to model.parametrization=mup (it is 'sp'); set "
                    "model.parametrization=mup or remove it"
                )
            return
        for key in ("mup_base_d_model", "mup_base_n_layers", "mup_base_head_dim"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise UserError(f"model.{key}={value} must be a positive integer, or null for this model's own")
        if self.mup_depth_alpha not in (0.0, 0.5, 1.0):
            raise UserError(
                f"model.mup_depth_alpha={self.mup_depth_alpha} is not supported; use 1 (CompleteP), 0.5 (depth-µP) "
                "or 0 (no depth scaling)"
            )
        if not self.mup_output_multiplier > 0:
            raise UserError(f"model.mup_output_multiplier={self.mup_output_multiplier} must be > 0")
        if self.mup_zero_readout and self.tie_embeddings:
            raise UserError(
                "model.mup_zero_readout=true needs an untied readout (the tied one is also the input embedding, "
                "which must not start at zero); set model.tie_embeddings=false or drop mup_zero_readout"
            )
        if self.scale_tied_logits:
            raise UserError(
                "model.scale_tied_logits (T5 v1.0's d_model**-0.5) and model.parametrization=mup both scale the "
                "logits; µP's output multiplier replaces it: set model.scale_tied_logits=false"
            )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def load_model_config(spec: str | Mapping, overrides: Sequence[str] = ()) -> ModelConfig:
    """`spec` is a preset name, a YAML path or a mapping; overrides may drop the `model.` prefix."""
    overrides = [o[len("model.") :] if o.startswith("model.") else o for o in overrides]
    return load_config(ModelConfig, model_spec_to_dict(spec), overrides)
