"""Schedules (warmup, cosine, linear, constant, WSD shapes) and the weight-decay mask."""

import math

import numpy as np
import pytest

from chinchax.errors import UserError
from chinchax.train.config import OptimizerConfig
from chinchax.train.optimizer import make_schedule

PEAK = 1e-3


def _lrs(total=100, **kw):
    cfg = OptimizerConfig(learning_rate=PEAK, warmup_steps=10, final_lr_fraction=0.1, **kw).validate()
    sched = make_schedule(cfg, total)
    return np.array([float(sched(t)) for t in range(total + 1)])


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_linear_warmup_to_peak(schedule):
    lr = _lrs(schedule=schedule)
    np.testing.assert_allclose(lr[:11], PEAK * np.arange(11) / 10, rtol=1e-6, atol=1e-12)


def test_cosine_and_linear_end_at_the_final_fraction():
    cos, lin = _lrs(schedule="cosine"), _lrs(schedule="linear")
    np.testing.assert_allclose([cos[100], lin[100]], [0.1 * PEAK] * 2, rtol=1e-5)
    # halfway through the decay: cosine is at the mean of peak and final, as is linear
    np.testing.assert_allclose(cos[55], 0.1 * PEAK + 0.9 * PEAK * 0.5, rtol=1e-5)
    np.testing.assert_allclose(lin[55], 0.1 * PEAK + 0.9 * PEAK * 0.5, rtol=1e-5)
    assert np.all(np.diff(cos[10:]) <= 1e-12) and np.all(np.diff(lin[10:]) <= 1e-12)


def test_constant_stays_at_peak():
    np.testing.assert_allclose(_lrs(schedule="constant")[10:], PEAK, rtol=1e-6)


@pytest.mark.parametrize("shape", ["linear", "cosine", "sqrt"])
def test_wsd_is_stable_then_cools_down_over_the_last_fraction(shape):
    lr = _lrs(schedule="wsd", cooldown_fraction=0.2, cooldown_shape=shape)
    np.testing.assert_allclose(lr[10:81], PEAK, rtol=1e-6)  # stable until 100 - 20
    assert lr[81] < PEAK
    np.testing.assert_allclose(lr[100], 0.1 * PEAK, rtol=1e-5)
    progress = 10 / 20  # step 90
    frac = {
        "linear": 1 - progress,
        "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
        "sqrt": 1 - math.sqrt(progress),
    }
    np.testing.assert_allclose(lr[90], 0.1 * PEAK + 0.9 * PEAK * frac[shape], rtol=1e-5)


def test_bad_optimizer_values_are_rejected_with_the_key():
    with pytest.raises(UserError, match="optimizer.schedule"):
        OptimizerConfig(schedule="exp").validate()
    with pytest.raises(UserError, match="optimizer.cooldown_shape"):
        OptimizerConfig(cooldown_shape="step").validate()
    with pytest.raises(UserError, match="clip_norm"):
        OptimizerConfig(clip_norm=0.0).validate()


def test_weight_decay_mask_decays_matrices_only():
    from flax import nnx

    from chinchax.model import Transformer
    from chinchax.model.config import load_model_config
    from chinchax.train.state import decay_mask_from_variables

    cfg = load_model_config(
        "tiny-t5", ["tie_embeddings=false", "scale_tied_logits=false"]
    )  # relative bias table, untied head
    model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    mask = dict(nnx.to_flat_state(nnx.State(decay_mask_from_variables(nnx.state(model, nnx.Param)))))
    flat = {
        "/".join(map(str, k)): bool(v.get_value() if hasattr(v, "get_value") else v) for k, v in mask.items()
    }
    decayed = {k for k, v in flat.items() if v}
    assert "embedding_VD" not in decayed and "unembedding_DV" in decayed
    assert not any("table_RH" in k or "norm" in k or "bias" in k for k in decayed)
    assert any(k.endswith("q_DHK") for k in decayed) and any(k.endswith("wo_FD") for k in decayed)
