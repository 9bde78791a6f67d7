"""Hyperparameter laws: DeepSeek LLM 2024's published law, the near-optimal-set fit with its intervals, the
lr parabola of one sweep, `chinchax optimal`'s hyperparameter rows, `fit-hparams`, and the planner's law rule."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from chinchax.cli import main
from chinchax.errors import UserError
from chinchax.scaling.fitresult import FitResult
from chinchax.scaling.hyperlaws import (
    DEEPSEEK_LLM_2024,
    HyperparameterLaw,
    deepseek_flops_per_token,
    fit_hyperparameter_law,
    near_optimal,
    non_embedding_flops_per_token,
    parabola_optimum,
)
from chinchax.scaling.plan import load_sweep, plan_sweep

TRUTH = DEEPSEEK_LLM_2024  # the law the synthetic grids are generated from
BUDGETS = np.logspace(17, np.log10(2e19), 8)


def grid_table(rng, budgets=BUDGETS, *, noise=5e-4, sharpness=0.004, n_seeds=1) -> dict[str, list]:
    """A DeepSeek-style grid per budget: 13 learning rates 2^(1/4) apart x 9 batches 2^(1/2) apart, each grid
    shifted by a random fraction of a step from the true optimum; loss = L(C)·(1 + sharpness·(ln lr/lr*)²
    + sharpness·(ln B/B*)²)·(1 + noise·z) per run. (0.25% tolerance: a near-optimal disc of radius 0.79 in ln.)"""
    rows: dict[str, list] = {"flops": [], "learning_rate": [], "batch_tokens": [], "loss": [], "seed": []}
    for c in budgets:
        lr_opt, batch_opt = TRUTH.lr(c), TRUTH.batch_tokens(c)
        lrs = lr_opt * 2 ** ((np.arange(13) - 6 + rng.uniform(-0.5, 0.5)) / 4)
        batches = batch_opt * 2 ** ((np.arange(9) - 4 + rng.uniform(-0.5, 0.5)) / 2)
        for lr in lrs:
            for batch in batches:
                clean = 10 * c**-0.05 * (1 + sharpness * (np.log(lr / lr_opt) ** 2 + np.log(batch / batch_opt) ** 2))
                for seed in range(n_seeds):
                    for key, value in zip(rows, (c, lr, batch, clean * (1 + noise * rng.standard_normal()), seed),
                                          strict=True):
                        rows[key].append(value)
    return rows


def test_deepseek_published_law_by_hand():
    for c in (1e17, 2e19, 1e20):
        assert DEEPSEEK_LLM_2024.lr(c) == pytest.approx(0.3118 * c**-0.1250, rel=1e-12)
        assert DEEPSEEK_LLM_2024.batch_tokens(c) == pytest.approx(0.2920 * c**0.3271, rel=1e-12)
    assert DEEPSEEK_LLM_2024.lr(1e20) == pytest.approx(9.86e-4, rel=1e-3)  # 0.3118 * 10^-2.5
    assert DEEPSEEK_LLM_2024.tolerance == 0.0025 and DEEPSEEK_LLM_2024.flops_range == (1e17, 2e19)
    # M = 72·n_layer·d² + 12·n_layer·d·l_seq, and with 12·n_layer·d² non-embedding parameters the same number
    n_layer, d, l_seq = 30, 4096, 4096
    assert deepseek_flops_per_token(n_layer, d, l_seq) == 72 * 30 * 4096**2 + 12 * 30 * 4096 * 4096
    assert non_embedding_flops_per_token(12 * n_layer * d**2, n_layer, d, l_seq) == deepseek_flops_per_token(n_layer, d, l_seq)
    with pytest.raises(UserError, match="positive"):
        DEEPSEEK_LLM_2024.lr(0.0)


def test_fit_recovers_a_known_law_and_intervals_cover_it():
    """Over 20 noisy grids each parameter's 95% interval (and lr, batch at 1e20) holds the truth in >= 17."""
    truth = {"lr_coef": TRUTH.lr_coef, "lr_exp": TRUTH.lr_exp, "batch_coef": TRUTH.batch_coef,
             "batch_exp": TRUTH.batch_exp}
    inside = dict.fromkeys([*truth, "lr_at_1e20", "batch_at_1e20"], 0)
    for draw in range(20):
        law = fit_hyperparameter_law(grid_table(np.random.default_rng(draw)), n_bootstrap=200, seed=draw)
        for name, value in truth.items():
            lo, hi = law.intervals[name]
            inside[name] += lo <= value <= hi
        lo, hi = law.lr_interval(1e20)
        inside["lr_at_1e20"] += lo <= TRUTH.lr(1e20) <= hi
        lo, hi = law.batch_interval(1e20)
        inside["batch_at_1e20"] += lo <= TRUTH.batch_tokens(1e20) <= hi
        assert law.n_budgets == 8 and law.flops_range == (BUDGETS[0], BUDGETS[-1])
        assert len(law.bootstrap) == 200  # 8 budgets: every resample has >= 2 distinct ones
    assert min(inside.values()) >= 17, inside


def test_the_fit_is_the_law_through_the_near_optimal_points():
    """Every budget's grid holds its optimum exactly, the rest far outside the tolerance: the near-optimal set is
    that one point per budget, and the fit is the law itself."""
    exact = {"flops": [], "learning_rate": [], "batch_tokens": [], "loss": []}
    for c in BUDGETS:
        for factor in (0.5, 1.0, 2.0):
            exact["flops"].append(c)
            exact["learning_rate"].append(TRUTH.lr(c) * factor)
            exact["batch_tokens"].append(TRUTH.batch_tokens(c) / factor)
            exact["loss"].append(3.0 + abs(np.log(factor)))  # the middle one is best by far
    law = fit_hyperparameter_law(exact, n_bootstrap=20)
    assert law.n_points == len(BUDGETS)
    assert law.lr_exp == pytest.approx(TRUTH.lr_exp, abs=1e-10)
    assert law.batch_exp == pytest.approx(TRUTH.batch_exp, abs=1e-10)
    assert law.lr_coef == pytest.approx(TRUTH.lr_coef, rel=1e-8)
    assert law.batch_coef == pytest.approx(TRUTH.batch_coef, rel=1e-8)


def test_the_near_optimal_set_is_the_stated_tolerance():
    loss = np.array([1.0, 1.0024, 1.0026, 1.1, 2.0, 2.004, 2.006, np.nan])
    starts = np.array([0, 4])
    assert near_optimal(loss, starts, 0.0025).tolist() == [True, True, False, False, True, True, False, False]
    assert near_optimal(loss, starts, 0.0).tolist() == [True, False, False, False, True, False, False, False]
    # the fit counts exactly those configurations, per budget, on a real grid and at other tolerances
    table = grid_table(np.random.default_rng(3), n_seeds=2)
    flops, loss_by_row = np.array(table["flops"]), np.array(table["loss"])
    mean = loss_by_row.reshape(-1, 2).mean(axis=1)  # two seeds per configuration, adjacent rows
    for tolerance in (0.0, 0.001, 0.0025, 0.01):
        expected = sum(int(np.sum(mean[flops[::2] == c] <= mean[flops[::2] == c].min() * (1 + tolerance)))
                       for c in BUDGETS)
        law = fit_hyperparameter_law(table, tolerance=tolerance, n_bootstrap=2)
        assert (law.n_points, law.tolerance) == (expected, tolerance)


def test_bad_input_is_named_with_its_fix(tmp_path):
    table = grid_table(np.random.default_rng(0), budgets=BUDGETS[:2])
    first_budget = len(table["loss"]) // 2
    with pytest.raises(UserError, match="at least 2 distinct `flops`"):
        fit_hyperparameter_law({k: v[:first_budget] for k, v in table.items()})
    with pytest.raises(UserError, match="lacks column.*batch_tokens"):
        fit_hyperparameter_law({k: v for k, v in table.items() if k != "batch_tokens"})
    bad = {k: list(v) for k, v in table.items()}
    bad["learning_rate"][5] = -1e-3
    with pytest.raises(UserError, match="'learning_rate' holds -0.001 at row 5.*positive"):
        fit_hyperparameter_law(bad)
    with pytest.raises(UserError, match="repeats the run"):
        fit_hyperparameter_law({k: [*v, v[0]] for k, v in table.items()})
    with pytest.raises(UserError, match="tolerance"):
        fit_hyperparameter_law(table, tolerance=-0.1)
    csv = tmp_path / "grid.csv"
    csv.write_text("flops,learning_rate,batch_tokens,loss\n1e17,1e-3,1e5,3.0\n\n2e17,1e-3,abc,2.9\n")
    with pytest.raises(UserError, match=re.escape(f"'batch_tokens' holds 'abc' at {csv} line 4, which is not a number")):
        fit_hyperparameter_law(csv)
    with pytest.raises(UserError, match="does not exist"):
        fit_hyperparameter_law(tmp_path / "missing.csv")


def test_json_round_trip_and_refusals(tmp_path):
    law = fit_hyperparameter_law(grid_table(np.random.default_rng(1)), n_bootstrap=50, seed=4)
    back = HyperparameterLaw.from_json(law.to_json(tmp_path / "law.json"))
    assert back == law
    assert back.lr_interval(1e20) == law.lr_interval(1e20)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a hyperparameter law"):
        HyperparameterLaw.from_json(tmp_path / "list.json")
    fit = FitResult("chinchilla-2", {}, {}, {}, 1, 1, 2, 0, {"n_coef": 1.0, "n_exp": 0.5})
    with pytest.raises(UserError, match="not a hyperparameter law"):
        HyperparameterLaw.from_json(fit.to_json(tmp_path / "fit.json"))
    with pytest.raises(UserError, match="not a chinchax fit"):
        FitResult.from_json(tmp_path / "law.json")


def sweep_rows(rng, lr_opt, lrs, n_seeds, noise):
    """Loss of a 1-D lr sweep: a parabola in ln lr per seed, each seed shifted by its own offset."""
    lr_col, loss_col, seed_col = [], [], []
    for seed in range(n_seeds):
        offset = 0.02 * rng.standard_normal()
        for lr in lrs:
            lr_col.append(lr)
            loss_col.append(3.0 + offset + 0.05 * np.log(lr / lr_opt) ** 2 + noise * rng.standard_normal())
            seed_col.append(seed)
    return lr_col, loss_col, seed_col


def test_parabola_optimum_recovers_the_vertex_and_its_interval_covers_it():
    lrs = 1e-3 * 2 ** (np.arange(9) / 2)
    exact = parabola_optimum(*sweep_rows(np.random.default_rng(0), 3.3e-3, lrs, 1, 0.0))
    assert exact.lr == pytest.approx(3.3e-3, rel=1e-9) and exact.curvature == pytest.approx(0.1, rel=1e-9)
    assert exact.in_range and exact.note == "" and len(exact.lrs_fitted) == 5
    assert np.isnan(exact.interval).all() and exact.n_draws == 0  # one seed: no interval
    inside = 0
    for draw in range(20):
        rng = np.random.default_rng(draw)
        lr_opt = 3e-3 * np.exp(rng.uniform(-0.3, 0.3))
        found = parabola_optimum(*sweep_rows(rng, lr_opt, lrs, 8, 0.005), seed=draw)
        assert found.in_range and found.n_draws > 150
        inside += found.interval[0] <= lr_opt <= found.interval[1]
    # measured coverage at 8 seeds: 0.94-0.95 over 400 sweeps, so >= 17 of 20 holds ~97% of the time
    assert inside >= 17


def test_parabola_optimum_flags_a_vertex_outside_the_sweep():
    lrs = 1e-3 * 2 ** (np.arange(6) / 2)  # up to 5.7e-3; the optimum is at 2e-2
    found = parabola_optimum(*sweep_rows(np.random.default_rng(0), 2e-2, lrs, 3, 0.0))
    assert not found.in_range and np.isnan(found.lr) and np.isnan(found.interval).all()
    assert found.vertex_lr == pytest.approx(2e-2, rel=1e-6)  # where to extend the sweep
    assert "extend the sweep to larger lr" in found.note
    concave = parabola_optimum([1e-3, 2e-3, 4e-3], [3.0, 3.1, 3.0])
    assert not concave.in_range and "no minimum" in concave.note
    with pytest.raises(UserError, match="at least 3"):
        parabola_optimum([1e-3, 2e-3], [3.0, 2.9])
    with pytest.raises(UserError, match="appears twice"):
        parabola_optimum([1e-3, 1e-3, 2e-3, 4e-3], [3.0, 3.0, 2.9, 3.0], seeds=[0, 0, 0, 0])


def test_optimal_prints_the_hyperparameter_rows(tmp_path, capsys):
    assert main(["optimal", "--flops", "1e20", "--law", "chinchilla-1"]) == 0
    out = capsys.readouterr().out
    assert "C = M*D" in out and f"{TRUTH.lr(1e20):10.3g}" in out and f"{TRUTH.batch_tokens(1e20) / 2048:10.3g}" in out
    assert "extrapolated, fitted on 1e+17 to 2e+19" in out
    assert main(["optimal", "--flops", "1e18", "--law", "chinchilla-1", "--seq-len", "4096", "--json"]) == 0
    allocation, hparams = json.loads(capsys.readouterr().out)
    assert allocation["law"] == "chinchilla-1" and hparams["kind"] == "hyperparameters"
    assert hparams["learning_rate"] == pytest.approx(0.3118 * 1e18**-0.125, rel=1e-12)
    assert hparams["batch_sequences"] == pytest.approx(0.2920 * 1e18**0.3271 / 4096, rel=1e-12)
    assert not hparams["extrapolated"]
    law = fit_hyperparameter_law(grid_table(np.random.default_rng(2)), n_bootstrap=50)
    path = law.to_json(tmp_path / "law.json")
    assert main(["optimal", "--flops", "1e19", "--hparams-law", str(path), "--hparams-law", "deepseek", "--json"]) == 0
    ours, deepseek = [r for r in json.loads(capsys.readouterr().out) if r.get("kind") == "hyperparameters"]
    assert ours["learning_rate"] == pytest.approx(law.lr(1e19))
    assert ours["learning_rate_interval"] == pytest.approx(list(law.lr_interval(1e19)))
    assert deepseek["law"] == "deepseek"
    assert main(["optimal", "--flops", "1e19", "--hparams-law", "none", "--json"]) == 0
    assert all("kind" not in r for r in json.loads(capsys.readouterr().out))


def test_fit_hparams_cli_writes_the_law(tmp_path, capsys):
    table = grid_table(np.random.default_rng(5))
    csv = tmp_path / "grid.csv"
    csv.write_text("\n".join([",".join(table), *(",".join(repr(float(v)) for v in row) for row in zip(*table.values(), strict=True))]))
    out_json = tmp_path / "law.json"
    assert main(["fit-hparams", str(csv), "--bootstrap", "50", "--flops", "1e20", "--out", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "eta_opt =" in out and "at C=1e+20: lr=" in out and "wrote" in out
    assert HyperparameterLaw.from_json(out_json) == fit_hyperparameter_law(csv, n_bootstrap=50)
    assert main(["fit-hparams", str(tmp_path / "none.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err


BASE = {
    "model": {"preset": "tiny-gpt2", "vocab_size": 384, "max_len": 32},
    "data": {"seq_len": 32},
    "optimizer": {"learning_rate": 1e-3, "warmup_steps": 5},
    "trainer": {"steps": 100, "batch_size": 8},
}
SWEEP = {
    "name": "t", "experiment": "base.yaml", "budgets": [3e10, 3e11],
    "shape": {"aspect_ratio": 32, "head_dim": 16}, "sizes": {"per_budget": 2, "span": 4, "min_steps": 5},
    "hparams": {"rule": "law", "law": "deepseek"},
}


def _plan(tmp_path, overrides=(), **sweep):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({**SWEEP, **sweep}))
    cfg, base_dir = load_sweep(tmp_path / "sweep.yaml", list(overrides))
    return plan_sweep(cfg, base_dir)


def _law_compute(run) -> float:
    """C = M·D by hand: M = 6·N_non_embedding + 12·n_layer·d_model·l_seq, D = budget / (6·N_total)."""
    m = 6 * run.n_params_non_embedding + 12 * run.n_layers * run.d_model * run.seq_len
    return m * run.budget / (6 * run.n_params)


def test_planner_takes_lr_and_batch_from_a_law(tmp_path):
    plan = _plan(tmp_path)
    assert len(plan.runs) == 4
    for run in plan.runs:
        assert run.lr == float(f"{0.3118 * _law_compute(run) ** -0.125:.6g}")
        assert run.config["optimizer"]["learning_rate"] == run.lr
        assert run.batch_size == 8  # the batch stays the sweep's without law_batch
    batched = _plan(tmp_path, ["hparams.law_batch=true"])
    for run in batched.runs:
        assert run.batch_size == max(1, round(0.2920 * _law_compute(run) ** 0.3271 / run.seq_len))
    assert len({r.batch_size for r in batched.runs}) > 1
    # a fitted law JSON next to the sweep file
    law = HyperparameterLaw(1e-1, -0.1, 1.0, 0.3, source="test")
    law.to_json(tmp_path / "law.json")
    fitted = _plan(tmp_path, ["hparams.law=law.json"])
    assert [r.lr for r in fitted.runs] == [float(f"{law.lr(_law_compute(r)):.6g}") for r in fitted.runs]


def test_planner_law_rule_refusals(tmp_path):
    with pytest.raises(UserError, match="wsd.branch=false"):
        _plan(tmp_path, ["wsd.enabled=true"])
    with pytest.raises(UserError, match="set hparams.rule=law"):
        _plan(tmp_path, ["hparams.rule=constant", "hparams.law_batch=true"])
    with pytest.raises(UserError, match="neither a published law"):
        _plan(tmp_path, ["hparams.law=missing.json"])


def test_fit_hparams_on_an_empty_file_is_one_line(tmp_path, capsys):
    from chinchax.cli import main

    (tmp_path / "empty.csv").write_text("")
    assert main(["fit-hparams", str(tmp_path / "empty.csv")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 1 and "learning_rate" in err
