"""The device mesh and the one table that maps logical axis names to mesh axes.

The model names axes logically (`batch`, `length`, `embed`, `mlp`, `heads`, `kv`, `kv_heads`, `vocab`,
`layers`); only this file knows the mesh axes `('data', 'fsdp', 'tensor')`:
- `data`: pure data parallelism (parameters replicated);
- `fsdp`: data parallelism with parameters and optimizer state sharded along `embed` (ZeRO-3 style);
- `tensor`: Megatron-style tensor parallelism over heads, MLP width and vocabulary.
Rules are tried in order; a mesh axis already used by an earlier dimension is skipped, so an activation
`('batch', 'length', 'embed')` shards batch over data+fsdp and leaves embed whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

from chinchax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", None),  # often fewer KV heads than tensor shards (MQA/GQA): keep them whole
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),
)


def resolve_mesh_shape(shape: Sequence[int], n_devices: int | None = None) -> tuple[int, ...]:
    """Fill one -1 entry so the product is the device count; reject shapes that cannot fit."""
    n_devices = jax.device_count() if n_devices is None else n_devices
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise UserError(f"mesh shape {shape} must have {len(MESH_AXES)} entries for axes {MESH_AXES}")
    if shape.count(-1) > 1:
        raise UserError(f"mesh shape {shape} has more than one -1; at most one axis can be filled in")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known <= 0 or n_devices % known:
            raise UserError(f"mesh shape {shape} cannot be filled: {n_devices} devices are not divisible by {known}")
        shape = tuple(n_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != n_devices or min(shape) < 1:
        raise UserError(
            f"mesh shape {dict(zip(MESH_AXES, shape, strict=True))} needs {math.prod(shape)} devices but {n_devices} are "
            "available; use -1 for one axis to fill the rest"
        )
    return shape


def make_mesh(shape: Sequence[int] = (-1, 1, 1)) -> jax.sharding.Mesh:
    shape = resolve_mesh_shape(shape)
    # Auto axes: the logical-rules machinery of flax needs them (Explicit is jax.make_mesh's default).
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[str | None]) -> jax.sharding.PartitionSpec:
    import flax.linen as nn

    return nn.logical_to_mesh_axes(tuple(names), LOGICAL_AXIS_RULES)


def single_device_mesh() -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)


def create_sharded(make_module, mesh: jax.sharding.Mesh):
    """Build an nnx module with every parameter created directly in its shard (never whole on one device).

    `make_module()` constructs the module (e.g. `lambda: Transformer(cfg, rngs=nnx.Rngs(0))`); its
    parameters' logical axis names are mapped to `mesh` by LOGICAL_AXIS_RULES.
    """
    import flax.linen as nn
    from flax import nnx

    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        abstract = nnx.eval_shape(make_module)
        graphdef, abstract_state = nnx.split(abstract)
        shardings = nnx.get_named_sharding(abstract_state, mesh)

        def init():
            return nnx.split(make_module())[1]

        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


def model_context(model):
    """The mesh a model's parameters live on + the logical axis rules, as one context manager: jitted
    forward, scoring and decoding passes traced inside it turn the model's logical constraints (residual
    stream, logits, KV cache) into sharding constraints; outside it flax skips them silently. A model
    whose parameters are not on a named mesh (one device, host arrays) gets the rules alone, where the
    constraints are no-ops anyway. The trainer's own steps enter this context while tracing
    (chinchax.train.step.in_mesh); this is for callers of the model outside the trainer."""
    import contextlib

    import flax.linen as nn
    from flax import nnx

    stack = contextlib.ExitStack()
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    mesh = getattr(getattr(params[0], "sharding", None), "mesh", None) if params else None
    if isinstance(mesh, jax.sharding.Mesh) and mesh.axis_names == MESH_AXES:
        stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(LOGICAL_AXIS_RULES))
    return stack
