"""Law per family and compute multipliers (chinchax.scaling.compare_fit) on tables with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from chinchax.errors import UserError
from chinchax.scaling.compare_fit import FamilyLaw, compare, envelope, fit_laws, multipliers, pair_resampler

BUDGETS = [1e10, 3e10, 1e11, 3e11]


def law_table(families: dict[str, tuple[float, float]], worse_size: float = 1.1) -> pd.DataFrame:
    """Two runs per (family, budget): one exactly on L = A C^-alpha, one `worse_size` x worse."""
    rows = []
    for family, (a, alpha) in families.items():
        for b in BUDGETS:
            flops = b * 1.001  # realised compute differs from the budget by rounding, as in a plan
            best = a * flops**-alpha
            rows.append({"family": family, "budget": b, "flops": flops, "run": f"{family}-{b:g}-good", "bpb": best})
            rows.append({"family": family, "budget": b, "flops": flops * 0.99, "run": f"{family}-{b:g}-bad",
                         "bpb": best * worse_size})
    return pd.DataFrame(rows)


def test_envelope_keeps_each_budgets_best_run():
    env = envelope(law_table({"x": (10.0, 0.1)}), "bpb")
    assert list(env["run"]) == [f"x-{b:g}-good" for b in BUDGETS]
    assert list(env["budget"]) == BUDGETS


def test_laws_and_multiplier_recover_a_known_compute_ratio():
    # y's law is x's shifted by a factor 2 in compute: y reaches any loss with exactly 2x x's compute.
    alpha = 0.12
    table = law_table({"x": (10.0, alpha), "y": (10.0 * 2.0**alpha, alpha), "z": (10.0 * 0.5**0.2, 0.2)})
    laws, notes = fit_laws(envelope(table, "bpb"))
    assert notes == []
    assert laws["x"].alpha == pytest.approx(alpha, rel=1e-9)
    assert laws["y"].coef == pytest.approx(10.0 * 2.0**alpha, rel=1e-9)
    c_top = BUDGETS[-1] * 1.001
    m = multipliers(laws, "x", c_top)
    assert m["x"] == pytest.approx(1.0, rel=1e-9)
    assert m["y"] == pytest.approx(2.0, rel=1e-9)
    # z: a different slope; its multiplier is where its own law meets x's loss at c_top
    target = 10.0 * c_top**-alpha
    assert m["z"] == pytest.approx((10.0 * 0.5**0.2 / target) ** (1 / 0.2) / c_top, rel=1e-9)
    # exact power laws: leaving any one budget out changes nothing
    lo, hi = compare(table, "bpb", reference="x").leave_one_out["y"]
    assert lo == pytest.approx(2.0, rel=1e-9) and hi == pytest.approx(2.0, rel=1e-9)


def test_leave_one_budget_out_shows_a_budget_that_drives_the_multiplier():
    table = law_table({"x": (10.0, 0.1), "y": (10.0 * 2.0**0.1, 0.1)})
    bent = table.assign(bpb=np.where((table["family"] == "y") & (table["budget"] == BUDGETS[0]),
                                     table["bpb"] * 1.2, table["bpb"]))
    result = compare(bent, "bpb", reference="x")
    lo, hi = result.leave_one_out["y"]
    # the raised first point steepens y's law, so it seems to need less compute; without that budget
    # the law is exact again (2x), with it and one other budget left out it moves further
    assert hi == pytest.approx(2.0, rel=1e-6)
    assert lo < result.multipliers["y"] < hi


def test_a_family_with_too_few_budgets_gets_no_law_and_a_note():
    table = law_table({"x": (10.0, 0.1), "y": (9.0, 0.1)})
    table = table[~((table["family"] == "y") & (table["budget"] > 3e10))]
    laws, notes = fit_laws(envelope(table, "bpb"))
    assert set(laws) == {"x"}
    assert notes == ["y: 2 budget(s) finished, a law needs 3"]
    with pytest.raises(UserError, match="reference family 'y' has no law"):
        compare(table, "bpb", reference="y")


def test_flat_law_has_no_multiplier_and_huge_ones_do_not_overflow():
    flat = FamilyLaw("f", coef=5.0, alpha=-0.01, flops_min=1e10, flops_max=1e11, n_budgets=3)
    assert math.isnan(flat.compute_for(4.0))
    shallow = FamilyLaw("s", coef=5.0, alpha=1e-4, flops_min=1e10, flops_max=1e11, n_budgets=3)
    assert shallow.compute_for(1.0) == math.inf  # (5/1)^(1e4) overflows a float: infinite, not an error


def items_for(table: pd.DataFrame, n_items: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-item nats and bytes whose bits per byte over all items is exactly each run's `bpb`."""
    rng = np.random.default_rng(seed)
    bytes_RI = np.full((len(table), n_items), 100.0)
    shape_I = 1 + noise * rng.standard_normal(n_items)  # item difficulty shared by every run (paired)
    nll_RI = np.outer(table["bpb"].to_numpy() * math.log(2) * 100.0, shape_I / shape_I.mean())
    return nll_RI, bytes_RI


def test_paired_bootstrap_interval_brackets_the_multiplier_and_collapses_without_noise():
    alpha = 0.1
    table = law_table({"x": (10.0, alpha), "y": (10.0 * 1.5**alpha, alpha)}).reset_index(drop=True)
    quiet = compare(table, "bpb", reference="x", resample=pair_resampler(table, *items_for(table, 64, 0.0)),
                    n_items=64, n_bootstrap=50)
    lo, hi = quiet.intervals["y"]
    assert lo == pytest.approx(1.5, rel=1e-6) and hi == pytest.approx(1.5, rel=1e-6)
    # item noise shared by all runs cancels in a paired resample: the multiplier does not move either
    shared = compare(table, "bpb", reference="x", resample=pair_resampler(table, *items_for(table, 64, 0.3)),
                     n_items=64, n_bootstrap=50)
    assert shared.intervals["y"][1] - shared.intervals["y"][0] < 1e-6 * 1.5
    # noise that differs between runs widens the interval around the point value
    nll_RI, bytes_RI = items_for(table, 64, 0.0)
    nll_RI = nll_RI * (1 + 0.2 * np.random.default_rng(1).standard_normal(nll_RI.shape))
    noisy = compare(table.assign(bpb=nll_RI.sum(1) / math.log(2) / bytes_RI.sum(1)), "bpb", reference="x",
                    resample=pair_resampler(table, nll_RI, bytes_RI), n_items=64, n_bootstrap=200)
    lo, hi = noisy.intervals["y"]
    assert lo < noisy.multipliers["y"] < hi
    assert hi / lo > 1.05
    assert noisy.to_json()["multipliers"]["x"]["value"] == pytest.approx(1.0)


def test_resampler_checks_shapes():
    table = law_table({"x": (10.0, 0.1)})
    with pytest.raises(UserError, match="do not match"):
        pair_resampler(table, np.zeros((3, 4)), np.ones((3, 4)))
