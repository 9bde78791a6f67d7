"""A LoRA (with and without LoRA dropout) and a full fine-tune on 8 fake CPU devices: meshes (data 8) and
(data 2, fsdp 2, tensor 2) give the same losses, and under fsdp/tensor the frozen base and full fine-tuning's
parameters are sharded like the pretraining state (not replicated). Runs in a subprocess so the device-count flag never leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, json, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from pathlib import Path
    from chinchax.configlib import load_config
    from chinchax.data.pipeline import register_memory_source
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.trainer import train
    from chinchax.posttrain import finetune as ft
    from chinchax.posttrain import finetune_programs as fp

    out = Path(sys.argv[1])
    src = register_memory_source("s", {"train": ["abc def ghi " * 30] * 40, "validation": ["xyz " * 60] * 8})
    common = [f"data.source={src}", "data.seq_len=32", "data.eval_batches=1", "trainer.batch_size=8",
              "trainer.progress_bar=false", "trainer.log_every=1", "optimizer.warmup_steps=0", "trainer.steps=3"]
    train(load_config(ExperimentConfig, "experiments/tiny.yaml", [*common, "model.d_model=32", "model.n_layers=2",
          "model.n_heads=4", "model.d_ff=64", "model.max_len=32", f"trainer.run_dir={out / 'base'}"]))
    specs = {}
    original = fp.FinetunePrograms.__init__
    def spy(self, *a, **k):
        original(self, *a, **k)
        specs[self.method.spec.method] = {
            "frozen_wi": str(self.shardings["params"]["frozen"].get("base", {}).get("decoder", {}).get("blocks", {}).get("mlp", {}).get("wi_DF", None)),
            "trainable_wi": str(self.shardings["params"]["trainable"].get("decoder", {}).get("blocks", {}).get("mlp", {}).get("wi_DF", None)),
        }
    fp.FinetunePrograms.__init__ = spy
    result = {}
    for method in ("lora", "full", "lora_dropout"):
        for name, mesh in (("data", "[8,1,1]"), ("mixed", "[2,2,2]")):
            extra = ["finetune.method=lora", "finetune.lora.dropout=0.1"] if method == "lora_dropout" else [
                f"finetune.method={method}"]
            cfg = load_config(ft.FinetuneConfig, None, [*common, *extra, f"trainer.mesh={mesh}",
                              "finetune.lora.targets=[attention,mlp]", f"trainer.run_dir={out / (method + name)}"])
            r = ft.finetune(out / "base", cfg)
            rows = [json.loads(l) for l in (out / (method + name) / "metrics.jsonl").read_text().splitlines()]
            result[method + "/" + name] = {"losses": [x["loss"] for x in rows if "loss" in x], "eval": r["eval_loss"],
                                           "specs": specs[cfg.finetune.method]}
    print("RESULT" + json.dumps(result))
    """
)


@pytest.mark.slow
def test_sharded_finetune_matches_data_parallel(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    # LoRA dropout: the masks are drawn the same on either mesh (jax's threefry is partitionable)
    for method in ("lora", "full", "lora_dropout"):
        a, b = result[f"{method}/data"], result[f"{method}/mixed"]
        assert len(a["losses"]) == 3
        # same math, other reduction orders: float32 sums over 8 vs 2x2x2 shards
        for x, y in zip(a["losses"], b["losses"], strict=True):
            assert abs(x - y) <= 1e-5 * abs(x), (method, a["losses"], b["losses"])
        assert abs(a["eval"] - b["eval"]) <= 1e-5 * abs(a["eval"])
    assert result["lora_dropout/data"]["losses"][1:] != result["lora/data"]["losses"][1:]  # dropout acts
    lora, full = result["lora/mixed"]["specs"], result["full/mixed"]["specs"]
    assert "fsdp" in lora["frozen_wi"] or "tensor" in lora["frozen_wi"], lora  # the frozen base is sharded
    assert "fsdp" in full["trainable_wi"] or "tensor" in full["trainable_wi"], full
