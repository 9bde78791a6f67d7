"""Seed means for the demo's fits: averages per grid point, averaged curves and eval rows, pooled seed noise."""

from __future__ import annotations

import math

import numpy as np
import pytest

from chinchax.experiments.demo_seeds import mean_curves, mean_eval_rows, seed_means, seed_noise


def _row(run, budget, d, seed, loss):
    return {"run": run, "family": "base", "budget": budget, "d_model": d, "n_layers": 1, "seed": seed,
            "loss": loss, "eval_loss": loss, "n_params": 100 * d}


ROWS = [_row("a", 1e10, 8, 0, 2.0), _row("a1", 1e10, 8, 1, 2.2), _row("b", 1e10, 16, 0, 1.9),
        _row("b1", 1e10, 16, 1, 1.8), _row("c", 3e10, 8, 0, 1.7), _row("c1", 3e10, 8, 1, 1.75)]


def test_seed_means_average_each_grid_point_under_its_first_seeds_name():
    means = {r["run"]: r for r in seed_means(list(reversed(ROWS)))}
    assert set(means) == {"a", "b", "c"}
    assert means["a"]["loss"] == pytest.approx(2.1) and means["a"]["eval_loss"] == pytest.approx(2.1)
    assert means["b"]["loss"] == pytest.approx(1.85) and means["c"]["n_seeds"] == 2
    assert means["a"]["loss_seed_sd"] == pytest.approx(np.std([2.0, 2.2], ddof=1))
    one = seed_means([_row("x", 1e10, 8, 0, 2.0)])[0]
    assert one["n_seeds"] == 1 and math.isnan(one["loss_seed_sd"]) and one["loss"] == 2.0


def test_pooled_seed_noise_is_the_within_grid_point_spread():
    noise = seed_noise(ROWS)
    squares = 2 * 0.1**2 + 2 * 0.05**2 + 2 * 0.025**2  # each pair: 2 x (half its spread)^2
    assert noise["dof"] == 3 and noise["seeds"] == 2 and noise["grid_points"] == 3
    assert noise["pooled_sd"] == pytest.approx(math.sqrt(squares / 3))
    assert noise["sd_of_mean"] == pytest.approx(noise["pooled_sd"] / math.sqrt(2))
    assert noise["max_spread"] == pytest.approx(0.2)
    assert seed_noise([_row("x", 1e10, 8, 0, 2.0)])["dof"] == 0


def test_mean_curves_average_the_steps_every_seed_logged():
    curves = [{"run": "a", "step": 10, "loss": 3.0}, {"run": "a1", "step": 10, "loss": 3.4},
              {"run": "a", "step": 20, "loss": 2.0}, {"run": "a1", "step": 20, "loss": 2.2},
              {"run": "a", "step": 30, "loss": 1.9}]  # seed 1 never logged step 30: left out
    out = mean_curves(curves, ROWS[:2])
    assert [(c["run"], c["step"]) for c in out] == [("a", 10), ("a", 20)]
    assert [c["loss"] for c in out] == pytest.approx([3.2, 2.1])


def test_mean_eval_rows_pair_the_same_rows_only():
    a = {"loss_sum": [1.0, 2.0], "weight": [4, 4]}
    b = {"loss_sum": [3.0, 2.0], "weight": [4, 4]}
    assert mean_eval_rows([a, b]) == {"loss_sum": [2.0, 2.0], "weight": [4.0, 4.0]}
    with pytest.raises(ValueError, match="same evaluation rows"):
        mean_eval_rows([a, {"loss_sum": [1.0, 2.0], "weight": [4, 5]}])
