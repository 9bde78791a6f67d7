"""Decoding on a (data=2, fsdp=2, tensor=2) mesh of 8 fake CPU devices equals decoding on one device, and
the KV cache is sharded by its logical names. Runs in a subprocess so the device-count flag never leaks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from chinchax.model.config import load_model_config
    from chinchax.model.decoding import CACHE_AXES, SamplingConfig, generate, init_cache
    from chinchax.sharding import LOGICAL_AXIS_RULES, logical_to_spec, make_mesh
    from chinchax.train import state as state_lib
    from chinchax.train.optimizer import make_optimizer
    from chinchax.train.config import OptimizerConfig

    assert jax.device_count() == 8
    cfg = load_model_config("tiny-llama", ["vocab_size=64", "d_model=32", "n_heads=4", "n_kv_heads=2", "d_ff=64",
                                           "max_len=32"])
    mesh = make_mesh((2, 2, 2))
    parts = state_lib.model_parts(cfg, mesh, 0)
    tx, _ = make_optimizer(OptimizerConfig(warmup_steps=0), 10, parts.decay_mask)
    state, _ = state_lib.init_train_state(cfg, tx, parts, mesh, 0)
    sharded = parts.merge(state["params"])
    assert len(sharded.decoder.blocks.mlp.wi_DF[...].sharding.device_set) == 8  # really spread out
    local = parts.merge(jax.device_get(state["params"]))

    prompts = [[2, 11, 12, 13], [2, 20], [2, 30, 31], [2, 40, 41, 42, 43]]
    settings = SamplingConfig(max_new_tokens=5, temperature=0.9, top_k=8, seed=3)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        out = generate(sharded, prompts, settings, return_logits=True)
        cache = jax.jit(lambda: init_cache(sharded, 4, 16))()
    ref = generate(local, prompts, settings, return_logits=True)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.step_logits, ref.step_logits, atol=1e-5, rtol=1e-5)
    padded = lambda spec: tuple(spec) + (None,) * (5 - len(spec))
    assert padded(logical_to_spec(CACHE_AXES)) == (None, ("data", "fsdp"), None, None, None)
    assert padded(cache["k"].sharding.spec) == padded(logical_to_spec(CACHE_AXES)), cache["k"].sharding.spec
    print("SHARDED_OK")
    """
)


@pytest.mark.slow  # a fresh 8-device process: ~25 s of CPU on its own
def test_sharded_decoding_equals_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "SHARDED_OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-5000:]
