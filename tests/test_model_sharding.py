"""On 8 fake CPU devices with a (data=2, fsdp=2, tensor=2) mesh: parameters are created sharded by the
logical rules, and the sharded forward pass equals the single-device one. Runs in a subprocess so the
device-count flag never leaks into other tests."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import os, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    import flax.linen as nn
    from flax import nnx
    from chinchax.model.config import load_model_config
    from chinchax.model import Transformer
    from chinchax.sharding import LOGICAL_AXIS_RULES, create_sharded, make_mesh

    assert jax.device_count() == 8
    out = {}
    for preset in ["tiny-llama", "tiny-t5"]:
        cfg = load_model_config(preset, ["n_kv_heads=2"] if preset == "tiny-llama" else [])
        mesh = make_mesh((2, 2, 2))
        sharded = create_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
        reference = Transformer(cfg, rngs=nnx.Rngs(0))
        specs = {"/".join(map(str, p)): [list(a) if isinstance(a, tuple) else a for a in v.get_value().sharding.spec]
                 for p, v in nnx.to_flat_state(nnx.state(sharded, nnx.Param))}
        n_devices = {"/".join(map(str, p)): len(v.get_value().sharding.device_set)
                     for p, v in nnx.to_flat_state(nnx.state(sharded, nnx.Param))}
        rng = np.random.default_rng(0)
        tokens = rng.integers(1, 512, (4, 16)).astype(np.int32)
        segments = (np.arange(16)[None] < np.array([[16], [10], [7], [16]])).astype(np.int32)
        kwargs = dict(segment_ids=segments)
        if cfg.variant == "encoder_decoder":
            kwargs.update(encoder_inputs=rng.integers(1, 512, (4, 12)).astype(np.int32))
        graphdef, state = nnx.split(sharded)

        @jax.jit
        def forward(state, tokens, kwargs):
            return nnx.merge(graphdef, state)(tokens, **kwargs)

        with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            batch_sharding = jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))
            tokens_sharded = jax.device_put(tokens, batch_sharding)
            kwargs_sharded = jax.tree.map(lambda x: jax.device_put(x, batch_sharding), kwargs)
            logits_sharded = forward(state, tokens_sharded, kwargs_sharded)
        logits_single = reference(tokens, **kwargs)
        out[preset] = {
            "specs": specs,
            "n_devices": n_devices,
            "max_abs_diff": float(np.abs(np.asarray(logits_sharded) - np.asarray(logits_single)).max()),
            "logits_devices": len(logits_sharded.sharding.device_set),
        }
    print("RESULT" + json.dumps(out))
    """
)


def run_script():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_sharded_params_and_forward_match_single_device():
    out = run_script()
    llama = out["tiny-llama"]
    specs = llama["specs"]
    # Logical rules: vocab->tensor, embed->fsdp, mlp->tensor, heads->tensor, kv/kv_heads/layers replicated.
    assert specs["embedding_VD"] == ["tensor", "fsdp"]
    assert specs["unembedding_DV"] == ["fsdp", "tensor"]
    assert specs["decoder/blocks/self_attention/q_DHK"] == [None, "fsdp", "tensor", None]
    assert specs["decoder/blocks/self_attention/k_DGK"] == [None, "fsdp", None, None]
    assert specs["decoder/blocks/self_attention/o_HKD"] == [None, "tensor", None, "fsdp"]
    assert specs["decoder/blocks/mlp/wi_DF"] == [None, "fsdp", "tensor"]
    assert specs["decoder/blocks/mlp/wo_FD"] == [None, "tensor", "fsdp"]
    assert specs["decoder/final_norm/scale"] == ["fsdp"]
    # Sharded arrays live on all 8 devices (replicated over `data`, split over fsdp x tensor).
    assert llama["n_devices"]["embedding_VD"] == 8
    t5_specs = out["tiny-t5"]["specs"]
    assert t5_specs["encoder/relative_bias/table_RH"] == [None, "tensor"]
    assert t5_specs["decoder/blocks/cross_attention/q_DHK"] == [None, "fsdp", "tensor", None]
    for preset in out:
        assert out[preset]["logits_devices"] == 8
        assert out[preset]["max_abs_diff"] < 1e-5, (preset, out[preset]["max_abs_diff"])
