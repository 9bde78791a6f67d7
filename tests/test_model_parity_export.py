"""chinchax -> Hugging Face: every tiny preset has an HF config of its family, what a family cannot
express is refused, and an exported directory loads with `from_pretrained` and gives the same logits."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from chinchax.errors import UserError  # noqa: E402
from chinchax.model.config import load_model_config  # noqa: E402
from chinchax.model.convert.hf import config_from_hf, model_from_params, param_shapes, unflatten  # noqa: E402
from chinchax.model.convert.hf_export import _architecture, export_hf_checkpoint, hf_config_for  # noqa: E402

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

torch.set_num_threads(1)
PRESETS = {
    "tiny-gpt2": "gpt2",
    "tiny-bert": "bert",
    "tiny-t5": "t5",
    "tiny-t5-v1_1": "t5",
    "tiny-llama": "llama",
    "tiny-bloom": "bloom",
    "tiny-bart": "bart",
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_tiny_preset_has_an_hf_config(preset):
    cfg = load_model_config(preset)
    hf_config = hf_config_for(cfg, PRESETS[preset])
    assert _architecture(config_from_hf(hf_config)) == _architecture(cfg)


def test_export_refuses_what_the_family_cannot_express(tmp_path):
    with pytest.raises(UserError, match="position"):
        hf_config_for(load_model_config("tiny-gpt2").replace(position="rope"), "gpt2")
    with pytest.raises(UserError, match="as HF bert"):
        hf_config_for(
            load_model_config("tiny-llama").replace(variant="encoder_only", attention="bidirectional"), "bert"
        )
    with pytest.raises(UserError, match="no HF exporter"):
        hf_config_for(load_model_config("tiny-gpt2"), "gpt_neox")


def test_exported_t5_v1_1_loads_in_transformers_with_the_same_logits(tmp_path):
    cfg = load_model_config("tiny-t5-v1_1").replace(vocab_size=67, dropout=0.0)
    # Random values in every parameter (norm scales too): a swapped tensor cannot go unnoticed.
    rng = np.random.default_rng(5)
    params = unflatten(
        {
            k: (0.2 * rng.standard_normal(s) + (k.endswith(".scale"))).astype(np.float32)
            for k, s in param_shapes(cfg).items()
        }
    )
    model = model_from_params(cfg, params)
    model.eval()
    out = export_hf_checkpoint(cfg, params, "t5", tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    hf_model = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
    assert hf_model.lm_head.weight.data_ptr() != hf_model.shared.weight.data_ptr()  # untied, as v1.1 is
    enc, dec = rng.integers(0, 67, (2, 7)), rng.integers(0, 67, (2, 6))
    enc_mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    dec_mask = np.array([[1] * 6, [1] * 3 + [0] * 3])
    with torch.no_grad():
        expected = hf_model(
            input_ids=torch.from_numpy(enc), attention_mask=torch.from_numpy(enc_mask),
            decoder_input_ids=torch.from_numpy(dec), decoder_attention_mask=torch.from_numpy(dec_mask),
        ).logits.numpy()  # fmt: skip
    batch = {"inputs": dec, "segment_ids": dec_mask, "encoder_inputs": enc, "encoder_segment_ids": enc_mask}
    batch = {k: v.astype(np.int32) for k, v in batch.items()}
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, batch: nnx.merge(graphdef, state)(**batch))
    logits = np.asarray(forward.lower(state, batch).compile(compiler_options=FAST_COMPILE)(state, batch))
    keep = dec_mask.astype(bool)
    np.testing.assert_allclose(logits[keep], expected[keep], rtol=0, atol=1e-4)
