"""chinchax -> Hugging Face: the `transformers` config of a chinchax model, and a directory that
`AutoModel*.from_pretrained` loads (config.json + model.safetensors), e.g. to evaluate a trained model
with HF tooling.

Each family's config function is the inverse of the one in `hf_families.py`; `hf_config_for` checks
that converting the result back gives the same architecture, so a model the family cannot express
(say, a GPT-2 with RoPE) is refused instead of exported as a different network.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from chinchax.errors import UserError
from chinchax.fileio import new_dir_atomic
from chinchax.model.config import ModelConfig
from chinchax.model.convert.hf import config_from_hf, family, params_to_hf

ARCHITECTURES = {
    "gpt2": "GPT2LMHeadModel",
    "bert": "BertForMaskedLM",
    "t5": "T5ForConditionalGeneration",
    "llama": "LlamaForCausalLM",
    "bloom": "BloomForCausalLM",
    "bart": "BartForConditionalGeneration",
}
_HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def _gpt2(T, c: ModelConfig):
    return T.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.max_len, n_embd=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
        n_inner=c.d_ff, activation_function=_HF_ACTIVATION.get(c.activation, c.activation),
        layer_norm_epsilon=c.norm_eps, resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.attention_dropout,
    )  # fmt: skip


def _bert(T, c: ModelConfig):
    return T.BertConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, intermediate_size=c.d_ff, hidden_act=_HF_ACTIVATION.get(c.activation, c.activation),
        max_position_embeddings=c.max_len, type_vocab_size=c.n_token_types, layer_norm_eps=c.norm_eps,
        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attention_dropout,
    )  # fmt: skip


def _t5(T, c: ModelConfig):
    ff = {
        "relu": "relu",
        "gelu": "gelu",
        "gelu_tanh": "gelu_new",
        "geglu_tanh": "gated-gelu",
        "swiglu": "gated-silu",
    }
    return T.T5Config(
        vocab_size=c.vocab_size, d_model=c.d_model, d_kv=c.head_size, d_ff=c.d_ff, num_layers=c.encoder_layers,
        num_decoder_layers=c.n_layers, num_heads=c.n_heads, relative_attention_num_buckets=c.relative_buckets,
        relative_attention_max_distance=c.relative_max_distance, dropout_rate=c.dropout,
        layer_norm_epsilon=c.norm_eps, feed_forward_proj=ff.get(c.activation, c.activation),
        tie_word_embeddings=c.tie_embeddings, n_positions=c.max_len,
    )  # fmt: skip


def _llama(T, c: ModelConfig):
    return T.LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.kv_heads, head_dim=c.head_size,
        max_position_embeddings=c.max_len, rms_norm_eps=c.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}, attention_bias=c.use_bias,
        mlp_bias=c.use_bias, tie_word_embeddings=c.tie_embeddings, attention_dropout=c.attention_dropout,
    )  # fmt: skip


def _bloom(T, c: ModelConfig):
    return T.BloomConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, n_layer=c.n_layers, n_head=c.n_heads,
        layer_norm_epsilon=c.norm_eps, hidden_dropout=c.dropout, attention_dropout=c.attention_dropout,
        seq_length=c.max_len,
    )  # fmt: skip


def _bart(T, c: ModelConfig):
    return T.BartConfig(
        vocab_size=c.vocab_size, max_position_embeddings=c.max_len, d_model=c.d_model,
        encoder_layers=c.encoder_layers, decoder_layers=c.n_layers, encoder_attention_heads=c.n_heads,
        decoder_attention_heads=c.n_heads, encoder_ffn_dim=c.d_ff, decoder_ffn_dim=c.d_ff,
        activation_function=_HF_ACTIVATION.get(c.activation, c.activation), scale_embedding=c.scale_embeddings,
        dropout=c.dropout, attention_dropout=c.attention_dropout,
    )  # fmt: skip


_CONFIGS = {"gpt2": _gpt2, "bert": _bert, "t5": _t5, "llama": _llama, "bloom": _bloom, "bart": _bart}
_TRAINING_ONLY = {"name", "dropout", "attention_dropout", "dtype", "remat", "scan_layers"}


def _architecture(cfg: ModelConfig) -> dict:
    arch = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _TRAINING_ONLY}
    arch.update(head_dim=cfg.head_size, n_kv_heads=cfg.kv_heads, n_encoder_layers=cfg.encoder_layers)
    return arch


def hf_config_for(cfg: ModelConfig, model_type: str):
    """The `transformers` config of `cfg` as a `model_type` model; UserError if that family cannot express it."""
    import transformers  # the `dev` extra: needed only to write HF files

    if model_type not in _CONFIGS:
        raise UserError(
            f"no HF exporter for model_type {model_type!r}; supported: {', '.join(sorted(_CONFIGS))}"
        )
    try:
        hf_config = _CONFIGS[model_type](transformers, cfg)
        back = config_from_hf(hf_config)
    except (UserError, ValueError, TypeError) as e:
        raise UserError(f"model {cfg.name!r} cannot be written as HF {model_type}: {e}") from None
    want, got = _architecture(cfg), _architecture(back)
    differ = {k: want[k] for k in want if want[k] != got[k]}
    if differ:
        raise UserError(
            f"model {cfg.name!r} is not a {model_type} model: HF {model_type} cannot express {differ}"
        )
    hf_config.architectures = [ARCHITECTURES[model_type]]
    return hf_config


def export_hf_checkpoint(
    cfg: ModelConfig, params: Mapping, model_type: str, out_dir: str | os.PathLike
) -> Path:
    """Write config.json and model.safetensors (float32, tied copies left out as HF does) into a new
    `out_dir`, through a temporary sibling, so a failure leaves nothing behind."""
    from safetensors.numpy import save_file  # comes with transformers (the `dev` extra)

    hf_config = hf_config_for(cfg, model_type)
    state_dict = params_to_hf(cfg, model_type, params)
    for tied in family(model_type).weights(cfg).ties:
        state_dict.pop(tied, None)
    with new_dir_atomic(out_dir) as tmp:
        hf_config.save_pretrained(tmp)
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state_dict.items()},
                  tmp / "model.safetensors", metadata={"format": "pt"})  # fmt: skip
    out_dir = Path(out_dir).absolute()
    return out_dir
