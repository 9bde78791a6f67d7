"""µP and depth scaling (model/parametrization.py): the multiplier table, SP bitwise at the base shapes, every
variant, exact resume, and µP's optimizer state through a checkpoint."""

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from chinchax.configlib import load_config
from chinchax.errors import UserError
from chinchax.model import Transformer
from chinchax.model.config import ModelConfig
from chinchax.model.parametrization import multipliers, update_scales
from chinchax.train.checkpoint import load_numpy_state
from chinchax.train.config import ExperimentConfig
from chinchax.train.metrics import TIMING_FIELDS, read_jsonl

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.d_model=16", "model.n_layers=1", "model.n_heads=2", "model.d_ff=32", "model.max_len=16",
    "data.seq_len=16", "data.eval_batches=2", "trainer.batch_size=4", "trainer.checkpoint_every=6",
    "trainer.log_every=1", "trainer.eval_every=0", "trainer.progress_bar=false", "optimizer.warmup_steps=2",
    "trainer.steps=12", "trainer.max_to_keep=5",
]
WIDE_MUP = ["model.parametrization=mup", "model.d_model=32", "model.d_ff=64", "model.n_heads=4",
            "model.n_layers=2", "model.mup_base_d_model=16", "model.mup_base_n_layers=1", "model.mup_base_head_dim=8"]


def _cfg(run_dir, *extra) -> ExperimentConfig:
    return load_config(ExperimentConfig, REPO / "experiments" / "tiny.yaml", [*TINY, f"trainer.run_dir={run_dir}", *extra])


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_jsonl(run_dir / "metrics.jsonl")]


def _params(run_dir: Path, step: int):
    return jax.tree.leaves(load_numpy_state(run_dir / "checkpoints" / str(step))["params"])


def test_mup_at_its_base_shapes_trains_sp_bitwise(tmp_path):
    from chinchax.train.trainer import train

    train(_cfg(tmp_path / "sp"))
    base = ["model.parametrization=mup", "model.mup_base_d_model=16", "model.mup_base_n_layers=1",
            "model.mup_base_head_dim=8", "model.mup_depth_alpha=0.5"]
    train(_cfg(tmp_path / "mup", *base))
    assert _rows(tmp_path / "mup") == _rows(tmp_path / "sp")
    for a, b in zip(_params(tmp_path / "mup", 12), _params(tmp_path / "sp", 12), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_multipliers_follow_the_adam_table():
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=4, n_heads=4, d_ff=256, max_len=16, tie_embeddings=False,
                      parametrization="mup", mup_base_d_model=16, mup_base_n_layers=2, mup_base_head_dim=4,
                      mup_depth_alpha=0.5, mup_output_multiplier=2.0)
    m = multipliers(cfg)
    m_n, m_l = 4.0, 2.0
    assert (m.width, m.depth) == (m_n, m_l)
    assert m.branch == pytest.approx(m_l**-0.5)
    assert m.logits == pytest.approx(2.0 / m_n)
    assert m.attention_scale == pytest.approx(math.sqrt(4) / 16)  # 1/d_head in shape, SP's at the base head size
    assert m.qkv_init == pytest.approx(1.0)  # heads stay 4: only the head size grew

    # heads fixed, head size growing with width (no head_dim): the base head size is base d_model / n_heads
    fixed_heads = multipliers(cfg.replace(d_model=256, n_heads=2, mup_base_d_model=64, mup_base_head_dim=None))
    assert fixed_heads.attention_scale == pytest.approx(math.sqrt(32) / 128) and fixed_heads.qkv_init == 1.0
    # head size fixed (head_dim given), heads added: 1/sqrt(d_head) as SP, q/k/v init x heads / base heads
    added_heads = multipliers(cfg.replace(d_model=256, n_heads=16, head_dim=16, mup_base_d_model=64,
                                          mup_base_head_dim=None))
    assert added_heads.attention_scale == 1 / 4 and added_heads.qkv_init == pytest.approx(4.0)

    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))), nnx.Param))
    lr, grad = update_scales(cfg, params)
    block = ("decoder", "blocks")

    def at(tree, *path):
        for key in path:
            tree = tree[key]
        return tree

    hidden_lr, hidden_grad = (1 / m_n) * m_l ** (0.5 - 1), m_n * m_l**0.5  # grad x 1/eps multiplier
    for path in [(*block, "self_attention", "q_DHK"), (*block, "mlp", "wo_FD")]:
        assert at(lr, *path) == pytest.approx(hidden_lr) and at(grad, *path) == pytest.approx(hidden_grad)
    for path in [(*block, "mlp_norm", "scale"), (*block, "self_attention", "q_bias_HK")]:
        assert at(lr, *path) == pytest.approx(m_l ** (0.5 - 1)) and at(grad, *path) == pytest.approx(hidden_grad)
    for path in [("embedding_VD",), ("unembedding_DV",), ("decoder", "position_embedding_PD"),
                 ("decoder", "final_norm", "scale")]:
        assert at(lr, *path) == 1.0 and at(grad, *path) == pytest.approx(m_n)
    sp = cfg.replace(parametrization="sp", mup_base_d_model=None, mup_base_n_layers=None, mup_base_head_dim=None,
                     mup_depth_alpha=1.0, mup_output_multiplier=1.0)
    assert update_scales(sp, params) is None


def test_heads_added_with_width_keep_the_query_scale():
    """q's init variance is 1/(D·base heads) under µP: a model twice as wide by heads has queries of the same
    size, where SP's flax fan-in (D·heads) shrinks them by 1/sqrt(8) at 8x the heads."""
    def q_size(parametrization, d):
        kw = dict(mup_base_d_model=64) if parametrization == "mup" else {}
        cfg = ModelConfig(vocab_size=64, d_model=d, n_layers=1, n_heads=d // 8, head_dim=8, d_ff=4 * d, max_len=16,
                          parametrization=parametrization, **kw)
        attention = Transformer(cfg, rngs=nnx.Rngs(0)).decoder.blocks.self_attention
        w = np.asarray(attention.q_DHK[...][0])
        return float(np.std(w) * math.sqrt(d))

    assert q_size("mup", 512) == pytest.approx(q_size("mup", 64), rel=0.05)
    assert q_size("sp", 512) == pytest.approx(q_size("sp", 64) / math.sqrt(8), rel=0.05)


@pytest.mark.parametrize("variant", [
    dict(variant="decoder_only", attention="prefix"),
    dict(variant="encoder_decoder", attention="causal"),
    dict(variant="decoder_only", attention="causal", tie_embeddings=True, scan_layers=False),
])
def test_every_variant_builds_and_differentiates_under_mup(variant):
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, parametrization="mup",
                      mup_base_d_model=16, mup_base_n_layers=1, mup_zero_query=True,
                      **{"tie_embeddings": False, "mup_zero_readout": not variant.get("tie_embeddings", False),
                         **variant})
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.arange(16, dtype=jnp.int32).reshape(2, 8)
    kwargs = {"encoder_inputs": tokens} if cfg.variant == "encoder_decoder" else {}
    if cfg.attention == "prefix":
        kwargs["prefix_mask"] = jnp.arange(8)[None, :].repeat(2, 0) < 3

    def loss(model):
        return jnp.mean(model(tokens, **kwargs) ** 2)

    value, grads = nnx.value_and_grad(loss)(model)
    assert np.isfinite(float(value))
    if cfg.mup_zero_readout:  # logits exactly 0 at init, as microsoft/mup's coordinate check expects
        assert float(value) == 0.0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_mup_settings_are_checked():
    with pytest.raises(UserError, match="only applies to model.parametrization=mup"):
        ModelConfig(mup_base_d_model=128).validate()
    with pytest.raises(UserError, match="untied readout"):
        ModelConfig(parametrization="mup", mup_zero_readout=True, tie_embeddings=True).validate()
    with pytest.raises(UserError, match="mup_depth_alpha"):
        ModelConfig(parametrization="mup", mup_depth_alpha=0.7).validate()


def test_a_wide_mup_run_resumes_exactly(tmp_path):
    """µP's optimizer (gradient and update multipliers) through a checkpoint: a run resumed from step 6 ends
    bitwise where the uninterrupted run does."""
    from chinchax.train.trainer import train

    full, cut = tmp_path / "full", tmp_path / "cut"
    train(_cfg(full, *WIDE_MUP))
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "12")
    (cut / "run.json").unlink()
    rows = [r for r in read_jsonl(cut / "metrics.jsonl") if r.get("step", 0) <= 6]
    (cut / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    train(_cfg(cut, *WIDE_MUP))
    assert [r for r in _rows(cut) if "loss" in r] == [r for r in _rows(full) if "loss" in r]
    for a, b in zip(_params(cut, 12), _params(full, 12), strict=True):
        np.testing.assert_array_equal(a, b)


def test_hf_export_refuses_mup_away_from_its_base_and_takes_it_at_the_base():
    from chinchax.model.convert.hf import params_to_hf

    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16, position="learned",
                      activation="gelu_tanh", parametrization="mup", mup_base_d_model=16)
    params = nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param))
    with pytest.raises(UserError, match="away from its base shapes"):
        params_to_hf(cfg, "gpt2", params)
    at_base = cfg.replace(mup_base_d_model=32)
    assert "transformer.wte.weight" in params_to_hf(at_base, "gpt2", params)
