"""Shared helpers of the sweep tests: a fake `chinchax train` and hand-made plans (no jax needed).

Loaded by path from tests/test_scaling_sweep_*.py and tests/test_scaling_ray.py (pytest runs in importlib
mode); it holds no tests, so its name does not start with test_ and pytest does not collect it.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from chinchax.configlib import from_dict
from chinchax.scaling.plan import Plan, PlannedRun
from chinchax.train.config import ExperimentConfig

# Reads the YAML it is given like `chinchax train` does, then behaves as the env asks:
#   FAKE_FAIL=id1,id2   always exit 1 for these runs;  FAKE_FLAKY=id3   fail the first attempt only
#   FAKE_CALLS=path     append "<run id>\n" per call (to count launches)
# Writes metrics.jsonl (steps 1..4, or from the last logged step when resuming) and run.json.
FAKE_TRAIN = textwrap.dedent(
    '''
    import json, math, os, sys, yaml
    from pathlib import Path
    cfg = yaml.safe_load(open(sys.argv[1]))
    d = Path(cfg["trainer"]["run_dir"]); d.mkdir(parents=True, exist_ok=True)
    run_id = d.name
    if os.environ.get("FAKE_CALLS"):
        with open(os.environ["FAKE_CALLS"], "a") as f:
            f.write(run_id + "\\n")
    attempts = d / "fake_attempts"
    n = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(n))
    if run_id in os.environ.get("FAKE_FAIL", "").split(","):
        print(f"boom: {run_id} cannot train (attempt {n})", file=sys.stderr); sys.exit(1)
    if run_id in os.environ.get("FAKE_FLAKY", "").split(",") and n == 1:
        print("transient failure", file=sys.stderr); sys.exit(3)
    resumed = (d / "checkpoint_marker").exists()
    m = cfg["model"]; steps = cfg["trainer"]["steps"]; tps = cfg["trainer"]["batch_size"] * cfg["data"]["seq_len"]
    N = 12 * m["n_layers"] * m["d_model"] ** 2 + m["vocab_size"] * m["d_model"]
    N_ne = 12 * m["n_layers"] * m["d_model"] ** 2
    D = steps * tps
    loss = 1.7 + 400 / N ** 0.34 + 400 / D ** 0.28
    with open(d / "metrics.jsonl", "a") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "loss": loss + 1.0 / step, "tokens": step * tps,
                                "flops_6nd": 6.0 * N * step * tps, "flops_6nd_non_embedding": 6.0 * N_ne * step * tps}) + "\\n")
        f.write(json.dumps({"step": steps, "eval_loss": loss}) + "\\n")
    out = {"run": run_id, "status": "done", "n_params": N, "n_params_embedding": N - N_ne,
           "n_params_non_embedding": N_ne, "n_tokens": D, "steps": steps, "batch_size": cfg["trainer"]["batch_size"],
           "seq_len": cfg["data"]["seq_len"], "flops_6nd": 6.0 * N * D, "flops_6nd_non_embedding": 6.0 * N_ne * D,
           "final_train_loss": loss + 1.0 / steps, "eval_loss": loss, "resumed": resumed}
    tmp = d / "run.json.tmp"; tmp.write_text(json.dumps(out)); os.replace(tmp, d / "run.json")
    '''
)


def fake_train_command(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return [sys.executable, str(script)]


def fake_plan(n_runs: int = 4, name: str = "fake") -> Plan:
    runs = []
    for i in range(n_runs):
        d, layers, steps = 32 * (i + 1), 1 + i // 2, 10 + 5 * i
        budget = 1e9 * (1 + i % 2)
        config = {
            "model": {"d_model": d, "n_layers": layers, "vocab_size": 300},
            "data": {"seq_len": 16},
            "optimizer": {"learning_rate": 1e-3},
            "trainer": {"steps": steps, "batch_size": 2},
        }
        n = 12 * layers * d * d + 300 * d
        runs.append(
            PlannedRun(
                run_id=f"r{i}", family="base", budget=budget, d_model=d, n_layers=layers, n_heads=2, d_ff=4 * d,
                n_params=n, n_params_embedding=300 * d, n_params_non_embedding=n - 300 * d,
                n_tokens=steps * 32, steps=steps, batch_size=2, seq_len=16, lr=1e-3, warmup_steps=1,
                flops=6.0 * n * steps * 32, overrides=(), experiment=from_dict(ExperimentConfig, config),
            )
        )
    total = sum(r.flops for r in runs)
    return Plan(name, "total", "fake.yaml", tuple(runs), (), total, total)
