"""LoRA adapters on chinchax parameters, applied in weight space: W' = W + (alpha / r) · A·B.

A weight with input axes I and output axes O (the model's kernels: q_DHK, k_DGK, v_DGK, o_HKD, wi_DF,
wi_linear_DF, wo_FD; scanned blocks add a leading layers axis Y) gets A of shape [Y, *I, r] (uniform
±1/sqrt(fan_in), as peft's kaiming_uniform(a=sqrt 5)) and B of shape [Y, r, *O] (zeros), so training
starts from the base model exactly. x·W' = x·W + s·x·A·B: the same output as peft's LoRA layer.

Why weight space rather than qwix's `LoraProvider` (measured with qwix 0.1.8, docs/finetuning.md): qwix
creates its adapters on the first call from inside the model, and inside the model's `nnx.scan` over
layers that raises (IndexError from lax.scan); and it recognises a weight by identity among the module's
params, so self-attention's fused q|k|v matmul (a concatenation, not a param) would silently get no
adapter. Merging A·B into the weight before the unchanged forward pass needs neither, works for every
model variant, and gives the merged model for export for free. Its cost: one [I, O] product per adapted
weight per step (r/I of a token's matmul work per weight: small next to a batch's), and LoRA dropout,
which acts on the adapter's input activations, has no weight-space form (`lora.dropout` must be 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from chinchax.errors import UserError

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
        if self.dropout != 0.0:
            raise UserError(
                f"finetune.lora.dropout={self.dropout}: LoRA dropout is not supported (adapters are merged into "
                "the weights, where input dropout has no form; docs/finetuning.md). Set finetune.lora.dropout=0"
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


def merge(flat_base: dict, adapters: dict, weights: list[AdaptedWeight], scale: float) -> dict:
    """Base kernels with their adapters added (a new flat dict; the base is not changed)."""
    merged = dict(flat_base)
    for w in weights:
        ab = adapters[w.path]
        merged[w.path] = flat_base[w.path] + delta(w, ab["a"], ab["b"], scale).astype(flat_base[w.path].dtype)
    return merged


def count(adapters: dict) -> int:
    return int(sum(np.size(x) for ab in adapters.values() for x in ab.values()))
