"""The trainer's own compiled step (chinchax.train.programs.Programs.train_step, exactly as train/trainer.py
gets it) on 8 fake CPU devices: the model's and the step's logical constraints reach the program, each mesh
axis does its job (data: gradients all-reduced, parameters whole; fsdp: parameters and Adam moments split,
gathered when used; tensor: vocabulary and MLP width split), and no activation is held whole on a device.

Before the step was traced under the mesh and the rules, every `with_logical_constraint` was skipped
(0 constraints) and under fsdp=8 every device computed the whole batch's logits. Runs in a subprocess so
the device-count flag never leaks into other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

B, L, D, F, V = 16, 32, 64, 192, 512  # d_ff and vocab differ so their split widths are told apart

SCRIPT = textwrap.dedent(
    f"""
    import os, json, re, collections
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from pathlib import Path
    from chinchax.configlib import load_config
    from chinchax.train.config import ExperimentConfig
    from chinchax.sharding import make_mesh
    from chinchax.train import programs as programs_lib
    from chinchax.train import step as step_lib

    assert jax.device_count() == 8
    repo = Path({str(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))!r})
    base = ["model.d_model={D}", "model.n_layers=2", "model.n_heads=4", "model.d_ff={F}", "model.max_len={L}",
            "model.vocab_size={V}", "data.seq_len={L}", "trainer.batch_size={B}", "trainer.progress_bar=false"]
    out = {{}}
    for name, shape, extra in [("data", (8, 1, 1), []), ("fsdp", (1, 8, 1), []), ("tensor", (4, 1, 2), []),
                               ("fsdp_micro", (1, 4, 2), ["trainer.microbatches=2"])]:
        cfg = load_config(ExperimentConfig, repo / "experiments" / "tiny.yaml",
                          [*base, *extra, f"trainer.mesh={{list(shape)}}"])
        mesh = make_mesh(cfg.trainer.mesh)
        programs = programs_lib.programs_for(cfg, mesh)  # what train() does
        sharding = step_lib.batch_sharding(mesh)
        batch = {{k: jax.ShapeDtypeStruct(({B}, {L}), jnp.float32 if k == "loss_weights" else jnp.int32,
                                          sharding=sharding) for k in ("inputs", "targets", "loss_weights")}}
        lowered = programs.train_step(batch.keys()).lower(programs.abstract, batch, jnp.float32(1e-3))
        constraints = [re.search(r"<@mesh, (.*?)>", line).group(1)
                       for line in lowered.as_text().splitlines() if "sharding_constraint" in line]
        compiled = lowered.compile()
        hlo = compiled.as_text()
        memory = compiled.memory_analysis()
        eval_text = programs.eval_step(batch.keys()).lower(programs.abstract["params"], batch).as_text()
        out[name] = {{
            "constraints": constraints,
            "eval_constraints": eval_text.count("sharding_constraint"),
            "collectives": {{c: len(re.findall(r"\\b" + c + r"(?:-start)?\\(", hlo))
                            for c in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")}},
            "f32_shapes": sorted(set(re.findall(r"f32\\[(\\d+,\\d+,\\d+)\\]", hlo))),
            "argument_bytes": memory.argument_size_in_bytes,
            "state_bytes": sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(programs.abstract)),
            "batch_bytes_per_device": 3 * {B} * {L} * 4 // (mesh.shape["data"] * mesh.shape["fsdp"]),
        }}

    # Decoding outside the trainer (chinchax generate / eval): sharding.model_context of a loaded model.
    from chinchax.model.decoding import CACHE_AXES, SamplingConfig, generate, init_cache
    from chinchax.sharding import logical_to_spec, model_context
    cfg = load_config(ExperimentConfig, repo / "experiments" / "tiny.yaml", [*base, "trainer.mesh=[4,1,2]"])
    programs = programs_lib.programs_for(cfg, make_mesh(cfg.trainer.mesh))
    model = programs.parts.merge(programs.init_state(cfg)["params"])
    model.eval()
    plain = jax.jit(lambda: init_cache(model, 8, 16))()
    with model_context(model):
        cache = jax.jit(lambda: init_cache(model, 8, 16))()
        prompts = [[2, 11 + b, 12, 13] for b in range(8)]
        tokens_ctx = generate(model, prompts, SamplingConfig(max_new_tokens=3, temperature=0.0)).tokens.tolist()
    tokens_plain = generate(model, prompts, SamplingConfig(max_new_tokens=3, temperature=0.0)).tokens.tolist()
    pad = lambda spec: [str(a) for a in tuple(spec) + (None,) * (5 - len(spec))]
    expected = jax.sharding.NamedSharding(make_mesh(cfg.trainer.mesh), logical_to_spec(CACHE_AXES))
    out["decode"] = {{"cache_spec": pad(cache["k"].sharding.spec),
                     "as_rules": cache["k"].sharding.is_equivalent_to(expected, 5), "plain_spec": type(plain["k"].sharding).__name__,
                     "expected": pad(logical_to_spec(CACHE_AXES)), "same_tokens": tokens_ctx == tokens_plain}}
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def result():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-5000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


RESIDUAL = '[{"data", "fsdp"}, {}, {}]'  # (batch, length, embed): batch over data x fsdp, embed whole
LOGITS = '[{"data", "fsdp"}, {}, {"tensor"}]'  # (batch, length, vocab)


@pytest.mark.parametrize("mesh", ["data", "fsdp", "tensor", "fsdp_micro"])
def test_the_trainers_step_carries_the_logical_constraints(result, mesh):
    constraints = result[mesh]["constraints"]
    # one per block input/output of the scanned stack, the final residual, the step's logits (fwd + bwd)
    assert len(constraints) >= 8, constraints
    assert constraints.count(RESIDUAL) >= 4 and constraints.count(LOGITS) >= 2, constraints
    assert result[mesh]["eval_constraints"] >= 3


def test_microbatches_are_constrained_to_the_data_shards(result):
    batch_rows = '[{"data", "fsdp"}, {}]'  # each microbatch's (batch, length) inputs inside the scan
    assert result["fsdp_micro"]["constraints"].count(batch_rows) >= 3


def test_each_mesh_axis_communicates_as_it_should(result):
    data, fsdp, tensor = (result[m]["collectives"] for m in ("data", "fsdp", "tensor"))
    assert data["all-reduce"] >= 1 and data["all-gather"] == 0  # gradients summed; parameters already whole
    assert fsdp["all-gather"] >= 1  # parameters gathered where they are used
    assert tensor["all-reduce"] >= 1  # partial sums of the tensor-split matmuls


def test_fsdp_splits_parameters_and_optimizer_state(result):
    data, fsdp = result["data"], result["fsdp"]
    # data parallel: every device holds the whole state; fsdp=8: at most a sixth of it (norm scales and
    # other small vectors may stay whole).
    assert data["argument_bytes"] >= data["state_bytes"]
    per_device_state = fsdp["argument_bytes"] - fsdp["batch_bytes_per_device"]
    assert per_device_state <= data["state_bytes"] / 6, (per_device_state, data["state_bytes"])


def test_no_device_computes_the_whole_batch_under_fsdp(result):
    shapes = result["fsdp"]["f32_shapes"]
    assert f"{B // 8},{L},{D}" in shapes and f"{B // 8},{L},{V}" in shapes  # residual stream and logits
    whole_batch = [s for s in shapes if s.startswith(f"{B},{L},")]
    assert not whole_batch, whole_batch  # unconstrained, XLA gave every device all 16 rows' logits


def test_tensor_parallel_activations_are_split_as_the_rules_say(result):
    shapes = result["tensor"]["f32_shapes"]
    rows = B // 4
    assert f"{rows},{L},{V // 2}" in shapes  # logits: vocab over tensor
    assert f"{rows},{L},{F // 2}" in shapes  # MLP hidden: mlp over tensor
    assert f"{rows},{L},{D}" in shapes  # residual stream: embed whole
    for whole in (f"{rows},{L},{V}", f"{rows},{L},{F}"):
        assert whole not in shapes, (whole, shapes)


def test_decoding_outside_the_trainer_runs_under_the_models_mesh(result):
    decode = result["decode"]
    assert decode["as_rules"], decode  # KV cache: batch over data x fsdp, as the rules say
    assert decode["cache_spec"][1] != "None"
    assert decode["plain_spec"] == "SingleDeviceSharding"  # without the context the constraint was skipped
    assert decode["same_tokens"]


def test_optimizer_state_shards_like_its_params_by_optax():
    """optax.tree_map_params finds Adam's mu and nu (inside clip + masked weight decay) and gives them their
    parameters' specs; the counters stay replicated. The path-suffix matcher (kept for states whose params
    are not the model's tree) agrees leaf for leaf."""
    import jax
    from jax.sharding import PartitionSpec

    from chinchax.model.config import load_model_config
    from chinchax.sharding import make_mesh
    from chinchax.train import state as state_lib
    from chinchax.train.config import OptimizerConfig
    from chinchax.train.optimizer import make_optimizer

    cfg = load_model_config("tiny-gpt2", ["d_model=16", "n_layers=1", "n_heads=2", "d_ff=32", "vocab_size=128",
                                          "max_len=16"])
    mesh = make_mesh((1, 1, 1))
    parts = state_lib.model_parts(cfg, mesh, 0)
    tx, _ = make_optimizer(OptimizerConfig(clip_norm=1.0), 10, parts.decay_mask)
    with jax.set_mesh(mesh):
        abs_state = jax.eval_shape(state_lib.make_init_fn(cfg, tx, 0))
    got = state_lib.state_shardings(abs_state, parts.param_specs, mesh, tx)
    assert jax.tree.structure(got) == jax.tree.structure(abs_state)
    adam = got["opt_state"][1][0]
    param_specs = [s.spec for s in jax.tree.leaves(got["params"])]
    assert [s.spec for s in jax.tree.leaves(adam.mu)] == [s.spec for s in jax.tree.leaves(adam.nu)] == param_specs
    assert any(spec != PartitionSpec() for spec in param_specs)  # the check has split specs to compare
    assert adam.count.spec == got["step"].spec == PartitionSpec()
    legacy = state_lib._suffix_matched_shardings(abs_state, parts.param_specs, mesh)
    assert [s.spec for s in jax.tree.leaves(got)] == [s.spec for s in jax.tree.leaves(legacy)]
