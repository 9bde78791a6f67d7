"""`chinchax compare`, step 4: results.csv, the plots, summary.json and report.md (in plain words)."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from chinchax.experiments.compare_plots import plot_accuracy, plot_loss, plot_multipliers

# Wang et al. 2022's names for the objectives (their "MLM" is T5's span corruption).
OBJECTIVE_NAMES = {"causal_lm": "full language modeling", "prefix_lm": "prefix language modeling",
                   "span_corruption": "masked language modeling (span corruption)"}
ARCH_NAMES = {("decoder_only", "causal"): "causal decoder", ("decoder_only", "prefix"): "non-causal (prefix-LM) decoder",
              ("encoder_decoder", "causal"): "encoder-decoder", ("encoder_decoder", "prefix"): "encoder-decoder"}


def _si(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _md(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows])


def _pm(v: float, se: float, digits: int = 3) -> str:
    return f"{v:.{digits}f} ± {se:.{digits}f}" if math.isfinite(se) else f"{v:.{digits}f}"


def describe_family(table: pd.DataFrame, family: str) -> str:
    r = table[table["family"] == family].iloc[0]
    return f"{ARCH_NAMES.get((r['variant'], r['attention']), r['variant'])} + {OBJECTIVE_NAMES.get(r['objective'], r['objective'])}"


def family_summary(table: pd.DataFrame, comparison, shots) -> list[dict]:
    """Per family: its description, FLOPs spent, law, multiplier, and its measures at its top budget."""
    out = []
    for family, g in table.groupby("family", sort=False):
        top = g[g["budget"] == g["budget"].max()].sort_values("conditional_bpb").iloc[0]
        law = comparison.laws.get(family)
        m = comparison.multipliers.get(family, math.nan)
        lo, hi = comparison.intervals.get(family, (math.nan, math.nan))
        entry = {
            "family": family, "description": describe_family(table, family), "runs": int(len(g)),
            "budgets": int(g["budget"].nunique()),
            "flops_6nd": float(g["flops"].sum()), "flops_detailed": float(g["flops_detailed"].sum()),
            "detailed_over_6nd": float(g["flops_detailed"].sum() / g["flops"].sum()),
            "top_budget": float(top["budget"]), "top_run": top["run"],
            "top_bpb": float(top["conditional_bpb"]), "top_bpb_stderr": float(top["conditional_bpb_stderr"]),
            "law": law.to_json() if law else None,
            "alpha_interval": list(comparison.alpha_intervals.get(family, (math.nan, math.nan))),
            "multiplier": m, "multiplier_interval": [lo, hi],
            "multiplier_leave_one_budget_out": list(comparison.leave_one_out.get(family, (math.nan, math.nan))),
            "multiplier_extrapolated": comparison.extrapolated(family) if law and math.isfinite(m) else None,
        }
        for k in shots:
            for name in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "chance"):
                entry[f"top_mc{k}_{name}"] = float(top[f"mc{k}_{name}"])
        out.append(entry)
    return out


def verdicts(families: list[dict], reference: str, shots) -> dict:
    """What the numbers support, in words: compute multipliers whose interval excludes 1, accuracy gaps
    beyond 2 standard errors, and accuracies distinguishable from chance."""
    ref = next(f for f in families if f["family"] == reference)
    efficiency, accuracy, above_chance = [], [], []
    for f in families:
        if f["family"] != reference and f["law"]:
            lo, hi = f["multiplier_interval"]
            m = f["multiplier"]
            where = " (read off its law beyond its measured compute)" if f["multiplier_extrapolated"] else ""
            l1, l2 = f["multiplier_leave_one_budget_out"]
            if math.isfinite(l1) and (l1 > 1) != (l2 > 1):
                where += f"; with one budget left out it ranges {l1:.2g}-{l2:.2g}, across 1: one budget decides it"
            if f["multiplier_extrapolated"] and not 0.1 < m < 10:
                where += ("; so far beyond its runs that the number says only 'orders of magnitude more', not how "
                          "many")
            if not math.isfinite(m):
                efficiency.append(f"{f['family']}: its law does not fall with compute, no multiplier")
            elif lo > 1:
                efficiency.append(f"{f['family']} needs {m:.2g}x [{lo:.2g}, {hi:.2g}] the compute of {reference} "
                                  f"for the same bits per byte: less compute-efficient{where}")
            elif hi < 1:
                efficiency.append(f"{f['family']} matches {reference} at {m:.2g}x [{lo:.2g}, {hi:.2g}] the "
                                  f"compute: more compute-efficient{where}")
            else:
                efficiency.append(f"{f['family']}: {m:.2g}x [{lo:.2g}, {hi:.2g}], not distinguishable from "
                                  f"{reference} at this noise{where}")
        for k in shots:
            acc, se = f[f"top_mc{k}_acc_norm"], f[f"top_mc{k}_acc_norm_stderr"]
            if acc - 2 * se > f[f"top_mc{k}_chance"]:
                above_chance.append(f"{f['family']} {k}-shot")
            if f["family"] != reference:
                d = acc - ref[f"top_mc{k}_acc_norm"]
                se_d = math.hypot(se, ref[f"top_mc{k}_acc_norm_stderr"])
                if abs(d) > 2 * se_d:
                    accuracy.append(f"{f['family']} {k}-shot acc_norm {'above' if d > 0 else 'below'} {reference} "
                                    f"by {abs(d):.3f} (> 2 s.e. = {2 * se_d:.3f})")
    return {"efficiency": efficiency, "accuracy_gaps": accuracy, "above_chance": above_chance}


def write(out: Path, *, quick, plan, table, comparison, mset, corpus, timing, failed, executor) -> dict:
    from chinchax import jsonio
    from chinchax.fileio import write_text_atomic

    shots = list(mset.shots)
    write_text_atomic(out / "results.csv", table.to_csv(index=False))
    plots = {
        "loss": plot_loss(table, comparison, out / "plots" / "loss_vs_compute"),
        "accuracy": plot_accuracy(table, shots, out / "plots" / "accuracy_vs_compute"),
        "multipliers": plot_multipliers(comparison, out / "plots" / "multipliers"),
    }
    families = family_summary(table, comparison, shots)
    words = verdicts(families, comparison.reference, shots)
    summary = {
        "quick": quick, **timing, "executor": executor, "machine": _machine(),
        "runs_wall_s_sum": float(np.nansum(table["wall_time_s"])),
        "runs_planned": len(plan.runs), "runs_measured": int(len(table)), "runs_failed": failed,
        "flops_planned_6nd": plan.flops_independent, "flops_6nd": float(table["flops"].sum()),
        "flops_detailed": float(table["flops_detailed"].sum()), "budgets": sorted(set(map(float, table["budget"]))),
        "measure": "conditional_bpb", "measures": corpus, "families": families,
        "comparison": comparison.to_json(), "verdicts": words,
        "plots": {k: [str(p.relative_to(out)) for p in v] for k, v in plots.items()},
    }
    write_text_atomic(out / "summary.json", jsonio.dumps(summary, indent=1))
    text = render(summary, table, comparison)
    write_text_atomic(out / "report.md", text)
    return {"summary": summary, "table": _family_table(families, comparison.reference, shots)}


def _family_table(families, reference, shots) -> str:
    head = ["family", "bits/byte @top", *[f"{k}-shot acc_norm" for k in shots], "alpha", f"multiplier vs {reference}",
            "one budget left out"]
    rows = []
    for f in families:
        lo, hi = f["multiplier_interval"]
        alpha = f"{f['law']['alpha']:.3f} [{f['alpha_interval'][0]:.3f}, {f['alpha_interval'][1]:.3f}]" if f["law"] else "-"
        mult = f"{f['multiplier']:.3g} [{lo:.3g}, {hi:.3g}]" + (" (extrapolated)" if f["multiplier_extrapolated"] else "")
        if not math.isfinite(f["multiplier"]):
            mult = "none: its law does not fall with compute (alpha <= 0)"
        rows.append([f["family"], _pm(f["top_bpb"], f["top_bpb_stderr"]),
                     *[_pm(f[f"top_mc{k}_acc_norm"], f[f"top_mc{k}_acc_norm_stderr"]) for k in shots],
                     alpha, mult if f["law"] else "-", _range(f["multiplier_leave_one_budget_out"])])
    return _md(head, rows)


def _range(pair) -> str:
    lo, hi = pair
    return f"{lo:.3g}-{hi:.3g}" if math.isfinite(lo) else "-"


def render(summary: dict, table: pd.DataFrame, comparison) -> str:
    fams = summary["families"]
    ref = comparison.reference
    shots = [k for k in (0, 1, 2, 3, 4, 5, 8) if f"mc{k}_acc" in table.columns]
    corpus = summary["measures"]
    by_bpb = sorted(fams, key=lambda f: f["top_bpb"])
    best_zero = max(fams, key=lambda f: f["top_mc0_acc_norm"])
    ref_fam = next(f for f in fams if f["family"] == ref)
    zero_gap = best_zero["top_mc0_acc_norm"] - ref_fam["top_mc0_acc_norm"]
    zero_se = math.hypot(best_zero["top_mc0_acc_norm_stderr"], ref_fam["top_mc0_acc_norm_stderr"])
    lines = [
        f"# Architectures x objectives at equal compute{' (quick)' if summary['quick'] else ''}",
        "",
        f"{len(fams)} families, {summary['runs_measured']} runs, budgets "
        f"{', '.join(f'{b:.3g}' for b in summary['budgets'])} FLOPs (6ND), {summary['wall_time_s'] / 60:.1f} min "
        f"on {summary['machine']['cpus']} CPU(s) ({summary['executor']} executor) in this call: "
        f"{summary['runs_trained']} runs trained in {summary['train_wall_s'] / 60:.1f} min, scoring "
        f"{summary['measure_wall_s'] / 60:.1f} min; load average {summary['machine']['load_average']} at the end "
        f"(the runs' own wall times add up to {summary['runs_wall_s_sum'] / 60:.1f} min).",
        "",
        "## Result",
        "",
        _family_table(fams, ref, shots),
        "",
        f"Bits per byte of a {corpus['target_len']}-token continuation given its {corpus['input_len']}-token prefix "
        f"(lower is better) at each family's top budget, its best run; next-line multiple choice "
        f"({corpus['n_choice_examples']} examples, 4 choices, chance 0.25) acc_norm ± one standard error; "
        f"alpha of L(C) = A C^-alpha; multiplier = compute the family needs, by its law, to reach the bits per byte "
        f"{ref}'s law gives at {comparison.top_flops:.3g} FLOPs, over that compute (< 1: more efficient), with "
        f"its 95% paired-bootstrap interval ({comparison.n_bootstrap} resamples of the held-out items); "
        f"last column: the multiplier's range when one budget at a time is left out of every family's law.",
        "",
        "Ranking by bits per byte at the top budget: " + " < ".join(f"{f['family']} ({f['top_bpb']:.3f})" for f in by_bpb) + ".",
        "",
        "## What this supports, and what it does not",
        "",
        *[f"- {s}." for s in summary["verdicts"]["efficiency"]],
        f"- Next-line accuracy above chance (acc_norm - 2 s.e. > 0.25) at the top budget: "
        f"{', '.join(summary['verdicts']['above_chance']) or 'none'}.",
        f"- Accuracy gaps to {ref} beyond 2 standard errors: "
        f"{'; '.join(summary['verdicts']['accuracy_gaps']) or 'none; at this scale the multiple-choice tasks do not separate the families'}.",
        "- The intervals cover the evaluation noise (which held-out items) and the law's leverage on the "
        "envelope; not training noise: every run has one seed, and a different seed moves a small model's loss "
        "by about a percent. A multiplier whose interval barely excludes 1 is a hint, not a finding.",
        "- Every family used the same sizes rule, learning-rate rule and schedule; none was tuned for itself. "
        "A family whose best learning rate differs from the shared rule is handicapped by it.",
        "- The models are tiny (see results.csv) and trained for minutes on Python source; orderings between "
        "objectives can change with scale (Wang et al. see it change between 1B and 11B).",
        "",
        "## Compared with Wang et al. 2022",
        "",
        "Wang et al. (\"What language model architecture and pretraining objective work best for zero-shot "
        "generalization?\") found, at 5B parameters and 168B tokens: a causal decoder trained with full "
        "language modeling gives the best zero-shot generalization right after pretraining, and an "
        "encoder-decoder trained with masked language modeling is best after multitask finetuning.",
        "",
        f"- Zero-shot, without adaptation: the best zero-shot next-line accuracy here is {best_zero['family']} "
        f"({best_zero['top_mc0_acc_norm']:.3f}); "
        + ("that is the causal decoder with full LM, as Wang et al. found."
           if best_zero["family"] == ref and _is_causal_lm(table, ref) else
           f"{ref} is {abs(zero_gap):.3f} {'below' if zero_gap > 0 else 'above'} it "
           f"({'beyond' if abs(zero_gap) > 2 * zero_se else 'within'} 2 standard errors of the difference, "
           f"{2 * zero_se:.3f})."),
        f"- Bits per byte of the continuation (the measure closest to Wang et al.'s zero-shot likelihood "
        f"scoring): {by_bpb[0]['family']} is lowest at the top budget.",
        *_span_line(table, by_bpb),
        "- After multitask finetuning: not measured. The optional multitask-adaptation step is skipped (no "
        "offline multitask mixture of prompted tasks exists for Python source at this size), so Wang et al.'s "
        "second finding is neither supported nor contradicted here.",
        "",
        "## Compute: counted the same way for every family",
        "",
        "C = 6 N D with N = all parameters (an encoder-decoder counts both stacks) and D = decoder tokens "
        "(steps x batch x seq_len); the plan sets each run's steps so its 6ND meets the budget. The detailed "
        "matmul count (attention included, causal attention halved; an encoder-decoder's encoder and cross "
        "attention are extra work per decoder token) is what each family actually spent (attention adds to "
        "6ND; the embedding table, counted in N, is a lookup and no matmul, which takes away):",
        "",
        _md(["family", "runs", "6ND FLOPs", "detailed FLOPs", "detailed / 6ND"],
            [[f["family"], f["runs"], f"{f['flops_6nd']:.3g}", f"{f['flops_detailed']:.3g}",
              f"{f['detailed_over_6nd']:.2f}"] for f in fams]),
        "",
        "## Families",
        "",
        _md(["family", "what", "law A", "alpha"],
            [[f["family"], f["description"], f"{f['law']['A']:.3g}" if f["law"] else "-",
              f"{f['law']['alpha']:.3f}" if f["law"] else "-"] for f in fams]),
        "",
        *[f"- {n}" for n in comparison.notes],
        "",
        "## Measures (the same held-out items for every family)",
        "",
        f"From the {corpus['split']} split of `{corpus['source']}` ({corpus['tokenizer']} tokenizer; items "
        f"fingerprint {corpus['fingerprint']}): {corpus['n_pairs']} (prefix, continuation) pairs drawn (seeded) "
        "from the non-overlapping windows of half the documents, scored the natural way for each variant (causal decoder: causal "
        "attention over prefix + continuation; prefix-LM decoder: bidirectional attention over the prefix; "
        "encoder-decoder: prefix to the encoder, continuation decoded), and next-line multiple choice: a line "
        "of a document, then the true next line among 3 lines of the same indentation from other "
        f"documents, zero-shot and {shots[-1]}-shot (shots from separate documents). Encoder-only models are not "
        "compared: a masked LM gives only a pseudo-log-likelihood, not on the same scale.",
        "",
        "## Runs",
        "",
        _md(["run", "budget", "N", "D", "objective loss", "bits/byte", *[f"{k}-shot acc_norm" for k in shots]],
            [[r.run, f"{r.budget:.3g}", _si(r.n_params), _si(r.n_tokens), f"{r.objective_loss:.4f}",
              _pm(r.conditional_bpb, r.conditional_bpb_stderr, 4),
              *[_pm(getattr(r, f"mc{k}_acc_norm"), getattr(r, f"mc{k}_acc_norm_stderr")) for k in shots]]
             for r in table.itertuples()]),
        "",
        "Objective loss is each run's own eval loss: comparable only between families of one objective.",
        "",
        "## Plots",
        "",
        *[f"![{k}]({paths[0]})" for k, paths in summary["plots"].items()],
        "",
    ]
    if summary["runs_failed"]:
        lines += [f"Failed runs (left out): {', '.join(summary['runs_failed'])}.", ""]
    return "\n".join(lines)


def _span_line(table: pd.DataFrame, by_bpb: list[dict]) -> list[str]:
    """One sentence on span corruption (Wang et al.'s MLM) against the language-modeling objectives."""
    objective = {f: table[table["family"] == f]["objective"].iloc[0] for f in table["family"].unique()}
    span = [f["family"] for f in by_bpb if objective[f["family"]] == "span_corruption"]
    lm = [f["family"] for f in by_bpb if objective[f["family"]] != "span_corruption"]
    if not span or not lm:
        return []
    order = [f["family"] for f in by_bpb]
    if max(order.index(f) for f in lm) < min(order.index(f) for f in span):
        return [f"- Every span-corruption (MLM) family ({', '.join(span)}) continues text worse than every "
                "language-modeling family, on both architectures: consistent with Wang et al., whose MLM-pretrained "
                "models were weak zero-shot before adaptation. Span corruption trains on short masked spans, never "
                "on continuing a prefix; Wang et al. close that gap with an LM adaptation step, skipped here."]
    return [f"- The span-corruption (MLM) families ({', '.join(span)}) do not all rank below the language-modeling "
            "ones here; Wang et al. found MLM-pretrained models weak zero-shot before adaptation."]


def _is_causal_lm(table: pd.DataFrame, family: str) -> bool:
    r = table[table["family"] == family].iloc[0]
    return r["variant"] == "decoder_only" and r["attention"] == "causal" and r["objective"] == "causal_lm"


def _machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(float(x), 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}
