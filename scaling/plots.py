"""The scaling plots (matplotlib, Agg backend), each written as PNG and SVG.

isoflop     loss vs N per budget, with each budget's parabola and its minimum (approach 2)
frontier    loss vs compute for every run, with the compute-efficient frontier / envelope
allocation  N_opt(C) and D_opt(C) power laws with their bootstrap bands, the data, and where the data end
contours    approach-3 loss contours over (N, D) with the runs, the efficient frontier and isoFLOP lines
bloomberg   Chinchilla-1/2/3 and Kaplan N and D against compute, with well-known models placed on it

Rules every plot keeps (tests/test_scaling_plots.py checks them): a legend never covers data (it goes
to the corner with no data in it, else outside the axes); a log axis spanning less than a decade is
labelled with plain numbers ("3.4", not 3.4x10^0); whatever lies beyond the data is marked
"extrapolated"; text labels never overprint each other. Placement is computed from the drawn artists
in display coordinates, so it holds at the size the figure is saved at.
"""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from chinchax.compute import params_at_ratio, tokens_for_budget, training_flops
from chinchax.fileio import write_bytes_atomic
from chinchax.scaling.fitresult import FitResult
from chinchax.scaling.laws import CHINCHILLA_3, ParametricLaw, published_allocations

KINDS = ("isoflop", "frontier", "allocation", "contours", "bloomberg")
# More budgets than this: a colour bar (log budget) instead of a legend entry per budget.
MAX_LEGEND_BUDGETS = 5
EXTRAPOLATED = "extrapolated"
_SHADE = dict(color="0.5", alpha=0.12, linewidth=0)


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
        buffer = io.BytesIO()
        fig.savefig(buffer, format=ext, bbox_inches="tight")
        write_bytes_atomic(path, buffer.getvalue())
        paths.append(path)
    _plt().close(fig)
    return paths


# ---------------------------------------------------------------- the plots
def plot_isoflop(table: pd.DataFrame, stem) -> list[Path]:
    from matplotlib.colors import ListedColormap, LogNorm

    from chinchax.scaling.fit_chinchilla import isoflop_minima
    from chinchax.scaling.table import budgets, final_rows

    plt = _plt()
    df = final_rows(table)
    b = budgets(df)
    minima = isoflop_minima(df)
    uniq = np.unique(b)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = ListedColormap(plt.cm.viridis(np.linspace(0, 0.9, 256)))  # no pale yellow end
    if uniq.size > 1:
        norm = LogNorm(vmin=uniq.min(), vmax=uniq.max())
        colors = cmap(norm(uniq))
    else:
        norm, colors = None, cmap([0.0])
    many = uniq.size > MAX_LEGEND_BUDGETS
    for color, budget in zip(colors, uniq, strict=True):
        m = b == budget
        ax.scatter(df["n_params"][m], df["loss"][m], color=color, s=18,
                   label=None if many else f"{budget:.1e} FLOPs")
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
    if many:
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=ax, label="budget C (FLOPs)")
    _plain_log_ticks(ax)
    _place_legend(ax, fontsize=8, title="budget C")
    return save(fig, stem)


def plot_frontier(table: pd.DataFrame, stem) -> list[Path]:
    from chinchax.scaling.fit_chinchilla import envelope

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    curves = "step" in table.columns and table.groupby("run").size().max() > 1
    if curves:
        for i, (_, g) in enumerate(table.groupby("run")):
            g = g.sort_values("flops")
            ax.plot(g["flops"], g["loss"], color="0.6", lw=0.8, label="runs (loss curves)" if i == 0 else None)
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
    _plain_log_ticks(ax)
    _place_legend(ax, fontsize=8)
    return save(fig, stem)


def plot_allocation(fit: FitResult, stem, flops_range: tuple[float, float] | None = None, *,
                    table: pd.DataFrame | None = None) -> list[Path]:
    """N_opt(C) and D_opt(C) of `fit` with its bootstrap band, the data it was fitted on, and the compute
    beyond the data shaded and labelled "extrapolated". The data are the fit's own points (approach 2's
    isoFLOP minima, approach 1's envelope, or the runs in `fit.extra["runs"]`); pass the results `table`
    to show the runs too (approach 3 and Kaplan fits record no points of their own)."""
    plt = _plt()
    points = _fit_points(fit)
    runs = _runs(fit, table)
    lo, hi = flops_range or _fit_flops_range(fit, runs)
    c = np.logspace(np.log10(lo), np.log10(hi), 200)
    n_best = fit.allocation_law().n_opt(c)
    draws = np.array(fit.bootstrap_allocation) if fit.bootstrap_allocation else np.empty((0, 2))
    extent = _data_flops_extent(points, runs)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, what in zip(axes, ("N", "D"), strict=True):
        best = n_best if what == "N" else tokens_for_budget(c, n_best)
        if extent is None:
            ax.plot(c, best, color="C0", lw=2, label=f"{fit.law} fit")
        else:
            inside = (c >= extent[0]) & (c <= extent[1])
            ax.plot(np.where(inside, c, np.nan), best, color="C0", lw=2, label=f"{fit.law} fit")
            ax.plot(np.where(inside, np.nan, c), best, color="C0", lw=1.5, ls="--")
        if len(draws):
            n_draws = draws[:, :1] * c[None, :] ** draws[:, 1:2]
            vals = n_draws if what == "N" else tokens_for_budget(c[None, :], n_draws)
            band = np.percentile(vals, [2.5, 97.5], axis=0)
            ax.fill_between(c, band[0], band[1], color="C0", alpha=0.25, linewidth=0, label="95% bootstrap band")
        if runs is not None:
            ax.scatter(runs["flops"], runs["n_params" if what == "N" else "n_tokens"], color="0.55", s=9,
                       zorder=4, label="runs")
        if points is not None:
            y = points[1] if what == "N" else tokens_for_budget(points[0], points[1])
            ax.scatter(points[0], y, color="k", s=16, zorder=5, label="fitted optima")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel("optimal parameters N_opt" if what == "N" else "optimal tokens D_opt")
        exp = fit.allocation["n_exp"] if what == "N" else 1 - fit.allocation["n_exp"]
        ax.set_title(f"{what}_opt ∝ C^{exp:.3f}")
        if extent is None:
            ax.text(0.98, 0.02, "data range unknown: this fit records no points (pass table=)",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.3")
        else:
            _shade_beyond(ax, *extent)
        _plain_log_ticks(ax)
    fig.tight_layout()
    legends = [_place_legend(ax, fontsize=8, outside=None) for ax in axes]
    if not all(legends):  # no free corner in a panel: one legend for both, below them
        for leg in legends:
            if leg is not None:
                leg.remove()
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save(fig, stem)


def plot_contours(law: ParametricLaw | FitResult | None, stem, n_range=None, d_range=None,
                  title: str = "Chinchilla approach 3", *, table: pd.DataFrame | None = None) -> list[Path]:
    """Loss contours of an approach-3 law over (N, D), with the efficient frontier and isoFLOP lines.

    `law` is a ParametricLaw, an approach-3 FitResult, or None (Chinchilla's published law). The runs
    come from `table` (or the FitResult's `extra["runs"]`); with them the area outside the runs (their
    convex hull in log N, log D) is shaded and labelled "extrapolated", and the ranges default to the
    runs' own, widened 4x each way. Without runs the plot says that it shows the law alone."""
    plt = _plt()
    runs = _runs(law, table) if isinstance(law, FitResult) else _runs(None, table)
    if isinstance(law, FitResult):
        law = law.parametric_law()
    law = law or CHINCHILLA_3
    if n_range is None:
        n_range = (runs["n_params"].min() / 4, runs["n_params"].max() * 4) if runs is not None else (1e7, 1e12)
    if d_range is None:
        d_range = (runs["n_tokens"].min() / 4, runs["n_tokens"].max() * 4) if runs is not None else (1e8, 1e13)
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
    c_lo, c_hi = training_flops(n_range[0], d_range[0]), training_flops(n_range[1], d_range[1])
    c = np.logspace(np.log10(c_lo), np.log10(c_hi), 200)
    frontier_label = f"efficient frontier (N ∝ C^{alloc.n_exp:.3f})"
    if runs is None:
        ax.plot(alloc.n_opt(c), alloc.d_opt(c), color="C3", lw=2, label=frontier_label)
    else:
        inside = (c >= runs["flops"].min()) & (c <= runs["flops"].max())
        ax.plot(alloc.n_opt(c[inside]), alloc.d_opt(c[inside]), color="C3", lw=2, label=frontier_label)
        ax.plot(alloc.n_opt(c), alloc.d_opt(c), color="C3", lw=1.5, ls="--")
    for flops in np.logspace(np.log10(c_lo) + 1, np.log10(c_hi) - 1, 4):
        ax.plot(n, tokens_for_budget(flops, n), color="k", lw=0.6, ls="--")
        x = params_at_ratio(flops)  # label each isoFLOP line where N = D
        if n_range[0] < x < n_range[1] and d_range[0] < x < d_range[1]:
            ax.annotate(f"{flops:.0e}", (x, x), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*n_range)
    ax.set_ylim(*d_range)
    if runs is not None:
        ax.scatter(runs["n_params"], runs["n_tokens"], s=12, color="k", edgecolor="w", linewidth=0.5, zorder=6,
                   label="runs")
        _shade_outside_runs(ax, np.log10(runs["n_params"].to_numpy()), np.log10(runs["n_tokens"].to_numpy()))
    else:
        ax.text(0.98, 0.02, "the law alone: no runs given", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7, color="w")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("training tokens D")
    ax.set_title(f"{title}: loss contours (dashed: isoFLOP lines, FLOPs)", fontsize=9)
    _plain_log_ticks(ax)
    _place_legend(ax, fontsize=8, ignore=(cs,), outside="below")
    return save(fig, stem)


def plot_bloomberg(stem, fits: list[FitResult] | None = None, flops_range=(1e19, 1e26)) -> list[Path]:
    """Like BloombergGPT's Figure 1: optimal N and D vs compute per law, with models on it."""
    from chinchax.scaling.optimal import load_catalogue

    plt = _plt()
    c = np.logspace(*np.log10(flops_range), 100)
    laws = list(published_allocations().values())
    laws += [dataclasses.replace(f.allocation_law(), name=f"your fit ({f.law})") for f in fits or []]
    cat = load_catalogue()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    for ax, what in zip(axes, ("N", "D"), strict=True):
        for i, law in enumerate(laws):
            ax.plot(c, law.n_opt(c) if what == "N" else law.d_opt(c), lw=1.6, color=f"C{i}", label=law.name)
        y = cat["n_params"] if what == "N" else cat["n_tokens"]
        ax.scatter(cat["flops"], y, color="k", s=14, zorder=5, label="published models (C = 6ND)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(*flops_range)
        ax.set_xlabel("training compute C = 6ND (FLOPs)")
        ax.set_ylabel("parameters N" if what == "N" else "training tokens D")
        ax.set_title(f"Compute-optimal {'model size' if what == 'N' else 'training tokens'}")
        _plain_log_ticks(ax)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * ((len(labels) - 1) // 4), 1, 1))
    for ax, what in zip(axes, ("N", "D"), strict=True):
        y = cat["n_params"] if what == "N" else cat["n_tokens"]
        ax.set_ylim(ax.get_ylim())  # freeze the limits: labels are placed in display coordinates
        _repel_labels(ax, cat["flops"].to_numpy(), y.to_numpy(), cat["name"].tolist(), fontsize=6.5)
    return save(fig, stem)


# ---------------------------------------------------------------- what the data cover
def _fit_points(fit: FitResult):
    """(flops, n_opt) of the points an allocation fit was fitted to, or None."""
    if "minima" in fit.extra:
        return np.array(fit.extra["minima"]["budget"]), np.array(fit.extra["minima"]["n_opt"])
    if "envelope" in fit.extra:
        return np.array(fit.extra["envelope"]["flops"]), np.array(fit.extra["envelope"]["n_params"])
    return None


def _runs(fit: FitResult | None, table: pd.DataFrame | None) -> pd.DataFrame | None:
    """The runs (final rows: flops, n_params, n_tokens) from `table`, else from `fit.extra["runs"]`."""
    if table is not None:
        from chinchax.scaling.table import final_rows

        df = final_rows(table)
    elif fit is not None and isinstance(fit.extra.get("runs"), dict):
        df = pd.DataFrame(fit.extra["runs"])
    else:
        return None
    if not {"n_params", "n_tokens"} <= set(df.columns) or not len(df):
        return None
    df = df.copy()
    if "flops" not in df.columns:
        df["flops"] = training_flops(df["n_params"], df["n_tokens"])
    return df


def _data_flops_extent(points, runs) -> tuple[float, float] | None:
    flops = []
    if points is not None:
        flops.append(np.asarray(points[0], np.float64))
    if runs is not None:
        flops.append(runs["flops"].to_numpy(np.float64))
    if not flops:
        return None
    flops = np.concatenate(flops)
    return float(flops.min()), float(flops.max())


def _fit_flops_range(fit: FitResult, runs=None) -> tuple[float, float]:
    extent = _data_flops_extent(_fit_points(fit), runs)
    if extent is not None:
        return extent[0] / 3, extent[1] * 30
    return 1e18, 1e24


def _shade_beyond(ax, lo: float, hi: float) -> None:
    """Shade compute below `lo` and above `hi` (beyond the data), dotted edges, labelled "extrapolated"."""
    x0, x1 = ax.get_xlim()
    for edge, (a, b), side in ((lo, (x0, lo), "left"), (hi, (hi, x1), "right")):
        if b <= a:
            continue
        ax.axvspan(a, b, **_SHADE, zorder=0)
        ax.axvline(edge, color="0.35", lw=0.8, ls=":", zorder=1)
        # The word sits inside the shaded side, turned along the dotted edge: low on the right and high on
        # the left, where a rising N_opt(C) or D_opt(C) leaves room.
        right = side == "right"
        ax.annotate(EXTRAPOLATED, (edge, 0 if right else 1), xycoords=("data", "axes fraction"),
                    xytext=(3 if right else -3, 4 if right else -4), textcoords="offset points", rotation=90,
                    ha="left" if right else "right", va="bottom" if right else "top", fontsize=7, color="0.3")
    ax.set_xlim(x0, x1)


def _shade_outside_runs(ax, log_n, log_d) -> None:
    """Shade everything outside the runs' convex hull in (log N, log D), with a dotted hull edge."""
    from matplotlib.patches import PathPatch
    from matplotlib.path import Path as MPath

    pts = np.unique(np.c_[log_n, log_d], axis=0)
    hull = _hull(pts)
    if hull is None:  # fewer than 3 runs, or all on one line: outline the segment they span
        order = np.argsort(pts[:, 0] + 1e-9 * pts[:, 1])
        hull = pts[order[[0, -1]]]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    ring = 10.0 ** np.vstack([hull, hull[:1]])
    # the frame runs anticlockwise, the hull reversed (clockwise): a hole under either fill rule
    verts = np.vstack([rect, ring[::-1]]) if len(hull) > 2 else rect
    codes = [MPath.MOVETO] + [MPath.LINETO] * 4 + ([MPath.MOVETO] + [MPath.LINETO] * (len(ring) - 1)
                                                   if len(hull) > 2 else [])
    ax.add_patch(PathPatch(MPath(verts, codes), facecolor="0.92", alpha=0.5, edgecolor="none", zorder=3,
                           label=f"{EXTRAPOLATED} (outside the runs)"))
    ax.plot(ring[:, 0], ring[:, 1], color="w", lw=1.0, ls=":", zorder=4)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def _hull(pts: np.ndarray) -> np.ndarray | None:
    """Convex hull vertices, anticlockwise (Andrew's monotone chain); None if degenerate."""
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]
    if len(pts) < 3:
        return None

    def _cross(u, v):
        return u[0] * v[1] - u[1] * v[0]

    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and _cross(out[-1] - out[-2], p - out[-2]) <= 0:
                out.pop()
            out.append(p)
        return out

    lower, upper = half(pts), half(pts[::-1])
    hull = np.array(lower[:-1] + upper[:-1])
    return hull if len(hull) >= 3 else None


# ---------------------------------------------------------------- ticks, legends, labels
def _plain_log_ticks(ax) -> None:
    """On a log axis spanning less than a decade, label a few round values plainly ("3.4"), not as
    matplotlib's minor-tick mathtext ("3.4x10^0"), and leave the minor ticks unlabelled."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        lo, hi = sorted((lo, hi))
        if axis.get_scale() != "log" or not lo > 0 or hi / lo >= 10:
            continue
        ticks = MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
        axis.set_major_locator(FixedLocator(ticks[(ticks >= lo) & (ticks <= hi)]))
        axis.set_major_formatter(FuncFormatter(lambda v, _: _plain(v)))
        axis.set_minor_formatter(NullFormatter())


def _plain(v: float) -> str:
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.6g}"
    e = math.floor(math.log10(abs(v)))
    return f"{v / 10**e:.6g}e{e}"


def _data_boxes_hit(ax, bbox, renderer, ignore=()) -> bool:
    """Whether `bbox` (display coordinates) touches any drawn data of `ax`: scatter markers, lines,
    filled bands and contour lines, or text. Shading (patches) and the artists in `ignore` don't count."""
    from matplotlib.collections import LineCollection, PathCollection

    px_per_pt = ax.figure.dpi / 72
    for coll in ax.collections:
        if coll in ignore or not coll.get_visible():
            continue
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            xy = coll.get_offset_transform().transform(coll.get_offsets())
            sizes = coll.get_sizes()
            r = np.sqrt(sizes if len(sizes) else [36.0]) / 2 * px_per_pt
            r = np.broadcast_to(r, (len(xy),))
            dx = np.maximum(0, np.maximum(bbox.x0 - xy[:, 0], xy[:, 0] - bbox.x1))
            dy = np.maximum(0, np.maximum(bbox.y0 - xy[:, 1], xy[:, 1] - bbox.y1))
            if np.any(dx**2 + dy**2 <= r**2):
                return True
        elif not isinstance(coll, PathCollection):
            trans = coll.get_transform()
            filled = getattr(coll, "filled", None)  # a ContourSet says; bands fill, line collections don't
            if filled is None:
                filled = not isinstance(coll, LineCollection)
            for path in coll.get_paths():
                if len(path.vertices) and trans.transform_path(path).intersects_bbox(bbox, filled=filled):
                    return True
    for line in ax.lines:
        if line.get_visible() and len(line.get_xydata()):
            path = line.get_transform().transform_path(line.get_path())
            if path.intersects_bbox(bbox, filled=False):
                return True
    return any(t.get_visible() and t.get_text() and t.get_window_extent(renderer).overlaps(bbox) for t in ax.texts)


def _place_legend(ax, *, ignore=(), outside: str = "right", **kwargs):
    """A legend in the first axes corner where it covers no data; else outside the axes (`outside`: "right"
    or "below"), or none (None returned) when `outside` is None."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return None
    renderer = ax.figure.canvas.get_renderer()
    for loc in ("upper right", "upper left", "lower left", "lower right", "center right", "center left",
                "upper center", "lower center"):
        leg = ax.legend(handles, labels, loc=loc, **kwargs)
        if not _data_boxes_hit(ax, leg.get_window_extent(renderer), renderer, ignore):
            return leg
        leg.remove()
    if outside is None:
        return None
    if outside == "below":
        ax_box = ax.get_window_extent(renderer)
        below = ax.get_tightbbox(renderer).y0
        y = (below - ax_box.y0) / ax_box.height - 0.02
        return ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, y),
                         ncol=min(len(labels), 2), **kwargs)
    return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, **kwargs)


def _repel_labels(ax, xs, ys, names, fontsize: float = 6.5) -> list:
    """Name each point with a label that overlaps no other label, no point and (where possible) no line.

    Greedy: the most crowded points choose first; each label tries spots on rings of growing radius
    around its point (16 directions per ring, diagonals first) and takes the first spot inside the axes
    that touches no placed label, leader line or point, whose leader crosses no label or leader, and that
    crosses no plotted line; if there is no such spot within STRICT_R points, lines may be crossed
    (failing that, leaders may pass other dots, and last, cross other leaders and labels: a label itself
    never overlaps another label or a dot). A label set off from its point gets a thin leader line.
    All in display coordinates, from the renderer's own text extents."""
    from matplotlib.path import Path as MPath
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    px = fig.dpi / 72
    ax_box = ax.get_window_extent(renderer)
    xy = ax.transData.transform(np.c_[xs, ys])
    dot_r = (np.sqrt(14) / 2 + 1) * px
    line_paths = [ln.get_transform().transform_path(ln.get_path()) for ln in ax.lines if ln.get_visible()]
    sizes = []
    for name in names:
        t = ax.text(0, 0, name, fontsize=fontsize, transform=None)
        ext = t.get_window_extent(renderer)
        sizes.append((ext.width, ext.height))
        t.remove()
    dist = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    crowd = (dist < 40 * px).sum(axis=1)
    order = np.lexsort((xy[:, 0], -crowd))
    placed, leaders, out = [], [], []
    angles = np.deg2rad([30, 150, -30, -150, 90, -90, 0, 180, 60, 120, -60, -120, 10, 170, -10, -170])
    radii = [2, 5, 9, 14, 20, 27, 35, 44, 54, 65, 77, 90, 105, 120, 140, 160, 185, 210]
    STRICT_R = 20  # points: a label crosses a line rather than sit farther than this from its point

    def free(box, seg, strict):
        pad = box.padded(1.5)
        if not (ax_box.x0 <= box.x0 and box.x1 <= ax_box.x1 and ax_box.y0 <= box.y0 and box.y1 <= ax_box.y1):
            return False
        if any(pad.overlaps(b) for b in placed):
            return False
        dx = np.maximum(0, np.maximum(pad.x0 - xy[:, 0], xy[:, 0] - pad.x1))
        dy = np.maximum(0, np.maximum(pad.y0 - xy[:, 1], xy[:, 1] - pad.y1))
        if np.any(dx**2 + dy**2 <= dot_r**2):
            return False
        if strict < 3 and any(MPath(s).intersects_bbox(pad, filled=False) for s in leaders):
            return False
        if strict == 3:  # last resort: only labels and dots count
            return True
        if seg is not None and any(MPath(seg).intersects_bbox(b.padded(1), filled=False) for b in placed):
            return False
        # a leader may start inside a cluster of dots: only its part clear of them must miss other leaders
        tail = seg[0] + (seg[1] - seg[0]) * min(1.0, 2 * dot_r / max(np.hypot(*(seg[1] - seg[0])), 1e-9)) \
            if seg is not None else None
        if seg is not None and any(MPath(np.array([tail, seg[1]])).intersects_path(MPath(s), filled=False)
                                   for s in leaders):
            return False
        if strict < 2 and seg is not None and _segment_distance(xy, *seg)[others].min(initial=np.inf) <= dot_r:
            return False  # a leader through another model's dot would point at it
        return not (strict == 0 and any(p.intersects_bbox(pad, filled=False) for p in line_paths))

    for i in order:
        w, h = sizes[i]
        # dots (nearly) under this one can't be avoided by its leader
        others = np.hypot(*(xy - xy[i]).T) > 2 * dot_r
        choice = None
        # 0: no line crossed; 1: lines may be crossed; 2: leaders may pass dots; 3: leaders may cross anything
        for strict in (0, 1, 2, 3):
            for r in radii if strict else [r for r in radii if r <= STRICT_R]:
                for a in angles:
                    cx, cy = np.cos(a), np.sin(a)
                    ax_ = xy[i, 0] + r * px * cx
                    ay_ = xy[i, 1] + r * px * cy
                    ha = "left" if cx > 0.3 else "right" if cx < -0.3 else "center"
                    va = "bottom" if cy > 0.3 else "top" if cy < -0.3 else "center"
                    x0 = ax_ if ha == "left" else ax_ - w if ha == "right" else ax_ - w / 2
                    y0 = ay_ if va == "bottom" else ay_ - h if va == "top" else ay_ - h / 2
                    box = Bbox.from_bounds(x0, y0, w, h)
                    seg = np.array([xy[i], [ax_, ay_]]) if r > 6 else None
                    if free(box, seg, strict):
                        choice = (r, cx, cy, ha, va, box, seg)
                        break
                if choice:
                    break
            if choice:
                break
        if choice is None:  # no free spot within 210 points anywhere: label at the point (not seen)
            choice = (2, 1.0, 1.0, "left", "bottom", Bbox.from_bounds(*xy[i], w, h), None)
        r, cx, cy, ha, va, box, seg = choice
        placed.append(box)
        if seg is not None:
            leaders.append(seg)
        arrow = dict(arrowstyle="-", lw=0.4, color="0.35", shrinkA=0, shrinkB=1.5) if seg is not None else None
        out.append(ax.annotate(names[i], (xs[i], ys[i]), xytext=(r * cx, r * cy), textcoords="offset points",
                               ha=ha, va=va, fontsize=fontsize, arrowprops=arrow, zorder=6))
    return out


def _segment_distance(p_K2: np.ndarray, a, b) -> np.ndarray:
    """Distance from each point to the segment a-b (display coordinates)."""
    ab = np.asarray(b, np.float64) - a
    t = np.clip(((p_K2 - a) @ ab) / max(float(ab @ ab), 1e-12), 0, 1)
    return np.hypot(*(p_K2 - (a + t[:, None] * ab)).T)
