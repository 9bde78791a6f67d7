"""`<run_dir>/eval.json`: every evaluation of a run, keyed by what was measured, merged across calls.

    {"run": "<run dir name>", "step": 200,
     "results": {"validation": {"loss": ..., "loss_stderr": ..., "bits_per_byte": ...},
                 "conditional": {"conditional_loss": ..., ...},
                 "copa/0shot": {"acc": ..., "acc_stderr": ..., "acc_norm": ..., ...}}}

Written atomically. Results measured at another checkpoint step are dropped when the step changes, so
the file never mixes two models. `flat_metrics` gives the columns a results table takes
(`eval/<key>/<metric>`, numbers only).
"""

from __future__ import annotations

import json
from pathlib import Path

from chinchax.jsonio import write_json

EVAL_FILE = "eval.json"


def read_results(run_dir: str | Path) -> dict:
    path = Path(run_dir) / EVAL_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def record(run_dir: str | Path, step: int, key: str, metrics: dict) -> dict:
    run_dir = Path(run_dir)
    data = read_results(run_dir)
    if data.get("step") != step:
        data = {"run": run_dir.name, "step": step, "results": {}}
    data["results"][key] = metrics
    write_json(run_dir / EVAL_FILE, data)
    return data


def flat_metrics(data: dict) -> dict[str, float]:
    out = {}
    for key, metrics in data.get("results", {}).items():
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"eval/{key}/{name}"] = value
    return out
