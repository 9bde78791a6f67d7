"""LoRA adapters on chinchax parameters: peft's LoRA, y = x·W + (alpha / r) · dropout(x)·A·B.

A weight with input axes I and output axes O (the model's kernels: q_DHK, k_DGK, v_DGK, o_HKD, wi_DF,
wi_linear_DF, wo_FD; scanned blocks add a leading layers axis Y) gets A of shape [Y, *I, r] (uniform
±1/sqrt(fan_in), as peft's kaiming_uniform(a=sqrt 5)) and B of shape [Y, r, *O] (zeros), so training
starts from the base model exactly.

Training runs the adapters in activation space, inside the model: `Transformer(cfg, lora=LoraSpec)` gives
each adapted kernel's module a `{name}_lora` (model/layers.LoraAdapter) and `layers.project` adds
s·dropout(x)·A·B beside x·W (self-attention's fused q|k|v matmul adds the q, k and v adapters after it).
`place` puts the fine-tune's trainable A, B into that model's params. LoRA dropout (peft's `lora_dropout`)
needs this form: it masks the adapter's input activations, which no weight-space update can express. It
is also the cheaper form for training: the frozen W needs no weight gradient, where a merged W' = W + s·A·B
needs x^T·dy, a full [I, O] product over every token (docs/finetuning.md). `merge` (weight space) remains
for export: the merged model is the plain model with W + s·A·B, peft's `merge_and_unload`.

Why not qwix's `LoraProvider` (measured with qwix 0.1.8, docs/finetuning.md): qwix creates its adapters on
the first call from inside the model, and inside the model's `nnx.scan` over layers that raises
(IndexError from lax.scan); and it recognises a weight by identity among the module's params, so
self-attention's fused q|k|v matmul (a concatenation, not a param) would silently get no adapter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from chinchax.errors import UserError
from chinchax.model.layers import LoraSpec

# target name -> kernel leaf name, and how many of its leading (non-layer) axes are inputs
TARGET_KERNELS = {
    "q": ("q_DHK", 1),
    "k": ("k_DGK", 1),
    "v": ("v_DGK", 1),
    "o": ("o_HKD", 2),
    "wi": ("wi_DF", 1),
    "wi_linear": ("wi_linear_DF", 1),
    "wo": ("wo_FD", 1),
}
TARGET_GROUPS = {"attention": ("q", "k", "v", "o"), "mlp": ("wi", "wi_linear", "wo")}
KERNEL_INPUT_AXES = dict(TARGET_KERNELS.values())
LEAF_TARGET = {leaf: name for name, (leaf, _) in TARGET_KERNELS.items()}


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    # q, k, v, o, wi, wi_linear, wo, or the groups "attention" (q k v o) and "mlp" (wi wi_linear wo)
    targets: tuple[str, ...] = ("q", "v")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> LoraConfig:
        if self.rank <= 0:
            raise UserError(f"finetune.lora.rank={self.rank} must be a positive integer (typical: 4-64)")
        if not 0.0 <= self.dropout < 1.0:  # also refuses NaN
            raise UserError(
                f"finetune.lora.dropout={self.dropout} is not a dropout rate: it is the probability of zeroing an "
                "input of the LoRA branch and must lie in [0, 1). Set finetune.lora.dropout=0.05 or 0.1 (peft's "
                "usual values), or 0 for none"
            )
        known = set(TARGET_KERNELS) | set(TARGET_GROUPS)
        bad = [t for t in self.targets if t not in known]
        if bad or not self.targets:
            raise UserError(
                f"finetune.lora.targets={list(self.targets)}: {bad or 'empty'} names no module; choose among "
                f"{', '.join(sorted(known))}"
            )
        return self


@dataclass(frozen=True)
class AdaptedWeight:
    path: str  # dotted path of the base kernel, e.g. decoder.blocks.self_attention.q_DHK
    n_in: int  # input axes after the layers axis
    layered: bool  # has a leading layers axis (scanned blocks)
    shape: tuple[int, ...] = field(default=())

    def in_out(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        lead = self.shape[:1] if self.layered else ()
        rest = self.shape[len(lead) :]
        return lead, rest[: self.n_in], rest[self.n_in :]


def expand_targets(targets) -> list[str]:
    out: list[str] = []
    for t in targets:
        for name in TARGET_GROUPS.get(t, (t,)):
            if name not in out:
                out.append(name)
    return out


def find_targets(flat_shapes: dict[str, tuple[int, ...]], lora: LoraConfig) -> list[AdaptedWeight]:
    """The base kernels the config adapts; a target the model does not have is a UserError."""
    lora.validate()
    found: list[AdaptedWeight] = []
    for name in expand_targets(lora.targets):
        leaf, n_in = TARGET_KERNELS[name]
        hits = sorted(p for p in flat_shapes if p.split(".")[-1] == leaf)
        if not hits:
            if name == "wi_linear" and any(t == "mlp" for t in lora.targets):
                continue  # the group "mlp" on a non-gated MLP: nothing to adapt there, not an error
            raise UserError(
                f"finetune.lora.targets names {name!r} but the model has no {leaf} (a gated MLP's second input "
                "projection exists only for swiglu/geglu models); remove it from finetune.lora.targets"
            )
        for p in hits:
            found.append(AdaptedWeight(p, n_in, ".blocks." in f".{p}", tuple(flat_shapes[p])))
    for w in found:
        _, ins, outs = w.in_out()
        width = min(math.prod(ins), math.prod(outs))
        if lora.rank > width:
            raise UserError(
                f"finetune.lora.rank={lora.rank} is above the width of {w.path} (in {math.prod(ins)}, out "
                f"{math.prod(outs)}): a rank above {width} adds nothing a full update lacks. Set "
                f"finetune.lora.rank <= {width}"
            )
    return found


def init_adapters(weights: list[AdaptedWeight], rank: int, key: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """{path: {"a": [Y?, *I, r], "b": [Y?, r, *O]}}: A uniform ±1/sqrt(fan_in) (peft's default), B zeros."""
    out = {}
    for i, w in enumerate(weights):
        lead, ins, outs = w.in_out()
        bound = 1.0 / math.sqrt(math.prod(ins))
        a = jax.random.uniform(jax.random.fold_in(key, i), (*lead, *ins, rank), jnp.float32, -bound, bound)
        out[w.path] = {"a": a, "b": jnp.zeros((*lead, rank, *outs), jnp.float32)}
    return out


def delta(w: AdaptedWeight, a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """s · A·B in the kernel's shape (float32)."""
    lead, ins, outs = w.in_out()
    Y = lead[0] if lead else 1
    r = a.shape[-1]
    a_YIR = a.reshape(Y, math.prod(ins), r)
    b_YRO = b.reshape(Y, r, math.prod(outs))
    d_YIO = jnp.einsum("YIR,YRO->YIO", a_YIR, b_YRO, preferred_element_type=jnp.float32)
    return (scale * d_YIO).reshape(w.shape)


def model_spec(lora: LoraConfig, weights: list[AdaptedWeight]) -> LoraSpec:
    """What `Transformer(cfg, lora=...)` needs to build the adapter modules of `weights`."""
    names = {LEAF_TARGET[w.path.split(".")[-1]] for w in weights}
    return LoraSpec(lora.rank, lora.scale, float(lora.dropout), frozenset(names))


def adapter_path(kernel_path: str) -> str:
    """The adapter module of a kernel: decoder.blocks.self_attention.q_DHK -> ...self_attention.q_lora."""
    module, leaf = kernel_path.rsplit(".", 1) if "." in kernel_path else ("", kernel_path)
    name = f"{LEAF_TARGET[leaf]}_lora"
    return f"{module}.{name}" if module else name


def place(flat_base: dict, adapters: dict, weights: list[AdaptedWeight]) -> dict:
    """The flat params of the adapted model (`model_spec`): the base's, plus each kernel's A and B at its
    adapter module (a new dict; the base is not changed)."""
    placed = dict(flat_base)
    for w in weights:
        module = adapter_path(w.path)
        placed[f"{module}.a"] = adapters[w.path]["a"]
        placed[f"{module}.b"] = adapters[w.path]["b"]
    return placed


def merge(flat_base: dict, adapters: dict, weights: list[AdaptedWeight], scale: float) -> dict:
    """Base kernels with their adapters added, W + s·A·B: the plain model's params for export (a new flat
    dict; the base is not changed). Equal to the adapted model in eval mode (no dropout)."""
    merged = dict(flat_base)
    for w in weights:
        ab = adapters[w.path]
        merged[w.path] = flat_base[w.path] + delta(w, ab["a"], ab["b"], scale).astype(flat_base[w.path].dtype)
    return merged


def count(adapters: dict) -> int:
    return int(sum(np.size(x) for ab in adapters.values() for x in ab.values()))


def lora_model(cfg, flat_params: dict, spec: LoraSpec, *, seed: int = 0):
    """A Transformer with LoRA adapters `spec` holding `flat_params` (the flat dict of `place`): to score
    or inspect a fine-tune's unmerged model (the trainer builds its own, finetune_programs.adapted_parts)."""
    from flax import nnx

    from chinchax.model import Transformer
    from chinchax.model.convert.hf import params_state, unflatten
    from chinchax.model.layers import LORA_DROPOUT_STREAM

    def make():
        streams = {"params": seed, "dropout": seed + 1, LORA_DROPOUT_STREAM: seed + 2}
        return Transformer(cfg, rngs=nnx.Rngs(**streams), lora=spec)

    graphdef, abstract, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    rest = jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[2])()
    return nnx.merge(graphdef, params_state(abstract, unflatten(dict(flat_params))), rest)
