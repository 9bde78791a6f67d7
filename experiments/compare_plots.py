"""The plots of `chinchax compare` (matplotlib, Agg; PNG and SVG via chinchax.scaling.plots.save).

loss_vs_compute      bits per byte vs 6ND compute: every run (faint), each budget's best (filled), the law
                     per family, the reference's loss at the top budget (dotted)
accuracy_vs_compute  next-line acc_norm vs compute, zero- and few-shot panels, ± 1 s.e., chance level
multipliers          compute multiplier per family against the reference, with its 95% bootstrap interval
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 120})
    return plt


def _colors(families) -> dict:
    cmap = _plt().get_cmap("tab10")
    return {f: cmap(i % 10) for i, f in enumerate(families)}


def plot_loss(table: pd.DataFrame, comparison, stem: Path) -> list[Path]:
    from chinchax.scaling.plots import save

    plt = _plt()
    families = list(dict.fromkeys(table["family"]))
    colors = _colors(families)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    env = comparison.envelope
    for f in families:
        runs = table[table["family"] == f]
        ax.scatter(runs["flops"], runs["conditional_bpb"], s=12, color=colors[f], alpha=0.3, linewidths=0)
        e = env[env["family"] == f]
        ax.plot(e["flops"], e["value"], "o", color=colors[f], ms=5, label=f)
        law = comparison.laws.get(f)
        if law is not None:
            c = np.logspace(math.log10(law.flops_min), math.log10(law.flops_max), 50)
            ax.plot(c, law.loss(c), "-", color=colors[f], lw=1.2)
    ref = comparison.laws.get(comparison.reference)
    if ref is not None:
        ax.axhline(float(ref.loss(comparison.top_flops)), color="0.4", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _no_minor_x_labels(ax)
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("bits per byte of the continuation")
    ax.set_title("Held-out bits per byte vs compute: points = runs, lines = L(C) = A C^-alpha per family")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    _plain_y(ax)
    return save(fig, stem)


def plot_accuracy(table: pd.DataFrame, shots, stem: Path) -> list[Path]:
    from chinchax.scaling.plots import save

    plt = _plt()
    families = list(dict.fromkeys(table["family"]))
    colors = _colors(families)
    fig, axes = plt.subplots(1, len(shots), figsize=(4.2 * len(shots) + 2.5, 4), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], shots, strict=True):
        best = table.loc[table.groupby(["family", "budget"])["conditional_bpb"].idxmin()]
        for i, f in enumerate(families):
            g = best[best["family"] == f].sort_values("flops")
            jitter = 1 + 0.03 * (i - len(families) / 2)  # families at one budget side by side
            ax.errorbar(g["flops"] * jitter, g[f"mc{k}_acc_norm"], yerr=g[f"mc{k}_acc_norm_stderr"], fmt="o-",
                        color=colors[f], ms=4, lw=1, capsize=2, label=f)
        ax.axhline(float(table[f"mc{k}_chance"].iloc[0]), color="0.4", ls=":", lw=1, label="chance")
        ax.set_xscale("log")
        _no_minor_x_labels(ax)
        ax.set_xlabel("training compute C = 6ND (FLOPs)")
        ax.set_title(f"next-line multiple choice, {k}-shot")
    axes[0][0].set_ylabel("acc_norm (± 1 s.e.), each budget's best run")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return save(fig, stem)


def plot_multipliers(comparison, stem: Path) -> list[Path]:
    from chinchax.scaling.plots import save

    plt = _plt()
    families = list(comparison.multipliers)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(families) + 1.5))
    y = np.arange(len(families))[::-1]
    for yi, f in zip(y, families, strict=True):
        m = comparison.multipliers[f]
        lo, hi = comparison.intervals.get(f, (m, m))
        if not math.isfinite(m):
            ax.text(1, yi, "law does not fall with compute", va="center", ha="center", fontsize=8)
            continue
        hi_drawn = hi if math.isfinite(hi) else max(m, 1) * 100
        ax.plot([lo, hi_drawn], [yi, yi], "-", color="C0", lw=2)
        ax.plot([m], [yi], "o", color="C3" if comparison.extrapolated(f) else "C0", ms=6)
        ax.annotate(f"{m:.2g}x [{lo:.2g}, {hi:.2g}]" + (" extrapolated" if comparison.extrapolated(f) else ""),
                    (hi_drawn, yi), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    ax.axvline(1, color="0.4", ls=":", lw=1)
    ax.set_yticks(y, families)
    ax.set_xscale("log")
    ax.set_xlabel(f"compute to match {comparison.reference} at {comparison.top_flops:.3g} FLOPs (x; < 1 = more efficient)")
    ax.set_title("Compute multipliers, 95% paired bootstrap intervals (red: read beyond the family's runs)")
    return save(fig, stem)


def _no_minor_x_labels(ax) -> None:
    """Less than a decade of compute: matplotlib labels the minor log ticks too, and they overprint."""
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())


def _plain_y(ax) -> None:
    """A log axis spanning less than a decade gets plain numbers, not 10^x ticks."""
    from matplotlib.ticker import FormatStrFormatter

    lo, hi = ax.get_ylim()
    if hi / lo < 10:
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
