"""Building blocks: norms, embeddings, the MLP, and the parameter helper that attaches logical axes.

Every parameter carries logical axis names (`embed`, `mlp`, `heads`, `kv`, `kv_heads`, `vocab`,
`layers`); `chinchax.sharding` maps them to mesh axes. Parameters are float32; `dtype` is the
compute dtype (activations and matmul inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from chinchax.model.config import ModelConfig

Initializer = nnx.initializers.Initializer


def param(rngs: nnx.Rngs, init: Initializer, shape: tuple[int, ...], names: tuple[str | None, ...]) -> nnx.Param:
    """A float32 parameter with logical axis names. It is sharded later, by the trainer's jit
    (eager_sharding=False), so the model can also be built with no mesh (tests, counting, export)."""
    assert len(shape) == len(names), (shape, names)
    return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=names, eager_sharding=False)


def compute_dtype(cfg: ModelConfig | str):
    """The dtype of activations and matmul inputs, from a config or its `dtype` string: the one place that
    maps "bfloat16"/"float32" to a jnp dtype (the model and its KV cache; a dtype string serves callers
    outside model/, such as the MFU matmul peak)."""
    name = cfg if isinstance(cfg, str) else cfg.dtype
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def project(
    x: jax.Array, w: jax.Array, n_in: int = 1, preferred_element_type=None, adapter: LoraAdapter | None = None
) -> jax.Array:
    """x [..., *I] · w [*I, *O] -> [..., *O] (I = w's first `n_in` axes) as one 2-D matmul over the
    flattened tokens. Written as a 3-D einsum ("BLD,DF->BLF") the same product differentiates into dots
    contracting two axes at once, which XLA:CPU runs through a slow path: the gradient of a d_model 48 MLP
    input projection took 2.7 ms instead of 0.63 (docs/benchmarks.md). Reshapes of contiguous axes are free.
    With a LoRA `adapter` of this kernel: x·w + s·dropout(x)·A·B (the plain model passes none)."""
    ins, outs = w.shape[:n_in], w.shape[n_in:]
    lead = x.shape[: x.ndim - n_in]
    size_in, size_out = int(np.prod(ins)), int(np.prod(outs))
    y = jnp.dot(x.reshape(-1, size_in), w.reshape(size_in, size_out), preferred_element_type=preferred_element_type)
    y = y.reshape(*lead, *outs)
    if adapter is not None:
        y = y + adapter(x, n_in).astype(y.dtype)
    return y


@jax.custom_vjp
def tied_logits(x_BLD: jax.Array, embedding_VD: jax.Array) -> jax.Array:
    """x · Eᵀ -> float32 logits [B, L, V]: the output head tied to the input embedding.

    The same product as `project(x, E.T)`; what differs is the embedding's gradient, g_TVᵀ · x_TD. XLA:CPU
    runs that [V, D] product, narrow and contracting over the tokens, several times slower than the [D, V]
    one, x_TDᵀ · g_TV, transposed after (the head's gradient was the largest op of a d_model 16 step; whole
    steps of the demo's models, one core: d_model 8 1.75 -> 1.31 ms, 16 2.27 -> 1.88, 24 3.26 -> 2.89, 80
    12.4 -> 11.7); the barrier keeps XLA from folding the transpose back into the dot."""
    lead, D = x_BLD.shape[:-1], x_BLD.shape[-1]
    logits_TV = jnp.dot(x_BLD.reshape(-1, D), embedding_VD.T, preferred_element_type=jnp.float32)
    return logits_TV.reshape(*lead, embedding_VD.shape[0])


def _tied_logits_fwd(x_BLD, embedding_VD):
    return tied_logits(x_BLD, embedding_VD), (x_BLD, embedding_VD)


def _tied_logits_bwd(residuals, g_BLV):
    x_BLD, embedding_VD = residuals
    D = x_BLD.shape[-1]
    x_TD, g_TV = x_BLD.reshape(-1, D), g_BLV.reshape(-1, embedding_VD.shape[0]).astype(x_BLD.dtype)
    dx_TD = jnp.dot(g_TV, embedding_VD, preferred_element_type=jnp.float32).astype(x_BLD.dtype)
    tokens = ((0,), (0,)), ((), ())
    dembedding_DV = jax.lax.dot_general(x_TD, g_TV, tokens, preferred_element_type=jnp.float32)
    dembedding_VD = jnp.transpose(jax.lax.optimization_barrier(dembedding_DV)).astype(embedding_VD.dtype)
    return dx_TD.reshape(x_BLD.shape), dembedding_VD


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


# --- LoRA adapters (fine-tuning only: chinchax.posttrain builds the model with a LoraSpec) -------------

LORA_DROPOUT_STREAM = "lora_dropout"  # the nnx.Rngs stream of the adapters' input dropout


@dataclass(frozen=True)
class LoraSpec:
    """Which kernels carry a LoRA adapter (names among q k v o wi wi_linear wo) and its rank, scale
    (alpha / rank) and input dropout. Hashable: it sits in the graph definition, not in the state."""

    rank: int
    scale: float
    dropout: float
    targets: frozenset[str]


class LoraAdapter(nnx.Module):
    """peft's LoRA branch of one kernel w [*I, *O]: s · dropout(x)·A·B with A [*I, r], B [r, *O].

    Dropout acts on the branch's input only (peft's `lora_dropout`); the base product x·w is never dropped.
    A and B are created as zeros here: a fine-tune fills them from its trainable state
    (chinchax.posttrain.adapters.init_adapters), so building the model draws nothing from the `params`
    stream and the base's dropout streams stay those of the plain model. The dropout draws from its own
    stream, LORA_DROPOUT_STREAM (each call a fresh key: q, k and v of one input get independent masks, as
    peft's separate q_proj/k_proj/v_proj modules do)."""

    def __init__(self, w_shape, w_names, n_in: int, spec: LoraSpec, *, rngs: nnx.Rngs):
        ins, outs = tuple(w_shape[:n_in]), tuple(w_shape[n_in:])
        r = spec.rank
        names_in, names_out = tuple(w_names[:n_in]), tuple(w_names[n_in:])
        self.a = nnx.Param(jnp.zeros((*ins, r), jnp.float32), out_sharding=(*names_in, None), eager_sharding=False)
        self.b = nnx.Param(jnp.zeros((r, *outs), jnp.float32), out_sharding=(None, *names_out), eager_sharding=False)
        self.scale = spec.scale
        # rate 0: no stream at all (nothing to draw), so dropout-free adapters add no RNG state
        stream = rngs if spec.dropout > 0 else None
        self.dropout = nnx.Dropout(spec.dropout, rngs=stream, rng_collection=LORA_DROPOUT_STREAM)

    def __call__(self, x: jax.Array, n_in: int) -> jax.Array:
        dtype = x.dtype
        h = project(self.dropout(x), self.a[...].astype(dtype), n_in)
        return project(h * jnp.asarray(self.scale, dtype), self.b[...].astype(dtype))


def lora_adapters(module: nnx.Module, lora: LoraSpec | None, kernels: dict, rngs: nnx.Rngs) -> None:
    """Attach `{name}_lora` to `module` for each `name: (kernel shape, logical names, n_in)` in `kernels`
    that `lora` targets."""
    if lora is None:
        return
    for name, (shape, names, n_in) in kernels.items():
        if name in lora.targets:
            setattr(module, f"{name}_lora", LoraAdapter(shape, names, n_in, lora, rngs=rngs))


def dense_init(fan_in_axes: int = 1, scale: float = 1.0) -> Initializer:
    # Fan-in scaled normal (LeCun), over the leading `fan_in_axes` axes, as in T5X/Gemma. Flax counts the axes
    # between the fan-in axes and the last as a receptive field: q_DHK's variance is scale / (D·H), not 1/D.
    return nnx.initializers.variance_scaling(scale, "fan_in", "truncated_normal", in_axis=tuple(range(fan_in_axes)))


class Norm(nnx.Module):
    """LayerNorm (scale and bias) or RMSNorm (scale only), computed in float32."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, kind: str | None = None):
        self.kind = kind or cfg.norm
        self.eps = cfg.norm_eps
        self.scale = param(rngs, nnx.initializers.ones, (cfg.d_model,), ("embed",))
        if self.kind == "layernorm":
            self.bias = param(rngs, nnx.initializers.zeros, (cfg.d_model,), ("embed",))

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        x = x_BLD.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdims=True)
        x = x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + self.eps)
        x = x * self.scale[...]
        if self.kind == "layernorm":
            x = x + self.bias[...]
        return x.astype(x_BLD.dtype)


def gelu_exact(x: jax.Array) -> jax.Array:
    """x·Φ(x) written with `lax.erf`, as PyTorch/HF define it. `jax.nn.gelu(approximate=False)` goes
    through erfc, whose expansion XLA:CPU can't fuse well: the MLP's forward and backward took 1.45x as
    long (measured here, d512 x 2048, float32)."""
    return x * 0.5 * (1.0 + jax.lax.erf(x * np.float32(1 / np.sqrt(2))).astype(x.dtype))


def activation_fn(name: str):
    return {
        "gelu": gelu_exact,
        "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "swiglu": jax.nn.silu,
        "geglu": gelu_exact,
        "geglu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    }[name]


class Mlp(nnx.Module):
    """d_model -> d_ff -> d_model; gated variants (SwiGLU, GeGLU) multiply act(x·wi) by x·wi_gate."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs, lora: LoraSpec | None = None):
        self.cfg = cfg
        D, F = cfg.d_model, cfg.d_ff
        self.wi_DF = param(rngs, dense_init(), (D, F), ("embed", "mlp"))
        if cfg.gated:
            self.wi_linear_DF = param(rngs, dense_init(), (D, F), ("embed", "mlp"))
        self.wo_FD = param(rngs, dense_init(), (F, D), ("mlp", "embed"))
        if cfg.use_bias:
            self.bi_F = param(rngs, nnx.initializers.zeros, (F,), ("mlp",))
            self.bo_D = param(rngs, nnx.initializers.zeros, (D,), ("embed",))
        kernels = {"wi": ((D, F), ("embed", "mlp"), 1), "wo": ((F, D), ("mlp", "embed"), 1)}
        if cfg.gated:
            kernels["wi_linear"] = ((D, F), ("embed", "mlp"), 1)
        lora_adapters(self, lora, kernels, rngs)

    def __call__(self, x_BLD: jax.Array) -> jax.Array:
        dtype = x_BLD.dtype
        h_BLF = project(x_BLD, self.wi_DF[...].astype(dtype), adapter=getattr(self, "wi_lora", None))
        if self.cfg.use_bias:
            h_BLF = h_BLF + self.bi_F[...].astype(dtype)
        h_BLF = activation_fn(self.cfg.activation)(h_BLF)
        if self.cfg.gated:
            gate_lora = getattr(self, "wi_linear_lora", None)
            h_BLF = h_BLF * project(x_BLD, self.wi_linear_DF[...].astype(dtype), adapter=gate_lora)
        out_BLD = project(h_BLF, self.wo_FD[...].astype(dtype), adapter=getattr(self, "wo_lora", None))
        if self.cfg.use_bias:
            out_BLD = out_BLD + self.bo_D[...].astype(dtype)
        return out_BLD
