"""The demo's learning rates, measured rather than guessed.

At the smallest budget, every model size of that budget is trained at the planned learning rate times
each of `MULTIPLIERS`. For each size, a parabola in log(lr) through the three eval losses gives its best
rate (kept inside the range tried). A power law through those, lr*(d) = base_lr * (base_d / d)^k, fixes
the rule every run of the study then uses: base_lr and the width exponent k are both measured. The
smallest budget's sizes are the small ones; larger models take the rule's extrapolation (muP's k = 1 is
the prior when too few sizes were tuned to measure k).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

MULTIPLIERS = (1 / 3, 1.0, 3.0)
PRIOR_EXPONENT = 1.0  # muP's 1/width for Adam, when the sweep cannot measure it
EXPONENT_RANGE = (0.0, 2.0)  # a measured exponent outside this is not trusted: the prior is used


def plan_lr_sweep(cfg, base_dir, multipliers=MULTIPLIERS):
    """Plan the smallest budget once per multiplier (each plan's rule scaled), as one Plan."""
    from chinchax.scaling.plan import plan_sweep

    runs, dropped, flops = [], [], 0.0
    for m in sorted(multipliers):
        hp = dataclasses.replace(cfg.hparams, base_lr=cfg.hparams.base_lr * m)
        # one seed: the rule comes from a power law through every size's best rate, which averages the noise
        one = dataclasses.replace(cfg, name=f"{cfg.name}_lr", budgets=[min(cfg.budgets)], hparams=hp,
                                  families={_family(m): []}, seeds=cfg.seeds[:1])
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


def fit_lr_rule(best_by_width: dict[int, float], base_d_model: int) -> dict:
    """lr*(d) = base_lr * (base_d / d)^k through the best rates, least squares in log-log.
    With one width (or an exponent outside EXPONENT_RANGE) k is the muP prior and only base_lr is fitted."""
    widths = np.array(sorted(best_by_width), float)
    log_lr = np.log([best_by_width[int(d)] for d in widths])
    x = np.log(base_d_model / widths)
    measured = len(widths) >= 2
    k = float(np.polyfit(x, log_lr, 1)[0]) if measured else PRIOR_EXPONENT
    note = "measured"
    if not measured or not EXPONENT_RANGE[0] <= k <= EXPONENT_RANGE[1]:
        note = (f"muP prior k = {PRIOR_EXPONENT:g} (measured {k:.2f} is outside {list(EXPONENT_RANGE)})"
                if measured else f"muP prior k = {PRIOR_EXPONENT:g} (one width tuned)")
        k = PRIOR_EXPONENT
    base_lr = float(np.exp(np.mean(log_lr - k * x)))
    return {"base_lr": float(f"{base_lr:.4g}"), "base_d_model": int(base_d_model), "width_exponent": round(k, 3),
            "exponent_source": note, "best_by_width": {int(d): best_by_width[int(d)] for d in widths}}


def tune(rows: list[dict], base_d_model: int) -> dict:
    """The rule from the learning-rate sweep's results rows (d_model, learning_rate, loss)."""
    by_width: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        by_width.setdefault(int(r["d_model"]), []).append((float(r["learning_rate"]), float(r["loss"])))
    best, how = {}, {}
    for d, points in sorted(by_width.items()):
        lrs, losses = zip(*points, strict=True)
        best[d], how[d] = best_lr(lrs, losses)
    rule = fit_lr_rule(best, base_d_model)
    rule["how"] = how
    rule["points"] = {d: sorted(p) for d, p in by_width.items()}
    return rule


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


def with_rule(cfg, rule: dict):
    """The sweep config with the measured learning-rate rule."""
    hp = dataclasses.replace(cfg.hparams, rule="inverse_width", base_lr=rule["base_lr"],
                             base_d_model=rule["base_d_model"], width_exponent=rule["width_exponent"])
    return dataclasses.replace(cfg, hparams=hp).validate()
