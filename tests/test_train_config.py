"""ExperimentConfig loading (YAML + overrides), validation, MFU peaks and metrics files."""

import json

import pytest

from chinchax.configlib import load_config
from chinchax.errors import UserError
from chinchax.train import mfu
from chinchax.train.config import ExperimentConfig, TrainerConfig
from chinchax.train.metrics import MetricsLogger, read_jsonl
from chinchax.train.mfu import measure_matmul_peak, table_peak


def test_tiny_yaml_loads_with_overrides():
    cfg = load_config(ExperimentConfig, "experiments/tiny.yaml", ["trainer.steps=7", "model.d_model=32"])
    assert cfg.trainer.steps == 7 and cfg.model.d_model == 32 and cfg.model.name == "tiny-gpt2"
    assert cfg.model.vocab_size >= 361 and cfg.data.objective == "causal_lm"


def test_tokens_give_the_number_of_steps():
    cfg = TrainerConfig(steps=None, tokens=10_000, batch_size=4).validate()
    assert cfg.total_steps(seq_len=128) == 20  # ceil(10000 / 512)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["trainer.batch_size=6", "trainer.microbatches=4"], "microbatches"),
        (["trainer.tokens=1000"], "exactly one of trainer.steps"),
        (["trainer.mesh=[2,2]"], "trainer.mesh"),
        (["trainer.bogus=1"], "bogus"),
    ],
)
def test_bad_configs_name_the_key(overrides, match):
    with pytest.raises(UserError, match=match):
        load_config(ExperimentConfig, "experiments/tiny.yaml", overrides)


def test_peak_table_knows_the_accelerators():
    assert table_peak("TPU v5 lite", "bfloat16") == 197e12
    assert table_peak("TPU v5p", "bfloat16") == 459e12
    assert table_peak("TPU v4", "bfloat16") == 275e12
    assert table_peak("TPU v6 lite", "bfloat16") == 918e12
    assert table_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert table_peak("NVIDIA H200", "bfloat16") == 989e12
    assert table_peak("NVIDIA A100-SXM4-80GB", "float32") == 156e12
    assert table_peak("cpu", "float32") is None


def test_measured_cpu_peak_is_a_plausible_rate():
    peak = measure_matmul_peak("float32", n=256, repeats=2)
    assert 1e8 < peak < 1e13


def test_a_cpu_peak_is_measured_once_a_process(monkeypatch):
    calls = []
    monkeypatch.setattr(mfu, "measure_matmul_peak", lambda dtype: calls.append(dtype) or 7e10)
    mfu._cpu_peak.cache_clear()
    try:
        for _ in range(3):  # three runs in one sweep worker
            assert mfu.total_peak_flops("float32") == (7e10, "measured jnp.dot (float32) on cpu")
        assert calls == ["float32"]
        assert mfu.total_peak_flops("float32", override_per_device=5e10)[0] == 5e10  # an override still wins
    finally:
        mfu._cpu_peak.cache_clear()


def test_metrics_file_drops_rows_after_the_restored_step(tmp_path):
    rows = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3, 4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')
    logger = MetricsLogger(tmp_path, resume_step=2, enabled=True)
    logger.log({"step": 3, "loss": float("nan")})
    logger.close()
    got = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3] and got[2]["loss"] is None  # null: JSON has no NaN
