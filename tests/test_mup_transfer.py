"""experiments/mup_transfer.py's analysis: optima per width from seeded lr sweeps, the drift of the optimum and
the loss lost by transferring the narrowest width's optimum, on synthetic sweeps with known optima; and that
its run configs are valid chinchax configs (SP and µP)."""

import math
from pathlib import Path

import numpy as np
import pytest

from chinchax.experiments.mup_transfer import QUICK, Study, plot, report, run_overrides, transfer_summary

STUDY = Study(widths=(32, 64, 128, 256), lrs=tuple(1e-3 * 2.0**k for k in range(-3, 5)), seeds=(0, 1), steps=10)


def _rows(optimum_of_width, curvature=0.08, noise=0.002, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in ("sp", "mup"):
        for w in STUDY.widths:
            for lr in STUDY.lrs:
                for s in STUDY.seeds:
                    x = math.log(lr) - math.log(optimum_of_width(p, w))
                    loss = 3.0 - 0.1 * math.log2(w) + 0.5 * curvature * x * x + rng.normal(0, noise)
                    rows.append({"parametrization": p, "width": w, "learning_rate": lr, "seed": s, "eval_loss": loss})
    return rows


def test_the_summary_finds_the_drift_it_was_given(tmp_path):
    def optimum(p, w):  # SP: the optimum halves with each doubling of width; µP: it stays at 2e-3
        return 8e-3 * 32 / w if p == "sp" else 2e-3

    summary = transfer_summary(_rows(optimum), STUDY)
    assert summary["sp"]["drift"] == pytest.approx(8.0, rel=0.2)
    assert summary["mup"]["drift"] < 1.2
    sp_lost = summary["sp"]["loss_lost_at_widest_with_narrowest_optimum"]
    assert sp_lost == pytest.approx(0.5 * 0.08 * math.log(8.0) ** 2, rel=0.25)
    assert summary["mup"]["loss_lost_at_widest_with_narrowest_optimum"] < 0.01 * sp_lost
    plot(_rows(optimum), STUDY, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert "drift of the optimum" in report(summary, STUDY)


def test_an_optimum_outside_the_sweep_is_said_not_extrapolated():
    summary = transfer_summary(_rows(lambda p, w: 1.0), STUDY)  # far above every lr of the sweep
    assert summary["sp"]["drift"] is None
    assert not summary["sp"]["optima"]["32"]["in_range"]


def test_the_runs_are_valid_configs(tmp_path):
    from chinchax.configlib import load_config
    from chinchax.train.config import ExperimentConfig

    repo = Path(__file__).resolve().parents[1]
    for p in ("sp", "mup"):
        cfg = load_config(ExperimentConfig, repo / "experiments" / "tiny.yaml",
                          run_overrides(QUICK, p, QUICK.widths[-1], QUICK.lrs[0], 1, tmp_path / p))
        assert cfg.model.d_model == QUICK.widths[-1] and cfg.model.parametrization == p
        if p == "mup":
            assert cfg.model.mup_base_d_model == QUICK.widths[0] and cfg.model.mup_zero_readout
