"""Two local processes joined by jax.distributed.initialize train exactly like one process with the
same devices: each host feeds only its rows of the global batch (make_array_from_process_local_data)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from chinchax.train.checkpoint import load_numpy_state
from chinchax.train.metrics import TIMING_FIELDS, read_jsonl

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
from chinchax.configlib import load_config
from chinchax.train.config import ExperimentConfig
from chinchax.train.synthetic import TokenArrayBatches, random_tokens
from chinchax.train.trainer import train

run_dir, n, pid, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
overrides = [f"trainer.run_dir={run_dir}", f"trainer.local_device_count={4 // n}", "trainer.mesh=[2,2,1]",
             "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.d_ff=64", "model.max_len=32",
             "data.seq_len=32", "trainer.batch_size=8", "trainer.steps=6", "trainer.checkpoint_every=3",
             "trainer.log_every=1", "trainer.progress_bar=false", "optimizer.warmup_steps=1"]
if n > 1:
    overrides += [f"trainer.coordinator_address=127.0.0.1:{port}", f"trainer.num_processes={n}",
                  f"trainer.process_id={pid}"]
cfg = load_config(ExperimentConfig, "experiments/tiny.yaml", overrides)
train(cfg, data=lambda i, n: (TokenArrayBatches(random_tokens(6000, 384), global_batch_size=8, seq_len=32,
                                                process_index=i, process_count=n), None, None))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir, n):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(run_dir), str(n), str(i), port],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(one, 1)
    _launch(two, 2)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in rows]  # noqa: E731
    rows_one, rows_two = read_jsonl(one / "metrics.jsonl"), read_jsonl(two / "metrics.jsonl")
    assert [r["step"] for r in rows_two] == list(range(1, 7))
    a, b = strip(rows_one), strip(rows_two)
    np.testing.assert_allclose([r["loss"] for r in b], [r["loss"] for r in a], rtol=0, atol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in b], [r["grad_norm"] for r in a], rtol=1e-5)
    assert rows_one[-1]["loss"] < rows_one[0]["loss"]
    run_one, run_two = (json.loads((d / "run.json").read_text()) for d in (one, two))
    assert run_two["n_devices"] == run_one["n_devices"] == 4 and run_two["steps"] == 6
    # both hosts' iterator states were checkpointed
    assert sorted(p.name for p in (two / "checkpoints" / "6" / "data").glob("process_*")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    p1 = load_numpy_state(one / "checkpoints" / "6")["params"]
    p2 = load_numpy_state(two / "checkpoints" / "6")["params"]
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2), strict=True):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-4)
