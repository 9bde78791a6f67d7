"""Reward-model training sharded over 8 fake CPU devices: parameters placed by their logical axes (FSDP and
tensor parallel), batches split over the data axes, and the same losses as a data-parallel-only mesh."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from chinchax.posttrain import preference

SCRIPT = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
import jax
from chinchax.model.config import ModelConfig
from chinchax.posttrain import align_loop, reward
from chinchax.train.config import OptimizerConfig, TrainerConfig

out, pairs = sys.argv[1], sys.argv[2]
model_cfg = ModelConfig(vocab_size=384, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64)
result = {}
for name, mesh in (("dp", [-1, 1, 1]), ("fsdp_tp", [2, 2, 2])):
    res = reward.train_reward(reward.RewardRunConfig(
        model=model_cfg,
        optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=0, weight_decay=0.0, schedule="constant"),
        trainer=TrainerConfig(run_dir=f"{out}/{name}", steps=4, batch_size=8, log_every=1, progress_bar=False,
                              mesh=mesh),
        reward=reward.RewardSettings(train_file=pairs, eval_fraction=0.25, max_len=32)))
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    m = align_loop.create_sharded(align_loop.make_mesh(mesh), lambda: reward.build(model_cfg, 0))
    result[name] = {"losses": [r["loss"] for r in rows], "eval": res["eval"],
                    "embedding_spec": str(m.backbone.embedding_VD[...].sharding.spec),
                    "devices": len(m.backbone.embedding_VD[...].sharding.device_set),
                    "replicated": m.backbone.embedding_VD[...].sharding.is_fully_replicated}
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
def test_sharded_reward_training_equals_data_parallel(tmp_path):
    pairs = [preference.Pair("p:", "x" * (3 + i % 4), "y" * (2 + i % 3)) for i in range(32)]
    preference.write_preferences(tmp_path / "pairs.jsonl", pairs)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), str(tmp_path / "pairs.jsonl")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    dp, sharded = result["dp"], result["fsdp_tp"]
    assert sharded["embedding_spec"] == "P('tensor', 'fsdp')" and not sharded["replicated"]
    assert dp["replicated"] and dp["devices"] == sharded["devices"] == 8
    assert sharded["losses"] == pytest.approx(dp["losses"], rel=1e-5)
    assert sharded["eval"]["bt_loss"] == pytest.approx(dp["eval"]["bt_loss"], rel=1e-5)
