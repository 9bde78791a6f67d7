"""The demo's measured learning-rate rule: best rate per size, the power law in width, and widening the range."""

import math
from pathlib import Path

import numpy as np
import pytest

from chinchax.experiments import demo_lr


def test_best_lr_is_the_parabola_vertex_inside_the_range_and_the_edge_otherwise():
    lrs = [1e-3, 3e-3, 9e-3]
    # a loss valley with its minimum at 4e-3: quadratic in log lr
    losses = [(math.log(lr) - math.log(4e-3)) ** 2 + 2.0 for lr in lrs]
    best, how = demo_lr.best_lr(lrs, losses)
    assert how == "parabola" and best == pytest.approx(4e-3, rel=1e-9)
    assert demo_lr.best_lr(lrs, [3.0, 2.9, 2.8]) == (pytest.approx(9e-3), "the highest rate tried")
    assert demo_lr.best_lr(lrs, [2.8, 2.9, 3.0]) == (pytest.approx(1e-3), "the lowest rate tried")


def test_the_width_exponent_is_measured_and_the_prior_used_when_it_cannot_be():
    truth = {32: 8e-3, 64: 8e-3 * (32 / 64) ** 0.7, 128: 8e-3 * (32 / 128) ** 0.7}
    rule = demo_lr.fit_lr_rule(truth, base_d_model=64)
    assert rule["width_exponent"] == pytest.approx(0.7, abs=1e-3) and rule["exponent_source"] == "measured"
    assert rule["base_lr"] == pytest.approx(truth[64], rel=1e-3)
    one = demo_lr.fit_lr_rule({32: 6e-3}, base_d_model=64)
    assert one["width_exponent"] == demo_lr.PRIOR_EXPONENT and "one width" in one["exponent_source"]
    assert one["base_lr"] == pytest.approx(6e-3 * (32 / 64) ** demo_lr.PRIOR_EXPONENT, rel=1e-3)
    wild = demo_lr.fit_lr_rule({32: 1e-3, 64: 1e-2}, base_d_model=64)  # lr rising 10x with width: not trusted
    assert wild["width_exponent"] == demo_lr.PRIOR_EXPONENT and "outside" in wild["exponent_source"]


def test_tune_reads_results_rows_and_the_range_widens_past_an_edge():
    rows = [{"d_model": d, "learning_rate": lr, "loss": loss}
            for d, points in {16: [(1e-3, 3.0), (3e-3, 2.9), (9e-3, 2.95)],
                              32: [(1e-3, 3.0), (3e-3, 2.9), (9e-3, 2.8)]}.items() for lr, loss in points]
    rule = demo_lr.tune(rows, base_d_model=64)
    assert rule["how"] == {16: "parabola", 32: "the highest rate tried"}
    assert demo_lr.extensions(rule, [1 / 3, 1.0, 3.0]) == [9.0]
    rule["how"][32] = "parabola"
    assert demo_lr.extensions(rule, [1 / 3, 1.0, 3.0]) == []


def test_one_valley_for_every_size_recovers_the_rule_through_noise_and_averages_seeds():
    rng = np.random.default_rng(0)
    base, k, widths, mults = 9e-3, 0.6, (8, 16, 24, 32), (1 / 9, 1 / 3, 1.0, 3.0, 9.0)
    rows = []
    for d in widths:
        best = base * (64 / d) ** k
        planned = 1.4e-2 * (64 / d) ** 0.5  # the prior the sweep was planned with: off by up to 2x
        for m in mults:
            lr = planned * m
            for seed in (0, 1):
                loss = 2.0 + 0.05 * d / 32 + 0.08 * math.log(lr / best) ** 2 + rng.normal(0, 0.01)
                rows.append({"d_model": d, "learning_rate": lr, "loss": loss, "seed": seed})
    rule = demo_lr.tune(rows, base_d_model=64)
    assert rule["seeds_per_point"] == 2 and "one valley" in rule["exponent_source"]
    assert rule["width_exponent"] == pytest.approx(k, abs=0.15)
    assert rule["base_lr"] == pytest.approx(base, rel=0.25)
    assert all(len(p) == len(mults) for p in rule["points"].values())  # seeds averaged into one point per rate
    # with no size bracketed the joint fit is impossible: the per-size vertices decide, and say so
    edge_rows = [r for r in rows if r["learning_rate"] < 1.4e-2 * (64 / r["d_model"]) ** 0.5 / 2]
    fallback = demo_lr.tune(edge_rows, base_d_model=64)
    assert "joint fit was not possible" in fallback["exponent_source"]


def _valley_rows(noise, seeds=(0, 1), seed=0, base=9e-3, k=0.8):
    rng = np.random.default_rng(seed)
    rows = []
    for d in (8, 16, 24, 32):
        best = base * (64 / d) ** k
        for m in (1 / 9, 1 / 3, 1.0, 3.0, 9.0):
            lr = 1.2e-2 * (64 / d) ** 0.6 * m
            for s in seeds:
                loss = 2.0 + 0.05 * d / 32 + 0.08 * math.log(lr / best) ** 2 + rng.normal(0, noise)
                rows.append({"d_model": d, "learning_rate": lr, "loss": loss, "seed": s})
    return rows


def test_the_rate_at_an_untuned_width_comes_with_a_seed_bootstrap_interval_that_grows_with_the_noise():
    truth = 9e-3 * (64 / 96) ** 0.8
    widths = {}
    for noise in (0.003, 0.03):
        rows = _valley_rows(noise)
        rule = demo_lr.tune(rows, base_d_model=64)
        rate = demo_lr.rate_interval(rows, rule, d_model=96, n_resamples=100)
        assert rate["tuned_widths"] == [8, 32] and rate["extrapolation"] == 3.0 and rate["resamples"] == 100
        assert rate["lo"] <= rate["lr"] <= rate["hi"]
        assert rate["lr"] == pytest.approx(rule["base_lr"] * (64 / 96) ** rule["width_exponent"])
        widths[noise] = rate["hi"] / rate["lo"]
        # the cost of the rate's uncertainty: the valley's curvature x (half the log-width)^2
        curvature = rule["surface"]["curvature"]
        assert rate["loss_cost"] == pytest.approx(curvature * (math.log(rate["hi"] / rate["lo"]) / 2) ** 2)
    assert math.log(widths[0.03]) > 3 * math.log(widths[0.003])  # ten times the noise: a much wider interval
    # a 95% interval: over ten noisy sweeps it holds the true rate nearly every time (resampling two seeds
    # alone would understate the spread; measured 39 of 40 with the widening)
    held = 0
    for seed in range(1, 11):
        rows = _valley_rows(0.03, seed=seed)
        rate = demo_lr.rate_interval(rows, demo_lr.tune(rows, base_d_model=64), d_model=96, n_resamples=50)
        held += rate["lo"] <= truth <= rate["hi"]
    assert held >= 8
    # one seed per point: nothing to resample, so no interval rather than a falsely exact one
    one = _valley_rows(0.01, seeds=(0,))
    single = demo_lr.rate_interval(one, demo_lr.tune(one, base_d_model=64), d_model=96)
    assert single["lo"] is None and single["hi"] is None and single["loss_cost"] is None and single["resamples"] == 0


def test_under_mup_one_rate_is_fitted_for_every_width_and_the_free_exponent_is_reported():
    """µP's sweep (hparams.rule=mup): the width exponent is held at 0, base_lr is the shared optimum, and the
    freely fitted exponent says how far the optimum still moves with width. A width-independent truth gives a
    free exponent near 0 and an interval at an untuned width no wider than at the tuned ones (nothing is
    extrapolated); a truth that still drifts with width shows in the free exponent."""
    rows = _valley_rows(0.01, k=0.0)
    rule = demo_lr.tune(rows, base_d_model=64, exponent=0.0)
    assert rule["width_exponent"] == 0.0 and rule["fixed_exponent"] == 0.0 and "µP" in rule["exponent_source"]
    assert rule["base_lr"] == pytest.approx(9e-3, rel=0.15)
    assert abs(rule["free_width_exponent"]) < 0.15
    far, near = (demo_lr.rate_interval(rows, rule, d_model=d, n_resamples=60) for d in (256, 32))
    assert far["lr"] == near["lr"] == rule["base_lr"]
    assert far["hi"] / far["lo"] == pytest.approx(near["hi"] / near["lo"], rel=1e-9)
    drifting = demo_lr.tune(_valley_rows(0.01, k=0.8), base_d_model=64, exponent=0.0)
    assert drifting["free_width_exponent"] == pytest.approx(0.8, abs=0.2)


def test_with_rule_keeps_mup_and_sets_only_its_rate(tmp_path):
    from chinchax.scaling.plan import load_sweep

    sweep = Path(demo_lr.__file__).with_name("demo_sweep.yaml")
    cfg, _ = load_sweep(sweep, [])
    assert cfg.hparams.rule == "mup"
    tuned = demo_lr.with_rule(cfg, {"base_lr": 0.0123, "base_d_model": 32, "width_exponent": 0.0})
    assert (tuned.hparams.rule, tuned.hparams.base_lr, tuned.hparams.base_d_model) == ("mup", 0.0123, 32)
    assert demo_lr.exponent_for(tuned) == 0.0


def test_the_report_says_where_the_held_out_width_lies_against_the_tuned_ones():
    from chinchax.experiments.demo_report import _held_out_rate

    rate = {"d_model": 80, "lr": 0.0037, "lo": 0.0015, "hi": 0.0132, "level": 0.95, "resamples": 200,
            "tuned_widths": [8, 32], "extrapolation": 2.5, "loss_cost": 0.0495}
    text = _held_out_rate({"learning_rate": rate, "measured": 1.54})
    assert "2.5x wider than the widest size the rule was tuned on (d_model 8-32)" in text
    assert "[0.0015, 0.0132] (95%; 8.8x from end to end)" in text and "0.050 nats (3.2% of its loss)" in text
    inside = _held_out_rate({"learning_rate": {**rate, "d_model": 16, "extrapolation": 0.5}, "measured": 1.54})
    assert "within those the rule was tuned on" in inside and "wider" not in inside
    one_seed = _held_out_rate({"learning_rate": {**rate, "lo": None, "hi": None, "loss_cost": None}, "measured": 1.54})
    assert one_seed.endswith("(d_model 8-32).")  # no interval to state
