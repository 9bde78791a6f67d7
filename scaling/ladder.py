"""The shape ladder of a sweep: a model family resized by a shape rule, rung by rung in increasing N, every
rung's parameters counted exactly (chinchax.model.counting), and the rungs each budget trains.
See scaling/plan.py for the rules (fixed aspect ratio and head size; sizes around N* on one shared grid)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chinchax.compute import params_at_ratio
from chinchax.errors import UserError
from chinchax.model.counting import count_params
from chinchax.scaling.sweep_config import ShapeRule, SizeRule


@dataclass(frozen=True)
class Shape:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    n_total: int
    n_embedding: int
    n_non_embedding: int

    @property
    def tag(self) -> str:
        return f"d{self.d_model}l{self.n_layers}"

    def n(self, convention: str) -> int:
        return self.n_total if convention == "total" else self.n_non_embedding


def _round_up(x: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(x / multiple - 1e-9)) * multiple)


def _resized(model_cfg, rule: ShapeRule, d_model: int, n_layers: int, d_ff: int):
    n_heads = rule.n_heads or d_model // rule.head_dim
    kv = model_cfg.n_kv_heads
    if kv is not None and n_heads % kv:
        kv = math.gcd(n_heads, kv)  # keep grouped-query attention valid at every width
    changes: dict[str, Any] = dict(
        d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=kv, head_dim=None, d_ff=d_ff
    )
    if model_cfg.variant == "encoder_decoder":
        changes["n_encoder_layers"] = None  # encoder as deep as the decoder
    return dataclasses.replace(model_cfg, **changes).validate()


def model_with_shape(model_cfg, rule: ShapeRule, d_model: int):
    """The base ModelConfig resized to `d_model` by the shape rule (every other choice kept)."""
    n_layers = min(rule.max_layers, max(rule.min_layers, int(d_model / rule.aspect_ratio + 0.5)))
    return _resized(model_cfg, rule, d_model, n_layers, _round_up(rule.ffn_ratio * d_model, 8))


class ParamCounter:
    """Exact parameter counts of the resized family, without building every rung.

    `chinchax.model.count_params` builds the abstract model (~0.1-1 s a call). For a fixed family, with
    heads of a fixed size, every parameter tensor is a product of at most two of d_model, d_ff, n_layers
    and constants (vocab, max_len, buckets), so N = c . (1, d, d^2, L, Ld, Ld^2, Lf, Ldf) exactly. We count
    8 probe shapes with count_params, solve for c (total and embedding), then check the solution on 2 more
    shapes; if that check ever fails (a component outside this form), every rung is counted directly."""

    BASIS_SIZE = 8

    def __init__(self, model_cfg, rule: ShapeRule):
        self.model_cfg, self.rule = model_cfg, rule
        # Probe widths whose head count the base's n_kv_heads divides (so no probe needs the gcd fix-up).
        s = (rule.d_model_multiple or rule.head_dim) * (model_cfg.n_kv_heads or 1)
        probes = [(s, 1, 8), (2 * s, 1, 16), (3 * s, 1, 8), (s, 2, 24), (2 * s, 2, 8), (3 * s, 3, 32),
                  (4 * s, 2, 16), (2 * s, 3, 40)]
        checks = [(5 * s, 4, 48), (7 * s, 6, 64)]
        X = np.array([self._features(*p) for p in probes], dtype=np.float64)
        Y = np.array([self._exact(*p) for p in probes], dtype=np.float64)
        self.coef = np.linalg.solve(X, Y)
        self.exact_only = any(self._predict(*c) != self._exact(*c) for c in checks)

    @staticmethod
    def _features(d: int, n_layers: int, f: int) -> list[float]:
        return [1.0, d, d * d, n_layers, n_layers * d, n_layers * d * d, n_layers * f, n_layers * d * f]

    def _exact(self, d: int, n_layers: int, f: int) -> tuple[int, int]:
        counts = _count_params(_resized(self.model_cfg, self.rule, d, n_layers, f))
        return int(counts.total), int(counts.embedding)

    def _predict(self, d: int, n_layers: int, f: int) -> tuple[int, int]:
        total, embedding = np.array(self._features(d, n_layers, f)) @ self.coef
        return int(round(total)), int(round(embedding))

    def __call__(self, m) -> tuple[int, int]:
        """(total, embedding) parameters of the resized ModelConfig `m`."""
        args = (m.d_model, m.n_layers, m.d_ff)
        if self.exact_only or m.n_kv_heads != self.model_cfg.n_kv_heads:
            return self._exact(*args)
        return self._predict(*args)


DIRECT_COUNTS = 8  # rungs counted with count_params before switching to the probed formula


@functools.lru_cache(maxsize=64)
def _counter(model_cfg, rule: ShapeRule) -> ParamCounter:
    return ParamCounter(model_cfg, rule)


def shape_ladder(model_cfg, rule: ShapeRule, n_max: float, convention: str = "total") -> list[Shape]:
    """Candidate shapes in increasing N, up to the first one at or beyond `n_max` (always >= 2 rungs)."""
    step = rule.d_model_multiple or rule.head_dim
    ladder: list[Shape] = []
    d_model = step
    while d_model <= rule.max_d_model:
        m = model_with_shape(model_cfg, rule, d_model)
        if d_model // step <= DIRECT_COUNTS:  # a short ladder is cheaper to count rung by rung
            counts = _count_params(m)
            total, embedding = int(counts.total), int(counts.embedding)
        else:
            total, embedding = _counter(model_cfg, rule)(m)
        shape = Shape(m.d_model, m.n_layers, m.n_heads, m.d_ff, total, embedding, total - embedding)
        if not ladder or shape.n(convention) > ladder[-1].n(convention):
            ladder.append(shape)
        if len(ladder) >= 2 and shape.n(convention) >= n_max:
            return ladder
        d_model += step
    if not ladder or ladder[-1].n(convention) < n_max:
        raise UserError(
            f"no shape reaches N={n_max:.3g} below shape.max_d_model={rule.max_d_model}; raise it or lower "
            "the budgets"
        )
    return ladder


@functools.lru_cache(maxsize=4096)
def _count_params(model_cfg):
    return count_params(model_cfg)


def shape_for(ladder: Sequence[Shape], n_target: float, convention: str = "total") -> Shape:
    """The rung closest to `n_target` in log N (monotone: a larger target never gives a smaller shape)."""
    return ladder[_nearest(ladder, n_target, convention)]


def _nearest(ladder: Sequence[Shape], n_target: float, convention: str) -> int:
    logs = [math.log(s.n(convention)) for s in ladder]
    target = math.log(n_target)
    return min(range(len(ladder)), key=lambda i: (abs(logs[i] - target), i))


def sizes_for_budget(ladder: Sequence[Shape], budget: float, sizes: SizeRule, convention: str) -> list[Shape]:
    """Distinct rungs for one budget: `per_budget` sizes around N*, or the explicit list.

    Around N*, sizes come from ONE geometric grid shared by all budgets (ratio r = span^(1/(per_budget-1)),
    points r^k): each budget takes the `per_budget` consecutive grid points centred on its N*. Neighbouring
    budgets therefore reuse model sizes (as Chinchilla's fixed model set did), which is what lets WSD
    branching share stable phases. Grid points are snapped to the nearest rung; if snapping merges some,
    the nearest unused rungs fill in."""
    if sizes.mode == "explicit":
        picked = {_nearest(ladder, n, convention) for n in sizes.n_params}
        return [ladder[i] for i in sorted(picked)]
    n_star = params_at_ratio(budget, sizes.tokens_per_param)
    k = min(sizes.per_budget, len(ladder))
    if k == 1:
        return [ladder[_nearest(ladder, n_star, convention)]]
    log_ratio = math.log(sizes.span) / (k - 1)
    first = round(math.log(n_star) / log_ratio - (k - 1) / 2)
    picked = sorted({_nearest(ladder, math.exp((first + j) * log_ratio), convention) for j in range(k)})
    below, above = picked[0] - 1, picked[-1] + 1
    while len(picked) < k:  # fill in alternately below and above, within the ladder
        if above < len(ladder) and (len(picked) % 2 or below < 0):
            picked.append(above)
            above += 1
        elif below >= 0:
            picked.append(below)
            below -= 1
        else:
            break
    return [ladder[i] for i in sorted(picked)]
