"""The full-size presets are the published models: converting each reference HF config (the values of
the hub's config.json) gives the preset's architecture, and the HF model built from it (on the meta
device: no memory) has exactly the parameter count chinchax counts from its own tree."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chinchax.model.config import load_model_config  # noqa: E402
from chinchax.model.convert.hf import config_from_hf  # noqa: E402
from chinchax.model.counting import count_params  # noqa: E402

T = transformers

# preset -> (HF class, config as on the hub). Only architecture is compared: dropout and the compute
# settings are training choices (e.g. v1.1 was pretrained without dropout; its hub config says 0.1).
REFERENCES = {
    "gpt2": lambda: (T.GPT2LMHeadModel, T.GPT2Config()),
    "bert-base": lambda: (T.BertForMaskedLM, T.BertConfig()),
    "t5-base": lambda: (
        T.T5ForConditionalGeneration,
        T.T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, n_positions=512),
    ),
    "t5-v1_1-base": lambda: (
        T.T5ForConditionalGeneration,
        T.T5Config(
            d_model=768,
            d_ff=2048,
            num_layers=12,
            num_heads=12,
            n_positions=512,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
        ),
    ),  # fmt: skip
    "llama2-7b": lambda: (
        T.LlamaForCausalLM,
        T.LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, num_key_value_heads=32),
    ),
    "bloom-560m": lambda: (T.BloomForCausalLM, T.BloomConfig(hidden_size=1024, n_layer=24, n_head=16)),
    "bart-base": lambda: (
        T.BartForConditionalGeneration,
        T.BartConfig(
            d_model=768,
            encoder_layers=6,
            decoder_layers=6,
            encoder_attention_heads=12,
            decoder_attention_heads=12,
            encoder_ffn_dim=3072,
            decoder_ffn_dim=3072,
        ),
    ),  # fmt: skip
}
NOT_ARCHITECTURE = {"name", "dropout", "attention_dropout", "dtype", "remat", "scan_layers"}


def _architecture(cfg) -> dict:
    arch = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_ARCHITECTURE}
    # Resolved values: an explicit head_dim of d_model / n_heads is the same model as None.
    arch.update(head_dim=cfg.head_size, n_kv_heads=cfg.kv_heads, n_encoder_layers=cfg.encoder_layers)
    return arch


def _hf_param_count(cls, config) -> int:
    with torch.device("meta"):
        model = cls(config)
    if getattr(config, "scale_decoder_outputs", True) is False:
        # transformers 5 ties a fresh T5 v1.1 lm_head; the released v1.1 checkpoints have their own.
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    n = sum(p.numel() for p in model.parameters())
    # BART's final_logits_bias is a buffer in HF and a parameter in chinchax.
    return n + sum(b.numel() for name, b in model.named_buffers() if name.endswith("final_logits_bias"))


@pytest.mark.parametrize("preset", list(REFERENCES))
def test_preset_is_the_reference_architecture(preset):
    cls, hf_config = REFERENCES[preset]()
    converted = config_from_hf(hf_config)
    assert _architecture(converted) == _architecture(load_model_config(preset))
    assert count_params(converted).total == _hf_param_count(cls, hf_config)
