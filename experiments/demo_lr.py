"""The demo's learning rates, measured rather than guessed.

At the smallest budget, every model size of that budget is trained, with each of the study's seeds, at the
planned learning rate times each of `MULTIPLIERS`. The rule every run of the study then uses,
lr*(d) = base_lr * (base_d / d)^k, is fitted to all those runs at once (`fit_lr_surface`): around each
size's best rate the seed-mean loss is a parabola in log(lr) whose vertex follows the rule, with one
curvature for every size. Refitted to the one-seed sweeps of two full demos that differed only in
floating-point order, this gives base_lr 0.0115 and 0.0091 (k 0.66 both), where a separate 3-point parabola
per size and a power law through the vertices gave 0.0075 x (64/d)^0.87 and 0.0118 x (64/d)^0.44 (a 1.7x
different rate at d_model 80, the held-out model's width): at these budgets the loss is flat
over a 9x range of rates and a single run's noise (~0.03 nats) moves a 3-point vertex by 1.5x. The
per-size vertices are still reported, and decide where the range is widened. The smallest budget's sizes
are the small ones; larger models take the rule's extrapolation (muP's k = 1 is the prior when too few
sizes were tuned to measure k).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from chinchax.scaling.sweep_config import HParamRule, learning_rate

MULTIPLIERS = (1 / 3, 1.0, 3.0)
PRIOR_EXPONENT = 1.0  # muP's 1/width for Adam, when the sweep cannot measure it
EXPONENT_RANGE = (0.0, 2.0)  # a measured exponent outside this is not trusted: the prior is used


def plan_lr_sweep(cfg, base_dir, multipliers=MULTIPLIERS):
    """Plan the smallest budget once per multiplier (each plan's rule scaled), as one Plan."""
    from chinchax.scaling.plan import plan_sweep

    runs, dropped, flops = [], [], 0.0
    for m in sorted(multipliers):
        hp = dataclasses.replace(cfg.hparams, base_lr=cfg.hparams.base_lr * m)
        # every seed: the rule is fitted to seed means (a single run's noise moves a best rate by 1.5x)
        one = dataclasses.replace(cfg, name=f"{cfg.name}_lr", budgets=[min(cfg.budgets)], hparams=hp,
                                  families={_family(m): []})
        plan = plan_sweep(one.validate(), base_dir)
        runs += plan.runs
        dropped += plan.dropped
        flops += plan.flops_independent
    return dataclasses.replace(plan, runs=tuple(runs), dropped=tuple(dropped), flops_independent=flops,
                               flops_with_branching=flops)


def _family(multiplier: float) -> str:
    return f"lr{multiplier:.3g}".replace(".", "p").replace("-", "m").replace("+", "")


def best_lr(lrs, losses) -> tuple[float, str]:
    """(best rate, how it was found) from losses at log-spaced rates: the vertex of a parabola in log lr
    when it opens upwards and lies inside the range, else the best rate tried."""
    x, y = np.log(np.asarray(lrs, float)), np.asarray(losses, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    best = int(np.argmin(y))
    if len(x) >= 3 and 0 < best < len(x) - 1:
        c2, c1, _ = np.polyfit(x, y, 2)
        if c2 > 0 and x[0] <= -c1 / (2 * c2) <= x[-1]:
            return float(math.exp(-c1 / (2 * c2))), "parabola"
    edge = "the lowest rate tried" if best == 0 else "the highest rate tried" if best == len(x) - 1 else "best tried"
    return float(math.exp(x[best])), edge


def fit_lr_rule(best_by_width: dict[int, float], base_d_model: int, exponent: float | None = None) -> dict:
    """lr*(d) = base_lr * (base_d / d)^k through the best rates, least squares in log-log.
    With one width (or an exponent outside EXPONENT_RANGE) k is the muP prior and only base_lr is fitted.
    With `exponent` (µP: 0, one rate for every width) k is that and only base_lr is fitted."""
    widths = np.array(sorted(best_by_width), float)
    log_lr = np.log([best_by_width[int(d)] for d in widths])
    x = np.log(base_d_model / widths)
    measured = len(widths) >= 2 and exponent is None
    k = float(np.polyfit(x, log_lr, 1)[0]) if measured else PRIOR_EXPONENT if exponent is None else exponent
    note = "measured" if exponent is None else f"µP: one rate transferred to every width (k = {exponent:g})"
    if exponent is None and (not measured or not EXPONENT_RANGE[0] <= k <= EXPONENT_RANGE[1]):
        note = (f"muP prior k = {PRIOR_EXPONENT:g} (measured {k:.2f} is outside {list(EXPONENT_RANGE)})"
                if measured else f"muP prior k = {PRIOR_EXPONENT:g} (one width tuned)")
        k = PRIOR_EXPONENT
    base_lr = float(np.exp(np.mean(log_lr - k * x)))
    return {"base_lr": float(f"{base_lr:.4g}"), "base_d_model": int(base_d_model), "width_exponent": round(k, 3),
            "exponent_source": note, "best_by_width": {int(d): best_by_width[int(d)] for d in widths}}


def fit_lr_surface(points: dict[int, list[tuple[float, float]]], base_d_model: int,
                   exponent: float | None = None) -> dict | None:
    """base_lr and k fitted to every size at once: loss(d, lr) = c_d + q (log lr - log base_lr - k log(base_d/d))^2,
    least squares over each size's best rate tried and its neighbours (the parabola is local; far rates blow
    up asymmetrically). `points`: {d_model: [(lr, seed-mean loss), ...]}. None when fewer than two sizes have
    three such points or the valley does not open upwards (the caller falls back to per-size vertices).
    With `exponent` k is held there (µP: 0) and only base_lr, q and the c_d are fitted."""
    from scipy.optimize import least_squares

    local = {}
    for d, pts in points.items():
        pts = sorted(pts)
        best = int(np.argmin([loss for _, loss in pts]))
        if 0 < best < len(pts) - 1:
            local[d] = pts[best - 1 : best + 2]
    if len(local) < 2:
        return None
    widths = sorted(local)
    idx = np.array([i for i, d in enumerate(widths) for _ in local[d]])
    log_lr = np.log([lr for d in widths for lr, _ in local[d]])
    loss = np.array([v for d in widths for _, v in local[d]])
    x = np.log(base_d_model / np.array([d for d in widths for _ in local[d]], float))

    def residuals(p):
        if exponent is not None:
            p = np.r_[p, exponent]
        c, log_q, log_base, k = p[: len(widths)], p[-3], p[-2], p[-1]
        return c[idx] + np.exp(log_q) * (log_lr - log_base - k * x) ** 2 - loss

    start = np.r_[[min(v for _, v in local[d]) for d in widths], math.log(0.05), np.mean(log_lr), PRIOR_EXPONENT]
    fit = least_squares(residuals, start if exponent is None else start[:-1])
    if not fit.success:
        return None
    params = fit.x if exponent is None else np.r_[fit.x, exponent]
    return {"base_lr": float(math.exp(params[-2])), "width_exponent": float(params[-1]),
            "curvature": float(math.exp(params[-3])), "rms": float(np.sqrt(np.mean(fit.fun**2))), "sizes": widths}


def tune(rows: list[dict], base_d_model: int, exponent: float | None = None) -> dict:
    """The rule from the learning-rate sweep's results rows (d_model, learning_rate, loss; several seeds of a
    point are averaged): fitted to every size at once (`fit_lr_surface`), else a power law through the
    per-size vertices (`fit_lr_rule`). The per-size vertices are reported either way. With `exponent` (µP: 0)
    the width exponent is held there, and the freely fitted one is kept as `free_width_exponent`: how far the
    optimum still moves with width (µTransfer's check)."""
    by_point: dict[tuple[int, float], list[float]] = {}
    for r in rows:
        by_point.setdefault((int(r["d_model"]), float(r["learning_rate"])), []).append(float(r["loss"]))
    by_width: dict[int, list[tuple[float, float]]] = {}
    for (d, lr), losses in sorted(by_point.items()):
        by_width.setdefault(d, []).append((lr, float(np.mean(losses))))
    best, how = {}, {}
    for d, points in sorted(by_width.items()):
        lrs, losses = zip(*points, strict=True)
        best[d], how[d] = best_lr(lrs, losses)
    rule = fit_lr_rule(best, base_d_model, exponent)
    surface = fit_lr_surface(by_width, base_d_model, exponent)
    if surface is not None and (exponent is not None or EXPONENT_RANGE[0] <= surface["width_exponent"] <= EXPONENT_RANGE[1]):
        source = "measured" if exponent is None else f"µP: one rate transferred to every width (k = {exponent:g})"
        rule.update(base_lr=float(f"{surface['base_lr']:.4g}"), width_exponent=round(surface["width_exponent"], 3),
                    exponent_source=f"{source}: one valley for sizes {surface['sizes']}, rms {surface['rms']:.3f}")
        rule["surface"] = surface
    else:
        rule["exponent_source"] += " (per-size vertices: the joint fit was not possible)"
    if exponent is not None:
        free = fit_lr_surface(by_width, base_d_model)
        rule["fixed_exponent"] = exponent
        rule["free_width_exponent"] = None if free is None else round(free["width_exponent"], 3)
    rule["how"] = how
    rule["points"] = {d: sorted(p) for d, p in by_width.items()}
    rule["seeds_per_point"] = max(len(v) for v in by_point.values())
    return rule


def rate_interval(rows: list[dict], rule: dict, d_model: int, n_resamples: int = 200, level: float = 0.95,
                  seed: int = 0) -> dict:
    """The rule's learning rate at `d_model` (a width the sweep may not have tuned) with a seed-bootstrap
    interval: each resample redraws every lr-sweep point's seeds with replacement and refits the rule as
    `tune` does; the refitted rates' spread is put around the rule's rate. It says how far the rate that a
    held-out run trains at can be trusted; with one seed a point there is nothing to resample, and no
    interval."""
    base_d = rule["base_d_model"]
    rate = lambda fit: learning_rate(as_hparams(fit), d_model)  # noqa: E731 (the sweep's own formula)
    by_point: dict[tuple, list[dict]] = {}
    for r in rows:
        by_point.setdefault((int(r["d_model"]), float(r["learning_rate"])), []).append(r)
    widths = sorted(int(d) for d in rule["best_by_width"])
    out = {"d_model": int(d_model), "lr": rate(rule),
           "lo": None, "hi": None, "level": level, "resamples": 0, "tuned_widths": [widths[0], widths[-1]],
           "extrapolation": d_model / widths[-1], "loss_cost": None}
    n = min(len(p) for p in by_point.values())  # seeds a point
    if n < 2 or n_resamples < 1:
        return out
    rng = np.random.default_rng(seed)
    rates = []
    for _ in range(n_resamples):
        sample = [p[i] for p in by_point.values() for i in rng.integers(0, len(p), len(p))]
        rates.append(rate(tune(sample, base_d, rule.get("fixed_exponent"))))
    # the refitted rates' spread (quantiles of log rate about their median) around the rule's own rate: with two
    # seeds a point the resampled fits scatter about a slightly shifted centre, and the question is how uncertain
    # the rate the run trained at is. Resampling n seeds understates their mean's variance by (n - 1) / n (by half
    # for two), so the spread is widened by sqrt(n / (n - 1)).
    q_lo, median, q_hi = np.quantile(np.log(rates), [(1 - level) / 2, 0.5, (1 + level) / 2])
    widen = math.sqrt(n / (n - 1))
    lo, hi = out["lr"] * math.exp(widen * (q_lo - median)), out["lr"] * math.exp(widen * (q_hi - median))
    # what training at the centre costs if the best rate is at an end: the valley's curvature (measured at the
    # lr sweep's budget) times half the interval's log-width squared
    curvature = (rule.get("surface") or {}).get("curvature")
    cost = curvature * (math.log(hi / lo) / 2) ** 2 if curvature else None
    return {**out, "lo": float(lo), "hi": float(hi), "resamples": n_resamples, "loss_cost": cost}


def extensions(rule: dict, multipliers) -> list[float]:
    """Multipliers to add when some size's best rate was an edge of the range tried: one step of 3x beyond
    it, so every size's optimum ends up bracketed (the demo tries at most MAX_ROUNDS rounds)."""
    step = 3.0
    more = []
    if any(how == "the highest rate tried" for how in rule["how"].values()):
        more.append(max(multipliers) * step)
    if any(how == "the lowest rate tried" for how in rule["how"].values()):
        more.append(min(multipliers) / step)
    return more


MAX_ROUNDS = 3


def exponent_for(cfg) -> float | None:
    """The width exponent the sweep's rule fixes: µP's 0 (hparams.rule=mup), else None (measured)."""
    return 0.0 if cfg.hparams.rule == "mup" else None


def as_hparams(rule: dict, base: HParamRule = HParamRule()) -> HParamRule:
    """The measured rule lr*(d) = base_lr * (base_d / d)^k as the sweep's hparams rule "inverse_width" (the
    other settings of `base` kept), whose rates `learning_rate` (scaling/sweep_config.py) gives."""
    return dataclasses.replace(base, rule="inverse_width", base_lr=rule["base_lr"], base_d_model=rule["base_d_model"],
                               width_exponent=rule["width_exponent"])


def with_rule(cfg, rule: dict):
    """The sweep config with the measured learning-rate rule (µP keeps its rule: one rate, every run µP)."""
    if cfg.hparams.rule == "mup":
        hp = dataclasses.replace(cfg.hparams, base_lr=rule["base_lr"])
        return dataclasses.replace(cfg, hparams=hp).validate()
    return dataclasses.replace(cfg, hparams=as_hparams(rule, cfg.hparams)).validate()
