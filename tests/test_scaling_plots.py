"""The plots a reviewer accepts: read back from the drawn artists, in display coordinates.

No legend over data, a colour bar for many budgets, plain tick labels on short log axes, the data and
where they end on the allocation and contour plots, labels that never overprint. Every plot runs with
warnings as errors."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.text import Text

from chinchax.scaling import plots
from chinchax.scaling.fitresult import FitResult
from chinchax.scaling.laws import CHINCHILLA_3
from chinchax.scaling.optimal import load_catalogue
from chinchax.scaling.synthetic import isoflop_table, loss_curves

pytestmark = pytest.mark.filterwarnings("error")


@pytest.fixture
def figures(monkeypatch):
    """Every figure a plot function saves, drawn on an Agg canvas (to read extents back)."""
    drawn = []
    save = plots.save

    def keep(fig, stem):
        paths = save(fig, stem)
        FigureCanvasAgg(fig)  # closing detached the canvas; the artists are as saved
        fig.canvas.draw()
        drawn.append(fig)
        return paths

    monkeypatch.setattr(plots, "save", keep)
    return drawn


def _data_xy(ax):
    """Display coordinates of every scatter point and line vertex inside `ax` (what is drawn)."""
    xy = [c.get_offset_transform().transform(c.get_offsets()) for c in ax.collections
          if isinstance(c, PathCollection) and len(c.get_offsets())]
    xy += [ln.get_transform().transform(ln.get_xydata()) for ln in ax.lines]
    xy = np.concatenate(xy)
    box = ax.get_window_extent()
    visible = (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)
    return xy[np.isfinite(xy).all(axis=1) & visible]


def _assert_legend_covers_no_data(fig):
    renderer = fig.canvas.get_renderer()
    checked = 0
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        box = leg.get_window_extent(renderer)
        xy = _data_xy(ax)
        inside = (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)
        assert not inside.any(), f"legend of {ax.get_title()!r} covers {inside.sum()} data points"
        checked += 1
    return checked


def _fit_with_minima(budgets, law="chinchilla-2"):
    alloc = CHINCHILLA_3.allocation()
    return FitResult(law=law, params={}, stderr={}, intervals={}, n_runs=7 * len(budgets), n_rows=7 * len(budgets),
                     n_bootstrap=2, seed=0, allocation={"n_coef": alloc.n_coef, "n_exp": alloc.n_exp},
                     bootstrap_allocation=[[alloc.n_coef * 1.1, alloc.n_exp], [alloc.n_coef * 0.9, alloc.n_exp]],
                     extra={"minima": {"budget": list(budgets), "n_opt": alloc.n_opt(np.asarray(budgets)).tolist()}})


def _texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in ax.texts] + ([t.get_text() for t in legend.get_texts()] if legend else [])


def test_isoflop_many_budgets_get_a_colour_bar_not_a_legend(figures, tmp_path):
    plots.plot_isoflop(isoflop_table(CHINCHILLA_3, np.logspace(17, 21, 9), 7, seed=0), tmp_path / "iso")
    (fig,) = figures
    main, bar = fig.axes
    assert main.get_legend() is None and fig.legends == []
    assert bar.get_ylabel() == "budget C (FLOPs)"
    lo, hi = bar.get_ylim()
    assert lo == pytest.approx(1e17) and hi == pytest.approx(1e21)


def test_isoflop_few_budgets_legend_covers_no_data(figures, tmp_path):
    paths = plots.plot_isoflop(isoflop_table(CHINCHILLA_3, np.logspace(18, 20, 3), 7, seed=0), tmp_path / "iso")
    assert [p.suffix for p in paths] == [".png", ".svg"]
    (fig,) = figures
    assert len(fig.axes) == 1 and fig.axes[0].get_legend() is not None
    assert _assert_legend_covers_no_data(fig) == 1


def test_frontier_short_log_axis_has_plain_tick_labels(figures, tmp_path):
    curves = loss_curves(CHINCHILLA_3, np.logspace(7.5, 9, 6), 1e20, points_per_run=30)
    plots.plot_frontier(curves, tmp_path / "front")
    plots.plot_frontier(isoflop_table(CHINCHILLA_3, np.logspace(17, 21, 5), 7, seed=0), tmp_path / "front2")
    for fig in figures:
        ax = fig.axes[0]
        lo, hi = ax.get_ylim()
        assert hi / lo < 10  # the case in question: loss spans less than a decade
        labels = [t.get_text() for axis in (ax.xaxis, ax.yaxis)
                  for t in axis.get_ticklabels(which="both") if t.get_text()]
        assert not [s for s in labels if "times" in s], labels
        y_labels = [t.get_text() for t in ax.yaxis.get_ticklabels(which="both") if t.get_text()]
        assert len(y_labels) >= 2 and all(lo <= float(s) <= hi for s in y_labels), y_labels
        _assert_legend_covers_no_data(fig)


def test_allocation_shows_the_data_and_marks_extrapolation(figures, tmp_path):
    budgets = np.logspace(18, 21, 4)
    fit = _fit_with_minima(budgets)
    plots.plot_allocation(fit, tmp_path / "alloc", (1e17, 1e24))  # positional range, as the demo calls it
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_xscale() == "log"]
    assert len(panels) == 2
    for ax, y in zip(panels, (fit.extra["minima"]["n_opt"], budgets / (6 * np.array(fit.extra["minima"]["n_opt"]))),
                     strict=True):
        offsets = [c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)]
        assert any(np.allclose(o, np.c_[budgets, y]) for o in offsets)
        assert any("extrapolated" in t for t in _texts(ax))
        # the shaded side starts where the data end
        spans = [p for p in ax.patches if p.get_x() == pytest.approx(budgets.max())]
        assert spans and spans[0].get_x() + spans[0].get_width() == pytest.approx(1e24)
    _assert_legend_covers_no_data(fig)


def test_allocation_with_table_shows_the_runs(figures, tmp_path):
    table = isoflop_table(CHINCHILLA_3, np.logspace(18, 20, 3), 7, seed=0)
    fit = _fit_with_minima([1e18], law="chinchilla-3")
    fit.extra = {}  # approach 3 records no points of its own
    plots.plot_allocation(fit, tmp_path / "none")
    plots.plot_allocation(fit, tmp_path / "runs", table=table)
    unknown, known = figures
    assert any("data range unknown" in t for t in _texts(unknown.axes[0]))
    n_panel = known.axes[0]
    offsets = np.concatenate([c.get_offsets() for c in n_panel.collections if isinstance(c, PathCollection)])
    assert len(offsets) == len(table)
    assert any("extrapolated" in t for t in _texts(n_panel))


def test_contours_show_the_runs_and_what_lies_outside(figures, tmp_path):
    table = isoflop_table(CHINCHILLA_3, np.logspace(18, 20, 3), 7, seed=0)
    plots.plot_contours(CHINCHILLA_3, tmp_path / "c", (1e6, 1e11), (1e7, 1e12), title="t", table=table)
    plots.plot_contours(None, tmp_path / "law")
    with_runs, alone = figures
    ax = with_runs.axes[0]
    offsets = np.concatenate([c.get_offsets() for c in ax.collections if isinstance(c, PathCollection)])
    assert np.allclose(np.sort(offsets[:, 0]), np.sort(table["n_params"]))
    assert any("extrapolated" in t for t in _texts(ax))
    assert any("no runs" in t for t in _texts(alone.axes[0]))
    for fig in figures:
        _assert_legend_covers_no_data(fig)


def test_bloomberg_labels_never_overprint(figures, tmp_path):
    plots.plot_bloomberg(tmp_path / "b", [_fit_with_minima([1e18, 1e19])])
    (fig,) = figures
    renderer = fig.canvas.get_renderer()
    names = set(load_catalogue()["name"])
    assert any("published models" in t.get_text() for leg in fig.legends for t in leg.get_texts())
    for ax in fig.axes:
        labels = [t for t in ax.texts if t.get_text() in names]
        assert {t.get_text() for t in labels} == names
        boxes = []
        for t in labels:
            t.get_window_extent(renderer)  # an annotation places itself here
            boxes.append(Text.get_window_extent(t, renderer))  # the text alone, without its leader
        ax_box = ax.get_window_extent(renderer)
        for i, a in enumerate(boxes):
            assert ax_box.x0 <= a.x0 and a.x1 <= ax_box.x1 and ax_box.y0 <= a.y0 and a.y1 <= ax_box.y1
            for j in range(i):
                assert not a.overlaps(boxes[j]), (labels[i].get_text(), labels[j].get_text())
