"""Parity with Hugging Face `transformers`: GPT-2, BERT (MLM), T5 v1.0 and v1.1, LLaMA (GQA), BLOOM, BART.

Each HF model is built at random init from a tiny config, its weights perturbed so that no norm, bias or
table sits at a trivial value (a wrongly mapped LayerNorm bias of 0 would otherwise hide), converted with
`chinchax.model.convert.hf`, and run on random right-padded batches: float32 logits must agree to 1e-4
at every non-padded position. A control then changes one family-specific parameter and checks that the
logits move, so a component the batch never exercises cannot pass unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from chinchax.model import Transformer  # noqa: E402
from chinchax.model.convert.hf import (  # noqa: E402
    config_from_hf,
    flatten,
    model_from_params,
    param_shapes,
    params_from_hf,
    params_state,
    params_to_hf,
    unflatten,
)

torch.set_num_threads(1)
T = transformers
V = 97  # a vocabulary that is no power of two
B, L, S = 3, 12, 10  # batch, decoder length, encoder length
# XLA's cheapest CPU pipeline: the graph is tiny, compile time dominates (numerics are unchanged: f32).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _hf_models():
    """name -> (HF class, config): tiny, and each exercising its family's distinctive parts."""
    return {
        "gpt2": (T.GPT2LMHeadModel, T.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                                 bos_token_id=0, eos_token_id=0)),
        "bert": (T.BertForMaskedLM, T.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=32)),
        "t5": (T.T5ForConditionalGeneration, T.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                        num_heads=4, relative_attention_num_buckets=8,
                                                        relative_attention_max_distance=20)),
        # v1.1: gated-GELU, untied lm_head, no logit scaling; here also fewer decoder than encoder layers.
        "t5_v1_1": (T.T5ForConditionalGeneration, T.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                             num_decoder_layers=1, num_heads=4,
                                                             feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                                             relative_attention_num_buckets=8,
                                                             relative_attention_max_distance=20)),
        "llama": (T.LlamaForCausalLM, T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                    max_position_embeddings=64, rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
        # 6 heads: ALiBi's slopes for a head count that is no power of two (BLOOM's interpolation).
        "bloom": (T.BloomForCausalLM, T.BloomConfig(vocab_size=V, hidden_size=48, n_layer=2, n_head=6)),
        "bart": (T.BartForConditionalGeneration, T.BartConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                                                              encoder_attention_heads=4, decoder_attention_heads=4,
                                                              encoder_ffn_dim=64, decoder_ffn_dim=64,
                                                              max_position_embeddings=32)),
    }  # fmt: skip


ENCODER_DECODER = {"t5", "t5_v1_1", "bart"}
DECODER_ONLY = {"gpt2", "llama", "bloom"}

# One parameter per family whose effect on the logits the control checks (what parity rests on).
DISTINCTIVE = {
    "gpt2": "decoder.position_embedding_PD",
    "bert": "token_type_embedding_TD",
    "t5": "decoder.relative_bias.table_RH",
    "t5_v1_1": "encoder.relative_bias.table_RH",
    "llama": "decoder.blocks.self_attention.k_DGK",  # which query heads share a key head (GQA grouping)
    "bloom": "decoder.embed_norm.bias",
    "bart": "output_bias_V",
}


def _perturb(model: torch.nn.Module, seed: int) -> None:
    """Every weight away from its trivial init: vectors (norm scales, biases) get noise around their
    value, matrices a fresh N(0, 0.2^2) (peaked attention), T5's bias table N(0, 1), BART's logit bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_attention_bias" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("final_logits_bias"):
                b.copy_(0.5 * torch.randn(b.shape, generator=g))


@pytest.fixture(scope="module")
def hf_models():
    built = {}
    for i, (name, (cls, config)) in enumerate(_hf_models().items()):
        torch.manual_seed(i)
        model = cls(config).eval()
        if name == "t5_v1_1":  # transformers 5 ties lm_head at init; real v1.1 checkpoints have their own
            model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        _perturb(model, seed=100 + i)
        built[name] = model
    return built


def _padded(rng: np.random.Generator, length: int):
    """Random tokens and a right-padding mask: one full row, one row padded by 3, one of length 2."""
    tokens = rng.integers(0, V, (B, length))
    lengths = np.array([length, length - 3, 2])
    return tokens, (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)


def _inputs(name: str, seed: int = 0):
    """(HF kwargs, chinchax kwargs, mask of the positions whose logits are compared)."""
    rng = np.random.default_rng(seed)
    tokens, mask = _padded(rng, L)
    if name in ENCODER_DECODER:
        enc_tokens, enc_mask = _padded(rng, S)
        hf = {
            "input_ids": enc_tokens,
            "attention_mask": enc_mask,
            "decoder_input_ids": tokens,
            "decoder_attention_mask": mask,
        }
        cx = {
            "inputs": tokens,
            "segment_ids": mask,
            "encoder_inputs": enc_tokens,
            "encoder_segment_ids": enc_mask,
        }
    else:
        hf = {"input_ids": tokens, "attention_mask": mask}
        cx = {"inputs": tokens, "segment_ids": mask}
        if name == "bert":
            types = rng.integers(0, 2, (B, L))
            hf["token_type_ids"], cx["token_types"] = types, types
    hf = {k: torch.from_numpy(v) for k, v in hf.items()}
    cx = {k: v.astype(np.int32) for k, v in cx.items()}
    return hf, cx, mask.astype(bool)


def _compiled_forward(model: nnx.Module, cx_inputs, *, with_full_row: bool):
    """params -> (logits of the padded batch, logits of its full first row with no segment ids at all),
    compiled once (the control re-runs it). Without segment ids a causal stack takes the fused
    `is_causal` path instead of a mask: the path of unpacked, unpadded training batches."""
    model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    unmasked = {k: v[:1] for k, v in cx_inputs.items() if k not in ("segment_ids", "encoder_segment_ids")}
    if not with_full_row:  # half the compile time; the fused causal path is the decoders' (ALiBi included)
        unmasked = None

    def forward(params, rest, batch, unmasked):
        model = nnx.merge(graphdef, params, rest)
        return model(**batch), None if unmasked is None else model(**unmasked)

    compiled = (
        jax.jit(forward).lower(params, rest, cx_inputs, unmasked).compile(compiler_options=FAST_COMPILE)
    )

    def run(pure_params):
        padded, full_row = compiled(params_state(params, pure_params), rest, cx_inputs, unmasked)
        return np.asarray(padded), None if full_row is None else np.asarray(full_row)[0]

    return run


@pytest.mark.parametrize("name", list(_hf_models()))
def test_logits_match_hugging_face(name, hf_models):
    hf_model = hf_models[name]
    cfg = config_from_hf(hf_model.config)
    params, unused = params_from_hf(cfg, hf_model.config.model_type, hf_model.state_dict())
    assert unused == []  # every HF weight found its place
    model = model_from_params(cfg, params)

    hf_inputs, cx_inputs, compared = _inputs(name)
    assert not compared.all()  # padding is really there
    with torch.no_grad():
        expected = hf_model(**hf_inputs).logits.numpy()
    forward = _compiled_forward(model, cx_inputs, with_full_row=name in DECODER_ONLY)
    logits, full_row = forward(params)
    assert logits.shape == expected.shape == (B, L, V)
    np.testing.assert_allclose(logits[compared], expected[compared], rtol=0, atol=1e-4)
    if name in DECODER_ONLY:  # the first row has no padding: with no segment ids it must agree too
        assert compared[0].all()
        np.testing.assert_allclose(full_row, expected[0], rtol=0, atol=1e-4)
    assert np.abs(expected[compared]).max() > 0.5  # logits far from zero: the comparison has teeth

    # Control: change the family's distinctive parameter and the logits must move.
    flat = flatten(params)
    path = DISTINCTIVE[name]
    value = flat[path]
    # Tables and kernels: shift rows (positions, token types, buckets) or kv heads; vectors: random offset
    # (a uniform one would vanish in the next LayerNorm).
    noise = np.random.default_rng(1).normal(0.0, 0.5, value.shape).astype(np.float32)
    changed = {**flat, path: np.roll(value, 1, axis=-2) if value.ndim > 1 else value + noise}
    moved = np.abs(forward(unflatten(changed))[0][compared] - expected[compared]).max()
    assert moved > 1e-2, f"{path} does not influence the logits ({moved})"


@pytest.mark.parametrize("name", list(_hf_models()))
def test_conversion_round_trips_exactly(name, hf_models):
    hf_model = hf_models[name]
    model_type = hf_model.config.model_type
    cfg = config_from_hf(hf_model.config)
    state_dict = {k: v.numpy() for k, v in hf_model.state_dict().items()}

    # HF -> chinchax -> HF gives back every key of the HF state_dict (tied copies and buffers too), bit for bit.
    params, _ = params_from_hf(cfg, model_type, state_dict)
    back = params_to_hf(cfg, model_type, params)
    assert sorted(back) == sorted(state_dict)
    for key, value in state_dict.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)

    # chinchax -> HF -> chinchax, bit for bit, from random values in every parameter (no norm scale at 1).
    rng = np.random.default_rng(3)
    random_params = {
        k: rng.standard_normal(shape).astype(np.float32) for k, shape in param_shapes(cfg).items()
    }
    restored, unused = params_from_hf(
        cfg, model_type, params_to_hf(cfg, model_type, unflatten(random_params))
    )
    assert unused == []
    restored = flatten(restored)
    assert restored.keys() == random_params.keys()
    for key, value in random_params.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)


def test_same_seed_builds_the_same_model():
    """Built as the trainer builds it (jitted init, seed as the key); tiny-bart has most kinds of parameter."""
    from chinchax.model.config import load_model_config

    cfg = load_model_config("tiny-bart")

    def build(key):
        return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=key, dropout=0)), nnx.Param))

    compiled = jax.jit(build).lower(jax.random.key(0)).compile(compiler_options=FAST_COMPILE)
    first, again, other = (flatten(compiled(jax.random.key(seed))) for seed in (7, 7, 8))
    assert first.keys() == again.keys() == other.keys() == param_shapes(cfg).keys()
    for key in first:
        np.testing.assert_array_equal(np.asarray(first[key]), np.asarray(again[key]), err_msg=key)
    assert not np.array_equal(first["embedding_VD"], other["embedding_VD"])  # the seed does matter
