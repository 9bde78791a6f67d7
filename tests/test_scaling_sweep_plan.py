"""The sweep planner: deterministic, C = 6ND within rounding, monotone shape rule, exact counts, WSD."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from chinchax.configlib import load_config
from chinchax.errors import UserError
from chinchax.model.config import ModelConfig
from chinchax.model.counting import count_params
from chinchax.scaling.plan import (
    ParamCounter,
    ShapeRule,
    SizeRule,
    load_sweep,
    model_with_shape,
    plan_sweep,
    shape_for,
    shape_ladder,
    wsd_cooldown_steps,
)

BASE = {
    "model": {"preset": "tiny-gpt2", "vocab_size": 384, "max_len": 32},
    "data": {"seq_len": 32},
    "optimizer": {"learning_rate": 1e-3, "warmup_steps": 5},
    "trainer": {"steps": 100, "batch_size": 8},
}
SWEEP = {
    "name": "t",
    "experiment": "base.yaml",
    "budgets": [3e10, 1e11, 3e11],
    "shape": {"aspect_ratio": 32, "head_dim": 16},
    "sizes": {"per_budget": 4, "span": 8, "min_steps": 10},
    "hparams": {"base_lr": 4e-3, "base_d_model": 64, "warmup_fraction": 0.1},
}


@pytest.fixture
def write(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))

    def _write(name="sweep.yaml", **changes):
        sweep = {**SWEEP, **changes}
        (tmp_path / name).write_text(yaml.safe_dump(sweep))
        return tmp_path / name

    return _write


def _plan(path, overrides=()):
    cfg, base_dir = load_sweep(path, list(overrides))
    return cfg, plan_sweep(cfg, base_dir)


def test_plan_is_deterministic_and_ids_are_stable(write):
    path = write()
    _, a = _plan(path)
    _, b = _plan(path)
    assert a.to_json() == b.to_json()
    ids = [r.run_id for r in a.runs]
    assert len(ids) == len(set(ids)) == 12  # 3 budgets x 4 distinct sizes
    # A run's id depends on its own config and budget only: dropping a budget leaves the others' ids alone.
    _, c = _plan(path, ["budgets=[3e10,1e11]"])
    assert {r.run_id for r in c.runs} == {r.run_id for r in a.runs if r.budget < 2e11}
    # ...and any change to what a run trains changes its id.
    _, d = _plan(path, ["overrides=[optimizer.weight_decay=0.0]"])
    assert not {r.run_id for r in d.runs} & set(ids)
    # A key at chinchax's default is not part of a run's name: a config field added later (with a default
    # that keeps the old behaviour) renames no run, so a re-run after an upgrade skips the finished ones.
    import json

    from chinchax.scaling.plan import _run_id

    for r in a.runs[:3]:
        before_the_field = json.loads(json.dumps(r.config))
        del before_the_field["model"]["attention_max_segments"]  # the config as an older chinchax wrote it
        assert _run_id(r.family, r.budget, f"d{r.d_model}l{r.n_layers}", before_the_field) == r.run_id


def test_compute_matches_6nd_within_rounding_of_one_step(write):
    _, plan = _plan(write())
    for r in plan.runs:
        tokens_per_step = r.batch_size * r.seq_len
        assert r.n_tokens == r.steps * tokens_per_step
        assert r.flops == 6.0 * r.n_params * r.n_tokens  # N convention "total"
        # steps was rounded to the nearest integer: |C_realised - C| <= half a step of 6 N tokens.
        assert abs(r.flops - r.budget) <= 6.0 * r.n_params * tokens_per_step / 2 + 1e-6 * r.budget
        assert r.config["trainer"]["steps"] == r.steps and r.config["trainer"]["batch_size"] == r.batch_size


def test_non_embedding_convention_uses_kaplans_n(write):
    _, plan = _plan(write(), ["n_convention=non_embedding"])
    for r in plan.runs:
        assert r.flops == 6.0 * r.n_params_non_embedding * r.n_tokens
        assert abs(r.flops - r.budget) <= 3.0 * r.n_params_non_embedding * r.batch_size * r.seq_len + 1


def test_counts_are_exact_and_match_the_resolved_config(write):
    _, plan = _plan(write())
    for r in plan.runs[:: len(plan.runs) // 3]:
        model = load_config(ModelConfig, r.config["model"])
        counts = count_params(model)
        assert (r.n_params, r.n_params_embedding, r.n_params_non_embedding) == (
            counts.total, counts.embedding, counts.non_embedding)
        assert (model.d_model, model.n_layers, model.n_heads, model.d_ff) == (r.d_model, r.n_layers, r.n_heads, r.d_ff)


@pytest.mark.parametrize("preset", ["tiny-gpt2", "tiny-llama", "tiny-t5"])
def test_param_counter_is_exact_for_other_families(preset):
    """The 8-term count formula holds for gated MLPs, GQA, RoPE, an encoder-decoder with relative bias."""
    base = load_config(ModelConfig, {"preset": preset})
    rule = ShapeRule(aspect_ratio=16, head_dim=16, ffn_ratio=8 / 3)
    counter = ParamCounter(base, rule)
    assert not counter.exact_only
    for d in (96, 320):
        m = model_with_shape(base, rule, d)
        c = count_params(m)
        assert counter(m) == (c.total, c.embedding)


def test_shape_rule_is_monotone_and_keeps_aspect_ratio_and_head_size():
    base = ModelConfig(vocab_size=384, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=32)
    rule = ShapeRule(aspect_ratio=32, head_dim=16)
    ladder = shape_ladder(base, rule, 5e6)
    assert ladder[-1].n_total >= 5e6
    for a, b in zip(ladder, ladder[1:], strict=False):
        assert b.n_total > a.n_total and b.d_model > a.d_model and b.n_layers >= a.n_layers
    for s in ladder:
        assert s.n_heads * 16 == s.d_model and s.d_ff == 4 * s.d_model
        assert s.n_layers == max(1, int(s.d_model / 32 + 0.5))  # round half up
    targets = [10 ** (3 + 0.05 * i) for i in range(70)]
    picked = [shape_for(ladder, t).n_total for t in targets]
    assert picked == sorted(picked)  # a larger target never gives a smaller model
    for t, n in zip(targets, picked, strict=True):  # and it is the nearest rung in log N
        assert all(abs(math.log(n / t)) <= abs(math.log(s.n_total / t)) + 1e-12 for s in ladder)


def test_sizes_span_the_optimum_guess(write):
    cfg, plan = _plan(write())
    for budget in cfg.budgets:
        runs = sorted((r for r in plan.runs if r.budget == budget), key=lambda r: r.n_params)
        assert len(runs) == 4 and len({r.d_model for r in runs}) == 4
        n_star = math.sqrt(budget / (6 * 20))
        assert runs[0].n_params < n_star < runs[-1].n_params  # the grid brackets the 20-tokens/param guess


def test_explicit_sizes_and_min_steps_drop(write):
    path = write(sizes={"mode": "explicit", "n_params": [2e4, 8e4, 3e5], "min_steps": 100})
    cfg, plan = _plan(path)
    base = load_config(ModelConfig, {**BASE["model"]})
    ladder = shape_ladder(base, cfg.shape, 1e6)
    nearest = {shape_for(ladder, n).d_model for n in (2e4, 8e4, 3e5)}
    assert len(nearest) == 3 and {r.d_model for r in plan.runs} <= nearest
    for r in plan.runs:
        assert r.steps >= 100
    assert plan.dropped and all("sizes.min_steps=100" in note for note in plan.dropped)
    assert len(plan.runs) + len(plan.dropped) == 9


def test_lr_rule_inverse_width_and_warmup(write):
    _, plan = _plan(write())
    for r in plan.runs:
        assert r.lr == pytest.approx(4e-3 * 64 / r.d_model, rel=1e-5)
        assert r.config["optimizer"]["learning_rate"] == r.lr
        assert r.warmup_steps == max(1, round(0.1 * r.steps))
    _, const = _plan(write(), ["hparams.rule=constant"])
    assert {r.lr for r in const.runs} == {4e-3}


def test_lr_rule_mup_makes_every_run_mup_at_the_base_rate(write):
    _, plan = _plan(write(), ["hparams.rule=mup", "hparams.base_n_layers=2"])
    assert {r.lr for r in plan.runs} == {4e-3} and len({r.d_model for r in plan.runs}) > 2
    for r in plan.runs:
        model = r.config["model"]
        assert (model["parametrization"], model["mup_base_d_model"], model["mup_base_n_layers"]) == ("mup", 64, 2)
        assert model["mup_base_head_dim"] == 16  # the shape rule's fixed head size
    _, sp = _plan(write(), ["hparams.rule=constant"])
    assert {r.run_id for r in sp.runs}.isdisjoint({r.run_id for r in plan.runs})  # µP runs are other runs


def test_wsd_branching_shares_the_stable_phase_and_reports_savings(write):
    from chinchax.train.config import OptimizerConfig
    from chinchax.train.optimizer import make_schedule

    path = write(sizes={"mode": "explicit", "n_params": [3e4, 8e4], "min_steps": 10},
                 wsd={"enabled": True, "cooldown_fraction": 0.2})
    _, plan = _plan(path)
    by_id = plan.by_id()
    branches = [r for r in plan.runs if r.branch_of]
    assert branches
    saved = 0.0
    for r in branches:
        trunk = by_id[r.branch_of]
        assert (trunk.d_model, trunk.n_layers) == (r.d_model, r.n_layers) and trunk.steps > r.steps
        assert not trunk.branch_of
        every = trunk.config["trainer"]["checkpoint_every"]
        start = r.steps - wsd_cooldown_steps(r.steps, 0.2)
        assert r.branch_step % every == 0 and start - every < r.branch_step <= start
        assert trunk.config["trainer"]["max_to_keep"] > trunk.steps // every  # no branch point is deleted
        # The trainer's own schedules agree on every step before the branch point.
        sched = {}
        for run in (r, trunk):
            sched[run.run_id] = make_schedule(OptimizerConfig(**run.config["optimizer"]), run.steps)
        steps = np.arange(r.branch_step + 1)
        np.testing.assert_array_equal(np.asarray(sched[r.run_id](steps)), np.asarray(sched[trunk.run_id](steps)))
        assert float(sched[r.run_id](r.steps - 1)) < float(sched[trunk.run_id](r.steps - 1))
        saved += 6.0 * r.n_params * r.branch_step * r.batch_size * r.seq_len
    assert plan.flops_independent == pytest.approx(sum(r.flops for r in plan.runs))
    assert plan.wsd_savings == pytest.approx(saved)
    assert 0 < plan.wsd_savings < plan.flops_independent
    # Every shape has exactly one trunk (the longest run), which trains from scratch.
    for shape in {(r.d_model, r.n_layers) for r in plan.runs}:
        group = [r for r in plan.runs if (r.d_model, r.n_layers) == shape]
        roots = [r for r in group if not r.branch_of]
        assert len(roots) == 1 and roots[0].steps == max(r.steps for r in group)
    assert "WSD branching" in plan.table() and "saves" in plan.table()


def test_families_are_planned_side_by_side(write):
    path = write(families={"causal": [], "prefix": ["model.attention=prefix", "data.objective=prefix_lm"]},
                 budgets=[1e11])
    _, plan = _plan(path)
    fams = {r.family for r in plan.runs}
    assert fams == {"causal", "prefix"}
    for r in plan.runs:
        assert r.run_id.startswith(r.family + "-")
        assert r.config["data"]["objective"] == ("prefix_lm" if r.family == "prefix" else "causal_lm")


def test_seeds_replicate_every_grid_point_with_its_own_init_and_data_order(write):
    _, one = _plan(write())
    _, two = _plan(write(), ["seeds=[0,1]"])
    assert len(two.runs) == 2 * len(one.runs)
    assert two.flops_independent == pytest.approx(2 * one.flops_independent)
    by_seed = {s: [r for r in two.runs if r.seed == s] for s in (0, 1)}
    # seed 0 is the one-seed sweep's run, id and all (a sweep can grow seeds without renaming its runs)
    assert [r.run_id for r in by_seed[0]] == [r.run_id for r in one.runs]
    for r0, r1 in zip(by_seed[0], by_seed[1], strict=True):
        assert (r0.budget, r0.d_model, r0.steps, r0.lr) == (r1.budget, r1.d_model, r1.steps, r1.lr)
        assert r1.config["trainer"]["seed"] == 1 and r1.config["data"]["seed"] == 1
        assert r0.config["trainer"]["seed"] == 0 and r1.run_id != r0.run_id and "s1-" in r1.run_id
    # WSD: each seed has its own trunk (a branch must continue its own seed's init and data order)
    _, wsd = _plan(write(), ["seeds=[0,1]", "wsd.enabled=true"])
    runs = wsd.by_id()
    branches = [r for r in wsd.runs if r.branch_of]
    assert branches and all(runs[r.branch_of].seed == r.seed for r in branches)


def test_batch_rule_halves_the_batch_of_short_runs_only():
    from chinchax.scaling.plan import batch_for_run

    assert batch_for_run(tokens=32 * 64 * 2000, seq_len=64, batch=32, target_steps=1000, min_batch=8) == 32
    assert batch_for_run(tokens=32 * 64 * 600, seq_len=64, batch=32, target_steps=1000, min_batch=8) == 16
    assert batch_for_run(tokens=32 * 64 * 100, seq_len=64, batch=32, target_steps=1000, min_batch=8) == 8
    assert batch_for_run(tokens=32 * 64 * 100, seq_len=64, batch=32, target_steps=0, min_batch=8) == 32


def test_plan_with_a_step_target_keeps_c_6nd_and_gives_short_runs_more_steps(write):
    _, fixed = _plan(write())
    _, ruled = _plan(write(), ["target_steps=400", "min_batch_size=2"])
    assert [(r.budget, r.d_model) for r in ruled.runs] == [(r.budget, r.d_model) for r in fixed.runs]
    for f, r in zip(fixed.runs, ruled.runs, strict=True):
        assert r.batch_size <= f.batch_size and r.n_tokens == r.steps * r.batch_size * r.seq_len
        assert abs(r.flops / r.budget - 1) < 0.5 / r.steps + 1e-9  # C = 6ND within half a step
        assert r.steps >= 400 or r.batch_size == 2  # below the target only at the smallest batch allowed
        assert r.config["trainer"]["batch_size"] == r.batch_size
        # every run is scored on the same rows: eval_batches x batch is the same at every batch
        assert r.config["data"]["eval_batches"] * r.batch_size == f.config["data"]["eval_batches"] * f.batch_size
        if f.steps >= 400:
            assert r.batch_size == f.batch_size
    assert any(r.batch_size < f.batch_size for f, r in zip(fixed.runs, ruled.runs, strict=True))
    # WSD: a trunk is shared only by runs of one batch (their data orders and schedules must match)
    _, wsd = _plan(write(), ["target_steps=400", "min_batch_size=2", "wsd.enabled=true"])
    runs = wsd.by_id()
    assert all(runs[r.branch_of].batch_size == r.batch_size for r in wsd.runs if r.branch_of)


def test_fixed_head_count_keeps_n_and_changes_only_the_heads(write):
    _, heads = _plan(write(), ["shape.n_heads=1", "shape.d_model_multiple=16"])
    _, dims = _plan(write(), ["shape.d_model_multiple=16"])
    assert {r.n_heads for r in heads.runs} == {1}
    assert [r.n_params for r in heads.runs] == [r.n_params for r in dims.runs]  # heads do not change N
    assert all(r.config["model"]["n_heads"] == 1 for r in heads.runs)


@pytest.mark.parametrize(
    "override, message",
    [
        ("budgets=[]", "no budgets"),
        ("n_convention=kaplan", "n_convention='kaplan' is not valid"),
        ("sizes.mode=grid", "sizes.mode='grid'"),
        ("shape.d_model_multiple=24", "multiple of shape.head_dim"),
        ("hparams.rule=sqrt_width", "hparams.rule='sqrt_width'"),
        ("hparams.base_n_layers=2", "set hparams.rule=mup"),
        ("wsd.cooldown_fraction=1.5", "wsd.cooldown_fraction"),
        ("experiment=missing.yaml", "experiment 'missing.yaml' not found"),
        ("unknown_key=1", "unknown_key"),
        ("seeds=[0,0]", "seeds=[0, 0] must be distinct"),
        ("target_steps=-1", "target_steps=-1 must be >= 0"),
        ("seeds=[]", "seeds=[] must be distinct"),
        ("shape.n_heads=3", "multiple of shape.n_heads=3"),
    ],
)
def test_bad_sweeps_are_refused_clearly(write, override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _plan(write(), [override])


def test_sizes_rule_validates():
    with pytest.raises(UserError, match="sizes.n_params"):
        dataclasses.replace(SizeRule(), mode="explicit").validate()


@pytest.mark.parametrize(
    "name", ["demo_sweep.yaml", "demo_gpu_sweep.yaml", "chinchilla_ladder.yaml", "arch_objective.yaml", "arch_objective_gpu.yaml"]
)
def test_shipped_sweeps_load_and_resolve(name):
    from importlib import resources

    from chinchax.scaling.plan import _resolve, experiment_path

    path = Path(str(resources.files("chinchax.experiments").joinpath(name)))
    cfg, base_dir = load_sweep(path)
    exp = experiment_path(cfg.experiment, base_dir)
    for family_overrides in (cfg.families or {"base": []}).values():
        resolved = _resolve(exp, [*cfg.overrides, *family_overrides, "optimizer.warmup_steps=0"])
        assert resolved.model.vocab_size >= 361  # every shipped sweep fits the byte/32k tokenizers
    assert len(cfg.budgets) >= 2
