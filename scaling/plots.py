"""The scaling plots (matplotlib, Agg backend), each written as PNG and SVG.

isoflop     loss vs N per budget, with each budget's parabola and its minimum (approach 2)
frontier    loss vs compute for every run, with the compute-efficient frontier / envelope
allocation  N_opt(C) and D_opt(C) power laws with their bootstrap bands
contours    approach-3 loss contours over (N, D) with the efficient frontier and isoFLOP lines
bloomberg   Chinchilla-1/2/3 and Kaplan N and D against compute, with well-known models placed on it
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd

from chinchax.scaling.fitresult import FitResult
from chinchax.scaling.laws import CHINCHILLA_3, FLOPS_PER_PARAM_TOKEN, ParametricLaw, published_allocations

KINDS = ("isoflop", "frontier", "allocation", "contours", "bloomberg")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 120})
    return plt


def save(fig, stem: str | Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg atomically; return both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, format=ext, bbox_inches="tight")
        os.replace(tmp, path)
        paths.append(path)
    _plt().close(fig)
    return paths


def plot_isoflop(table: pd.DataFrame, stem) -> list[Path]:
    from chinchax.scaling.fit_chinchilla import isoflop_minima
    from chinchax.scaling.table import budgets, final_rows

    plt = _plt()
    df = final_rows(table)
    b = budgets(df)
    minima = isoflop_minima(df)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(np.unique(b))))
    for color, budget in zip(colors, np.unique(b), strict=True):
        m = b == budget
        ax.scatter(df["n_params"][m], df["loss"][m], color=color, s=18, label=f"{budget:.1e} FLOPs")
        row = minima[minima["budget"] == budget]
        if len(row):
            r = row.iloc[0]
            x = np.linspace(np.log10(r.n_min), np.log10(r.n_max), 100)
            ax.plot(10**x, r.p2 * x**2 + r.p1 * x + r.p0, color=color, lw=1.2)
            ax.scatter([r.n_opt], [r.loss_opt], color=color, marker="*", s=140, edgecolor="k", zorder=5)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("IsoFLOP profiles (stars: parabola minima)")
    ax.legend(fontsize=8, title="budget C")
    return save(fig, stem)


def plot_frontier(table: pd.DataFrame, stem) -> list[Path]:
    from chinchax.scaling.fit_chinchilla import envelope

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    curves = "step" in table.columns and table.groupby("run").size().max() > 1
    if curves:
        for _, g in table.groupby("run"):
            g = g.sort_values("flops")
            ax.plot(g["flops"], g["loss"], color="0.6", lw=0.8)
        front = envelope(table)
    else:
        sc = ax.scatter(table["flops"], table["loss"], c=np.log10(table["n_params"]), s=18, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="log10 parameters")
        df = table.sort_values("flops")
        front = df[df["loss"] < df["loss"].cummin().shift(fill_value=np.inf)]
    ax.plot(front["flops"], front["loss"], color="C3", lw=2, label="compute-efficient frontier")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Loss vs compute")
    ax.legend()
    return save(fig, stem)


def plot_allocation(fit: FitResult, stem, flops_range: tuple[float, float] | None = None) -> list[Path]:
    plt = _plt()
    lo, hi = flops_range or _fit_flops_range(fit)
    c = np.logspace(np.log10(lo), np.log10(hi), 100)
    n_best = fit.allocation_law().n_opt(c)
    draws = np.array(fit.bootstrap_allocation) if fit.bootstrap_allocation else np.empty((0, 2))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("N", "D"), strict=True):
        best = n_best if what == "N" else c / (FLOPS_PER_PARAM_TOKEN * n_best)
        ax.plot(c, best, color="C0", lw=2, label=f"{fit.law} fit")
        if len(draws):
            n_draws = draws[:, :1] * c[None, :] ** draws[:, 1:2]
            vals = n_draws if what == "N" else c[None, :] / (FLOPS_PER_PARAM_TOKEN * n_draws)
            band = np.percentile(vals, [2.5, 97.5], axis=0)
            ax.fill_between(c, band[0], band[1], color="C0", alpha=0.25, label="95% bootstrap band")
        points = _fit_points(fit)
        if points is not None:
            y = points[1] if what == "N" else points[0] / (FLOPS_PER_PARAM_TOKEN * points[1])
            ax.scatter(points[0], y, color="k", s=16, zorder=5, label="fitted optima")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel("optimal parameters N_opt" if what == "N" else "optimal tokens D_opt")
        exp = fit.allocation["n_exp"] if what == "N" else 1 - fit.allocation["n_exp"]
        ax.set_title(f"{what}_opt ∝ C^{exp:.3f}")
        ax.legend(fontsize=8)
    return save(fig, stem)


def _fit_points(fit: FitResult):
    if "minima" in fit.extra:
        return np.array(fit.extra["minima"]["budget"]), np.array(fit.extra["minima"]["n_opt"])
    if "envelope" in fit.extra:
        return np.array(fit.extra["envelope"]["flops"]), np.array(fit.extra["envelope"]["n_params"])
    return None


def _fit_flops_range(fit: FitResult) -> tuple[float, float]:
    points = _fit_points(fit)
    if points is not None:
        return float(points[0].min()) / 3, float(points[0].max()) * 30
    return 1e18, 1e24


def plot_contours(law: ParametricLaw | None, stem, n_range=(1e7, 1e12), d_range=(1e8, 1e13),
                  title: str = "Chinchilla approach 3") -> list[Path]:
    plt = _plt()
    law = law or CHINCHILLA_3
    n = np.logspace(*np.log10(n_range), 200)
    d = np.logspace(*np.log10(d_range), 200)
    nn, dd = np.meshgrid(n, d)
    loss = law.loss(nn, dd)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    cs = ax.contourf(nn, dd, np.log(loss - law.E + 1e-12), levels=20, cmap="viridis_r")
    fig.colorbar(cs, ax=ax, label="log(L - E), reducible loss")
    lines = ax.contour(nn, dd, loss, levels=8, colors="w", linewidths=0.6)
    ax.clabel(lines, fmt="%.2f", fontsize=7)
    alloc = law.allocation()
    c = np.logspace(np.log10(6 * n_range[0] * d_range[0]), np.log10(6 * n_range[1] * d_range[1]), 100)
    ax.plot(alloc.n_opt(c), alloc.d_opt(c), color="C3", lw=2, label=f"efficient frontier (N ∝ C^{law.a:.3f})")
    for flops in np.logspace(np.log10(6 * n_range[0] * d_range[0]) + 1, np.log10(6 * n_range[1] * d_range[1]) - 1, 4):
        ax.plot(n, flops / (6 * n), color="k", lw=0.6, ls="--")
        x = np.sqrt(flops / 6)  # label each isoFLOP line where N = D
        if n_range[0] < x < n_range[1]:
            ax.annotate(f"{flops:.0e}", (x, flops / (6 * x)), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*n_range)
    ax.set_ylim(*d_range)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("training tokens D")
    ax.set_title(f"{title}: loss contours (dashed: isoFLOP lines, FLOPs)")
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, stem)


def plot_bloomberg(stem, fits: list[FitResult] | None = None, flops_range=(1e19, 1e26)) -> list[Path]:
    """Like BloombergGPT's Figure 1: optimal N and D vs compute per law, with models on it."""
    from chinchax.scaling.optimal import load_catalogue

    plt = _plt()
    c = np.logspace(*np.log10(flops_range), 100)
    laws = list(published_allocations().values())
    laws += [dataclasses.replace(f.allocation_law(), name=f"your fit ({f.law})") for f in fits or []]
    cat = load_catalogue()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, what in zip(axes, ("N", "D"), strict=True):
        for i, law in enumerate(laws):
            ax.plot(c, law.n_opt(c) if what == "N" else law.d_opt(c), lw=1.6, color=f"C{i}", label=law.name)
        y = cat["n_params"] if what == "N" else cat["n_tokens"]
        ax.scatter(cat["flops"], y, color="k", s=14, zorder=5)
        for _, r in cat.iterrows():
            ax.annotate(r["name"], (r["flops"], r["n_params"] if what == "N" else r["n_tokens"]),
                        fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C = 6ND (FLOPs)")
        ax.set_ylabel("parameters N" if what == "N" else "training tokens D")
        ax.set_title(f"Compute-optimal {'model size' if what == 'N' else 'training tokens'}")
        ax.legend(fontsize=8, loc="upper left")
    return save(fig, stem)
