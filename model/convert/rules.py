"""Two-way weight mapping rules between a flat HF `state_dict` and chinchax's flat parameter dict.

A `Rule` ties some chinchax parameters (dotted paths such as `decoder.blocks.self_attention.q_DHK`) to
some HF keys, with a function each way. One rule per tensor pair, except fused projections (GPT-2's
`c_attn`, BLOOM's `query_key_value`), where one HF tensor holds three chinchax ones. `stacked` turns the
rules of one HF layer into rules over all layers, stacking along chinchax's leading `layers` axis.

Layout facts the helpers encode:
- `torch.nn.Linear.weight` is [out, in]; chinchax kernels are [in..., out...] (`q_DHK`, `o_HKD`);
- GPT-2's `Conv1D.weight` is already [in, out];
- chinchax splits head axes (`H, K`) that HF keeps flat (`H*K`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from chinchax.errors import UserError

Arrays = list[np.ndarray]
Shapes = list[tuple[int, ...]]


@dataclass(frozen=True)
class Rule:
    cx: tuple[str, ...]  # chinchax parameter paths
    hf: tuple[str, ...]  # HF state_dict keys
    to_cx: Callable[[Arrays, Shapes], Arrays]  # HF arrays + target chinchax shapes -> chinchax arrays
    to_hf: Callable[[Arrays], Arrays]  # chinchax arrays -> HF arrays
    optional: bool = False  # missing in a checkpoint -> zeros (BART's final_logits_bias buffer)


@dataclass(frozen=True)
class WeightMap:
    """All rules of one model, plus HF keys that are copies of others (tied weights)."""

    rules: list[Rule]
    ties: dict[str, str] = field(default_factory=dict)  # HF key -> the HF key it is a copy of
    aliases: dict[str, str] = field(default_factory=dict)  # HF key -> key to read when it is absent


def _in_size(shape: tuple[int, ...], n_in: int) -> int:
    return math.prod(shape[:n_in])


# --- rule helpers -----------------------------------------------------------------------------------


def copy(cx: str, hf: str) -> Rule:
    """Same layout both sides (embedding tables, norm scales, T5's [buckets, heads] table)."""
    return Rule((cx,), (hf,), lambda a, s: [a[0].reshape(s[0])], lambda x: [x[0]])


def flat(cx: str, hf: str, hf_shape: tuple[int, ...] = (-1,)) -> Rule:
    """A bias that HF keeps flat (`[H*K]`) and chinchax splits (`q_bias_HK`)."""
    return Rule((cx,), (hf,), lambda a, s: [a[0].reshape(s[0])], lambda x: [x[0].reshape(hf_shape)])


def linear(cx: str, hf: str, n_in: int = 1) -> Rule:
    """torch Linear weight [out, in] <-> chinchax kernel whose first `n_in` axes are the input."""
    return Rule(
        (cx,),
        (hf,),
        lambda a, s: [np.ascontiguousarray(a[0].T).reshape(s[0])],
        lambda x: [np.ascontiguousarray(x[0].reshape(_in_size(x[0].shape, n_in), -1).T)],
    )


def conv1d(cx: str, hf: str, n_in: int = 1) -> Rule:
    """GPT-2's Conv1D weight [in, out]: a reshape, no transpose."""
    return Rule(
        (cx,),
        (hf,),
        lambda a, s: [a[0].reshape(s[0])],
        lambda x: [x[0].reshape(_in_size(x[0].shape, n_in), -1)],
    )


def norm(
    cx: str, hf: str, *, bias: bool = True, scale_name: str = "weight", bias_name: str = "bias"
) -> list[Rule]:
    rules = [copy(f"{cx}.scale", f"{hf}.{scale_name}")]
    if bias:
        rules.append(copy(f"{cx}.bias", f"{hf}.{bias_name}"))
    return rules


def fused_concat(cx: Sequence[str], hf: str, *, kernel: bool) -> Rule:
    """GPT-2's c_attn: q, k and v concatenated along the output axis ([D, 3HK] weight, [3HK] bias)."""
    n = len(cx)

    def to_cx(a, s):
        parts = np.split(a[0], n, axis=1 if kernel else 0)
        return [p.reshape(shape) for p, shape in zip(parts, s, strict=True)]

    def to_hf(x):
        if kernel:
            return [np.concatenate([t.reshape(t.shape[0], -1) for t in x], axis=1)]
        return [np.concatenate([t.reshape(-1) for t in x])]

    return Rule(tuple(cx), (hf,), to_cx, to_hf)


def fused_interleaved(cx: Sequence[str], hf: str, *, kernel: bool) -> Rule:
    """BLOOM's query_key_value: a Linear whose output axis is laid out [H, 3, K] (q, k, v per head)."""
    n = len(cx)

    def to_cx(a, s):
        H, K = s[0][-2:]
        if kernel:  # [H*n*K, D] -> [H, n, K, D] -> each [D, H, K]
            w = a[0].reshape(H, n, K, -1)
            return [np.ascontiguousarray(w[:, j].transpose(2, 0, 1)) for j in range(n)]
        b = a[0].reshape(H, n, K)
        return [np.ascontiguousarray(b[:, j]) for j in range(n)]

    def to_hf(x):
        if kernel:  # each [D, H, K] -> [H, n, K, D] -> [H*n*K, D]
            w = np.stack([t.transpose(1, 2, 0) for t in x], axis=1)
            return [w.reshape(-1, w.shape[-1])]
        return [np.stack(x, axis=1).reshape(-1)]

    return Rule(tuple(cx), (hf,), to_cx, to_hf)


def stacked(cx_prefix: str, hf_prefix: str, n_layers: int, layer_rules: Sequence[Rule]) -> list[Rule]:
    """Rules of one HF layer (`hf_prefix` has `{i}`) -> rules over all layers, stacked on axis 0."""
    out = []
    for r in layer_rules:
        hf_keys = tuple(hf_prefix.format(i=i) + k for i in range(n_layers) for k in r.hf)
        n_hf = len(r.hf)

        def to_cx(a, s, r=r, n_hf=n_hf):
            per_layer = [
                r.to_cx(a[i * n_hf : (i + 1) * n_hf], [shape[1:] for shape in s]) for i in range(n_layers)
            ]
            return [np.stack([layer[j] for layer in per_layer]) for j in range(len(r.cx))]

        def to_hf(x, r=r):
            return [t for i in range(n_layers) for t in r.to_hf([p[i] for p in x])]

        out.append(Rule(tuple(f"{cx_prefix}.{c}" for c in r.cx), hf_keys, to_cx, to_hf, r.optional))
    return out


# --- applying a mapping -----------------------------------------------------------------------------


def hf_to_cx(
    mapping: WeightMap,
    state_dict: Mapping[str, np.ndarray],
    cx_shapes: Mapping[str, tuple[int, ...]],
    source: str,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Flat chinchax params (float32) from an HF state_dict; also the HF keys no rule read."""
    for target, src in mapping.ties.items():
        if (
            target in state_dict
            and src in state_dict
            and not np.array_equal(state_dict[target], state_dict[src])
        ):
            raise UserError(
                f"{source}: {target} differs from {src}, but the config ties them; set tie_word_embeddings "
                "(T5: tie_word_embeddings=false for v1.1) in config.json to match the weights"
            )
    used = set(mapping.ties) & set(state_dict)
    params: dict[str, np.ndarray] = {}
    for rule in mapping.rules:
        arrays = []
        for key in rule.hf:
            read = key if key in state_dict else mapping.aliases.get(key)
            if read in state_dict:
                used.add(read)
                arrays.append(np.asarray(state_dict[read], dtype=np.float32))
            elif not rule.optional:
                raise UserError(
                    f"{source}: weight {key!r} is missing; is this checkpoint of the family its config names?"
                )
        targets = [cx_shapes[p] for p in rule.cx]
        if len(arrays) < len(rule.hf):  # an optional buffer that is absent: zeros
            out = [np.zeros(shape, np.float32) for shape in targets]
        else:
            try:
                out = rule.to_cx(arrays, targets)
            except ValueError as e:
                raise UserError(f"{source}: weights {rule.hf[:2]} do not fit the config ({e})") from None
        for path, value, shape in zip(rule.cx, out, targets, strict=True):
            if tuple(value.shape) != tuple(shape):
                raise UserError(
                    f"{source}: {rule.hf[0]} gives {path} shape {value.shape}, the config expects {shape}"
                )
            params[path] = value.astype(np.float32)
    missing = sorted(set(cx_shapes) - set(params))
    if missing:  # a bug in a family's rules, not bad input
        raise AssertionError(f"no rule fills {missing}")
    return params, sorted(set(state_dict) - used)


def cx_to_hf(mapping: WeightMap, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An HF state_dict (numpy, float32) from flat chinchax params, tied copies included."""
    unknown = sorted(set(params) - {p for r in mapping.rules for p in r.cx})
    if unknown:
        raise ValueError(f"no HF weight for chinchax parameters {unknown}")
    sd: dict[str, np.ndarray] = {}
    for rule in mapping.rules:
        for key, value in zip(
            rule.hf, rule.to_hf([np.asarray(params[p], np.float32) for p in rule.cx]), strict=True
        ):
            sd[key] = value
    for target, src in mapping.ties.items():
        sd[target] = sd[src]
    return sd
