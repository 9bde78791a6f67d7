"""The local executor with the real `chinchax train`: WSD branches equal runs trained from scratch."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from chinchax.scaling import executors
from chinchax.scaling.plan import load_sweep, plan_sweep
from chinchax.scaling.results import SweepDir, collect

BASE = {
    "model": {"preset": "tiny-gpt2", "vocab_size": 384, "max_len": 16},
    "data": {"seq_len": 16, "eval_batches": 1},
    "trainer": {"steps": 10, "batch_size": 4, "log_every": 1, "eval_every": 0, "progress_bar": False,
                "peak_flops": 1.0e11},
}


def _sweep(tmp_path, branch: bool):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    sweep = {
        "name": "wsd", "experiment": "base.yaml", "budgets": [5.6e7, 1.5e8],
        "shape": {"aspect_ratio": 16, "head_dim": 16},
        "sizes": {"mode": "explicit", "n_params": [1e4], "min_steps": 5},
        "hparams": {"base_lr": 3e-3, "base_d_model": 16, "warmup_fraction": 0.2},
        "wsd": {"enabled": True, "cooldown_fraction": 0.2, "branch": branch},
    }
    path = tmp_path / f"sweep_{branch}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    cfg, base_dir = load_sweep(path)
    return plan_sweep(cfg, base_dir)


@pytest.mark.slow  # three real training runs (~1-2 min on 2 quiet cores)
def test_wsd_branch_from_trunk_checkpoint_equals_training_from_scratch(tmp_path):
    plan = _sweep(tmp_path, branch=True)
    [trunk] = [r for r in plan.runs if not r.branch_of]
    [branch] = [r for r in plan.runs if r.branch_of]
    assert branch.branch_of == trunk.run_id and 0 < branch.branch_step < branch.steps < trunk.steps
    sweep = SweepDir(tmp_path / "branched")
    sweep.write_plan(plan)
    outcomes = executors.run_local(plan, sweep, progress=False)
    assert [o.status for o in outcomes] == ["done", "done"]
    marker = json.loads((sweep.run_dir(branch.run_id) / executors.BRANCH_MARKER).read_text())
    assert marker == {"trunk": trunk.run_id, "step": branch.branch_step}
    log = (sweep.run_dir(branch.run_id) / "sweep_train.log").read_text()
    assert f"resuming {sweep.run_dir(branch.run_id).resolve()} from step {branch.branch_step}" in log

    # The same run trained alone, from scratch (its config -- hence its id -- is the same).
    alone_plan = _sweep(tmp_path, branch=False)
    [alone] = [r for r in alone_plan.runs if r.run_id == branch.run_id]
    alone_plan = dataclasses.replace(alone_plan, runs=(alone,))
    alone_sweep = SweepDir(tmp_path / "alone")
    alone_sweep.write_plan(alone_plan)
    assert [o.status for o in executors.run_local(alone_plan, alone_sweep, progress=False)] == ["done"]

    a = json.loads((sweep.run_dir(branch.run_id) / "run.json").read_text())
    b = json.loads((alone_sweep.run_dir(branch.run_id) / "run.json").read_text())
    for key in ("final_train_loss", "eval_loss", "n_tokens", "steps", "flops_6nd"):
        assert a[key] == b[key], key  # bitwise: same schedule, same data, same state at the branch point
    losses = {r["step"]: r["loss"] for r in collect(alone_sweep, alone_plan)[1]}
    branched = {r["step"]: r["loss"] for r in collect(sweep, plan)[1] if r["run"] == branch.run_id}
    assert branched == losses and sorted(losses) == list(range(1, branch.steps + 1))
