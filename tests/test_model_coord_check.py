"""The coordinate check (train/coord_check.py, `chinchax coord-check`), as microsoft/mup tests it: under µP the
mean |activation| of every layer's output stays put as the model widens x8 (steps 1-3: ratio widest/narrowest
within 1/1.2..1.2 as microsoft/mup asserts, and slope of log mean|x| against log width within +-0.05 as OLMo-core
asserts); under SP the same check fails. Depth: depth-µP (branches x L^-1/2) keeps the residual stream and the
logits put from 2 to 16 layers; SP's residual stream grows."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from chinchax.experiments.coord_check import base_config
from chinchax.model import Transformer
from chinchax.train.coord_check import coordinates, run_coord_check

STEPS = 3  # microsoft/mup's own test checks steps 1-3
SLOPE_BOUND = 0.05
RATIO_BOUND = 1.2


def _ratios(result):
    means = result.mean_over_seeds()
    with np.errstate(divide="ignore", invalid="ignore"):
        return means[-1] / means[0]  # [step, coordinate]


@pytest.fixture(scope="module")
def mup_width():
    base = base_config("mup", "width").replace(mup_base_d_model=64)
    return run_coord_check(base, (64, 128, 256, 512), seeds=(0, 1, 2), steps=STEPS, learning_rate=4e-3)


def test_the_pieces_give_the_models_own_logits():
    cfg = base_config("mup", "width").replace(d_model=128, d_ff=512, n_heads=8, mup_base_d_model=64,
                                              mup_zero_readout=False)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
    np.testing.assert_allclose(coordinates(model, tokens)["_logits"], model(tokens), rtol=1e-5, atol=1e-6)


def test_mup_keeps_every_coordinate_flat_in_width(mup_width):
    slopes, ratios = mup_width.slopes(), _ratios(mup_width)
    names = mup_width.coordinates
    assert {"embedding", "attention_logits", "attention_out", "mlp_out", "residual", "logits"} <= set(names)
    # the zero readout: logits exactly 0 at step 1 at every width (no slope there), then flat
    logits = names.index("logits")
    assert np.all(mup_width.values[:, :, 0, logits] == 0.0)
    assert np.isnan(slopes[0, logits]) and np.all(np.isfinite(np.delete(slopes, logits, axis=1)))
    finite = np.isfinite(slopes)
    worst = {names[c]: float(np.abs(slopes[:, c][finite[:, c]]).max()) for c in range(len(names))}
    assert max(worst.values()) <= SLOPE_BOUND, worst
    assert np.all((ratios[finite] > 1 / RATIO_BOUND) & (ratios[finite] < RATIO_BOUND)), ratios


def test_sp_fails_the_same_check(tmp_path):
    """Through the command: SP's activations grow with width once Adam has updated the hidden weights."""
    from chinchax.cli import main

    out = tmp_path / "cc"
    assert main(["coord-check", "--parametrization", "sp", "--sizes", "64", "512", "--seeds", "1",
                 "--steps", str(STEPS), "--out", str(out)]) == 0
    summary = json.loads((out / "coord_check.json").read_text())["sp"]
    assert (out / "coord_check.png").stat().st_size > 10_000
    slopes = np.asarray(summary["slopes"], float)
    names = summary["coordinates"]
    grown = [names[c] for c in range(len(names)) if slopes[STEPS - 1, c] > 0.25]
    assert {"residual", "mlp_out", "attention_out"} <= set(grown), dict(zip(names, slopes[STEPS - 1], strict=True))
    assert np.nanmax(np.abs(slopes)) > 4 * SLOPE_BOUND


@pytest.mark.parametrize("parametrization", ["sp", "mup"])
def test_depth_mup_keeps_the_residual_stream_and_logits_flat_in_depth(parametrization):
    depths, seeds = ((2, 4, 8, 16), (0, 1, 2)) if parametrization == "mup" else ((2, 16), (0,))
    base = base_config(parametrization, "depth", alpha=0.5)
    result = run_coord_check(base, depths, axis="depth", seeds=seeds, steps=STEPS, learning_rate=4e-3)
    slopes = result.slopes()
    residual, logits = result.coordinates.index("residual"), result.coordinates.index("logits")
    if parametrization == "mup":
        assert np.abs(slopes[:, residual]).max() <= SLOPE_BOUND, slopes[:, residual]
        assert np.nanmax(np.abs(slopes[1:, logits])) <= SLOPE_BOUND, slopes[:, logits]
    else:  # SP: the residual stream sums L branches of O(1) and grows with depth
        assert slopes[:, residual].min() > 4 * SLOPE_BOUND, slopes[:, residual]
