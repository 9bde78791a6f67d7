"""Configs: presets load, overrides apply, and bad input is rejected with a message naming key and fix."""

import subprocess
import sys

import pytest

from chinchax.errors import UserError
from chinchax.model.config import load_model_config


def test_preset_with_overrides():
    cfg = load_model_config("gpt2", ["model.n_layers=6", "d_model=512", "n_heads=8"])
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab_size) == (6, 512, 8, 50257)


def test_preset_inheritance():
    cfg = load_model_config("tiny-t5-v1_1")
    assert cfg.activation == "geglu_tanh" and not cfg.tie_embeddings and cfg.d_model == 64


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["d_modle=3"], ["d_modle", "Did you mean", "valid keys"]),
        (["d_model=abc"], ["d_model", "abc"]),
        (["n_heads=7"], ["d_model=64", "n_heads=7", "[1, 2, 4, 8"]),
        (["n_kv_heads=3"], ["n_kv_heads=3", "must divide", "[1, 2, 4]"]),
        (["variant=encoder_only"], ["encoder_only", "attention=bidirectional"]),
        (["attention=prefix", "variant=encoder_decoder"], ["encoder_decoder", "attention=causal"]),
        (["activation=swish"], ["activation", "swiglu"]),
        (["n_encoder_layers=3"], ["n_encoder_layers", "encoder_decoder"]),
        (["d_model"], ["key=value"]),
    ],
)
def test_bad_config_names_key_and_fix(overrides, fragments):
    with pytest.raises(UserError) as error:
        load_model_config("tiny-gpt2", overrides)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(UserError, match="tiny-gpt2"):
        load_model_config("gpt5")


def test_cli_reports_bad_input_without_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "chinchax.cli", "model", "info", "tiny-gpt2", "n_heads=7"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "n_heads=7" in result.stderr and "Traceback" not in result.stderr


def test_cli_info_json_counts():
    import json

    result = subprocess.run(
        [sys.executable, "-m", "chinchax.cli", "model", "info", "gpt2", "--json", "--no-shapes"],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(result.stdout)
    assert info["n_params"] == 124_439_808
    assert info["n_params"] == info["n_params_embedding"] + info["n_params_non_embedding"]
    assert set(info["flops_per_token"]) == {"six_n", "six_n_non_embedding", "kaplan_forward", "detailed"}


def test_configlib_knows_no_model_and_presets_live_in_model():
    """configlib is generic (the preset hook is ModelConfig.expand_spec); model/convert/hf.py does not import
    hf_export back (its CLI lives in model/cli.py)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, chinchax.configlib; "
            "print(sorted(m for m in sys.modules if m.startswith('chinchax.model')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from chinchax import configlib
    from chinchax.model.config import ModelConfig, load_model_config
    from chinchax.model.presets import preset_names

    assert "tiny-gpt2" in preset_names()
    assert not hasattr(configlib, "load_model_config")  # the model's helpers live in the model only
    assert load_model_config("tiny-gpt2", ["n_layers=3"]) == configlib.load_config(
        ModelConfig, {"preset": "tiny-gpt2", "n_layers": 3})
    import chinchax.model.convert.hf as hf

    assert "hf_export" not in Path(hf.__file__).read_text()
