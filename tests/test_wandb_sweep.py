"""W&B at the level of a sweep, read back from what wandb writes offline (the run-<id>.wandb transaction log
and files/media): every run of a sweep in one group named after it, with a job type, the fields a researcher
plots by in its config, run.json's numbers in its summary; `chinchax fit` (and the demo and compare, through the
same scaling/wandb_report.py) logs one analysis run in that group with tables, fitted parameters with their
intervals, and plots. None of the W&B keys changes a run id, and a run resumes when they change."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from chinchax.cli import main

# The run ids this sweep had before W&B keys existed (recorded then): they must never change.
IDS_BEFORE_WANDB = ["base-c3e10-d16l1-321a3505", "base-c3e10-d16l1s1-2185d838", "base-c3e10-d32l1-a6077023",
                    "base-c3e10-d32l1s1-bb393b89", "base-c1e11-d32l1-e1c036a7", "base-c1e11-d32l1s1-cef681a4",
                    "base-c1e11-d48l2-fc573b3c", "base-c1e11-d48l2s1-47f0644d"]
BASE = {"model": {"preset": "tiny-gpt2", "vocab_size": 384, "max_len": 32}, "data": {"seq_len": 32},
        "optimizer": {"learning_rate": 1e-3, "warmup_steps": 5}, "trainer": {"steps": 100, "batch_size": 8}}
SWEEP = {"name": "wb", "experiment": "base.yaml", "budgets": [3e10, 1e11], "seeds": [0, 1],
         "shape": {"aspect_ratio": 32, "head_dim": 16}, "sizes": {"per_budget": 2, "span": 4, "min_steps": 10},
         "hparams": {"base_lr": 4e-3, "base_d_model": 64, "warmup_fraction": 0.1}}


def read_run(run_dir: Path, wait_s: float = 30.0) -> dict:
    """`parse_run` once wandb's service has written the run's exit record: `run.finish()` can return before
    its writer has flushed the log (seen here: a log with its header only)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        logged = parse_run(run_dir)
        if logged["exited"] or time.monotonic() > deadline:
            return logged
        time.sleep(0.2)


def parse_run(run_dir: Path) -> dict:
    """An offline wandb run as data: its run record (group, job type, config), summary and history rows (a
    nested key's parts joined by '/': tables/results/nrows) and the media files it wrote. Reads wandb's LevelDB-style log (7-byte header; 32 KiB blocks of records with a
    4-byte CRC, 2-byte length and 1-byte type: full, first, middle, last) into wandb's own protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", "not a wandb transaction log of the version this reader knows"
    out = {"run": None, "exited": False, "config": {}, "summary": {}, "history": [],
           "media": sorted(str(p.relative_to(run_dir / "files" / "media")) for p in (run_dir / "files" / "media").rglob("*")
                           if p.is_file()) if (run_dir / "files" / "media").is_dir() else []}
    pos, record = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):  # block padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        record = chunk if kind in (1, 2) else record + chunk
        if kind in (2, 3):
            continue
        r = pb.Record()
        r.ParseFromString(record)
        which = r.WhichOneof("record_type")
        if which == "run":
            out["run"] = r.run
            out["config"].update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif which == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif which == "summary":
            out["summary"].update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in r.summary.update})
        elif which == "exit":
            out["exited"] = True
        elif which == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
    return out


def only_run(folder: Path) -> Path:
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No key anywhere, WANDB_MODE=offline: wandb writes its offline run folders and touches no network."""
    for var in ("WANDB_API_KEY", "WANDB_BASE_URL", "NETRC", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()


def _plan(tmp_path, overrides=(), **changes):
    from chinchax.scaling.plan import load_sweep, plan_sweep

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, **changes}))
    cfg, base_dir = load_sweep(tmp_path / "sweep.yaml", list(overrides))
    return plan_sweep(cfg, base_dir)


def test_every_planned_run_is_in_the_sweeps_group_and_no_wandb_key_renames_a_run(tmp_path):
    plain = _plan(tmp_path)
    assert [r.run_id for r in plain.runs] == IDS_BEFORE_WANDB
    for r in plain.runs:
        t = r.config["trainer"]
        assert (t["wandb_group"], t["wandb_job_type"], t["wandb_project"]) == ("wb", "train", None)
        assert t["wandb_config"] == {"sweep": "wb", "family": "base", "budget": r.budget, "n_convention": "total"}
    moves = {("elsewhere", "G", "lr-sweep", "auto"): ["wandb.project=elsewhere", "wandb.group=G",
                                                      "wandb.job_type=lr-sweep", "wandb.tags=[a]"],
             ("p", "wb", "train", "offline"): ["overrides=[trainer.wandb_project=p,trainer.wandb_mode=offline]"]}
    for expected, overrides in moves.items():
        planned = _plan(tmp_path, overrides)
        assert [r.run_id for r in planned.runs] == IDS_BEFORE_WANDB, overrides
        assert [r.config["model"] for r in planned.runs] == [r.config["model"] for r in plain.runs]
        t = planned.runs[0].config["trainer"]
        assert (t["wandb_project"], t["wandb_group"], t["wandb_job_type"], t["wandb_mode"]) == expected
    # The sweep's own overrides win over the planner's defaults.
    t = _plan(tmp_path, ["overrides=[trainer.wandb_group=mine]"]).runs[0].config["trainer"]
    assert t["wandb_group"] == "mine"
    # ...and what a run computes still names it: a new learning rate is a new run.
    assert _plan(tmp_path, ["hparams.base_lr=5e-3"]).runs[0].run_id != IDS_BEFORE_WANDB[0]


def test_a_run_resumes_when_only_its_wandb_keys_changed(tmp_path):
    from chinchax import configlib
    from chinchax.errors import UserError
    from chinchax.train.config import ExperimentConfig, wandb_overrides
    from chinchax.train.trainer import check_resume_compatible

    def cfg(*extra):
        return configlib.load_config(ExperimentConfig, BASE, [f"trainer.run_dir={tmp_path}", *extra])

    (tmp_path / "config.yaml").write_text(configlib.dump_yaml(cfg()))  # a run from before W&B keys were set
    moved = wandb_overrides("p", group="g", job_type="held-out", tags=["x"], extra={"budget": 1e12, "family": "f"})
    assert check_resume_compatible(tmp_path, cfg(*moved)) == 100
    with pytest.raises(UserError, match="optimizer.learning_rate"):
        check_resume_compatible(tmp_path, cfg(*moved, "optimizer.learning_rate=2e-3"))


def test_a_sweep_run_logs_its_group_job_type_plot_fields_summary_and_history(tmp_path, offline):
    from chinchax import configlib
    from chinchax.jsonio import read_jsonl
    from chinchax.scaling.executors import write_run_config
    from chinchax.scaling.results import SweepDir
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.trainer import train

    # One tiny run of a planned sweep, trained from the YAML an executor hands `chinchax train`.
    plan = _plan(tmp_path, ["wandb.project=chinchax-test", "wandb.job_type=lr-sweep",
                            "overrides=[data.eval_batches=1,trainer.log_every=2,trainer.progress_bar=false,"
                            "trainer.checkpoint_every=0]"],
                 budgets=[3e8], sizes={"mode": "explicit", "n_params": [20000], "min_steps": 5}, seeds=[0])
    (planned,) = plan.runs
    sweep = SweepDir(tmp_path / "sweep")
    result = train(configlib.load_config(ExperimentConfig, write_run_config(sweep, planned)))

    logged = read_run(only_run(sweep.run_dir(planned.run_id)))
    run = logged["run"]
    assert (run.project, run.run_group, run.job_type, run.run_id) == ("chinchax-test", "wb", "lr-sweep", planned.run_id)
    c = logged["config"]
    assert c["budget"] == planned.budget and c["family"] == "base" and c["sweep"] == "wb"
    assert (c["n_params"], c["n_params_non_embedding"], c["n_tokens"]) == (
        planned.n_params, planned.n_params_non_embedding, planned.n_tokens)
    assert (c["d_model"], c["n_layers"], c["objective"], c["seed"], c["learning_rate"], c["batch_size"]) == (
        planned.d_model, planned.n_layers, "causal_lm", 0, planned.lr, planned.batch_size)
    assert c["model"]["d_model"] == planned.d_model  # the whole resolved config is there too
    s = logged["summary"]
    for key in ("eval_loss", "flops_6nd", "flops_detailed", "wall_time_s", "mfu", "n_tokens", "final_train_loss"):
        assert s[key] == pytest.approx(result[key]), key  # run.json's numbers; mfu the run's mean, not a step's
    assert s["status"] == "done"
    steps = [row["_step"] for row in logged["history"] if "loss" in row]
    assert steps == [r["step"] for r in read_jsonl(sweep.run_dir(planned.run_id) / "metrics.jsonl") if "loss" in r]
    assert steps and steps[-1] == planned.steps


def _fit_table(tmp_path) -> Path:
    from chinchax.scaling.laws import ParametricLaw
    from chinchax.scaling.synthetic import isoflop_table

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "plan.json").write_text(json.dumps({"name": "ladder7"}))  # what names the group
    table = isoflop_table(ParametricLaw(1.69, 406.4, 410.7, 0.34, 0.28), [1e18, 3e18, 1e19], sizes_per_budget=5)
    table.to_csv(sweep / "results.csv", index=False)
    return sweep / "results.csv"


def test_fit_logs_one_analysis_run_with_the_table_parameters_intervals_and_plots(tmp_path, offline, capsys):
    csv = _fit_table(tmp_path)
    out = tmp_path / "fits" / "fit.json"
    out.parent.mkdir()
    assert main(["fit", str(csv), "--law", "chinchilla-2", "--bootstrap", "8", "--flops", "1e20", "--out", str(out),
                 "--wandb-project", "chinchax-test"]) == 0
    fit = json.loads(out.read_text())
    logged = read_run(only_run(out.parent))
    assert (logged["run"].run_group, logged["run"].job_type, list(logged["run"].tags)) == ("ladder7", "analysis", ["fit"])
    assert logged["config"]["law"] == "chinchilla-2" and logged["config"]["kind"] == "fit"
    s = logged["summary"]
    for name, value in fit["params"].items():
        lo, hi = fit["intervals"][name]
        assert (s[name], s[f"{name}_lo"], s[f"{name}_hi"]) == pytest.approx((value, lo, hi)), name
    assert s["n_opt@1e+20_lo"] <= s["n_opt@1e+20"] <= s["n_opt@1e+20_hi"]
    assert s["tables/results/_type"] == "table-file" and s["tables/results/nrows"] == 15
    assert s["tables/parameters/nrows"] == len(fit["params"])
    media = logged["media"]
    for plot in ("isoflop", "frontier", "allocation_chinchilla-2"):
        assert any(m.startswith(f"images/plots/{plot}_") and m.endswith(".png") for m in media), (plot, media)
    table = json.loads(next((only_run(out.parent) / "files" / "media").rglob("results_*.table.json")).read_text())
    assert len(table["data"]) == 15 and "loss" in table["columns"]
    assert "W&B analysis run (group ladder7)" in capsys.readouterr().out
    # No project: no W&B at all.
    assert main(["fit", str(csv), "--law", "chinchilla-2", "--bootstrap", "8", "--out", str(tmp_path / "b" / "f.json")]) == 0
    assert not (tmp_path / "b" / "wandb").exists()


def test_the_demo_and_compare_analysis_runs_hold_every_fit_interval_and_plot(tmp_path, offline):
    """What the demo and compare hand to their analysis run, on a real fit of a synthetic table and summaries
    shaped as theirs (summary.json of each; the studies themselves are too slow for this file: docs/sweeps.md
    lists the group a real quick demo left)."""
    import numpy as np
    import pandas as pd

    from chinchax.experiments import compare, demo
    from chinchax.scaling import plots
    from chinchax.scaling.cli import run_fit

    csv = _fit_table(tmp_path)
    fit = run_fit(csv, "chinchilla-2", n_bootstrap=8)
    out = tmp_path / "demo"
    drawn = plots.plot_isoflop(pd.read_csv(csv), out / "isoflop")
    (out / "results.csv").write_text(csv.read_text())
    (out / "results_seeds.csv").write_text(csv.read_text())
    fits = {"results": {"approach2": fit}, "optimal": [{"budget": 1e20, "n_opt": 1e9, "n_lo": 5e8, "n_hi": 2e9}],
            "plots": [("IsoFLOP profiles", drawn[0].name)], "n_bootstrap": 8}
    summary = {"wall_time_s": 12.5, "runs": 15, "grid_points": 15, "quick": True,
               "prediction": {"predicted": 2.1, "predicted_lo": 2.0, "predicted_hi": 2.2, "measured": 2.15},
               "throughput": {"efficiency": 0.25}, "learning_rate": {"base_lr": 3e-3}, "scale": {"flops_total": 1e12}}
    demo._log_analysis(out, demo.Wandb("chinchax-test"), "demo_quick", summary, fits, [{"lr": 1e-3, "loss": 2.0}])
    logged = read_run(only_run(out))
    assert (logged["run"].run_group, logged["run"].job_type) == ("demo_quick", "analysis")
    s = logged["summary"]
    assert (s["approach2/a"], s["approach2/a_lo"], s["approach2/a_hi"]) == pytest.approx(
        (fit.params["a"], *fit.intervals["a"]))
    assert s["prediction/predicted_hi"] == 2.2 and s["throughput/efficiency"] == 0.25
    assert {k: s[f"tables/{k}/nrows"] for k in ("results", "results_seeds", "optimal", "lr_sweep")} == {
        "results": 15, "results_seeds": 15, "optimal": 1, "lr_sweep": 1}
    assert any(m.startswith("images/plots/isoflop_") for m in logged["media"])

    out = tmp_path / "compare"
    drawn = plots.plot_isoflop(pd.read_csv(csv), out / "plots" / "loss_vs_compute")
    table = pd.DataFrame({"run": ["a", "b"], "family": ["x", "y"], "flops": [1e10, 2e10],
                                            "conditional_bpb": [1.2, np.nan], "mixed": [1, "two"]})
    summary = {"wall_time_s": 3.0, "runs_measured": 2, "quick": True, "measure": "conditional_bpb", "executor": "worker",
               "families": [{"family": "x", "law": {"A": 20.0, "alpha": 0.1}, "alpha_interval": [0.05, 0.15],
                             "multiplier": 2.0, "multiplier_interval": [1.5, 2.5],
                             "multiplier_leave_one_budget_out": [1.8, 2.2]}],
               "plots": {"loss": [str(p.relative_to(out)) for p in drawn]},
               "comparison": {"reference": "x", "top_flops": 4e10, "n_bootstrap": 200, "laws": {}}}
    compare._log_analysis(out, summary, table, "chinchax-test", "cmp", "auto")
    logged = read_run(only_run(out))
    assert (logged["run"].run_group, logged["run"].job_type) == ("cmp", "analysis")
    s = logged["summary"]
    assert (s["families/x/multiplier"], s["families/x/multiplier_interval_lo"],
            s["families/x/multiplier_interval_hi"]) == (2.0, 1.5, 2.5)
    assert (s["families/x/law/alpha"], s["families/x/alpha_interval_lo"], s["families/x/alpha_interval_hi"]) == (
        0.1, 0.05, 0.15)
    assert s["comparison/reference"] == "x" and s["tables/results/nrows"] == 2
    assert not [k for k in s if "leave_one" in k]  # a pair that is no interval stays in summary.json only
    assert [m for m in logged["media"] if m.startswith("images/plots/loss_vs_compute_")]
