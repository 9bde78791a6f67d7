"""Many L-BFGS minimisations at once: one batched program over (start, data-weights) problems.

Chinchilla's approach 3 starts L-BFGS from a 4,500-point grid; a bootstrap repeats the fit on
resampled runs. Both are the same small problem many times over, so we run them as one batched
program: optax's L-BFGS directions and a backtracking line search inside a `lax.while_loop` over
a fixed-size batch of problems, compiled once per objective (see `_round_fn` for how the work is
spent only on the problems that still need it).
A bootstrap resample is expressed as integer weights on the runs (how often each run was drawn),
so every problem shares the one data array and only the weight vector differs.

Everything runs in float64 inside `jax.enable_x64(True)`, a scoped context: the process-wide
default (float32 for training code) is untouched when the fit returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# objective(theta_P, data, weights_R) -> scalar; `data` is a pytree of [R] arrays (one per run).
Objective = Callable


@dataclass(frozen=True)
class MultistartResult:
    theta_KP: np.ndarray  # final parameters of every problem
    value_K: np.ndarray  # final objective (inf where the run ended non-finite)
    n_iter_K: np.ndarray  # L-BFGS iterations each problem took


def huber(r, delta):
    """Huber loss, quadratic inside |r| <= delta, linear outside (Huber 1964, as in Chinchilla)."""
    import jax.numpy as jnp

    abs_r = jnp.abs(r)
    return jnp.where(abs_r <= delta, 0.5 * r**2, delta * (abs_r - 0.5 * delta))


_CACHE: dict = {}
# Rows of a batch evaluated together: live problems in groups of _EVAL_GROUP, problems that
# backtrack in groups of _BACKTRACK_GROUP (measured on the full approach-3 fit, 2026-11-30:
# 16 beat 32 and 64 for backtracking, 64 to 256 were alike for evaluation, 64 was best for small fits).
_BACKTRACK_GROUP = 16
_EVAL_GROUP = 64
# Step sizes tried by the line search, largest first: 1, 1/4, ..., 4^-7 (L-BFGS steps are well
# scaled, so the unit step is usually taken).
_STEP_CANDIDATES = tuple(0.25**i for i in range(8))


def _round_fn(objective: Objective, memory: int):
    """jit(up to `n_steps` L-BFGS iterations on a batch of problems), cached across fits."""
    key = (objective, memory)
    if key in _CACHE:
        return _CACHE[key]
    import jax
    import jax.numpy as jnp
    import optax

    # L-BFGS directions come from optax's two-loop recursion. The line search is ours: backtracking
    # over the fixed step sizes _STEP_CANDIDATES, taking the largest that meets the Armijo condition
    # (or, if none does, the one with the lowest value). Written for the whole batch, not vmapped
    # per problem, so that work is spent only on the problems that need it:
    # - the unit step is tried first, with its gradient, for every live problem (most take it),
    #   gathered _EVAL_GROUP at a time, so converged problems and padding cost (almost) nothing;
    # - the problems whose unit step fails are gathered into groups of _BACKTRACK_GROUP and only
    #   those groups try the smaller steps, one at a time, while a member of the group needs one.
    # (Vmapping one problem's line search makes every problem pay for the slowest one's
    # backtracking: on the 4,500-start grid that was 80% of the work.)
    # Every trial point is evaluated with its gradient: we need it at the step we stop at, and it
    # costs little more (XLA:CPU compiled approach 3's objective alone slower than with its gradient).
    direction_fn = optax.scale_by_lbfgs(memory_size=memory)
    steps_C = jnp.asarray(_STEP_CANDIDATES)
    n_steps_c = len(_STEP_CANDIDATES)

    def finite(v):
        return jnp.where(jnp.isfinite(v), v, jnp.inf)

    def round_batch(theta_KP, state, live_K, data, w_KR, n_steps, gtol, ftol):
        value_and_grad = jax.vmap(jax.value_and_grad(objective), in_axes=(0, None, 0))
        n_problems = theta_KP.shape[0]

        def in_groups(mask_K, size, fn, outs):
            """`outs` with the rows where `mask_K` replaced by fn(rows), computed `size` rows at a time."""
            size = min(size, n_problems)

            def one_group(c):
                mask, outs = c
                idx_G = jnp.nonzero(mask, size=size, fill_value=n_problems)[0]
                new = fn(jnp.minimum(idx_G, n_problems - 1), idx_G < n_problems)
                outs = jax.tree.map(lambda o, n: o.at[idx_G].set(n, mode="drop"), outs, new)
                return mask.at[idx_G].set(False, mode="drop"), outs

            return jax.lax.while_loop(lambda c: jnp.any(c[0]), one_group, (mask_K, outs))[1]

        def value_and_grad_at(mask_K, th_KP):
            """finite-or-inf value and gradient where `mask_K` (inf and 0 elsewhere)."""
            v, g = in_groups(mask_K, _EVAL_GROUP, lambda at, _: value_and_grad(th_KP[at], data, w_KR[at]),
                             (jnp.full(n_problems, jnp.inf), jnp.zeros_like(th_KP)))
            return finite(v), g

        def backtrack(need_K, th_KP, dir_KP, value_K, slope_K, unit_value_K, unit_grad_KP):
            """(step, value, grad) per problem: the unit step's where it was taken, backtracked where not."""

            def one_group(at, real_G):
                th, d, v0, s0, w = th_KP[at], dir_KP[at], value_K[at], slope_K[at], w_KR[at]

                def level_cond(c):
                    i, found, *_ = c
                    return (i < n_steps_c) & jnp.any(~found)

                def level_body(c):
                    i, found, p_step, p_value, p_grad = c
                    step = steps_C[i]
                    v, g = value_and_grad(th - step * d, data, w)
                    v = finite(v)
                    armijo = v <= v0 - 1e-4 * step * s0
                    # First Armijo step wins; until then keep the lowest value (the first on ties).
                    better = ~found & (armijo | (v < p_value))
                    return (i + 1, found | armijo, jnp.where(better, step, p_step), jnp.where(better, v, p_value),
                            jnp.where(better[:, None], g, p_grad))

                init = (jnp.asarray(1), ~real_G, jnp.full(at.shape, steps_C[0]), unit_value_K[at], unit_grad_KP[at])
                return jax.lax.while_loop(level_cond, level_body, init)[2:]

            init = (jnp.full(n_problems, steps_C[0]), unit_value_K, unit_grad_KP)
            return in_groups(need_K, _BACKTRACK_GROUP, one_group, init)

        def body(carry):
            th, st, value, grad, done, it_K, it = carry
            direction, new_st = jax.vmap(direction_fn.update)(grad, st, th)
            slope = jnp.sum(grad * direction, axis=1)
            # Not a descent direction (the memory can hold a negative curvature pair): use the gradient.
            direction = jnp.where((slope > 0)[:, None], direction, grad)
            slope = jnp.where(slope > 0, slope, jnp.sum(grad * grad, axis=1))
            unit_value, unit_grad = value_and_grad_at(~done, th - direction)
            unit_ok = unit_value <= value - 1e-4 * slope
            step, pick_value, pick_grad = backtrack(~done & ~unit_ok, th, direction, value, slope, unit_value, unit_grad)
            # Not improved: the problem stays where it is (and stops below).
            improved = pick_value < value
            new_th = jnp.where(improved[:, None], th - step[:, None] * direction, th)
            new_value = jnp.where(improved, pick_value, value)
            new_grad = jnp.where(improved[:, None], pick_grad, grad)
            grad_max = jnp.max(jnp.abs(new_grad), axis=1)
            # Stop on a relative decrease below ftol, a small largest gradient component, or no
            # progress. Unlike SciPy's factr rule the scale is NOT floored at 1: a Huber objective
            # with delta = 1e-3 is ~1e-4, and a floor of 1 stops resampled fits at their start.
            scale = jnp.maximum(jnp.maximum(jnp.abs(value), jnp.abs(new_value)), 1e-300)
            small_step = (value - new_value) <= ftol * scale
            new_done = (grad_max <= gtol) | small_step | ~improved

            # Problems already done keep everything as it was.
            def keep(old, new):
                return jnp.where(done.reshape(-1, *([1] * (old.ndim - 1))), old, new)

            return (keep(th, new_th), jax.tree.map(keep, st, new_st), keep(value, new_value), keep(grad, new_grad),
                    done | new_done, it_K + ~done, it + 1)

        def cond(carry):
            *_, done, _, it = carry
            return (it < n_steps) & jnp.any(~done)

        value, grad = value_and_grad_at(live_K, theta_KP)
        th, st, value, _, done, it_K, _ = jax.lax.while_loop(
            cond, body, (theta_KP, state, value, grad, ~jnp.isfinite(value), jnp.zeros(n_problems, jnp.int64), 0)
        )
        return th, st, value, done, it_K

    rnd = jax.jit(round_batch)
    _CACHE[key] = (direction_fn, rnd)
    return _CACHE[key]


def minimize_multistart(
    objective: Objective,
    theta0_KP: np.ndarray,
    data: dict[str, np.ndarray],
    weights: np.ndarray | None = None,
    *,
    max_iter: int = 500,
    gtol: float = 1e-10,
    ftol: float = 1e-10,
    round_steps: int = 10,
    chunk: int = 512,
    memory: int = 10,
) -> MultistartResult:
    """Minimise `objective` from each row of `theta0_KP` at once, in float64.

    `weights` is None (every run weight 1), an [R] vector shared by all problems, or a [K, R] matrix
    with one weight vector per problem (bootstrap resamples). `objective` must be a module-level
    function (it keys the compile cache).

    A batched while_loop runs until its slowest member is done, so a few slow starts would make
    all 4,500 pay for their iterations. Instead problems run in rounds of `round_steps` iterations
    on chunks of one fixed size, `chunk` (one compile, reused by every call with this objective,
    memory and number of runs); after each round the converged problems leave and the rest are
    packed into as few chunks as possible, keeping their L-BFGS state. Padding rows are marked
    done from the start, so they never backtrack.
    """
    import jax

    theta = np.array(theta0_KP, dtype=np.float64)
    n_problems = theta.shape[0]
    n_runs = len(next(iter(data.values())))
    weights = np.ones(n_runs) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = np.broadcast_to(weights, (n_problems, n_runs))
    if weights.shape != (n_problems, n_runs):
        raise ValueError(f"weights has shape {weights.shape}; expected ({n_problems}, {n_runs})")
    with jax.enable_x64(True):
        direction_fn, rnd = _round_fn(objective, memory)
        data64 = {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}
        value = np.full(n_problems, np.inf)
        n_iter = np.zeros(n_problems, dtype=np.int64)
        # optax's L-BFGS state starts all zeros: build it on the host (no compile, no dispatch).
        shapes = jax.eval_shape(direction_fn.init, jax.ShapeDtypeStruct(theta.shape[1:], theta.dtype))
        states = jax.tree.map(lambda s: np.zeros((n_problems, *s.shape), s.dtype), shapes)
        active = np.arange(n_problems)
        while active.size:
            still = []
            for idx, members in _chunks(active, chunk):
                k = members.size
                steps = int(min(round_steps, max_iter - n_iter[members].max()))
                state = jax.tree.map(lambda x, idx=idx: x[idx], states)
                th, st, val, dn, it = jax.device_get(
                    rnd(theta[idx], state, np.arange(chunk) < k, data64, weights[idx], steps, gtol, ftol))
                theta[members], value[members] = th[:k], val[:k]
                n_iter[members] += it[:k]
                _scatter(states, st, members)
                still.append(members[~dn[:k] & (n_iter[members] < max_iter)])
            active = np.concatenate(still)
    value = np.where(np.isfinite(value), value, np.inf)
    return MultistartResult(theta, value, n_iter)


def _chunks(indices: np.ndarray, chunk: int):
    """(padded indices, real members) per chunk; padding repeats the first member (marked done)."""
    for lo in range(0, indices.size, chunk):
        members = indices[lo : lo + chunk]
        yield np.concatenate([members, np.full(chunk - members.size, members[0])]), members


def _scatter(states, chunk_state, members: np.ndarray) -> None:
    import jax

    def put(dst, src):
        dst[members] = src[: members.size]

    jax.tree.map(put, states, chunk_state)
