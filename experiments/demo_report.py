"""report.md of `chinchax demo`: what was done, what it found, and in plain words how far to trust it."""

from __future__ import annotations

import math


def _si(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _md_table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def optimal_rows(fits: dict) -> list[list]:
    rows = []
    for o in fits["optimal"]:
        extrapolated = " (extrapolated)" if o["extrapolated"] else ""
        rows.append([f"{o['budget']:.3g}{extrapolated}", o["approach"],
                     f"{_si(o['n_opt'])} [{_si(o['n_lo'])}, {_si(o['n_hi'])}]",
                     f"{_si(o['d_opt'])} [{_si(o['d_lo'])}, {_si(o['d_hi'])}]",
                     f"{o['d_opt'] / o['n_opt']:.3g}"])
    return rows


def edge_winners(rows: list[dict]) -> dict[str, list[float]]:
    """Budgets whose lowest loss is at the smallest or the largest model size: there the grid does not
    bracket the optimum, and an approach-2 minimum is an extrapolation."""
    edges: dict[str, list[float]] = {"smallest": [], "largest": []}
    for budget in sorted({float(r["budget"]) for r in rows}):
        runs = sorted((r for r in rows if float(r["budget"]) == budget), key=lambda r: float(r["n_params"]))
        best = min(range(len(runs)), key=lambda i: float(runs[i]["loss"]))
        if best == 0:
            edges["smallest"].append(budget)
        elif best == len(runs) - 1:
            edges["largest"].append(budget)
    return edges


def _bracketing(rows: list[dict]) -> str:
    edges = edge_winners(rows)
    parts = []
    if edges["smallest"]:
        parts.append(f"At {len(edges['smallest'])} of {len({r['budget'] for r in rows})} budgets "
                     f"({', '.join(f'{b:.3g}' for b in edges['smallest'])}) the smallest model had the lowest loss: "
                     "the compute-optimal size there is at or below the smallest model of the grid.")
    if edges["largest"]:
        parts.append(f"At {', '.join(f'{b:.3g}' for b in edges['largest'])} the largest model had the lowest loss: "
                     "the optimum is at or above the grid.")
    return (" " + " ".join(parts)) if parts else " Every budget's best run is inside its grid of sizes."


def _interval(v) -> str:
    value, lo, hi = v
    return f"{value:.3g} [{lo:.3g}, {hi:.3g}]"


FORM_TEXT = {"chinchilla": "Chinchilla's additive form, L = E + A/N^α + B/D^β",
             "kaplan": "Kaplan's joint form with an irreducible loss, L = E + (A/N^α + B/D)^γ"}


def _laws(summary: dict, fits: dict) -> str:
    lines = []
    form = (summary["approaches"].get("3") or {}).get("form", "chinchilla")
    for key, label in (("1", "Approach 1 (envelope of the training curves)"), ("2", "Approach 2 (isoFLOP parabolas)"),
                       ("3", f"Approach 3 ({FORM_TEXT[form]})")):
        a = summary["approaches"].get(key)
        if a is None:
            continue
        lines.append(f"- {label}: N_opt ∝ C^a with a = {a['a']:.3g} [{a['a_lo']:.3g}, {a['a_hi']:.3g}] "
                     f"(width {a['a_width']:.2g}); D_opt ∝ C^b with b = {_interval(a['b'])}.")
    three = summary["approaches"].get("3")
    if three:
        p = three["params"]
        last = f"γ = {_interval(p['gamma'])}" if "gamma" in p else f"β = {_interval(p['beta'])}"
        lines.append(f"- Approach 3's parameters: E = {_interval(p['E'])}, A = {_interval(p['A'])}, "
                     f"B = {_interval(p['B'])}, α = {_interval(p['alpha'])}, {last}.")
        lines.append(_form_choice(summary.get("approach3_forms")))
        shares = three.get("residuals_by_length") or []
        if shares:
            lines.append("- Approach 3's residuals (measured - fitted loss) by run length, shortest third first: "
                         + "; ".join(f"{g['steps_min']}-{g['steps_max']} steps: {g['mean_residual']:+.3f} ± "
                                     f"{g['stderr']:.3f} ({g['runs']} grid points)" for g in shares)
                         + ". Near 0 everywhere if the law holds; a trend with length means how long a run "
                         "trains, not only N and D, sets its loss at this scale (an optimizer-limited regime), "
                         "and the law's predictions for longer runs are pessimistic.")
    for name, error in fits["errors"].items():
        lines.append(f"- Approach {name[-1]} could not be fitted on these runs: {error}")
    for name, notes in fits.get("notes", {}).items():
        for note in notes:
            lines.append(f"- Note ({name}): {note}")
    lines.append("- For reference, Chinchilla found a ≈ 0.50 (approaches 1, 2) and a ≈ 0.46 (approach 3) at "
                 "10^18-10^24 FLOPs.")
    return "\n".join(lines)


def _form_choice(forms: dict | None) -> str:
    """How approach 3's form was chosen, with both forms' scores and the other form's exponent."""
    if not forms:
        return ""
    chosen, scores = forms["selected"], forms["forms"]
    if forms["by"] == "backtest":
        how = ("each form, fitted on the budgets below each budget in turn, predicted that budget's runs ("
               + " and ".join(f"{f}: {scores[f]['runs']} runs, RMSE of log loss {scores[f]['rmse_log_loss']:.4f}, "
                              f"mean error {scores[f]['mean_log_error']:+.4f}" for f in scores)
               + f"); approach 3 uses {chosen}'s form, which extrapolated better")
    else:
        how = (f"too few runs below the largest budget to test extrapolation, so the form with the lower objective "
               f"on all runs: {chosen}'s")
    alt = forms.get("alternative")
    other = (f" The other form ({alt['form']}'s) gives a = {alt['a']:.3g} [{alt['a_lo']:.3g}, {alt['a_hi']:.3g}]."
             if alt else "")
    return (f"- Approach 3's form was chosen by the test a prediction faces: {how}. Both forms have five parameters. "
            f"In Chinchilla's form the two terms add; in Kaplan's the data term grows with the model (γ < 1), so a "
            f"large model trained briefly pays more than a small one.{other}")


def _agreement(summary: dict) -> str:
    ag = summary["agreement"]
    if not ag.get("comparable"):
        return f"Not comparable: {ag.get('reason')}."
    verdict = "**agree**" if ag["agree"] else "**do not meet the bar**"
    return (f"Approaches 2 and 3 {verdict}: their 95% intervals of a are {ag['a2_width']:.2g} and {ag['a3_width']:.2g} "
            f"wide (the bar: at most {ag['max_width']}) and {'overlap' if ag['overlap'] else 'do not overlap'}.")


def _noise(summary: dict) -> str:
    noise = summary["noise"]
    if not noise["pairs"]:
        return "No paired evaluation rows were found."
    rows = [[f"{p['budget']:.3g}", f"{_si(p['n_smaller'])} → {_si(p['n_larger'])}", f"{p['difference']:+.4f}",
             f"{p['stderr']:.4f}", f"{p['ratio']:.1f}"] for p in noise["pairs"]]
    return (f"Every run is scored on the same {noise['eval_rows']} validation rows ({noise['eval_tokens']:,} tokens), so "
            "two runs are compared row by row: the paired standard error leaves out how hard each row is. "
            f"Absolute difference / s.e. between neighbouring sizes: median **{noise['median_ratio']:.1f}**, smallest "
            f"{noise['min_ratio']:.1f}; {noise['share_at_least_3']:.0%} of the pairs are at least 3 (the bar)."
            + (" The pairs below it sit at the bottom of an isoFLOP valley, on both sides of the optimum, where two "
               "sizes can truly be equally good: there no validation set separates them, and none needs to (the "
               "parabola is fitted through all of them)." if noise["share_at_least_3"] < 1 else "") + "\n\n"
            + _md_table(["budget", "sizes", "loss difference", "paired s.e.", "difference / s.e. (abs)"], rows)
            + _seed_noise(noise.get("seeds")))


def _seed_noise(seeds: dict | None) -> str:
    if not seeds or not seeds.get("dof"):
        return ""
    return (f"\n\nThe validation set is not the only noise. Two seeds of one grid point (another initialisation "
            f"and data order) differ by a pooled standard deviation of **{seeds['pooled_sd']:.4f}** nats "
            f"({seeds['dof']} degrees of freedom; largest spread {seeds['max_spread']:.4f}): as large as many "
            f"differences between neighbouring sizes. The fits read the mean of {seeds['seeds']} seeds per grid "
            f"point, whose seed noise is {seeds['sd_of_mean']:.4f}; the bootstrap resamples grid points, so its "
            "intervals carry that noise.")


def _prediction(summary: dict) -> str:
    p = summary["prediction"]
    if not p:
        return "No held-out run: approach 3 was not fitted."
    return (f"Trained after the fits, never seen by them: one run at {p['budget']:.3g} FLOPs "
            f"({p['budget'] / max(summary['scale']['budgets']):.0f}x the largest fitted budget) at approach 3's "
            f"N_opt = {_si(p['n_opt'])} (the nearest shape: d_model {p['d_model']} x {p['n_layers']} layers, "
            f"N = {_si(p['n_params'])}, D = {_si(p['n_tokens'])} tokens). Predicted loss "
            f"**{p['predicted']:.4f}** [{p['predicted_lo']:.4f}, {p['predicted_hi']:.4f}], measured "
            f"**{p['measured']:.4f}**{_held_out_seeds(p)}: error **{p['relative_error']:+.2%}** "
            f"({'inside' if p['inside_interval'] else 'outside'} the interval).{_alternative(p)}{_held_out_rate(p)}")


def _held_out_rate(p: dict) -> str:
    lr = p.get("learning_rate")
    if not lr:
        return ""
    text = f" It trained at the learning-rate rule's {lr['lr']:.3g}, {_against_tuned(lr)}"
    if lr["lo"] is None:
        return text + "."
    text += (f"; refitting the rule to the lr sweep with its seeds resampled ({lr['resamples']} times) puts that "
             f"rate in [{lr['lo']:.3g}, {lr['hi']:.3g}] ({lr['level']:.0%}; {lr['hi'] / lr['lo']:.1f}x from end to end)")
    if lr.get("loss_cost") is None:
        return text + "."
    return (text + f": were the best rate at either end, training at the rule's rate would cost {lr['loss_cost']:.3f} "
            f"nats ({lr['loss_cost'] / p['measured']:.1%} of its loss) at the valley's curvature in the lr sweep.")


def _against_tuned(lr: dict) -> str:
    """Where the held-out width lies against the widths the lr rule was tuned on."""
    lo, hi = lr["tuned_widths"]
    if lr["d_model"] > hi:
        return f"{lr['extrapolation']:.1f}x wider than the widest size the rule was tuned on (d_model {lo}-{hi})"
    where = "within" if lr["d_model"] >= lo else "below"
    return f"at a width {where} those the rule was tuned on (d_model {lo}-{hi})"


def _alternative(p: dict) -> str:
    alt = p.get("alternative")
    if not alt:
        return ""
    return (f" Approach 3's other form ({alt['law']}) predicted {alt['predicted']:.4f} [{alt['predicted_lo']:.4f}, "
            f"{alt['predicted_hi']:.4f}] for the same run: error {alt['relative_error']:+.2%}.")


def _held_out_seeds(p: dict) -> str:
    seeds = p.get("measured_seeds") or []
    if len(seeds) < 2:
        return ""
    return f" (the mean of {len(seeds)} seeds: {', '.join(f'{x:.4f}' for x in seeds)})"


def _throughput(summary: dict) -> str:
    t = summary["throughput"]
    again = " (figures of the call that trained the runs; this call trained none)" if t.get("from_previous_call") else ""
    return (f"Sweep efficiency **{t['efficiency']:.1%}** of this machine's float32 `jnp.dot` peak "
            f"({t['peak_flops'] / 1e9:.1f} GFLOP/s, measured at the start of the run): {t['flops_detailed']:.3g} "
            f"FLOPs (every matmul, forward and backward) in {t['training_wall_s']:.0f} s of training wall time over "
            f"{t['runs_trained']} runs, start-ups, compiles, evals and checkpoints included. Counted as 6ND the "
            f"same runs are {t['efficiency_6nd']:.1%}.{again}")


def _seeds_text(summary: dict) -> str:
    n = len(summary.get("seeds") or [0])
    return "one seed per run" if n == 1 else f"{n} seeds per grid point"


# The held-out run's rate is too uncertain to test the law with when it can cost more than half the 1% that the
# prediction is judged by.
UNCERTAIN_RATE_COST = 0.005


def _trust(summary: dict, rows: list[dict]) -> str:
    scale, ag, p = summary["scale"], summary["agreement"], summary["prediction"]
    can, cannot = [], []
    if ag.get("agree"):
        can.append("the allocation exponent a at this scale, to within the stated intervals")
    else:
        narrow = [f"approach {k}'s a = {v['a']:.2f} [{v['a_lo']:.2f}, {v['a_hi']:.2f}]"
                  for k, v in sorted(summary["approaches"].items()) if v["a_width"] <= ag.get("max_width", 0.25)]
        wide = [f"approach {k}'s (interval {v['a_width']:.2f} wide)"
                for k, v in sorted(summary["approaches"].items()) if not v["a_width"] <= ag.get("max_width", 0.25)]
        tight = [v for v in summary["approaches"].values() if v["a_width"] <= ag.get("max_width", 0.25)]
        consistent = max((v["a_lo"] for v in tight), default=0) <= min((v["a_hi"] for v in tight), default=1)
        if narrow and consistent:
            can.append("the allocation exponent as " + " and ".join(narrow) + ", and the compute-optimal sizes at "
                       "the fitted budgets within their intervals")
        elif narrow:
            cannot.append("one allocation exponent: " + " and ".join(narrow) + " are each narrow but do not "
                          "overlap (approach 1 reads training curves of cosine runs at points their schedule "
                          "was not tuned for, which biases it)")
        cannot.append("an exponent that every approach pins down"
                      + (": " + ", ".join(wide) + " is not precise" if wide else "")
                      + ("" if ag.get("overlap", True) else ", and the approaches disagree"))
    if p and abs(p["relative_error"]) <= 0.01:
        factor = p["budget"] / max(scale["budgets"])
        seeds = p.get("measured_seeds") or []
        spread = (f"; that run's {len(seeds)} seeds differ by {(max(seeds) - min(seeds)) / p['measured']:.1%}, and one "
                  "held-out point is one test, not a measured accuracy" if len(seeds) > 1 else "")
        can.append(f"the loss of a compute-optimal run {factor:.0f}x beyond the largest fitted budget (it predicted one "
                   f"to {abs(p['relative_error']):.1%}{spread})")
    elif p:
        if p["inside_interval"]:
            can.append(f"a loss prediction {p['budget'] / max(scale['budgets']):.0f}x beyond the largest fitted budget "
                       "within its 95% interval (the held-out run landed inside it)")
        cannot.append(f"loss predictions beyond the fitted budgets to better than {abs(p['relative_error']):.1%}")
        if not p["inside_interval"]:
            cannot.append("approach 3's intervals as error bars: the held-out run landed outside its 95% interval, so "
                          "the bootstrap over grid points understates the law's error here")
    lr = (p or {}).get("learning_rate") or {}
    if lr.get("loss_cost") is not None and lr["loss_cost"] / p["measured"] > UNCERTAIN_RATE_COST:
        cannot.append(f"a held-out run trained as well as the fitted ones: its learning rate, "
                      f"{_against_tuned(lr)}, is uncertain by {lr['hi'] / lr['lo']:.1f}x, "
                      f"which can cost it {lr['loss_cost'] / p['measured']:.1%} of its loss (the prediction's error "
                      "is partly the rate's, not the law's)")
    cannot.append("anything about models of millions of parameters or more: byte-level models of "
                  f"{_si(min(float(r['n_params']) for r in rows))}-{_si(max(float(r['n_params']) for r in rows))} "
                  f"parameters over {scale['budget_decades']:.1f} decades of compute, one corpus (Python source), "
                  f"{_seeds_text(summary)}, learning rates tuned at the smallest budget only")
    text = ""
    if can:
        text += "What it supports: " + "; ".join(can) + ". "
    text += "What it cannot support: " + "; ".join(cannot) + "."
    return text + _bracketing(rows)


def render(summary: dict, plan, rows: list[dict], fits: dict, machine: dict, sweep_dir: str) -> tuple[str, str]:
    """report.md text, and the compute-optimal table as plain text for the terminal."""
    level = fits["level"]
    head = ["budget (FLOPs)", "approach", f"N_opt [{level:.0%} interval]", "D_opt (tokens)", "D/N"]
    table_rows = optimal_rows(fits)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table_rows, strict=False)]
    opt_text = "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in [head, *table_rows])
    lr = summary["learning_rate"]
    lr_rows = [[d, f"{lr['best_by_width'][d]:.3g}", lr["how"][d],
                ", ".join(f"{a:.3g}: {b:.4f}" for a, b in lr["points"][d])] for d in sorted(lr["best_by_width"])]
    scale, corpus = summary["scale"], summary["corpus"]
    budgets = scale["budgets"]
    runs_md = _md_table(
        ["run (first seed)", "budget", "d_model x layers", "N (non-emb.)", "D", "lr", "eval loss ± s.e.",
         "seeds: sd", "wall s"],
        [[r["run"], f"{float(r['budget']):.3g}", f"{r['d_model']} x {r['n_layers']}",
          f"{_si(float(r['n_params']))} ({_si(float(r['n_params_non_embedding']))})", _si(float(r["n_tokens"])),
          f"{float(r['learning_rate']):.3g}", f"{float(r['loss']):.4f} ± {float(r.get('eval_loss_stderr') or 0):.4f}",
          f"{r.get('n_seeds', 1)}: {float(r.get('loss_seed_sd', 'nan')):.4f}",
          f"{float(r.get('wall_time_s') or 0):.0f}"] for r in rows])
    plots = "\n\n".join(f"![{title}]({name})" for title, name in fits["plots"])
    text = f"""# chinchax demo: a compute-optimal scaling study on {machine['cpus']} CPU cores

{"**Quick mode** (`--quick`): a smoke test of the pipeline; its fits are not meant to be read. " if summary["quick"] else ""}\
Wall time: **{summary['wall_time_s'] / 60:.1f} min** on {machine['processor']} ({machine['cpus']} cores), \
{machine['platform']}, Python {machine['python']}.

## What was done

- **Data**: {"the Python " + corpus['python'] + " standard library" if corpus['source'] == "stdlib" else "the environment's site-packages"} as a text corpus ({corpus['documents']:,} files; \
{corpus['train_documents']:,} train / {corpus['validation_documents']:,} validation), byte-level tokens \
(vocabulary {corpus['vocab_size']}), rows of {rows[0]['seq_len']} tokens.
- **Models**: causal decoders (pre-LN, RoPE, GELU, tied embeddings), d_model / n_layers fixed by the shape rule.
- **Sweep**: {summary['runs']} runs ({len(rows)} grid points x {len(summary.get('seeds') or [0])} seeds: another \
initialisation and data order) at {len(budgets)} FLOP budgets ({", ".join(f"{b:.3g}" for b in budgets)}; \
{scale['budget_decades']:.2f} decades), non-embedding N spanning {scale['n_non_embedding_span']:.0f}x; C = 6·N·D with \
N = all parameters (with a tied head and no position table, exactly the matmuls a token pays for). \
{scale['flops_total']:.3g} training FLOPs in all (sweep {scale['flops_sweep']:.3g}, learning-rate sweep \
{scale['flops_lr_sweep']:.3g}, held-out runs the rest). Cosine schedule to 10%.
- **Fits**: Chinchilla approaches 1, 2 and 3 on the seed means, each with {fits['n_bootstrap']} bootstrap resamples \
of the grid points; \
{level:.0%} percentile intervals. Approach 3 is fitted in two forms (Chinchilla's and Kaplan's joint form with an \
irreducible loss) and uses the one that extrapolates better (below).

## Throughput

{_throughput(summary)}

## Learning rates (measured)

At the smallest budget each size was trained at 1/3x, 1x and 3x the planned rate ({lr.get('seeds_per_point', 1)} \
seed(s) a point, averaged), and the range widened by 3x while some size's best rate sat at its edge. The rule every \
run then used is fitted to all sizes at once: around each size's best rate the loss is a parabola in log(lr) whose \
vertex follows lr = {lr['base_lr']:.3g} x ({lr['base_d_model']} / d_model)^{lr['width_exponent']:.2f} \
({lr['exponent_source']}). The table gives each size's own vertex (a 3-point parabola, noisier: a diagnostic).

{_md_table(["d_model", "own vertex", "how", "lr: eval loss"], lr_rows)}

## Compute-optimal allocation

{_md_table(head, table_rows)}

## Fitted laws

{_laws(summary, fits)}

{_agreement(summary)}

## Noise

{_noise(summary)}

## Prediction of a run the fits did not see

{_prediction(summary)}

## How much to trust this

{_trust(summary, rows)}

## Plots

{plots}

## Runs

{runs_md}

Files: `results.csv` (one row per grid point, seeds averaged: what `chinchax fit` reads), `results_seeds.csv` (one \
row per run), `curves.csv` (per-step losses, seeds averaged), `summary.json` \
(every figure above, docs/interfaces.md), {", ".join(f"`{name}`" for name in fits["files"])}, `{sweep_dir}/` (plan, \
configs, run directories).
"""
    return text, opt_text
