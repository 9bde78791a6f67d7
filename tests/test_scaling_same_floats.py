"""Same run id, same floats: a sweep run trained by the worker executor, by the local executor's `chinchax
train` subprocesses and by a plain `chinchax train` of its config gives bitwise the same losses, because the
core count XLA:CPU computes with (it sets how reductions are split) is the run's `trainer.cpu_threads`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chinchax.rundir import run_json_or_none
from chinchax.scaling import executors
from chinchax.scaling.plan import load_sweep, plan_sweep
from chinchax.scaling.results import SweepDir

REPO = Path(__file__).resolve().parents[1]
SWEEP = {
    "name": "same_floats",
    "experiment": "tiny.yaml",
    "overrides": ["model.vocab_size=384", "model.max_len=32", "data.seq_len=32", "data.eval_batches=2",
                  "trainer.checkpoint_every=0", "trainer.log_every=1", "trainer.progress_bar=false",
                  "trainer.cpu_threads=1"],
    "budgets": [2.0e8],
    "batch_size": 4,
    "shape": {"aspect_ratio": 16, "head_dim": 16},
    "sizes": {"mode": "explicit", "n_params": [14000, 40000], "min_steps": 3},
}
ENV = {"WANDB_MODE": "disabled"}


def losses(run_dir: Path) -> tuple[list, float, int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    run = run_json_or_none(run_dir)
    return [(r["step"], r["loss"]) for r in rows if "loss" in r], run["eval_loss"], run["cpu_cores"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to tell 1-core floats from 2-core ones")
def test_every_executor_and_a_plain_train_give_the_same_bits(tmp_path):
    cfg, _ = load_sweep(SWEEP)
    plan = plan_sweep(cfg, REPO / "experiments")
    assert len(plan.runs) == 2 and all(r.config["trainer"]["cpu_threads"] == 1 for r in plan.runs)
    by_worker, by_subprocess = SweepDir(tmp_path / "worker"), SweepDir(tmp_path / "local")
    for sweep in (by_worker, by_subprocess):
        sweep.write_plan(plan)
    # Two pinned workers at once; two `chinchax train` subprocesses at once (each could see both cores).
    done = executors.run_local(plan, by_worker, parallel=2, max_retries=0, workers=True, progress=False, env=ENV)
    assert [o.status for o in done] == ["done"] * 2
    done = executors.run_local(plan, by_subprocess, parallel=2, max_retries=0, progress=False, env=ENV)
    assert [o.status for o in done] == ["done"] * 2
    run = plan.runs[0]
    plain = tmp_path / "plain"
    subprocess.run([sys.executable, "-m", "chinchax.cli", "train", str(by_worker.config_path(run.run_id)),
                    f"trainer.run_dir={plain}"], check=True, env={**os.environ, **ENV}, capture_output=True)
    for r in plan.runs:
        assert losses(by_worker.run_dir(r.run_id)) == losses(by_subprocess.run_dir(r.run_id))
        assert losses(by_worker.run_dir(r.run_id))[2] == 1  # computed on one core, as its config says
    assert losses(plain) == losses(by_worker.run_dir(run.run_id))


def test_processes_asking_for_one_core_each_take_different_cores(tmp_path):
    """Two runs on a 2-core machine pin themselves to different cores (advisory locks), not both to core 0."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores")
    code = ("import os, sys, time; from chinchax.train import cpu_threads; cpu_threads.pin(1); "
            "print(sorted(os.sched_getaffinity(0)), flush=True); sys.stdin.read()")
    env = {**os.environ, "CHINCHAX_CPU_LOCK_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    try:
        taken = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.communicate("")
    assert sorted(c for t in taken for c in t) == cores[:2]


def test_a_process_that_started_jax_refuses_another_core_count():
    """In-process, JAX's thread pool is fixed once it starts: a run asking for another count says to use a fresh
    process (a sweep worker restarts instead), and one asking for what the process has goes on."""
    import jax

    from chinchax.errors import UserError
    from chinchax.train import cpu_threads

    jax.numpy.zeros(1).block_until_ready()  # the backend has started, on every core of this process
    have = len(os.sched_getaffinity(0))
    cpu_threads.pin(None)
    cpu_threads.pin(have)
    assert cpu_threads.compatible(have) and cpu_threads.compatible(None)
    if have > 1:
        assert not cpu_threads.compatible(1)
        with pytest.raises(UserError, match="fresh process"):
            cpu_threads.pin(1)


def test_cpu_threads_is_checked_and_left_out_of_old_ids():
    from chinchax.configlib import load_config
    from chinchax.errors import UserError
    from chinchax.scaling.planned import config_hash
    from chinchax.train.config import ExperimentConfig

    with pytest.raises(UserError, match="cpu_threads=0 must be >= 1"):
        load_config(ExperimentConfig, None, ["trainer.cpu_threads=0"])
    base = {"trainer": {"steps": 3}}
    assert config_hash({"trainer": {"steps": 3, "cpu_threads": None}}, 1.0) == config_hash(base, 1.0)
    assert config_hash({"trainer": {"steps": 3, "cpu_threads": 1}}, 1.0) != config_hash(base, 1.0)
