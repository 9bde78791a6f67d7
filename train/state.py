"""The train state, created already sharded on the mesh.

The state is a plain pytree `{"step", "params", "opt_state"}`: `params` is the pure dict of the model's
`nnx.Param`s, `opt_state` the optax state. Plain dicts checkpoint with orbax, donate, and restore onto
any mesh. The model's other variables (dropout RNG keys and counters) are not state: they are rebuilt
from the seed, and each step folds its step number into the dropout key, so a resumed run draws the
same dropout masks as an uninterrupted one.

Sharding: the model is built abstractly (`nnx.eval_shape`) under the mesh and the logical axis rules;
`nnx.get_partition_spec` turns each parameter's logical names into a PartitionSpec; optimizer moments get
the spec of the parameter they mirror. One jitted init with these `out_shardings` then creates every
array in place on its devices (nothing is materialised whole on one device).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from chinchax.model import Transformer
from chinchax.model.config import ModelConfig
from chinchax.model.parametrization import update_scales
from chinchax.sharding import LOGICAL_AXIS_RULES

# Lookup tables (token, position, token-type embeddings; T5's relative-position bias table): no weight
# decay. The untied output projection `unembedding_DV` is an ordinary matrix and IS decayed.
NO_DECAY_TABLES = frozenset({"embedding_VD", "position_embedding_PD", "token_type_embedding_TD", "table_RH"})


@dataclasses.dataclass
class ModelParts:
    """What the train/eval steps need to rebuild the model from a params dict inside jit."""

    graphdef: Any
    rng_key_data: Any  # pure dict (numpy) of the model's RngKey variables' raw key data (dropout streams)
    other: Any  # pure dict (numpy) of the remaining non-param variables (RNG counters)
    param_specs: Any  # pure dict of PartitionSpecs, same structure as params
    decay_mask: Any  # pure dict of bools: True where weight decay applies
    # µP's (lr, gradient) multipliers per parameter (model/parametrization.update_scales); None under SP
    update_scales: Any = None

    def rng_keys(self):
        """Typed keys from the stored raw data (host numpy, so they are plain constants in any jit)."""
        return jax.tree.map(jax.random.wrap_key_data, self.rng_key_data)

    def merge(self, params, rng_keys=None) -> nnx.Module:
        # The counters as jax arrays: an RngStream draws with `count[...] += 1`, an in-place add on a numpy
        # value, and `jax.device_get` gives read-only arrays ("output array is read-only" at the first draw
        # outside an nnx.scan: the embedding dropout). Writable ones would be worse: each trace would bump
        # the shared host counters, and a retraced step would draw other masks.
        other = jax.tree.map(jnp.asarray, self.other)
        return nnx.merge(self.graphdef, params, self.rng_keys() if rng_keys is None else rng_keys, other)


def _new_model(cfg: ModelConfig, seed) -> nnx.Module:
    """`seed`: an int or a traced int32 scalar (the same keys either way, so one compiled init serves every
    seed below 2**31)."""
    return Transformer(cfg, rngs=nnx.Rngs(params=jax.random.key(seed), dropout=jax.random.key(seed + 1)))


def _split(model: nnx.Module):
    graphdef, params, rng_keys, other = nnx.split(model, nnx.Param, nnx.RngKey, ...)
    return graphdef, params, rng_keys, other


def _path_str(path) -> str:
    return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def decay_mask_from_variables(abs_params) -> Any:
    """True for weight matrices: 2+ axes besides the scanned `layers` axis, not a bias (q_bias_HK is 2-D),
    not a lookup table. Norm scales/biases are vectors and never decayed."""

    def decayed(path, var) -> bool:
        names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
        matrix_axes = [n for n in names if n != "layers"]
        leaf = _path_str(path[-1:])
        return len(matrix_axes) >= 2 and "bias" not in leaf and leaf not in NO_DECAY_TABLES

    tree = jax.tree_util.tree_map_with_path(
        decayed, abs_params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def model_parts(cfg: ModelConfig, mesh: jax.sharding.Mesh, seed: int) -> ModelParts:
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        abs_model = nnx.eval_shape(lambda: _new_model(cfg, seed))
        graphdef, abs_params, _, _ = _split(abs_model)
        specs = nnx.to_pure_dict(nnx.get_partition_spec(abs_params))
        mask = decay_mask_from_variables(abs_params)

    # The RNG variables are tiny and not trained: make them once, on the host, from the seed.
    @jax.jit
    def rng_state():
        _, _, keys, other = _split(_new_model(cfg, seed))
        return jax.tree.map(jax.random.key_data, nnx.to_pure_dict(keys)), nnx.to_pure_dict(other)

    key_data, other = jax.device_get(rng_state())
    scales = update_scales(cfg, nnx.to_pure_dict(abs_params))
    return ModelParts(graphdef, key_data, other, specs, mask, scales)


def state_shardings(abs_state, param_specs, mesh, tx: optax.GradientTransformation | None = None) -> Any:
    """NamedShardings for the whole train state: params by their specs, the optimizer's copies of the params
    (Adam's mu and nu) by the same specs (found by `optax.tree_map_params`, which knows where `tx` keeps
    them), everything else (step and Adam counters) replicated.

    Without `tx` (a state whose params are not the model's tree, e.g. posttrain's trainable/frozen split),
    optimizer leaves that mirror a parameter (same path suffix and shape) take its spec."""
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    replicated = NamedSharding(mesh, PartitionSpec())
    if tx is None:
        return _suffix_matched_shardings(abs_state, param_specs, mesh)
    params = jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs, is_leaf=is_spec)
    opt_state = optax.tree_map_params(
        tx, lambda _, spec: NamedSharding(mesh, spec), abs_state["opt_state"], param_specs,
        transform_non_params=lambda _: replicated,
    )
    return {**jax.tree.map(lambda _: replicated, abs_state), "params": params, "opt_state": opt_state}


def _suffix_matched_shardings(abs_state, param_specs, mesh) -> Any:
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    specs = jax.tree_util.tree_flatten_with_path(param_specs, is_leaf=is_spec)[0]
    shapes = jax.tree_util.tree_leaves(abs_state["params"])
    lookup = {
        tuple(_path_str([p]) for p in path): (spec, a.shape)
        for (path, spec), a in zip(specs, shapes, strict=True)
    }
    depths = sorted({len(k) for k in lookup}, reverse=True)

    def sharding_for(path, leaf):
        keys = tuple(_path_str([p]) for p in path)
        for d in depths:
            spec, shape = lookup.get(keys[-d:], (None, None))
            if spec is not None and tuple(shape) == tuple(leaf.shape):
                return NamedSharding(mesh, spec)
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(sharding_for, abs_state)


def make_seeded_init_fn(cfg: ModelConfig, tx: optax.GradientTransformation) -> Callable[[Any], dict]:
    """init(seed) -> the train state; the seed is an argument, so runs of one shape share the compiled init."""

    def init(seed):
        with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            _, params, _, _ = _split(_new_model(cfg, seed))
        params = nnx.to_pure_dict(params)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

    return init


def make_init_fn(cfg: ModelConfig, tx: optax.GradientTransformation, seed: int) -> Callable[[], dict]:
    init = make_seeded_init_fn(cfg, tx)
    return lambda: init(seed)


def init_train_state(cfg: ModelConfig, tx, parts: ModelParts, mesh, seed: int):
    """(state, shardings): the train state created sharded in place, and its NamedSharding tree."""
    init = make_init_fn(cfg, tx, seed)
    with jax.set_mesh(mesh):
        abs_state = jax.eval_shape(init)
        shardings = state_shardings(abs_state, parts.param_specs, mesh, tx)
        state = jax.jit(init, out_shardings=shardings)()
    return state, shardings


def abstract_state(cfg: ModelConfig, tx, parts: ModelParts, mesh, seed: int):
    """ShapeDtypeStructs with shardings: the target orbax restores into (any mesh)."""
    init = make_init_fn(cfg, tx, seed)
    with jax.set_mesh(mesh):
        abs_state = jax.eval_shape(init)
    shardings = state_shardings(abs_state, parts.param_specs, mesh, tx)
    return (
        jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abs_state, shardings),
        shardings,
    )
