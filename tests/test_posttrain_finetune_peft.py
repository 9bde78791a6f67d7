"""LoRA parity with Hugging Face peft on converted GPT-2 and LLaMA (tiny random configs built offline).

peft's adapters (random A and B, so the update is not zero) are read into chinchax's layout; chinchax's
logits must equal peft's to 1e-5; the merged chinchax weights, exported to HF, must give the unmerged
peft model's logits and equal peft's own merge; and adapters exported in peft's format must load in peft
(the real client) and give chinchax's logits again.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


from chinchax.model.convert.hf import (  # noqa: E402,E501
    config_from_hf,
    flatten,
    model_from_params,
    params_from_hf,
    params_to_hf,
    unflatten,
)
from chinchax.posttrain import adapters as lora_lib  # noqa: E402
from chinchax.posttrain.peft_format import CONFIG, WEIGHTS, export_peft, import_peft  # noqa: E402

torch.set_num_threads(1)
T = transformers
V, B, L = 97, 2, 10
RANK, ALPHA = 4, 8.0


def _hf(name):
    if name == "gpt2":
        config = T.GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                              eos_token_id=0)
        return T.GPT2LMHeadModel, config, ["c_attn", "c_proj", "c_fc"]
    config = T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           rope_parameters={"rope_type": "default", "rope_theta": 500.0})
    return T.LlamaForCausalLM, config, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _logits(cfg, flat, tokens):
    model = model_from_params(cfg, unflatten(flat))
    model.eval()
    return np.asarray(model(tokens.astype(np.int32)))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def case(request):
    name = request.param
    cls, config, modules = _hf(name)
    torch.manual_seed(0)
    base = cls(config).eval()
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    peft_model = peft.get_peft_model(
        base, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=modules, lora_dropout=0.0,
                              init_lora_weights=False)  # random A and B: a non-zero update
    ).eval()
    cfg = config_from_hf(config)
    params, _ = params_from_hf(cfg, config.model_type, {k: v.numpy() for k, v in base_state.items()})
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    lora = lora_lib.LoraConfig(RANK, ALPHA, 0.0, ("attention", "mlp")).validate()
    targets = lora_lib.find_targets({k: v.shape for k, v in flat.items()}, lora)
    state = {k: v.detach().numpy() for k, v in peft.get_peft_model_state_dict(peft_model).items()}
    adapters = import_peft(state, cfg, config.model_type, [t.path for t in targets])
    tokens = np.random.default_rng(0).integers(0, V, (B, L))
    with torch.no_grad():
        expected = peft_model(torch.from_numpy(tokens)).logits.numpy()
    merged = {k: np.asarray(v) for k, v in lora_lib.merge(flat, adapters, targets, lora.scale).items()}
    return dict(name=name, cls=cls, config=config, base_state=base_state, peft_model=peft_model, cfg=cfg,
                flat=flat, lora=lora, targets=targets, adapters=adapters, tokens=tokens, expected=expected,
                merged=merged)


def test_lora_logits_equal_peft(case):
    assert len(case["adapters"]) == len(case["targets"]) >= 6  # q k v o and the MLP kernels
    logits = _logits(case["cfg"], case["merged"], case["tokens"])
    base_logits = _logits(case["cfg"], case["flat"], case["tokens"])
    assert np.abs(logits - base_logits).max() > 1e-2  # the adapters do change the output
    np.testing.assert_allclose(logits, case["expected"], rtol=0, atol=1e-5)


def test_merged_equals_unmerged_and_peft_merge(case):
    """chinchax's merged weights, exported to HF, give peft's unmerged logits and equal peft's merge."""
    model_type = case["config"].model_type
    hf_merged = params_to_hf(case["cfg"], model_type, unflatten(case["merged"]))
    plain = case["cls"](case["config"]).eval()
    plain.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf_merged.items()})
    with torch.no_grad():
        logits = plain(torch.from_numpy(case["tokens"])).logits.numpy()
    np.testing.assert_allclose(logits, case["expected"], rtol=0, atol=1e-5)

    peft_merged = {k: v.detach().numpy() for k, v in case["peft_model"].merge_and_unload().state_dict().items()}
    for key, value in hf_merged.items():
        np.testing.assert_allclose(value, peft_merged[key], rtol=0, atol=1e-6, err_msg=key)


def test_exported_adapters_load_in_peft(case, tmp_path):
    out = export_peft(tmp_path / "adapter", case["cfg"], case["config"].model_type, case["adapters"], case["lora"])
    assert (out / CONFIG).is_file() and (out / WEIGHTS).is_file()
    base = case["cls"](case["config"]).eval()
    base.load_state_dict(case["base_state"])
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    with torch.no_grad():
        logits = loaded(torch.from_numpy(case["tokens"])).logits.numpy()
    chinchax = _logits(case["cfg"], case["merged"], case["tokens"])
    np.testing.assert_allclose(logits, chinchax, rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits, case["expected"], rtol=0, atol=1e-5)


def test_finetune_of_a_converted_model_exports_a_peft_adapter(tmp_path):
    """HF LLaMA -> `convert_hf_checkpoint` -> `finetune` (LoRA, 2 steps) -> adapter/ loads in peft with the
    fine-tuned model's logits (merged/)."""
    from chinchax.configlib import load_config
    from chinchax.data.pipeline import register_memory_source
    from chinchax.model.convert.hf import convert_hf_checkpoint, load_converted
    from chinchax.posttrain.finetune import FinetuneConfig, finetune

    config = T.LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(1)
    T.LlamaForCausalLM(config).save_pretrained(tmp_path / "hf")
    convert_hf_checkpoint(tmp_path / "hf", tmp_path / "converted")
    src = register_memory_source("peft-ft", {"train": ["hello world, " * 20] * 20, "validation": ["hello " * 40] * 4})
    cfg = load_config(FinetuneConfig, None, [
        f"data.source={src}", "data.seq_len=32", "data.eval_batches=1", "trainer.batch_size=4", "trainer.steps=2",
        "trainer.progress_bar=false", "optimizer.learning_rate=0.01", "optimizer.warmup_steps=0",
        "finetune.method=lora", "finetune.lora.targets=[attention,mlp]", f"trainer.run_dir={tmp_path / 'ft'}"])
    result = finetune(tmp_path / "converted", cfg)
    adapter = tmp_path / "ft" / "adapter"
    assert result["finetune"]["peft_adapter"] == str(adapter.absolute())
    base = T.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    loaded = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    tokens = np.random.default_rng(0).integers(0, 384, (2, 12))
    with torch.no_grad():
        logits = loaded(torch.from_numpy(tokens)).logits.numpy()
    merged_cfg, merged = load_converted(tmp_path / "ft" / "merged")
    expected = _logits(merged_cfg, flatten(merged), tokens)
    base_logits = _logits(merged_cfg, flatten(load_converted(tmp_path / "converted")[1]), tokens)
    assert np.abs(expected - base_logits).max() > 1e-4  # two steps did move the model
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
