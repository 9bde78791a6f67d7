"""report.md, plots and summary of the alignment study (experiments/alignment_study.py): gold and proxy gains
against d per proxy size and method, Gao et al.'s fits with 95% intervals, coefficients against proxy size,
and where optimisation starts to hurt the gold score. Says only what the numbers support."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from chinchax.errors import UserError
from chinchax.fileio import write_text_atomic
from chinchax.scaling import overoptimization as oo

METHODS = (("bon", "bon", "best-of-n over n"), ("ppo", "rl", "PPO over steps"), ("dpo", "rl", "DPO over epochs"))


def _points(px: dict, method: str, gold0: float) -> dict:
    rows = [r for r in (px.get(method) or []) if r["d"] > 0]  # best-of-1 is the initial policy itself
    d = [0.0] + [r["d"] for r in rows]
    gold = [0.0] + [r["gold"] - gold0 for r in rows]
    proxy = [0.0] + [r.get("proxy", float("nan")) - px["proxy_initial"] for r in rows]
    se = [float("nan")] + [r.get("gold_se", float("nan")) for r in rows]
    return {"d": np.asarray(d), "gold": np.asarray(gold), "proxy": np.asarray(proxy), "se": np.asarray(se)}


def _fit(form: str, pts: dict):
    try:
        sigma = pts["se"] if np.all(np.isfinite(pts["se"][1:])) and np.all(pts["se"][1:] > 0) else None
        return oo.fit(form, pts["d"], pts["gold"], sigma=sigma), None
    except (UserError, RuntimeError, ValueError) as e:
        return None, str(e)


def _fmt_ci(v, ci):
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _trend(fits, key: str) -> str:
    """How a coefficient moves with proxy size, and whether its intervals can tell the sizes apart."""
    pairs = [(getattr(f, key), getattr(f, f"{key}_ci")) for f in fits if f is not None and math.isfinite(getattr(f, key))]
    if len(pairs) < 2:
        return f"{key}: too few fits to tell"
    v = np.asarray([p[0] for p in pairs])
    diffs = np.diff(v)
    shape = ("rises with every step up in proxy size" if np.all(diffs > 0) else
             "falls with every step up in proxy size" if np.all(diffs < 0) else "does not move monotonically")
    apart = any(a[1][1] < b[1][0] or b[1][1] < a[1][0] for a, b in zip(pairs, pairs[1:], strict=False))
    return f"{key} {shape} ({'some neighbouring intervals are disjoint' if apart else 'every neighbouring pair of intervals overlaps, so the sizes are not told apart'})"


def write_report(results: dict, out: Path) -> dict:
    gold0 = results["gold_initial"]
    proxies = results["proxies"]
    summary = {"gold_initial": gold0, "pairs": results["pairs"], "wall_s": results.get("wall_s"),
               "quick": results.get("quick"), "timings": results.get("timings"), "proxies": []}
    lines = [
        "# Reward-model overoptimization on chinchax (Gao et al. 2022 forms)",
        "",
        f"Initial policy gold score {gold0:.4f} (mean over the eval prompts' samples); {results['pairs']} gold-"
        f"labelled pairs; wall time {results.get('wall_s', float('nan')):.0f} s"
        f"{' (quick)' if results.get('quick') else ''}.",
        "Gains are relative to the initial policy; d = sqrt(KL). Best-of-n KL is log n - (n-1)/n; PPO and DPO KL "
        "is measured on fresh samples (k1, per sequence). Intervals are 95% (t, from the fit's covariance with "
        "the points' standard errors).",
        "",
        "## Proxy reward models",
        "",
        "| proxy | parameters | held-out gold-label accuracy | ECE |",
        "|---|---|---|---|",
    ]
    for px in proxies:
        lines.append(f"| {px['name']} | {px['n_params']:,} | {px['rm_eval']['accuracy']:.3f} | {px['rm_eval']['ece']:.3f} |")
    coeffs: dict[str, list] = {}
    for method, form, title in METHODS:
        curves, fits = {}, []
        lines += ["", f"## {title} (R_{form}(d))", "",
                  "| proxy | alpha | beta | fitted peak d* | best gold gain (at d) | last gold gain (at d) | proxy gain at last d |",
                  "|---|---|---|---|---|---|---|"]
        for px in proxies:
            pts = _points(px, method, gold0)
            if len(pts["d"]) < 2:
                fits.append(None)
                continue
            fit, why = _fit(form, pts)
            fits.append(fit)
            curves[px["name"]] = {**pts, "fit": fit}
            best = int(np.argmax(pts["gold"]))
            a = _fmt_ci(fit.alpha, fit.alpha_ci) if fit else f"no fit ({why})"
            b = _fmt_ci(fit.beta, fit.beta_ci) if fit else ""
            peak = (f"{fit.d_peak:.3f}" if math.isfinite(fit.d_peak) else "none (beta <= 0)") if fit else ""
            lines.append(
                f"| {px['name']} | {a} | {b} | {peak} | {pts['gold'][best]:+.4f} ({pts['d'][best]:.3f}) | "
                f"{pts['gold'][-1]:+.4f} ({pts['d'][-1]:.3f}) | {pts['proxy'][-1]:+.4f} |"
            )
            entry = next((e for e in summary["proxies"] if e["name"] == px["name"]), None)
            if entry is None:
                entry = {"name": px["name"], "n_params": px["n_params"], "rm_eval": px["rm_eval"]}
                summary["proxies"].append(entry)
            entry[method] = {"fit": fit.to_json() if fit else None, "fit_error": why,
                             "points": {k: v.tolist() for k, v in pts.items()}}
        if curves:
            oo.plot_scores(curves, out / f"{method}_scores_vs_d.png", title=title)
            lines += ["", f"![{title}]({method}_scores_vs_d.png)"]
        coeffs[method] = fits
        good = [f for f in fits if f is not None]
        if good:
            lines += ["", f"{_trend(fits, 'alpha')}; {_trend(fits, 'beta')}."]
            hurt = [px["name"] for px, f in zip(proxies, fits, strict=True)
                    if f is not None and math.isfinite(f.d_peak) and f.d_peak < max(_points(px, method, gold0)["d"])]
            lines.append(
                "Gold passes its fitted peak inside the measured range (optimisation starts to hurt) for: "
                f"{', '.join(hurt) if hurt else 'none of the proxies'}."
            )
    sizes = [px["n_params"] for px in proxies]
    if any(f is not None for fits in coeffs.values() for f in fits):
        oo.plot_coefficients(sizes, coeffs, out / "coefficients_vs_proxy_size.png")
        lines += ["", "## Coefficients against proxy size", "", "![coefficients](coefficients_vs_proxy_size.png)"]
    lines += [
        "",
        "## What this supports",
        "",
        "A CPU-sized replication: a few proxies, a few dozen prompts, a tiny policy. The intervals say how well each "
        "curve is pinned down; coefficient trends across sizes are read from at most a handful of fits, so a "
        "monotone trend here is suggestive, not a law. Gao et al.'s finding that the coefficients move smoothly "
        "with proxy size is tested, not assumed, by the monotonicity lines above.",
    ]
    write_text_atomic(out / "report.md", "\n".join(lines) + "\n")
    return summary
