"""Converting HF checkpoints that lie on disk: save_pretrained directories, bare base models in
pytorch_model.bin, the `chinchax model convert` command, and the errors a user can run into."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from chinchax.errors import UserError  # noqa: E402
from chinchax.model.cli import register_convert  # noqa: E402
from chinchax.model.convert.hf import (  # noqa: E402
    config_from_hf,
    convert_hf_checkpoint,
    flatten,
    load_converted,
    model_from_params,
    params_from_hf,
)

torch.set_num_threads(1)
T = transformers
V = 61


def _llama(vocab_size=V):
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64)  # fmt: skip
    model = T.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape) + (1.0 if p.ndim == 1 else 0.0))
    return model


def _gpt2():
    torch.manual_seed(1)
    config = T.GPT2Config(
        vocab_size=V, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    return T.GPT2LMHeadModel(config).eval()


def _assert_same_params(actual, expected):
    actual, expected = flatten(actual), flatten(expected)
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(np.asarray(actual[key]), np.asarray(expected[key]), err_msg=key)


def test_save_pretrained_directory_converts_and_runs_like_hf(tmp_path):
    hf_model = _llama()  # multi-query attention (1 kv head), untied lm_head, safetensors
    hf_model.save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted"
    cfg = convert_hf_checkpoint(tmp_path / "hf", out, ["max_len=48", "dropout=0.0"])

    assert sorted(p.name for p in out.iterdir()) == ["conversion.json", "model.yaml", "params"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    info = json.loads((out / "conversion.json").read_text())
    assert info["model_type"] == "llama" and info["unused_hf_keys"] == []
    assert cfg.max_len == 48 and cfg.n_kv_heads == 1 and not cfg.tie_embeddings

    loaded_cfg, params = load_converted(out)
    assert loaded_cfg == cfg
    expected, _ = params_from_hf(cfg, "llama", hf_model.state_dict())
    _assert_same_params(params, expected)
    assert info["n_params"] == sum(v.size for v in flatten(params).values())

    model = model_from_params(loaded_cfg, params)
    _assert_same_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)), params)  # real nnx.Params
    tokens = np.random.default_rng(0).integers(0, V, (2, 9))
    mask = np.array([[1] * 9, [1] * 5 + [0] * 4])
    with torch.no_grad():
        expected_logits = hf_model(
            input_ids=torch.from_numpy(tokens), attention_mask=torch.from_numpy(mask)
        ).logits
    logits = np.asarray(model(tokens.astype(np.int32), segment_ids=mask.astype(np.int32)))
    keep = mask.astype(bool)
    np.testing.assert_allclose(logits[keep], expected_logits.numpy()[keep], rtol=0, atol=1e-4)


def test_cli_converts_a_bare_base_model_in_pytorch_bin(tmp_path, capsys):
    # The hub's `gpt2` is a GPT2Model checkpoint: keys without `transformer.`, no lm_head, a .bin file.
    hf_model = _gpt2()
    hf_dir = tmp_path / "gpt2-base"
    hf_dir.mkdir()
    hf_model.config.save_pretrained(hf_dir)
    torch.save(hf_model.transformer.state_dict(), hf_dir / "pytorch_model.bin")

    parser = argparse.ArgumentParser()
    register_convert(parser.add_subparsers())
    args = parser.parse_args(["convert", str(hf_dir), str(tmp_path / "out"), "name=my-gpt2"])
    assert args.handler(args) == 0
    assert "my-gpt2" in capsys.readouterr().out

    cfg, params = load_converted(tmp_path / "out")
    assert cfg.name == "my-gpt2"
    expected, _ = params_from_hf(config_from_hf(hf_model.config), "gpt2", hf_model.state_dict())
    _assert_same_params(params, expected)


def test_t5_v1_1_saved_without_lm_head_reads_the_shared_table(tmp_path):
    # transformers 5 ties a fresh v1.1 model's lm_head to `shared` and saves only `shared.weight`.
    config = T.T5Config(vocab_size=V, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # fmt: skip
    hf_model = T.T5ForConditionalGeneration(config).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    from safetensors import safe_open

    with safe_open(tmp_path / "hf" / "model.safetensors", "np") as saved:
        assert "lm_head.weight" not in saved.keys()  # the case this test is about
    cfg = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "out")
    assert not cfg.tie_embeddings and not cfg.scale_tied_logits and cfg.activation == "geglu_tanh"
    _, params = load_converted(tmp_path / "out")
    np.testing.assert_array_equal(params["unembedding_DV"], hf_model.shared.weight.detach().numpy().T)


def test_failed_conversion_leaves_nothing_behind(tmp_path):
    from safetensors.torch import save_file

    hf_model = _gpt2()
    state_dict = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    del state_dict["transformer.h.1.mlp.c_fc.weight"]
    hf_model.config.save_pretrained(tmp_path / "hf")
    save_file(state_dict, tmp_path / "hf" / "model.safetensors")
    with pytest.raises(UserError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight.*missing"):
        convert_hf_checkpoint(tmp_path / "hf", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        convert_hf_checkpoint(tmp_path, tmp_path / "out")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        convert_hf_checkpoint(tmp_path, tmp_path / "busy")
    with pytest.raises(UserError, match="no converter.*gpt2"):
        config_from_hf(
            T.GPTNeoXConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
        )
    with pytest.raises(UserError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf(T.GPT2Config(n_embd=16, n_layer=1, n_head=2, scale_attn_by_inverse_layer_idx=True))
    llama3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    with pytest.raises(UserError, match="llama3"):
        config_from_hf(
            T.LlamaConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, rope_parameters=llama3)
        )

    hf_model = _gpt2()
    cfg = config_from_hf(hf_model.config)
    state_dict = {k: v.numpy().copy() for k, v in hf_model.state_dict().items()}
    untied = {**state_dict, "lm_head.weight": state_dict["lm_head.weight"] + 1.0}
    with pytest.raises(UserError, match="lm_head.weight differs"):
        params_from_hf(cfg, "gpt2", untied)
    extra = {**state_dict, "transformer.h.0.attn.q_norm.weight": np.ones(16, np.float32)}
    with pytest.raises(UserError, match="q_norm"):
        params_from_hf(cfg, "gpt2", extra)
    wrong_shape = {**state_dict, "transformer.wpe.weight": np.zeros((8, 32), np.float32)}
    with pytest.raises(UserError, match="wpe"):
        params_from_hf(cfg, "gpt2", wrong_shape)


def test_sharded_bfloat16_checkpoint(tmp_path):
    hf_model = _llama().to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()  # really sharded
    cfg = convert_hf_checkpoint(tmp_path / "hf", tmp_path / "out")
    _, params = load_converted(tmp_path / "out")
    expected, _ = params_from_hf(cfg, "llama", {k: v.float() for k, v in hf_model.state_dict().items()})
    _assert_same_params(params, expected)  # bfloat16 widened exactly to the float32 parameters
    assert all(np.asarray(v).dtype == np.float32 for v in flatten(params).values())


def test_cli_convert_then_export_gives_back_the_same_files(tmp_path):
    from safetensors.numpy import load_file

    hf_model = _llama()
    hf_model.save_pretrained(tmp_path / "hf")
    parser = argparse.ArgumentParser()
    register_convert(parser.add_subparsers())
    for argv in (
        ["convert", str(tmp_path / "hf"), str(tmp_path / "cx")],
        ["export-hf", str(tmp_path / "cx"), str(tmp_path / "back")],
    ):
        args = parser.parse_args(argv)
        assert args.handler(args) == 0
    original, back = (
        load_file(tmp_path / "hf" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert sorted(back) == sorted(original)
    for key in original:
        np.testing.assert_array_equal(back[key], original[key], err_msg=key)
    reloaded = T.AutoConfig.from_pretrained(tmp_path / "back")
    assert reloaded.architectures == ["LlamaForCausalLM"]
    assert config_from_hf(reloaded) == config_from_hf(hf_model.config).replace(name="back")


def _sentencepiece_model(path, vocab_size=50):
    """A tiny SentencePiece model in the HF layout (unk 0, bos 1, eos 2, no pad), as LLaMA's tokenizer.model."""
    import io

    import sentencepiece as spm

    text = ["the quick brown fox jumps over the lazy dog", "a converted model reads text like a run"] * 50
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=proto, vocab_size=vocab_size,
                                   model_type="bpe", minloglevel=2)
    path.write_bytes(proto.getvalue())


def test_converted_directory_loads_like_a_run_dir(tmp_path):
    """`load_run` (generate, eval) takes a `chinchax model convert` output like a train run dir: the model
    gives HF's logits, and the HF directory's tokenizer.model is copied in and used."""
    from chinchax.data.tokenizers import SentencePieceTokenizer
    from chinchax.evaluation.run_loading import load_run

    hf_model = _llama(vocab_size=160)  # 50 pieces + 100 sentinels + <mask> fit in 160
    hf_model.save_pretrained(tmp_path / "hf")
    _sentencepiece_model(tmp_path / "hf" / "tokenizer.model")
    parser = argparse.ArgumentParser()
    register_convert(parser.add_subparsers())
    args = parser.parse_args(["convert", str(tmp_path / "hf"), str(tmp_path / "cx")])
    assert args.handler(args) == 0
    assert json.loads((tmp_path / "cx" / "conversion.json").read_text())["tokenizer"] == "tokenizer.model"

    run = load_run(tmp_path / "cx")
    assert run.kind == "converted" and run.step == 0
    assert run.config.model == load_converted(tmp_path / "cx")[0]
    assert run.tokenizer.hash == SentencePieceTokenizer.from_file(tmp_path / "hf" / "tokenizer.model").hash
    ids = np.array([run.tokenizer.encode("the lazy fox reads")], np.int32)
    with torch.no_grad():
        expected = hf_model(input_ids=torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(np.asarray(run.model(ids)), expected, rtol=0, atol=1e-4)

    # GPT-2's BPE is no tokenizer chinchax reads: the error says how to give one.
    hf_gpt2 = _gpt2()
    hf_gpt2.save_pretrained(tmp_path / "gpt2")
    convert_hf_checkpoint(tmp_path / "gpt2", tmp_path / "gpt2-cx")
    with pytest.raises(UserError, match="--tokenizer"):
        load_run(tmp_path / "gpt2-cx")
    with pytest.raises(UserError, match="vocab_size 61 is smaller"):
        load_run(tmp_path / "gpt2-cx", tokenizer="byte")  # 361 byte ids do not fit GPT-2's 61-row table
    with pytest.raises(UserError, match="neither a run directory"):
        load_run(tmp_path / "hf")
