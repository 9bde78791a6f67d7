"""Standard (SP) and maximal-update (µP) parametrization, with depth scaling of residual branches.

µP (Yang et al. 2022, Tensor Programs V, its Adam table in the form microsoft/mup implements) makes the best
hyperparameters of a small base model the best of a wide one. Relative to base shapes (`mup_base_d_model`,
`mup_base_n_layers`: each defaults to the model's own; `mup_base_head_dim`: defaults to `head_dim` when that is
set, the head size then staying fixed as heads are added, else to base d_model / n_heads) with width multiplier
m_N = d_model / base d_model and depth multiplier m_L = n_layers / base n_layers:

| parameters | init | Adam lr | Adam eps | forward |
|---|---|---|---|---|
| hidden matrices (q k v o, MLP, BERT's head dense) | var 1/fan_in (as SP) | × 1/m_N | × 1/m_N | |
| embeddings, position and token-type tables, T5's bias table, norm gains, biases | as SP | × 1 | × 1/m_N | |
| the readout (tied or untied) | as SP, or zero (`mup_zero_readout`, untied) | × 1 | × 1/m_N | logits × out_mult / m_N |
| queries | as SP, or zero (`mup_zero_query`) | as hidden | as hidden | attention logits × 1/d_head (SP: 1/sqrt(d_head)) |

Every gradient of a µP model shrinks as 1/m_N (the readout's multiplier reaches all of them through the
backward pass), so Adam's eps must shrink with them, or it swamps the update at large width (Everett et al.
2024). Depth (CompleteP, Dey et al. 2025; depth-µP at alpha = 1/2): every residual branch is multiplied by
m_L^-alpha; parameters inside the blocks then take lr × m_L^(alpha - 1) and eps × m_L^-alpha, because their
gradients carry the branch multiplier. An encoder-decoder's two stacks share n_layers' m_L.

q, k and v are [D, heads, head size] and their SP init (flax's fan-in scaling) has variance 1/(D·heads): µP keeps
1/D·(1/base heads), the variance at the base shapes over the fan-in D, so a width that adds heads does not shrink
the queries (init × heads / base heads; base heads = base d_model / base head size).

The attention scale is sqrt(base d_head) / d_head: 1/sqrt(d_head) at the base head size, 1/d_head in shape.
At the base shapes every multiplier is exactly 1 and the model, its init and its training are SP's, bitwise
(the model and the optimizer skip a multiply by 1; tests/test_model_mup.py).

Eps is scaled by scaling the gradients instead: Adam's update m/(sqrt(v) + eps) is the same for gradients g/s
and eps as for g and eps·s, and optax's adamw takes one eps for all parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from chinchax.model.config import ModelConfig

# Vocabulary-sized and position tables, and T5's relative bias: "vector-like" (one dimension grows with width).
TABLES = frozenset(
    {"embedding_VD", "unembedding_DV", "output_bias_V", "position_embedding_PD", "token_type_embedding_TD", "table_RH"}
)


@dataclass(frozen=True)
class Multipliers:
    """The forward multipliers of a config (all exactly 1.0 under SP and at µP's base shapes)."""

    width: float  # m_N = d_model / base d_model
    depth: float  # m_L = n_layers / base n_layers
    branch: float  # residual branches × m_L^-alpha
    logits: float  # the readout's input × output multiplier / m_N
    attention_scale: float  # attention logits × this
    qkv_init: float  # q, k, v init variance × this: heads / base heads (see the module docstring)


def multipliers(cfg: ModelConfig) -> Multipliers:
    sp_scale = 1.0 / math.sqrt(cfg.head_size) if cfg.scale_attention else 1.0
    if cfg.parametrization == "sp":
        return Multipliers(1.0, 1.0, 1.0, 1.0, sp_scale, 1.0)
    base_d = cfg.mup_base_d_model or cfg.d_model
    width = cfg.d_model / base_d
    depth = cfg.n_layers / (cfg.mup_base_n_layers or cfg.n_layers)
    # The base model's head size: given; else an explicit head_dim stays fixed as the model widens (heads are
    # added); else the heads stay fixed and the head size is base d_model / n_heads.
    base_head = cfg.mup_base_head_dim or cfg.head_dim or base_d / cfg.n_heads
    # the same float as SP at the base head size: no product with an inexact 1.0
    scale = sp_scale if base_head == cfg.head_size else sp_scale * math.sqrt(base_head / cfg.head_size)
    branch = 1.0 if depth == 1.0 else depth**-cfg.mup_depth_alpha
    logits = cfg.mup_output_multiplier / width
    base_heads = base_d / base_head
    qkv_init = 1.0 if base_heads == cfg.n_heads else cfg.n_heads / base_heads
    return Multipliers(width, depth, branch, logits, scale, qkv_init)


def _role(path: tuple[str, ...], leaf_shape: tuple[int, ...]) -> tuple[bool, bool]:
    """(hidden matrix?, inside a block?) from a parameter's path in the model's pure dict."""
    name = path[-1]
    in_block = "blocks" in path
    matrix_axes = len(leaf_shape) - (1 if in_block else 0)  # blocks carry a leading `layers` axis
    vector_like = name in TABLES or "bias" in name or name == "scale" or any(p.endswith("_lora") for p in path)
    return (matrix_axes >= 2 and not vector_like), in_block


def update_scales(cfg: ModelConfig, params) -> tuple[dict, dict] | None:
    """(lr multipliers, gradient multipliers) as pure dicts like `params` (a pure dict of arrays or shapes),
    or None when every multiplier is 1 (SP, or µP at its base shapes): the optimizer then is SP's exactly.
    The gradient multiplier is 1 / (eps multiplier), see the module docstring. LoRA adapters of a fine-tune
    keep lr and eps as given (their rank does not grow with width)."""
    if cfg.parametrization == "sp":
        return None
    m = multipliers(cfg)
    alpha = cfg.mup_depth_alpha

    def scales(path, leaf):
        hidden, in_block = _role(path, tuple(np.shape(leaf)))
        if any(p.endswith("_lora") for p in path):
            return 1.0, 1.0
        lr = (1.0 / m.width if hidden else 1.0) * (m.depth ** (alpha - 1.0) if in_block else 1.0)
        eps = (1.0 / m.width) * (m.depth**-alpha if in_block else 1.0)
        return lr, 1.0 / eps

    pairs = _map_with_path(scales, params)
    lr_tree = _map_pairs(lambda pair: pair[0], pairs)
    grad_tree = _map_pairs(lambda pair: pair[1], pairs)
    values = [v for tree in (lr_tree, grad_tree) for v in _leaves(tree)]
    return None if all(v == 1.0 for v in values) else (lr_tree, grad_tree)


def _map_with_path(fn, tree, path=()):
    if isinstance(tree, dict):
        return {k: _map_with_path(fn, v, (*path, str(k))) for k, v in tree.items()}
    return fn(path, tree)


def _map_pairs(fn, tree):
    if isinstance(tree, dict):
        return {k: _map_pairs(fn, v) for k, v in tree.items()}
    return fn(tree)


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree
