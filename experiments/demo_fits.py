"""The demo's fits, noise check and plots (chinchax.scaling does the work; this file gathers it for the report)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from chinchax.compute import training_flops
from chinchax.errors import UserError

MAX_INTERVAL_WIDTH = 0.25  # the bar for a usable exponent: a 95% interval of a at most this wide
APPROACHES = ("approach1", "approach2", "approach3")
PARAMETRIC = {"chinchilla": "approach3", "kaplan": "approach3_kaplan"}  # approach 3's forms -> their job names


def _say(message: str) -> None:
    print(f"[chinchax demo] {message}", file=sys.stderr, flush=True)


def fit_all(out: Path, *, n_bootstrap: int, quick: bool = False) -> dict:
    """Approaches 1 (envelope of the loss curves), 2 (isoFLOP parabolas) and 3 (parametric loss), each with
    a bootstrap interval, on out/results.csv and out/curves.csv; JSON and plots into `out`.

    A fit the data cannot support is reported with its reason instead of stopping the demo."""
    import warnings

    from chinchax.scaling.fit_chinchilla import fit_approach1, fit_approach2
    from chinchax.scaling.fit_parametric import fit_approach3, form_grid
    from chinchax.scaling.fitresult import CONFIDENCE
    from chinchax.scaling.table import load_table

    table = load_table(out / "results.csv")
    curves = load_table(out / "curves.csv")
    results, errors, notes, files = {}, {}, {}, []
    jobs = {
        "approach1": lambda: fit_approach1(curves, n_bootstrap=n_bootstrap, seed=0),
        "approach2": lambda: fit_approach2(table, n_bootstrap=n_bootstrap, seed=0),
        # --quick: every other value of Chinchilla's initialisation grid (still 225 starts).
        "approach3": lambda: fit_approach3(table, n_bootstrap=n_bootstrap, seed=0,
                                           grid=form_grid("chinchilla", coarse=True) if quick else None),
        # approach 3 in Kaplan's joint form with an irreducible loss: E + (A/N^alpha + B/D)^gamma
        "approach3_kaplan": lambda: fit_approach3(table, n_bootstrap=n_bootstrap, seed=0, form="kaplan",
                                                  grid=form_grid("kaplan", coarse=True) if quick else None),
    }
    for name, job in jobs.items():
        t = time.time()
        with warnings.catch_warnings(record=True) as caught:  # into the report, not onto the terminal
            warnings.simplefilter("always")
            try:
                results[name] = job()
            except UserError as e:
                errors[name] = str(e)
                _say(f"{name}: not fitted: {e}")
                continue
        notes[name] = sorted({str(w.message) for w in caught})
        _say(f"{name} fitted in {time.time() - t:.1f} s")

    # Approach 3 is the form that extrapolates better from the smaller budgets to the largest (form_select.py);
    # the other form stays in the report beside it.
    forms, alternative = _choose_form(out, table, results, errors, notes, quick)
    for name, result in results.items():
        result.to_json(out / f"fit_{name}.json")
        files.append(f"fit_{name}.json")
    if alternative is not None:
        files.append(f"fit_approach3_{forms['alternative']['form']}.json")
    budgets = sorted(float(b) for b in table["budget"].unique())
    optimal = []
    for budget in [*budgets, 10 * budgets[-1], 100 * budgets[-1]]:
        for name, result in results.items():
            n, n_lo, n_hi = result.n_opt(budget)
            d, d_lo, d_hi = result.d_opt(budget)
            optimal.append({"budget": budget, "approach": name[-1], "n_opt": n, "n_lo": n_lo, "n_hi": n_hi,
                            "d_opt": d, "d_lo": d_lo, "d_hi": d_hi, "extrapolated": budget > budgets[-1]})
    plots = _plots(out, table, curves, results)
    files += [name for _, name in plots]
    approaches = {name[-1]: _exponents(result) for name, result in results.items()}
    if "approach3" in results:
        approaches["3"].update(_parametric(results["approach3"], table), form=forms["selected"])
    if "approach2" in results:
        approaches["2"]["budgets"] = results["approach2"].extra.get("budgets")
    return {"level": CONFIDENCE, "n_bootstrap": n_bootstrap, "optimal": optimal, "plots": plots, "files": files,
            "errors": errors, "notes": notes, "results": results, "approaches": approaches,
            "agreement": agreement(approaches), "forms": forms, "alternative": alternative}


def _choose_form(out: Path, table, results: dict, errors: dict, notes: dict, quick: bool):
    """Select approach 3's form among those fitted; results["approach3"] becomes it, the other is written to
    fit_approach3_<form>.json and returned as the alternative (None if it was not fitted)."""
    from chinchax.scaling.form_select import select_form

    fitted = {form: results.pop(key) for form, key in PARAMETRIC.items() if key in results}
    failed = {form: errors.pop(key) for form, key in PARAMETRIC.items() if key in errors}
    if not fitted:
        if failed:
            errors["approach3"] = failed["chinchilla"] if "chinchilla" in failed else next(iter(failed.values()))
        return None, None
    forms = select_form(table, fitted, coarse=quick)
    chosen = forms["selected"]
    results["approach3"] = fitted.pop(chosen)
    kept_notes = notes.pop(PARAMETRIC[chosen], [])
    for form in PARAMETRIC:
        notes.pop(PARAMETRIC[form], None)
    notes["approach3"] = kept_notes + [f"{form}'s form could not be fitted: {e}" for form, e in failed.items()]
    if forms["by"] == "backtest":
        _say(f"approach 3: {chosen}'s form, which predicted each budget's runs better from the budgets below it "
             "(RMSE of log loss " + ", ".join(f"{f} {v['rmse_log_loss']:.4f}" for f, v in forms["forms"].items()) + ")")
    else:
        _say(f"approach 3: {chosen}'s form, the better fit (too few runs below the largest budget to test "
             "extrapolation)")
    alternative = None
    for form, fit in fitted.items():  # at most one: the form not chosen
        alternative = fit
        fit.to_json(out / f"fit_approach3_{form}.json")
        forms["alternative"] = {"form": form, **_exponents(fit), **_parametric(fit, table)}
    return forms, alternative


def _parametric(result, table) -> dict:
    names = ("E", "A", "B", "alpha", "beta", *(("gamma",) if "gamma" in result.params else ()))
    return {"params": {k: _triple(result, k) for k in names}, "residuals_by_length": residuals_by_length(result, table)}


def _triple(result, key) -> list[float]:
    lo, hi = result.intervals.get(key, [None, None])
    as_float = lambda x: float("nan") if x is None else float(x)  # noqa: E731
    return [float(result.params[key]), as_float(lo), as_float(hi)]


def _exponents(result) -> dict:
    a, a_lo, a_hi = _triple(result, "a")
    return {"a": a, "a_lo": a_lo, "a_hi": a_hi, "a_width": a_hi - a_lo, "b": _triple(result, "b")}


def agreement(approaches: dict) -> dict:
    """The issue's test of agreement: approaches 2 and 3 each pin a within MAX_INTERVAL_WIDTH, and their
    intervals overlap. Approach 1 is reported beside them."""
    two, three = approaches.get("2"), approaches.get("3")
    if not (two and three):
        return {"comparable": False, "reason": "approach 2 or 3 was not fitted"}
    overlap = max(two["a_lo"], three["a_lo"]) <= min(two["a_hi"], three["a_hi"])
    narrow = all(math.isfinite(x["a_width"]) and x["a_width"] <= MAX_INTERVAL_WIDTH for x in (two, three))
    return {"comparable": True, "overlap": bool(overlap), "narrow": bool(narrow),
            "max_width": MAX_INTERVAL_WIDTH, "a2_width": two["a_width"], "a3_width": three["a_width"],
            "agree": bool(overlap and narrow)}


def residuals_by_length(fit, table, groups: int = 3) -> list[dict]:
    """Approach 3's residuals (measured - fitted loss) of the runs in `groups` equal shares by number of
    steps, shortest first: a law that holds has mean residuals near 0 in every share; short runs above it
    and long ones below it mean the runs' length, not only N and D, sets their loss (an optimizer-limited
    regime the law has no term for), and predictions of longer runs come out too pessimistic."""
    ordered = table.sort_values("steps")
    predicted, _, _ = fit.predict_loss(ordered["n_params"].to_numpy(float), ordered["n_tokens"].to_numpy(float))
    residual = ordered["loss"].to_numpy(float) - np.asarray(predicted)
    steps = ordered["steps"].to_numpy(int)
    out = []
    for idx in np.array_split(np.arange(len(ordered)), min(groups, len(ordered))):
        out.append({"steps_min": int(steps[idx].min()), "steps_max": int(steps[idx].max()), "runs": int(len(idx)),
                    "mean_residual": float(residual[idx].mean()),
                    "stderr": float(residual[idx].std(ddof=1) / np.sqrt(len(idx))) if len(idx) > 1 else float("nan")})
    return out


def noise_table(sweep, plan) -> dict:
    """Paired loss differences between neighbouring sizes at each budget (same eval rows for every run; a grid
    point's seeds averaged row by row)."""
    from chinchax.experiments.demo_seeds import mean_eval_rows
    from chinchax.jsonio import read_object_or_none
    from chinchax.scaling.paired import neighbour_differences

    seeds_of: dict[tuple, list] = {}  # grid point -> (run id, eval rows) of each seed that has them
    for r in sorted(plan.runs, key=lambda r: r.seed):
        rows = read_object_or_none(sweep.run_dir(r.run_id) / "eval_rows.json")
        if rows:
            seeds_of.setdefault((r.family, r.budget, r.d_model, r.n_layers), []).append((r, rows))
    runs = [{"run": members[0][0].run_id, "budget": members[0][0].budget, "n_params": members[0][0].n_params,
             "rows": mean_eval_rows([rows for _, rows in members])} for members in seeds_of.values()]
    pairs = neighbour_differences(runs)
    ratios = [p["ratio"] for p in pairs]
    n_rows = len(runs[0]["rows"]["weight"]) if runs else 0
    tokens = int(sum(runs[0]["rows"]["weight"])) if runs else 0
    return {"pairs": pairs, "min_ratio": min(ratios) if ratios else float("nan"),
            "share_at_least_3": sum(r >= 3 for r in ratios) / len(ratios) if ratios else float("nan"),
            "median_ratio": sorted(ratios)[len(ratios) // 2] if ratios else float("nan"),
            "eval_rows": n_rows, "eval_tokens": tokens}


def _plots(out: Path, table, curves, results: dict) -> list[tuple[str, str]]:
    """Draw the plots (PNG + SVG) with chinchax.scaling.plots; returns (title, PNG name) per plot."""
    from chinchax.scaling import plots

    drawn = [("IsoFLOP profiles with their parabolas (approach 2)", plots.plot_isoflop(table, out / "isoflop")),
             ("Training loss against compute, every run, with the frontier",
              plots.plot_frontier(curves, out / "frontier"))]
    for name, result in results.items():
        drawn.append((f"N_opt(C) and D_opt(C) from {name} with the bootstrap band",
                      plots.plot_allocation(result, out / f"allocation_{name}",
                                            (float(table["flops"].min()) / 3, float(table["flops"].max()) * 100),
                                            table=table)))
        if name == "approach3":
            law = result.parametric_law()
            n_range = (float(table["n_params"].min()) / 4, float(table["n_params"].max()) * 4)
            d_range = (float(table["n_tokens"].min()) / 4, float(table["n_tokens"].max()) * 4)
            drawn.append(("Approach 3: loss contours over (N, D) with the efficient frontier",
                          plots.plot_contours(law, out / "contours_approach3", n_range, d_range,
                                              title="demo, approach 3", table=table)))
    return [(title, next(p.name for p in paths if p.suffix == ".png")) for title, paths in drawn]


def plot_prediction(out: Path, fit, rows: list[dict], prediction: dict) -> str:
    """Loss against compute: the fitted runs, approach 3's frontier with its band, and the held-out run."""
    import numpy as np

    from chinchax.scaling.plots import _plt, save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    flops = np.array([float(r["flops"]) for r in rows])
    ax.scatter(flops, [float(r["loss"]) for r in rows], s=14, color="0.55", label="fitted runs")
    grid = np.logspace(np.log10(flops.min()), np.log10(prediction["budget"] * 1.5), 40)
    front = [fit.frontier(c) for c in grid]
    ax.plot(grid, [f["loss"] for f in front], color="C0", label="approach 3: loss at N_opt(C)")
    lo, hi = [f.get("loss_lo", np.nan) for f in front], [f.get("loss_hi", np.nan) for f in front]
    ax.fill_between(grid, lo, hi, color="C0", alpha=0.2, linewidth=0)
    c = training_flops(prediction["n_params"], prediction["n_tokens"])
    ax.errorbar([c], [prediction["predicted"]], yerr=[[prediction["predicted"] - prediction["predicted_lo"]],
                [prediction["predicted_hi"] - prediction["predicted"]]], fmt="o", color="C0", capsize=3,
                label=f"predicted (held-out run, {prediction.get('law', 'chinchilla-3')})")
    alt = prediction.get("alternative")
    if alt:  # approach 3's other form, for the same run: drawn beside it
        ax.errorbar([c * 0.9], [alt["predicted"]], yerr=[[alt["predicted"] - alt["predicted_lo"]],
                    [alt["predicted_hi"] - alt["predicted"]]], fmt="s", color="0.5", capsize=3, markersize=4,
                    label=f"other form ({alt['law']}, {alt['relative_error']:+.2%})")
    ax.scatter([c], [prediction["measured"]], marker="*", s=120, color="C3", zorder=5,
               label=f"measured ({prediction['relative_error']:+.2%})")
    ax.axvline(float(flops.max()), color="0.7", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (6ND)")
    ax.set_ylabel("eval loss (nats per byte)")
    ax.set_title("Held-out run at 3x the largest budget")
    ax.legend(fontsize=8, frameon=False)
    paths = save(fig, out / "prediction")
    return next(p.name for p in paths if p.suffix == ".png")
