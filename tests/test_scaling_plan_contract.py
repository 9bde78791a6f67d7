"""The typed contract from sweep plan to run (issue 29 item 3): a planned run carries its resolved ExperimentConfig;
YAML appears only where `chinchax train` needs a file; a plan.json written before still loads; the learning-rate
rule and C = 6ND are each written once."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from chinchax import jsonio
from chinchax.compute import FLOPS_PER_PARAM_TOKEN, params_at_ratio, tokens_for_budget, training_flops
from chinchax.configlib import from_dict, load_config, to_dict
from chinchax.errors import UserError
from chinchax.experiments import demo_lr
from chinchax.scaling.executors import write_run_config
from chinchax.scaling.hyperlaws import DEEPSEEK_LLM_2024
from chinchax.scaling.plan import _run_id, load_sweep, plain_config, plan_sweep
from chinchax.scaling.results import SweepDir
from chinchax.scaling.sweep_config import HParamRule, learning_rate
from chinchax.train.config import ExperimentConfig

REPO = Path(__file__).resolve().parents[1]
BASE = """\
model: {preset: tiny-gpt2, vocab_size: 384, max_len: 32}
data: {seq_len: 32}
optimizer: {learning_rate: 0.001, warmup_steps: 5}
trainer: {steps: 100, batch_size: 8}
"""
SWEEP = """\
name: fixture
experiment: base.yaml
budgets: [3.0e+10, 1.0e+11]
shape: {aspect_ratio: 32, head_dim: 16}
sizes: {mode: explicit, n_params: [30000.0], min_steps: 10}
hparams: {rule: mup, base_lr: 0.004, base_d_model: 64, warmup_fraction: 0.1}
wsd: {enabled: true, cooldown_fraction: 0.2}
"""
# plan.json of SWEEP (over BASE) as chinchax wrote it before planned runs carried typed configs (commit 508a84b,
# planned in /tmp/p29/fx): a WSD trunk and its branch, µP, W&B fields. Whitespace aside, the file's text.
OLD_PLAN_JSON = r"""{"name": "fixture", "n_convention": "total", "experiment": "/tmp/p29/fx/base.yaml", "flops_independent": 129991065600.0,
"flops_with_branching": 105995796480.0, "wsd_savings": 23995269120.0, "dropped": [], "runs": [{"run_id": "base-c3e10-d32l1-cfcb036d",
"family": "base", "budget": 30000000000.0, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 128, "n_params": 26080,
"n_params_embedding": 13312, "n_params_non_embedding": 12768, "n_tokens": 191744, "steps": 749, "batch_size": 8,
"seq_len": 32, "lr": 0.004, "warmup_steps": 75, "flops": 30004101120.0, "overrides": ["trainer.wandb_group=\"fixture\"",
"trainer.wandb_job_type=\"train\"", "trainer.wandb_config.sweep=\"fixture\"", "trainer.wandb_config.family=\"base\"",
"trainer.wandb_config.budget=30000000000.0", "trainer.wandb_config.n_convention=\"total\"", "model.parametrization=mup",
"model.mup_base_d_model=64", "model.mup_base_head_dim=16", "model.d_model=32", "model.n_layers=1", "model.n_heads=2",
"model.n_kv_heads=null", "model.head_dim=null", "model.d_ff=128", "trainer.steps=749", "trainer.tokens=null",
"trainer.batch_size=8", "data.eval_batches=8", "optimizer.learning_rate=0.004", "optimizer.warmup_steps=75",
"optimizer.schedule=wsd", "optimizer.cooldown_fraction=0.2"], "config": {"model": {"name": "tiny-gpt2",
"variant": "decoder_only", "attention": "causal", "vocab_size": 384, "d_model": 32, "n_layers": 1, "n_encoder_layers": null,
"n_heads": 2, "n_kv_heads": null, "head_dim": null, "d_ff": 128, "max_len": 32, "norm": "layernorm",
"norm_eps": 1e-05, "norm_position": "pre", "final_norm": true, "embedding_norm": false, "position": "learned",
"position_offset": 0, "rope_theta": 10000.0, "relative_buckets": 32, "relative_max_distance": 128, "activation": "gelu_tanh",
"use_bias": true, "scale_attention": true, "tie_embeddings": true, "scale_tied_logits": false, "scale_embeddings": false,
"n_token_types": 0, "mlm_transform": false, "output_bias": false, "dropout": 0.0, "attention_dropout": 0.0,
"dtype": "float32", "remat": "none", "scan_layers": true, "attention_max_segments": 0, "parametrization": "mup",
"mup_base_d_model": 64, "mup_base_n_layers": null, "mup_base_head_dim": 16, "mup_depth_alpha": 1.0, "mup_output_multiplier": 1.0,
"mup_zero_readout": false, "mup_zero_query": false}, "data": {"source": "stdlib", "data_dir": null, "text_field": "text",
"train_split": "train", "eval_split": "validation", "tokenizer": "byte", "objective": "causal_lm", "seq_len": 32,
"encoder_seq_len": null, "packing": "concat", "packing_bins": 0, "noise_density": 0.15, "mean_noise_span_length": 3.0,
"mlm_probability": 0.15, "seed": 0, "shuffle": true, "shuffle_rows": 0, "eval_batches": 8, "worker_count": 0,
"loss_on": null}, "optimizer": {"learning_rate": 0.004, "beta1": 0.9, "beta2": 0.95, "eps": 1e-08, "weight_decay": 0.1,
"clip_norm": 1.0, "schedule": "wsd", "warmup_steps": 75, "final_lr_fraction": 0.1, "cooldown_fraction": 0.2,
"cooldown_shape": "linear", "z_loss": 0.0}, "trainer": {"steps": 749, "tokens": null, "batch_size": 8,
"microbatches": 1, "steps_per_call": 1, "mesh": [-1, 1, 1], "seed": 0, "checkpoint_every": 500, "max_to_keep": 3,
"log_every": 10, "eval_every": 0, "progress_bar": true, "wandb_project": null, "wandb_mode": "auto",
"wandb_group": "fixture", "wandb_job_type": "train", "wandb_tags": [], "wandb_config": {"sweep": "fixture",
"family": "base", "budget": 30000000000.0, "n_convention": "total"}, "peak_flops": null, "coordinator_address": null,
"num_processes": null, "process_id": null, "local_device_count": null, "cpu_threads": null}}, "branch_of": "base-c1e11-d32l1-255c0546",
"branch_step": 599, "seed": 0}, {"run_id": "base-c1e11-d32l1-255c0546", "family": "base", "budget": 100000000000.0,
"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 128, "n_params": 26080, "n_params_embedding": 13312,
"n_params_non_embedding": 12768, "n_tokens": 638976, "steps": 2496, "batch_size": 8, "seq_len": 32, "lr": 0.004,
"warmup_steps": 75, "flops": 99986964480.0, "overrides": ["trainer.wandb_group=\"fixture\"", "trainer.wandb_job_type=\"train\"",
"trainer.wandb_config.sweep=\"fixture\"", "trainer.wandb_config.family=\"base\"", "trainer.wandb_config.budget=100000000000.0",
"trainer.wandb_config.n_convention=\"total\"", "model.parametrization=mup", "model.mup_base_d_model=64",
"model.mup_base_head_dim=16", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=null",
"model.head_dim=null", "model.d_ff=128", "trainer.steps=2496", "trainer.tokens=null", "trainer.batch_size=8",
"data.eval_batches=8", "optimizer.learning_rate=0.004", "optimizer.warmup_steps=75", "optimizer.schedule=wsd",
"optimizer.cooldown_fraction=0.2", "trainer.checkpoint_every=599", "trainer.max_to_keep=6"], "config": {"model": {"name": "tiny-gpt2",
"variant": "decoder_only", "attention": "causal", "vocab_size": 384, "d_model": 32, "n_layers": 1, "n_encoder_layers": null,
"n_heads": 2, "n_kv_heads": null, "head_dim": null, "d_ff": 128, "max_len": 32, "norm": "layernorm",
"norm_eps": 1e-05, "norm_position": "pre", "final_norm": true, "embedding_norm": false, "position": "learned",
"position_offset": 0, "rope_theta": 10000.0, "relative_buckets": 32, "relative_max_distance": 128, "activation": "gelu_tanh",
"use_bias": true, "scale_attention": true, "tie_embeddings": true, "scale_tied_logits": false, "scale_embeddings": false,
"n_token_types": 0, "mlm_transform": false, "output_bias": false, "dropout": 0.0, "attention_dropout": 0.0,
"dtype": "float32", "remat": "none", "scan_layers": true, "attention_max_segments": 0, "parametrization": "mup",
"mup_base_d_model": 64, "mup_base_n_layers": null, "mup_base_head_dim": 16, "mup_depth_alpha": 1.0, "mup_output_multiplier": 1.0,
"mup_zero_readout": false, "mup_zero_query": false}, "data": {"source": "stdlib", "data_dir": null, "text_field": "text",
"train_split": "train", "eval_split": "validation", "tokenizer": "byte", "objective": "causal_lm", "seq_len": 32,
"encoder_seq_len": null, "packing": "concat", "packing_bins": 0, "noise_density": 0.15, "mean_noise_span_length": 3.0,
"mlm_probability": 0.15, "seed": 0, "shuffle": true, "shuffle_rows": 0, "eval_batches": 8, "worker_count": 0,
"loss_on": null}, "optimizer": {"learning_rate": 0.004, "beta1": 0.9, "beta2": 0.95, "eps": 1e-08, "weight_decay": 0.1,
"clip_norm": 1.0, "schedule": "wsd", "warmup_steps": 75, "final_lr_fraction": 0.1, "cooldown_fraction": 0.2,
"cooldown_shape": "linear", "z_loss": 0.0}, "trainer": {"steps": 2496, "tokens": null, "batch_size": 8,
"microbatches": 1, "steps_per_call": 1, "mesh": [-1, 1, 1], "seed": 0, "checkpoint_every": 599, "max_to_keep": 6,
"log_every": 10, "eval_every": 0, "progress_bar": true, "wandb_project": null, "wandb_mode": "auto",
"wandb_group": "fixture", "wandb_job_type": "train", "wandb_tags": [], "wandb_config": {"sweep": "fixture",
"family": "base", "budget": 100000000000.0, "n_convention": "total"}, "peak_flops": null, "coordinator_address": null,
"num_processes": null, "process_id": null, "local_device_count": null, "cpu_threads": null}}, "branch_of": "",
"branch_step": 0, "seed": 0}]}"""


@pytest.fixture
def sweep_files(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return tmp_path


def test_a_plan_json_written_before_loads_into_typed_configs_and_writes_the_same_run_yaml(sweep_files):
    old = json.loads(OLD_PLAN_JSON)
    sweep = SweepDir(sweep_files / "sweep")
    sweep.root.mkdir()
    sweep.plan_path.write_text(OLD_PLAN_JSON)
    plan = sweep.load_plan()
    assert json.loads(jsonio.dumps(plan.to_json())) == old  # every field and config key, as it was
    for run, before in zip(plan.runs, old["runs"], strict=True):
        assert isinstance(run.experiment, ExperimentConfig)
        assert run.experiment.optimizer.learning_rate == run.lr and run.experiment.trainer.steps == run.steps
        assert _run_id(run.family, run.budget, f"d{run.d_model}l{run.n_layers}", run.config) == run.run_id
        # the YAML `chinchax train` is given: what the executor wrote before (a JSON copy with run_dir added)
        config = json.loads(json.dumps(before["config"]))
        config["trainer"]["run_dir"] = str(sweep.run_dir(run.run_id).resolve())
        assert write_run_config(sweep, run).read_text() == yaml.safe_dump(config, sort_keys=False)
    # a config this chinchax cannot read is named, with the run it belongs to
    bad = json.loads(OLD_PLAN_JSON)
    bad["runs"][1]["config"]["model"]["retired_key"] = 1
    sweep.plan_path.write_text(json.dumps(bad))
    with pytest.raises(UserError, match="planned run 'base-c1e11-d32l1-255c0546': unknown key 'model.retired_key'"):
        sweep.load_plan()
    # ...and planning the same sweep now gives the same runs, ids and configs
    cfg, base_dir = load_sweep(sweep_files / "sweep.yaml")
    now = plan_sweep(cfg, base_dir).to_json()
    assert json.loads(jsonio.dumps({**now, "experiment": old["experiment"]})) == old


def _sweeps(tmp_path: Path):
    """Sweeps that set every kind of per-run value: µP with WSD branching, seeds and families (an encoder-decoder
    among them), a hyperparameter law with its batch, an inverse-width rule with a measured exponent."""
    (tmp_path / "base.yaml").write_text(BASE)
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    yield load_sweep(tmp_path / "sweep.yaml")
    families = {"dec": [], "encdec": ["model.variant=encoder_decoder", "model.attention=causal",
                                      "data.objective=span_corruption"]}
    yield load_sweep(tmp_path / "sweep.yaml", ["seeds=[0,1]", "wsd.enabled=false", "hparams.rule=inverse_width",
                                               "hparams.width_exponent=0.61", f"families={json.dumps(families)}"])
    yield load_sweep(tmp_path / "sweep.yaml", ["wsd.enabled=false", "hparams.rule=law", "hparams.law=deepseek",
                                               "hparams.law_batch=true", "overrides=[optimizer.weight_decay=0.05]"])


def test_each_run_records_the_dotted_overrides_that_give_its_typed_config(tmp_path):
    """plan.csv shows a run's overrides; the planner builds the config from typed values, so the record is
    checked against the config: the base experiment with those overrides, through OmegaConf, is that config."""
    n = 0
    for cfg, base_dir in _sweeps(tmp_path):
        plan = plan_sweep(cfg, base_dir)
        assert {r.family for r in plan.runs} == set(cfg.families or ["base"])
        for run in plan.runs:
            resolved = load_config(ExperimentConfig, plan.experiment, list(run.overrides))
            assert plain_config(resolved) == run.config
            assert dataclasses.replace(resolved, trainer=run.experiment.trainer) == run.experiment
            n += 1
    assert n >= 10


def test_from_dict_rebuilds_what_load_config_builds_and_names_an_unknown_key(tmp_path):
    for cfg, base_dir in _sweeps(tmp_path):
        for run in plan_sweep(cfg, base_dir).runs:
            assert from_dict(ExperimentConfig, run.config) == load_config(ExperimentConfig, run.config)
    partial = {"model": {"d_model": 96, "vocab_size": 300}, "trainer": {"steps": 7}}
    assert from_dict(ExperimentConfig, partial) == load_config(ExperimentConfig, partial)
    assert to_dict(from_dict(ExperimentConfig, partial))["model"]["n_layers"] == ExperimentConfig().model.n_layers
    with pytest.raises(UserError, match="unknown key .model.widht.; valid keys here: name, variant"):
        from_dict(ExperimentConfig, {"model": {"widht": 3}})
    with pytest.raises(UserError, match="n_heads"):  # validated like a loaded config
        from_dict(ExperimentConfig, {"model": {"d_model": 30, "n_heads": 4}})


def test_one_learning_rate_rule_for_the_planner_and_the_demo(tmp_path):
    hp = HParamRule(rule="inverse_width", base_lr=0.0129, base_d_model=64, width_exponent=0.61)
    assert learning_rate(hp, 80) == 0.0129 * (64 / 80) ** 0.61
    assert learning_rate(dataclasses.replace(hp, width_exponent=1.0), 128) == 0.0129 * 64 / 128
    for rule in ("constant", "mup"):
        assert learning_rate(dataclasses.replace(hp, rule=rule), 80) == 0.0129
    law = DEEPSEEK_LLM_2024
    assert learning_rate(dataclasses.replace(hp, rule="law"), 80, law, 1e18) == law.lr(1e18)
    with pytest.raises(ValueError):
        learning_rate(dataclasses.replace(hp, rule="law"), 80)
    # every planned run's rate is the rule's, rounded to 6 significant digits
    for cfg, base_dir in _sweeps(tmp_path):
        for run in plan_sweep(cfg, base_dir).runs:
            if cfg.hparams.rule != "law":
                assert run.lr == float(f"{learning_rate(cfg.hparams, run.d_model):.6g}")
    # the demo's measured rule is the same formula: its rate at an untuned width, and the sweep it configures
    rule = {"base_lr": 0.0129, "base_d_model": 64, "width_exponent": 0.61, "best_by_width": {32: 0.02, 64: 0.013}}
    rows = [{"d_model": d, "learning_rate": lr, "loss": 1.0} for d in (32, 64) for lr in (0.01, 0.02)]
    assert demo_lr.rate_interval(rows, rule, 80, n_resamples=0)["lr"] == learning_rate(hp, 80)
    cfg, _ = load_sweep(tmp_path / "sweep.yaml", ["hparams.rule=inverse_width"])
    assert demo_lr.with_rule(cfg, rule).hparams == dataclasses.replace(cfg.hparams, base_lr=0.0129,
                                                                        base_d_model=64, width_exponent=0.61)


def test_compute_is_six_n_d_on_numbers_and_arrays():
    assert FLOPS_PER_PARAM_TOKEN == 6.0
    assert training_flops(1e6, 2e7) == 6.0 * 1e6 * 2e7
    assert tokens_for_budget(1.2e14, 1e6) == 1.2e14 / (6.0 * 1e6)
    assert params_at_ratio(6e12, 20.0) == math.sqrt(6e12 / (6.0 * 20.0)) and isinstance(params_at_ratio(6e12), float)
    c = np.logspace(10, 20, 50)
    np.testing.assert_array_equal(params_at_ratio(c), np.sqrt(c / 6.0))
    np.testing.assert_array_equal(tokens_for_budget(c, params_at_ratio(c)), c / (6.0 * np.sqrt(c / 6.0)))


def _six_literals(tree: ast.AST):
    """Lines that multiply or divide by a literal 6, raise 6 to a power, or take its log."""
    six = lambda n: isinstance(n, ast.Constant) and type(n.value) in (int, float) and n.value == 6  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and (
            isinstance(node.op, ast.Mult | ast.Div) and (six(node.left) or six(node.right))
            or isinstance(node.op, ast.Pow) and six(node.left)
        ):
            yield node.lineno
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("log", "log10") and any(map(six, node.args)):
            yield node.lineno


def test_the_6_of_c_6nd_is_written_only_in_compute_py():
    """chinchax/compute.py is C = 6ND's one home: no other module multiplies or divides by a literal 6."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "scripts") or rel.parts[0].startswith(".") or rel == Path("compute.py"):
            continue
        found += [f"{rel}:{line}" for line in sorted(set(_six_literals(ast.parse(path.read_text()))))]
    assert not found, f"use chinchax.compute (training_flops, tokens_for_budget, ...) at {found}"
