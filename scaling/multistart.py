"""Many L-BFGS minimisations at once: one `jax.vmap` over (start, data-weights) problems.

Chinchilla's approach 3 starts L-BFGS from a 4,500-point grid; a bootstrap repeats the fit on
resampled runs. Both are the same small problem many times over, so we run them as one batched
program: optax's L-BFGS (zoom line search) inside a `lax.while_loop`, vmapped over problems.
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
# Step sizes tried at once by the line search: 1, 1/4, ..., 4^-7 (L-BFGS steps are well scaled,
# so the unit step is usually taken).
_STEP_CANDIDATES = tuple(0.25**i for i in range(8))


def _round_fn(objective: Objective, memory: int):
    """jit(vmap(up to `n_steps` L-BFGS iterations)) for this objective, cached across fits."""
    key = (objective, memory)
    if key in _CACHE:
        return _CACHE[key]
    import jax
    import jax.numpy as jnp
    import optax

    # L-BFGS directions come from optax's two-loop recursion. The line search is ours: all
    # candidate step sizes are evaluated at once (one batched objective call) and the largest one
    # meeting the Armijo condition is taken. A sequential line search under vmap costs, at every
    # iteration, as many evaluations as the worst problem in the batch needs; this costs a fixed few.
    direction_fn = optax.scale_by_lbfgs(memory_size=memory)
    steps_C = jnp.asarray(_STEP_CANDIDATES)

    def init_one(theta_P):
        return direction_fn.init(theta_P)

    def round_one(theta_P, state, prev_value, data, w_R, n_steps, gtol, ftol):
        f = lambda th: objective(th, data, w_R)

        def body(carry):
            th, st, value, grad, _, it = carry
            direction, st = direction_fn.update(grad, st, th)
            slope = jnp.vdot(grad, direction)
            # Not a descent direction (the memory can hold a negative curvature pair): use the gradient.
            direction = jnp.where(slope > 0, direction, grad)
            slope = jnp.where(slope > 0, slope, jnp.vdot(grad, grad))
            cand_CP = th[None, :] - steps_C[:, None] * direction[None, :]
            cand_values = jax.vmap(f)(cand_CP)
            cand_values = jnp.where(jnp.isfinite(cand_values), cand_values, jnp.inf)
            armijo = cand_values <= value - 1e-4 * steps_C * slope
            pick = jnp.where(armijo.any(), jnp.argmax(armijo), jnp.argmin(cand_values))
            improved = cand_values[pick] < value
            new_th = jnp.where(improved, cand_CP[pick], th)
            new_value, new_grad = jax.value_and_grad(f)(new_th)
            grad_max = jnp.max(jnp.abs(new_grad))
            # Stop on a relative decrease below ftol, a small largest gradient component, or no
            # progress. Unlike SciPy's factr rule the scale is NOT floored at 1: a Huber objective
            # with delta = 1e-3 is ~1e-4, and a floor of 1 stops resampled fits at their start.
            scale = jnp.maximum(jnp.maximum(jnp.abs(value), jnp.abs(new_value)), 1e-300)
            small_step = (value - new_value) <= ftol * scale
            done = (grad_max <= gtol) | small_step | ~improved
            return new_th, st, new_value, new_grad, done, it + 1

        def cond(carry):
            *_, done, it = carry
            return (it < n_steps) & ~done

        value, grad = jax.value_and_grad(f)(theta_P)
        th, st, value, _, done, it = jax.lax.while_loop(
            cond, body, (theta_P, state, value, grad, ~jnp.isfinite(value), 0)
        )
        return th, st, value, done, it

    init = jax.jit(jax.vmap(init_one))
    rnd = jax.jit(jax.vmap(round_one, in_axes=(0, 0, 0, None, 0, None, None, None)))
    evaluate = jax.jit(jax.vmap(objective, in_axes=(0, None, 0)))
    _CACHE[key] = (init, rnd, evaluate)
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

    Under vmap a while_loop runs until its slowest member is done, so a few slow starts would make
    all 4,500 pay for their iterations. Instead problems run in rounds of `round_steps` iterations
    on fixed-size chunks (three compiled shapes); after each round the converged problems leave and
    the rest are packed into as few chunks as possible, keeping their L-BFGS state.
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
    # Three fixed chunk sizes (the same for every call, so repeated fits reuse the compiles): the
    # big one while many problems are active, smaller ones for small fits and the slow tail.
    # Each size costs a compile, which is seconds on a busy 2-core machine.
    sizes = (chunk, chunk // 4, chunk // 32)
    with jax.enable_x64(True):
        init, rnd, evaluate = _round_fn(objective, memory)
        data64 = {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}
        value = np.full(n_problems, np.inf)
        n_iter = np.zeros(n_problems, dtype=np.int64)
        states = None  # per-leaf numpy arrays with a leading [n_problems] axis
        first = min((s for s in sizes if s >= n_problems), default=chunk)
        for idx, members in _chunks(np.arange(n_problems), first):
            st = jax.tree.map(np.asarray, init(theta[idx]))
            if states is None:
                states = jax.tree.map(lambda x: np.zeros((n_problems, *x.shape[1:]), x.dtype), st)
            _scatter(states, st, members)
        active = np.arange(n_problems)
        while active.size:
            still = []
            size = min((s for s in sizes if s >= active.size), default=chunk)
            for idx, members in _chunks(active, size):
                steps = int(min(round_steps, max_iter - n_iter[members].max()))
                state = jax.tree.map(lambda x, idx=idx: x[idx], states)
                th, st, val, dn, it = rnd(theta[idx], state, value[idx], data64, weights[idx], steps, gtol, ftol)
                k = members.size
                theta[members], value[members] = np.asarray(th)[:k], np.asarray(val)[:k]
                n_iter[members] += np.asarray(it)[:k]
                _scatter(states, jax.tree.map(np.asarray, st), members)
                still.append(members[~np.asarray(dn)[:k] & (n_iter[members] < max_iter)])
            active = np.concatenate(still)
        final = np.empty(n_problems)
        for idx, members in _chunks(np.arange(n_problems), first):
            final[members] = np.asarray(evaluate(theta[idx], data64, weights[idx]))[: members.size]
    final = np.where(np.isfinite(final), final, np.inf)
    return MultistartResult(theta, final, n_iter)


def _chunks(indices: np.ndarray, chunk: int):
    """(padded indices, real members) per chunk; padding repeats the first member."""
    for lo in range(0, indices.size, chunk):
        members = indices[lo : lo + chunk]
        yield np.concatenate([members, np.full(chunk - members.size, members[0])]), members


def _scatter(states, chunk_state, members: np.ndarray) -> None:
    import jax

    def put(dst, src):
        dst[members] = src[: members.size]

    jax.tree.map(put, states, chunk_state)
