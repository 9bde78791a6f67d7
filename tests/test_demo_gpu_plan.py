"""`chinchax demo --scale gpu`: its plan, checked on CPU (no GPU in CI): accelerator-sized budgets and models,
and a wall time that fits 15 minutes on one H100/H200 under a stated throughput model."""

from importlib import resources
from pathlib import Path

import pytest

from chinchax.experiments import demo, demo_lr
from chinchax.scaling.plan import load_sweep, plan_sweep

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s (chinchax.train.mfu's table)
ASSUMED_MFU = 0.35  # measured on an H200 for a 350M decoder: 34.8% (docs/benchmarks.md); small models do worse...
STEP_OVERHEAD_S = 0.004  # ...so every step also pays a fixed cost


def test_gpu_scale_plan_fits_one_gpu_in_fifteen_minutes():
    yaml = Path(str(resources.files("chinchax.experiments").joinpath(demo.SCALES["gpu"])))
    cfg, base = load_sweep(yaml)
    plan = plan_sweep(cfg, base)
    lr_plan = demo_lr.plan_lr_sweep(cfg, base)
    budgets = sorted(cfg.budgets)
    assert budgets[-1] / budgets[0] >= 10**1.5
    n = [r.n_params for r in plan.runs]
    assert min(n) >= 3e5 and max(n) >= 1e7 and max(n) <= 3e8  # millions to tens of millions of parameters
    assert all(r.config["model"]["dtype"] == "bfloat16" and r.config["data"]["source"] == "site-packages"
               for r in plan.runs)
    holdout_flops = demo.HOLDOUT_FACTOR * budgets[-1]
    total = plan.flops_independent + lr_plan.flops_independent + holdout_flops
    assert 1e16 <= total <= 1e18

    def seconds(runs):
        return sum(r.flops / (ASSUMED_MFU * H100_BF16_PEAK) + r.steps * STEP_OVERHEAD_S for r in runs)

    mean_tokens_per_step = plan.runs[0].batch_size * plan.runs[0].seq_len
    holdout_s = holdout_flops / (ASSUMED_MFU * H100_BF16_PEAK) + holdout_flops / (6 * 1e7 * mean_tokens_per_step) * STEP_OVERHEAD_S
    assert seconds(plan.runs) + seconds(lr_plan.runs) + holdout_s <= 15 * 60


def test_quick_is_the_cpu_study_only(capsys):
    from chinchax.cli import main

    assert main(["demo", "--quick", "--scale", "gpu"]) == 2
    assert "--quick is the CPU study" in capsys.readouterr().err


@pytest.mark.parametrize("scale", sorted(demo.SCALES))
def test_each_scale_names_a_shipped_sweep(scale):
    assert Path(str(resources.files("chinchax.experiments").joinpath(demo.SCALES[scale]))).is_file()
