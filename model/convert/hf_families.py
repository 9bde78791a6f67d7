"""Per-family mapping between Hugging Face `transformers` (5.x names) and chinchax.

For each family: a function HF config -> `ModelConfig`, and a function `ModelConfig` -> `WeightMap`
(the rules between HF state_dict keys and chinchax parameter paths). HF features chinchax cannot
express are refused with a `UserError` rather than converted into a silently different model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from chinchax.errors import UserError
from chinchax.model.config import ModelConfig
from chinchax.model.convert.rules import (
    WeightMap,
    conv1d,
    copy,
    flat,
    fused_concat,
    fused_interleaved,
    linear,
    norm,
    stacked,
)

# HF activation names -> (plain, gated) chinchax activation. HF's "gelu" is exact; "gelu_new" and
# "gelu_pytorch_tanh" are the tanh approximation.
_ACTIVATIONS = {
    "gelu": ("gelu", "geglu"),
    "gelu_new": ("gelu_tanh", "geglu_tanh"),
    "gelu_pytorch_tanh": ("gelu_tanh", "geglu_tanh"),
    "relu": ("relu", None),
    "silu": (None, "swiglu"),
    "swish": (None, "swiglu"),
}


def _activation(family: str, name: str, *, gated: bool) -> str:
    act = _ACTIVATIONS.get(name, (None, None))[1 if gated else 0]
    if act is None:
        kind = "gated" if gated else "plain"
        raise UserError(f"{family}: the {kind} activation {name!r} has no chinchax equivalent")
    return act


def _require(family: str, ok: bool, what: str) -> None:
    if not ok:
        raise UserError(
            f"{family}: {what} is not supported by chinchax's model; this checkpoint cannot be converted"
        )


def _attention(
    prefix: str, names: tuple[str, str, str, str], *, bias: bool, suffix=("weight", "bias")
) -> list:
    """q, k, v, o as four torch Linears named `names` under `prefix`."""
    out = []
    for cx, hf in zip(("q_DHK", "k_DGK", "v_DGK"), names[:3], strict=True):
        out.append(linear(f"{prefix}.{cx}", f"{hf}.{suffix[0]}"))
        if bias:
            out.append(flat(f"{prefix}.{cx[0]}_bias_{cx[-2:]}", f"{hf}.{suffix[1]}"))
    out.append(linear(f"{prefix}.o_HKD", f"{names[3]}.{suffix[0]}", n_in=2))
    if bias:
        out.append(copy(f"{prefix}.o_bias_D", f"{names[3]}.{suffix[1]}"))
    return out


def _mlp(wi: str, wo: str, *, bias: bool, wi_linear: str | None = None) -> list:
    out = [linear("mlp.wi_DF", f"{wi}.weight"), linear("mlp.wo_FD", f"{wo}.weight")]
    if wi_linear:
        out.append(linear("mlp.wi_linear_DF", f"{wi_linear}.weight"))
    if bias:
        out += [copy("mlp.bi_F", f"{wi}.bias"), copy("mlp.bo_D", f"{wo}.bias")]
    return out


# --- GPT-2 ------------------------------------------------------------------------------------------


def gpt2_config(hf) -> ModelConfig:
    _require("gpt2", not hf.scale_attn_by_inverse_layer_idx, "scale_attn_by_inverse_layer_idx=true")
    _require("gpt2", hf.scale_attn_weights, "scale_attn_weights=false")
    _require("gpt2", not getattr(hf, "add_cross_attention", False), "add_cross_attention=true")
    return ModelConfig(
        variant="decoder_only", attention="causal", vocab_size=hf.vocab_size, d_model=hf.n_embd,
        n_layers=hf.n_layer, n_heads=hf.n_head, d_ff=hf.n_inner or 4 * hf.n_embd, max_len=hf.n_positions,
        norm="layernorm", norm_eps=hf.layer_norm_epsilon, norm_position="pre", position="learned",
        activation=_activation("gpt2", hf.activation_function, gated=False), use_bias=True,
        tie_embeddings=True, dropout=hf.resid_pdrop, attention_dropout=hf.attn_pdrop,
    )  # fmt: skip


def gpt2_weights(cfg: ModelConfig) -> WeightMap:
    layer = [
        *norm("self_attention_norm", "ln_1"),
        fused_concat(["self_attention.q_DHK", "self_attention.k_DGK", "self_attention.v_DGK"], "attn.c_attn.weight", kernel=True),
        fused_concat(["self_attention.q_bias_HK", "self_attention.k_bias_GK", "self_attention.v_bias_GK"], "attn.c_attn.bias", kernel=False),
        conv1d("self_attention.o_HKD", "attn.c_proj.weight", n_in=2),
        copy("self_attention.o_bias_D", "attn.c_proj.bias"),
        *norm("mlp_norm", "ln_2"),
        conv1d("mlp.wi_DF", "mlp.c_fc.weight"), copy("mlp.bi_F", "mlp.c_fc.bias"),
        conv1d("mlp.wo_FD", "mlp.c_proj.weight"), copy("mlp.bo_D", "mlp.c_proj.bias"),
    ]  # fmt: skip
    rules = [
        copy("embedding_VD", "transformer.wte.weight"),
        copy("decoder.position_embedding_PD", "transformer.wpe.weight"),
        *norm("decoder.final_norm", "transformer.ln_f"),
        *stacked("decoder.blocks", "transformer.h.{i}.", cfg.n_layers, layer),
    ]
    return WeightMap(rules, ties={"lm_head.weight": "transformer.wte.weight"})


# --- BERT (masked-LM head) ---------------------------------------------------------------------------


def bert_config(hf) -> ModelConfig:
    _require(
        "bert",
        not hf.is_decoder and not hf.add_cross_attention,
        "a BERT decoder (is_decoder/add_cross_attention)",
    )
    _require(
        "bert",
        getattr(hf, "position_embedding_type", "absolute") == "absolute",
        "relative position embeddings",
    )
    return ModelConfig(
        variant="encoder_only", attention="bidirectional", vocab_size=hf.vocab_size, d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers, n_heads=hf.num_attention_heads, d_ff=hf.intermediate_size,
        max_len=hf.max_position_embeddings, norm="layernorm", norm_eps=hf.layer_norm_eps, norm_position="post",
        final_norm=False, embedding_norm=True, position="learned",
        activation=_activation("bert", hf.hidden_act, gated=False), use_bias=True, tie_embeddings=True,
        n_token_types=hf.type_vocab_size, mlm_transform=True, output_bias=True,
        dropout=hf.hidden_dropout_prob, attention_dropout=hf.attention_probs_dropout_prob,
    )  # fmt: skip


def bert_weights(cfg: ModelConfig) -> WeightMap:
    names = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense")
    layer = [
        *_attention("self_attention", names, bias=True),
        *norm("self_attention_norm", "attention.output.LayerNorm"),
        *_mlp("intermediate.dense", "output.dense", bias=True),
        *norm("mlp_norm", "output.LayerNorm"),
    ]
    rules = [
        copy("embedding_VD", "bert.embeddings.word_embeddings.weight"),
        copy("encoder.position_embedding_PD", "bert.embeddings.position_embeddings.weight"),
        *norm("encoder.embed_norm", "bert.embeddings.LayerNorm"),
        *stacked("encoder.blocks", "bert.encoder.layer.{i}.", cfg.n_layers, layer),
        linear("mlm_dense_DD", "cls.predictions.transform.dense.weight"),
        copy("mlm_dense_bias_D", "cls.predictions.transform.dense.bias"),
        *norm("mlm_norm", "cls.predictions.transform.LayerNorm"),
        copy("output_bias_V", "cls.predictions.bias"),
    ]
    if cfg.n_token_types:
        rules.append(copy("token_type_embedding_TD", "bert.embeddings.token_type_embeddings.weight"))
    ties = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }
    return WeightMap(rules, ties=ties)


# --- T5 (v1.0 and v1.1) --------------------------------------------------------------------------------


def t5_config(hf) -> ModelConfig:
    # transformers 5 derives `scale_decoder_outputs` from the checkpoint's tie_word_embeddings (v1.0: true,
    # tied and scaled; v1.1: false, a separate lm_head and no scaling) and then always sets tie=true.
    scaled = getattr(hf, "scale_decoder_outputs", hf.tie_word_embeddings)
    return ModelConfig(
        variant="encoder_decoder", attention="causal", vocab_size=hf.vocab_size, d_model=hf.d_model,
        n_layers=hf.num_decoder_layers, n_encoder_layers=hf.num_layers, n_heads=hf.num_heads, head_dim=hf.d_kv,
        d_ff=hf.d_ff, max_len=getattr(hf, "n_positions", None) or 512, norm="rmsnorm",
        norm_eps=hf.layer_norm_epsilon, norm_position="pre", position="t5_relative",
        relative_buckets=hf.relative_attention_num_buckets,
        relative_max_distance=hf.relative_attention_max_distance,
        activation=_activation("t5", hf.dense_act_fn, gated=hf.is_gated_act), use_bias=False,
        scale_attention=False, tie_embeddings=scaled, scale_tied_logits=scaled, dropout=hf.dropout_rate,
    )  # fmt: skip


def t5_weights(cfg: ModelConfig) -> WeightMap:
    def stack_rules(stack: str, n_layers: int) -> list:
        cross = stack == "decoder"
        qkvo = ("SelfAttention.q", "SelfAttention.k", "SelfAttention.v", "SelfAttention.o")
        layer = [
            *norm("self_attention_norm", "layer.0.layer_norm", bias=False),
            *_attention("self_attention", tuple(f"layer.0.{n}" for n in qkvo), bias=False),
        ]
        if cross:
            qkvo_x = tuple(f"layer.1.EncDecAttention.{n}" for n in "qkvo")
            layer += [*norm("cross_attention_norm", "layer.1.layer_norm", bias=False)]
            layer += _attention("cross_attention", qkvo_x, bias=False)
        ff = f"layer.{2 if cross else 1}"
        layer += norm("mlp_norm", f"{ff}.layer_norm", bias=False)
        if cfg.gated:
            layer += _mlp(f"{ff}.DenseReluDense.wi_0", f"{ff}.DenseReluDense.wo", bias=False,
                          wi_linear=f"{ff}.DenseReluDense.wi_1")  # fmt: skip
        else:
            layer += _mlp(f"{ff}.DenseReluDense.wi", f"{ff}.DenseReluDense.wo", bias=False)
        return [
            # T5 keeps the relative bias table in the first block; all blocks of the stack share it.
            copy(f"{stack}.relative_bias.table_RH", f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            *norm(f"{stack}.final_norm", f"{stack}.final_layer_norm", bias=False),
            *stacked(f"{stack}.blocks", f"{stack}.block.{{i}}.", n_layers, layer),
        ]  # fmt: skip

    rules = [copy("embedding_VD", "shared.weight"), *stack_rules("encoder", cfg.encoder_layers)]
    rules += stack_rules("decoder", cfg.n_layers)
    ties = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}
    if cfg.tie_embeddings:
        ties["lm_head.weight"] = "shared.weight"
    else:
        rules.append(linear("unembedding_DV", "lm_head.weight"))
    # transformers 5 drops lm_head.weight on save when it ties it (see t5_config): read shared.weight then.
    return WeightMap(rules, ties=ties, aliases={"lm_head.weight": "shared.weight"})


# --- LLaMA ---------------------------------------------------------------------------------------------


def llama_config(hf) -> ModelConfig:
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    _require("llama", rope_type == "default", f"RoPE scaling rope_type={rope_type!r}")
    _require("llama", hf.attention_bias == hf.mlp_bias, "attention_bias != mlp_bias")
    return ModelConfig(
        variant="decoder_only", attention="causal", vocab_size=hf.vocab_size, d_model=hf.hidden_size,
        n_layers=hf.num_hidden_layers, n_heads=hf.num_attention_heads, n_kv_heads=hf.num_key_value_heads,
        head_dim=hf.head_dim, d_ff=hf.intermediate_size, max_len=hf.max_position_embeddings, norm="rmsnorm",
        norm_eps=hf.rms_norm_eps, norm_position="pre", position="rope",
        rope_theta=float(rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))),
        activation=_activation("llama", hf.hidden_act, gated=True), use_bias=hf.attention_bias,
        tie_embeddings=hf.tie_word_embeddings, dropout=0.0, attention_dropout=hf.attention_dropout or 0.0,
    )  # fmt: skip


def llama_weights(cfg: ModelConfig) -> WeightMap:
    names = tuple(f"self_attn.{n}_proj" for n in "qkvo")
    layer = [
        *norm("self_attention_norm", "input_layernorm", bias=False),
        *_attention("self_attention", names, bias=cfg.use_bias),
        *norm("mlp_norm", "post_attention_layernorm", bias=False),
        *_mlp("mlp.gate_proj", "mlp.down_proj", bias=cfg.use_bias, wi_linear="mlp.up_proj"),
    ]
    rules = [
        copy("embedding_VD", "model.embed_tokens.weight"),
        *norm("decoder.final_norm", "model.norm", bias=False),
        *stacked("decoder.blocks", "model.layers.{i}.", cfg.n_layers, layer),
    ]
    ties = {}
    if cfg.tie_embeddings:
        ties["lm_head.weight"] = "model.embed_tokens.weight"
    else:
        rules.append(linear("unembedding_DV", "lm_head.weight"))
    return WeightMap(rules, ties=ties)


# --- BLOOM ---------------------------------------------------------------------------------------------


def bloom_config(hf) -> ModelConfig:
    _require(
        "bloom", not hf.apply_residual_connection_post_layernorm, "apply_residual_connection_post_layernorm"
    )
    return ModelConfig(
        variant="decoder_only", attention="causal", vocab_size=hf.vocab_size, d_model=hf.hidden_size,
        n_layers=hf.n_layer, n_heads=hf.n_head, d_ff=4 * hf.hidden_size,
        max_len=getattr(hf, "seq_length", None) or 2048, norm="layernorm", norm_eps=hf.layer_norm_epsilon,
        norm_position="pre", embedding_norm=True, position="alibi", activation="gelu_tanh", use_bias=True,
        tie_embeddings=True, dropout=hf.hidden_dropout, attention_dropout=hf.attention_dropout,
    )  # fmt: skip


def bloom_weights(cfg: ModelConfig) -> WeightMap:
    qkv = ["self_attention.q_DHK", "self_attention.k_DGK", "self_attention.v_DGK"]
    qkv_bias = ["self_attention.q_bias_HK", "self_attention.k_bias_GK", "self_attention.v_bias_GK"]
    layer = [
        *norm("self_attention_norm", "input_layernorm"),
        fused_interleaved(qkv, "self_attention.query_key_value.weight", kernel=True),
        fused_interleaved(qkv_bias, "self_attention.query_key_value.bias", kernel=False),
        linear("self_attention.o_HKD", "self_attention.dense.weight", n_in=2),
        copy("self_attention.o_bias_D", "self_attention.dense.bias"),
        *norm("mlp_norm", "post_attention_layernorm"),
        *_mlp("mlp.dense_h_to_4h", "mlp.dense_4h_to_h", bias=True),
    ]
    rules = [
        copy("embedding_VD", "transformer.word_embeddings.weight"),
        *norm("decoder.embed_norm", "transformer.word_embeddings_layernorm"),
        *norm("decoder.final_norm", "transformer.ln_f"),
        *stacked("decoder.blocks", "transformer.h.{i}.", cfg.n_layers, layer),
    ]
    return WeightMap(rules, ties={"lm_head.weight": "transformer.word_embeddings.weight"})


# --- BART ----------------------------------------------------------------------------------------------


def bart_config(hf) -> ModelConfig:
    same = (
        hf.encoder_attention_heads == hf.decoder_attention_heads and hf.encoder_ffn_dim == hf.decoder_ffn_dim
    )
    _require("bart", same, "different encoder and decoder widths (attention heads or ffn dim)")
    return ModelConfig(
        variant="encoder_decoder", attention="causal", vocab_size=hf.vocab_size, d_model=hf.d_model,
        n_layers=hf.decoder_layers, n_encoder_layers=hf.encoder_layers, n_heads=hf.encoder_attention_heads,
        d_ff=hf.encoder_ffn_dim, max_len=hf.max_position_embeddings, norm="layernorm", norm_eps=1e-5,
        norm_position="post", final_norm=False, embedding_norm=True, position="learned", position_offset=2,
        activation=_activation("bart", hf.activation_function, gated=False), use_bias=True,
        tie_embeddings=True, scale_embeddings=bool(hf.scale_embedding), output_bias=True,
        dropout=hf.dropout, attention_dropout=hf.attention_dropout,
    )  # fmt: skip


def bart_weights(cfg: ModelConfig) -> WeightMap:
    def stack_rules(stack: str, n_layers: int) -> list:
        layer = [
            *_attention("self_attention", tuple(f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "out_proj")), bias=True),
            *norm("self_attention_norm", "self_attn_layer_norm"),
            *_mlp("fc1", "fc2", bias=True),
            *norm("mlp_norm", "final_layer_norm"),
        ]  # fmt: skip
        if stack == "decoder":
            names = tuple(f"encoder_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "out_proj"))
            layer += [
                *_attention("cross_attention", names, bias=True),
                *norm("cross_attention_norm", "encoder_attn_layer_norm"),
            ]
        return [
            copy(f"{stack}.position_embedding_PD", f"model.{stack}.embed_positions.weight"),
            *norm(f"{stack}.embed_norm", f"model.{stack}.layernorm_embedding"),
            *stacked(f"{stack}.blocks", f"model.{stack}.layers.{{i}}.", n_layers, layer),
        ]

    rules = [
        copy("embedding_VD", "model.shared.weight"),
        # A [1, V] buffer in HF; absent from some checkpoints (then zeros, as HF initialises it).
        dataclasses.replace(flat("output_bias_V", "final_logits_bias", hf_shape=(1, -1)), optional=True),
        *stack_rules("encoder", cfg.encoder_layers),
        *stack_rules("decoder", cfg.n_layers),
    ]
    ties = {
        k: "model.shared.weight"
        for k in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight")
    }
    return WeightMap(rules, ties=ties)


# --- registry --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    config: Callable[[object], ModelConfig]
    weights: Callable[[ModelConfig], WeightMap]
    base_prefix: str  # prefix of the bare base model's keys inside the task model's state_dict
    ignore: tuple[str, ...] = ()  # regexes of HF keys that hold no weight of the converted model


FAMILIES: dict[str, Family] = {
    "gpt2": Family(gpt2_config, gpt2_weights, "transformer.", (r"\.attn\.(bias|masked_bias)$",)),
    "bert": Family(bert_config, bert_weights, "bert.",
                   (r"^bert\.pooler\.", r"^cls\.seq_relationship\.", r"\.position_ids$", r"\.token_type_ids$")),
    "t5": Family(t5_config, t5_weights, ""),
    "llama": Family(llama_config, llama_weights, "model.", (r"rotary_emb\.inv_freq$",)),
    "bloom": Family(bloom_config, bloom_weights, "transformer."),
    "bart": Family(bart_config, bart_weights, "model."),
}  # fmt: skip
