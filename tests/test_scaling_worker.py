"""The worker executor: long-lived processes train many runs with the same contracts as the local executor
(run dirs, run.json, skip, retry), and a worker that dies costs only its run's attempt."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from chinchax.jsonio import read_object_or_none
from chinchax.rundir import run_json_or_none
from chinchax.scaling import executors
from chinchax.scaling.paired import neighbour_differences, paired_difference
from chinchax.scaling.plan import load_sweep, plan_sweep
from chinchax.scaling.results import TRAIN_LOG, SweepDir
from chinchax.scaling.worker import Worker, WorkerPool

REPO = Path(__file__).resolve().parents[1]
TINY_SWEEP = {
    "name": "tiny_worker",
    "experiment": "tiny.yaml",
    "overrides": ["model.vocab_size=384", "model.max_len=32", "data.seq_len=32", "data.eval_batches=2",
                  "trainer.checkpoint_every=0", "trainer.log_every=5", "trainer.progress_bar=false"],
    "budgets": [2.0e8, 6.0e8],
    "batch_size": 4,
    "shape": {"aspect_ratio": 16, "head_dim": 16},
    "sizes": {"mode": "explicit", "n_params": [14000, 40000], "min_steps": 3},
}


def first_window_s(sweep: SweepDir, run_id: str) -> float:
    """Seconds a step of a run's first logged window took: where a run that compiles pays for it."""
    rows = (sweep.run_dir(run_id) / "metrics.jsonl").read_text().splitlines()
    return next(r["step_time_s"] for r in map(json.loads, rows) if "step_time_s" in r)


def test_worker_executor_trains_runs_like_the_local_one_and_skips_them_after(tmp_path):
    cfg, base = load_sweep(TINY_SWEEP)
    plan = plan_sweep(cfg, REPO / "experiments")
    assert len(plan.runs) == 4 and len({r.d_model for r in plan.runs}) == 2  # two runs per shape
    sweep = SweepDir(tmp_path / "sweep")
    sweep.write_plan(plan)
    # An empty compilation cache of its own: a warm shared one would make the first run's compile fast too.
    outcomes = executors.run_local(plan, sweep, parallel=1, max_retries=0, workers=True, progress=False,
                                   env={"WANDB_MODE": "disabled", "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla")})
    assert [o.status for o in outcomes] == ["done"] * 4
    for r in plan.runs:
        run = run_json_or_none(sweep.run_dir(r.run_id))
        assert run["status"] == "done" and run["steps"] == r.steps and run["n_params"] == r.n_params
        log = (sweep.run_dir(r.run_id) / TRAIN_LOG).read_text()
        assert "in a long-lived worker" in log and "done:" in log  # the CLI's own last line, in the run's log
        rows = json.loads((sweep.run_dir(r.run_id) / "eval_rows.json").read_text())
        assert len(rows["loss_sum"]) == len(rows["weight"]) == 2 * 4  # eval_batches x batch rows
    # Every run was scored on the same rows: paired differences are defined between any two.
    runs = [{"run": r.run_id, "budget": r.budget, "n_params": r.n_params,
             "rows": read_object_or_none(sweep.run_dir(r.run_id) / "eval_rows.json")} for r in plan.runs]
    assert len(neighbour_differences(runs)) == 2
    # One worker trained all four: the second run of a shape reuses the first's compiled programs, so its first
    # logged window (where the first run compiled) is much faster.
    launched = executors.launch_order(plan.runs)
    first, again = launched[0], next(r for r in launched[1:] if r.d_model == launched[0].d_model)
    assert first_window_s(sweep, again.run_id) < first_window_s(sweep, first.run_id) / 3

    outcomes = executors.run_local(plan, sweep, parallel=1, workers=True, progress=False)
    assert [o.status for o in outcomes] == ["skipped"] * 4


def test_a_worker_that_dies_fails_its_run_and_is_replaced(tmp_path):
    # A stand-in worker that reads one request, then dies as the OOM killer would kill it.
    dying = [sys.executable, "-c", "import os, sys; sys.stdin.readline(); os._exit(137)"]
    worker = Worker(command=dying)
    log = tmp_path / "log"
    assert worker.run("cfg.yaml", log) == 137
    assert "the worker process died (exit code 137)" in log.read_text()
    assert worker.process is None  # the next run starts a fresh one
    assert worker.run("cfg.yaml", log) == 137


def test_a_bad_config_is_the_runs_error_and_the_worker_lives_on(tmp_path):
    worker = Worker(env={"WANDB_MODE": "disabled"})
    try:
        log = tmp_path / "log"
        assert worker.run(str(tmp_path / "missing.yaml"), log) == 2  # the CLI's exit code for a UserError
        assert "chinchax train: error" in log.read_text()
        pid = worker.process.pid
        bad = tmp_path / "bad.yaml"
        bad.write_text("model: {d_model: -1}\n")
        assert worker.run(str(bad), log) == 2
        assert worker.process.pid == pid
    finally:
        worker.close()
    assert worker.process is None


def test_paired_difference_is_the_difference_of_means_with_a_smaller_error():
    import numpy as np

    rng = np.random.default_rng(0)
    weight = np.full(400, 128.0)
    hardness = rng.gamma(4.0, 0.5, 400)  # rows differ a lot in difficulty; both runs share it
    a = {"loss_sum": list(weight * (hardness + 0.05 + rng.normal(0, 0.01, 400))), "weight": list(weight)}
    b = {"loss_sum": list(weight * (hardness + rng.normal(0, 0.01, 400))), "weight": list(weight)}
    diff, se = paired_difference(a, b)
    mean = lambda r: sum(r["loss_sum"]) / sum(r["weight"])  # noqa: E731
    assert abs(diff - (mean(a) - mean(b))) < 1e-12
    unpaired = np.std(np.asarray(a["loss_sum"]) / weight, ddof=1) / np.sqrt(400)
    assert se < unpaired / 20  # the shared difficulty cancels
    assert abs(diff - 0.05) < 4 * se


def test_a_pool_passed_to_several_sweeps_keeps_its_workers_and_their_compiled_programs(tmp_path):
    cfg, base = load_sweep({**TINY_SWEEP, "budgets": [6.0e8], "sizes": {**TINY_SWEEP["sizes"], "n_params": [14000]}})
    plan = plan_sweep(cfg, REPO / "experiments")
    assert len(plan.runs) == 1
    with WorkerPool(1, {"WANDB_MODE": "disabled"}) as pool:
        first, again = SweepDir(tmp_path / "first"), SweepDir(tmp_path / "again")
        for sweep in (first, again):
            sweep.write_plan(plan)
            outcomes = executors.run_local(plan, sweep, parallel=1, max_retries=0, pool=pool, progress=False)
            assert [o.status for o in outcomes] == ["done"]
            if sweep is first:
                pid = pool._all[0].process.pid
        assert pool._all[0].process.pid == pid  # the same process trained both
    assert pool._all[0].process is None  # closed with the pool

    run_id = plan.runs[0].run_id
    assert first_window_s(again, run_id) < first_window_s(first, run_id) / 3  # nothing compiled the second time
    losses = [run_json_or_none(s.run_dir(plan.runs[0].run_id))["eval_loss"] for s in (first, again)]
    assert losses[0] == losses[1]  # and the same run, bitwise
