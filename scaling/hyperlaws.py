"""Hyperparameter scaling laws: the compute-optimal learning rate and batch size as power laws of compute,
fitted the way DeepSeek LLM (2024, section 3.1) fitted theirs, and the optimum of a 1-D learning-rate sweep.

Pure numerics (numpy, scipy, the standard library) on tables: no model, data or trainer code.

DeepSeek LLM (2024), eq. 1, their published law (`DEEPSEEK_LLM_2024`):

    eta_opt = 0.3118 * C^-0.1250        B_opt = 0.2920 * C^0.3271   (B in tokens)

Their compute convention is C = M * D, with D the training tokens and M the non-embedding FLOPs per token,
M = 72 * n_layer * d_model^2 + 12 * n_layer * d_model * l_seq (attention's own work included, the
vocabulary's excluded; `deepseek_flops_per_token`), not 6ND. The law was fitted on budgets from 1e17 to
2e19 FLOPs and holds under what they trained with: AdamW (beta1 0.9, beta2 0.95, weight decay 0.1,
gradient clipping 1.0), their multi-step schedule (2,000 warmup steps to the peak, then 31.6% of the peak
after 80% of the tokens and 10% after 90%), standard parametrization (no muP), and their own pretraining data. Its points are the near-optimal configurations: every
(learning rate, batch) whose loss is within 0.25% of the best loss at its budget; log eta and log B are
fitted against log C by least squares over all of them.

`fit_hyperparameter_law` fits the same law to your grid; `parabola_optimum` reads the optimum learning
rate off one budget's 1-D sweep (a parabola in log lr near the minimum).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from chinchax import jsonio
from chinchax.compute import FLOPS_PER_PARAM_TOKEN
from chinchax.errors import UserError
from chinchax.fileio import read_user_json, write_text_atomic
from chinchax.scaling.fitresult import CONFIDENCE, ScalingFitWarning

DEEPSEEK_TOLERANCE = 0.0025  # near-optimal: loss within 0.25% of the budget's best (DeepSeek LLM 2024)
GRID_COLUMNS = ("flops", "learning_rate", "batch_tokens", "loss")  # required; `seed` optional
PARAM_NAMES = ("lr_coef", "lr_exp", "batch_coef", "batch_exp")
JSON_KIND = "chinchax hyperparameter law"
_PERCENTILES = (50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE))


def deepseek_flops_per_token(n_layers, d_model, seq_len):
    """DeepSeek's M: non-embedding training FLOPs per token, 72·n_layer·d_model² + 12·n_layer·d_model·l_seq."""
    return 72.0 * n_layers * d_model**2 + 12.0 * n_layers * d_model * seq_len


def non_embedding_flops_per_token(n_non_embedding, n_layers, d_model, seq_len):
    """DeepSeek's M with the exact non-embedding parameter count: 6·N_non_embedding + 12·n_layer·d_model·l_seq.
    For their block (d_ff = 4·d_model, no biases or norms) 6·N_non_embedding is their 72·n_layer·d_model²;
    for gated MLPs, biases and norms it counts what the model really has."""
    return FLOPS_PER_PARAM_TOKEN * n_non_embedding + 12.0 * n_layers * d_model * seq_len


@dataclass(frozen=True)
class HyperparameterLaw:
    """eta_opt(C) = lr_coef·C^lr_exp and B_opt(C) = batch_coef·C^batch_exp (tokens), C = M·D (DeepSeek's
    convention). A fitted law also carries its near-optimal points, 95% bootstrap intervals and draws."""

    lr_coef: float
    lr_exp: float
    batch_coef: float
    batch_exp: float
    source: str
    tolerance: float = DEEPSEEK_TOLERANCE
    flops_range: tuple[float, float] = (float("nan"), float("nan"))  # the budgets it was fitted on
    n_points: int = 0  # near-optimal configurations fitted (0: published, points unknown)
    n_budgets: int = 0
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)  # CONFIDENCE, per PARAM_NAMES
    n_bootstrap: int = 0
    seed: int = 0
    # (log lr_coef, lr_exp, log batch_coef, batch_exp) per usable resample: intervals at any budget
    bootstrap: tuple[tuple[float, float, float, float], ...] = ()

    def lr(self, flops):
        """The compute-optimal peak learning rate at `flops` (DeepSeek's C = M·D); arrays broadcast."""
        return _power(self.lr_coef, self.lr_exp, flops)

    def batch_tokens(self, flops):
        """The compute-optimal batch in tokens at `flops` (DeepSeek's C = M·D); arrays broadcast."""
        return _power(self.batch_coef, self.batch_exp, flops)

    def lr_interval(self, flops: float) -> tuple[float, float]:
        """CONFIDENCE interval of lr(flops) from the bootstrap draws, widened like the coefficients' ((nan, nan)
        for a published law)."""
        return self._interval(flops, 0)

    def batch_interval(self, flops: float) -> tuple[float, float]:
        return self._interval(flops, 2)

    def _interval(self, flops: float, column: int) -> tuple[float, float]:
        _check_flops(flops)
        if not self.bootstrap:
            return float("nan"), float("nan")
        coef, exponent = (self.lr_coef, self.lr_exp) if column == 0 else (self.batch_coef, self.batch_exp)
        draws = np.asarray(self.bootstrap, dtype=np.float64)
        log_value_S = draws[:, column] + draws[:, column + 1] * np.log(flops)
        lo, hi = _widened_interval(np.log(coef) + exponent * np.log(flops), log_value_S, self.n_budgets)
        return float(np.exp(lo)), float(np.exp(hi))

    def describe(self) -> list[str]:
        """The law in words and numbers, one line each, for the CLI."""
        lines = [f"eta_opt = {self.lr_coef:.4g} * C^{self.lr_exp:.4f}    B_opt = {self.batch_coef:.4g} * C^{self.batch_exp:.4f} tokens",
                 f"  C = M*D (M: non-embedding FLOPs per token); near-optimal = loss within {self.tolerance:.2%} of the budget's best",
                 f"  source: {self.source}"]
        if np.isfinite(self.flops_range).all():
            lines.append(f"  fitted on budgets {self.flops_range[0]:.3g} to {self.flops_range[1]:.3g} FLOPs"
                         + (f" ({self.n_budgets} budgets, {self.n_points} near-optimal points)" if self.n_points else ""))
        for name in PARAM_NAMES:
            if name in self.intervals:
                lo, hi = self.intervals[name]
                lines.append(f"  {name:10s} {getattr(self, name):10.4g}  {CONFIDENCE:.0%} [{lo:.4g}, {hi:.4g}]")
        if self.n_bootstrap:
            factor = _small_sample_factor(self.n_budgets, 2)
            widened = (f"percentile intervals widened x{factor:.2f} for {self.n_budgets} budgets" if np.isfinite(factor)
                       else f"no intervals: {self.n_budgets} budgets leave no degree of freedom for 2 parameters")
            lines.append(f"  bootstrap: {len(self.bootstrap)} of {self.n_bootstrap} resamples of budgets usable "
                         f"(seed {self.seed}); {widened}")
        return lines

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        write_text_atomic(path, jsonio.dumps({"kind": JSON_KIND, **asdict(self)}, indent=1))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> HyperparameterLaw:
        path = Path(path)
        fix = "write one with `chinchax fit-hparams GRID.csv --out LAW.json`"
        data = read_user_json(path, what="hyperparameter law", fix=fix)
        if not isinstance(data, dict) or data.get("kind") != JSON_KIND:
            raise UserError(f"{path} is not a hyperparameter law (no \"kind\": \"{JSON_KIND}\"); {fix}")
        data.pop("kind")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        missing = [k for k in ("lr_coef", "lr_exp", "batch_coef", "batch_exp", "source") if k not in data]
        if unknown or missing:
            raise UserError(f"{path} is not a hyperparameter law (missing {missing}, unknown keys {unknown}); {fix}")
        nan = lambda v: float("nan") if v is None else v  # noqa: E731  (jsonio writes nan as null)
        data["flops_range"] = tuple(nan(v) for v in data.get("flops_range", (None, None)))
        data["intervals"] = {k: tuple(nan(v) for v in pair) for k, pair in data.get("intervals", {}).items()}
        data["bootstrap"] = tuple(tuple(row) for row in data.get("bootstrap", ()))
        return cls(**data)


DEEPSEEK_LLM_2024 = HyperparameterLaw(
    lr_coef=0.3118, lr_exp=-0.1250, batch_coef=0.2920, batch_exp=0.3271,
    source="DeepSeek LLM (2024) eq. 1: AdamW (0.9, 0.95), weight decay 0.1, multi-step schedule with "
    "2000 warmup steps, standard parametrization, their data",
    tolerance=DEEPSEEK_TOLERANCE, flops_range=(1e17, 2e19),
)
PUBLISHED_HYPERPARAMETER_LAWS = {"deepseek": DEEPSEEK_LLM_2024}


def load_hyperparameter_law(name_or_path: str | Path) -> HyperparameterLaw:
    """A published law by name (`deepseek`) or a fitted law's JSON file."""
    if str(name_or_path) in PUBLISHED_HYPERPARAMETER_LAWS:
        return PUBLISHED_HYPERPARAMETER_LAWS[str(name_or_path)]
    path = Path(name_or_path)
    if not path.exists():
        raise UserError(f"hyperparameter law {str(name_or_path)!r} is neither a published law "
                        f"({', '.join(PUBLISHED_HYPERPARAMETER_LAWS)}) nor an existing file; fit one with "
                        "`chinchax fit-hparams GRID.csv --out LAW.json`")
    return HyperparameterLaw.from_json(path)


# ---------------------------------------------------------------------------- the grid table


@dataclass(frozen=True)
class _Grid:
    """One row per configuration (budget, lr, batch), sorted by budget; losses per seed, NaN where missing."""

    flops: np.ndarray  # [K]
    lr: np.ndarray  # [K]
    batch: np.ndarray  # [K]
    loss_KS: np.ndarray  # [K, n_seeds]
    budget: np.ndarray  # [K] index of the budget (0 = smallest)
    starts: np.ndarray  # first configuration of each budget

    @property
    def loss(self) -> np.ndarray:
        return np.nanmean(self.loss_KS, axis=1)


def read_grid_csv(path: str | Path) -> dict[str, list]:
    """The columns of a grid CSV (header line + one line per run) as lists of cells, with `_where` naming
    each row's file line for messages."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid table {path} does not exist; pass a CSV with columns {', '.join(GRID_COLUMNS)} (and seed)")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        names = reader.fieldnames or []  # read inside the block: an empty file has none, and says so below
        rows = [(reader.line_num, r) for r in reader if any(isinstance(v, str) and v.strip() for v in r.values())]
    columns: dict[str, list] = {name: [r.get(name) for _, r in rows] for name in names}
    columns["_where"] = [f"{path} line {n}" for n, _ in rows]
    return columns


def _grid(table: Mapping) -> _Grid:
    missing = [c for c in GRID_COLUMNS if c not in table]
    if missing:
        raise UserError(f"the grid table lacks column(s) {', '.join(missing)}; it needs {', '.join(GRID_COLUMNS)} "
                        "(one row per run: compute C = M*D, peak learning rate, batch in tokens, final loss) and "
                        "optionally seed")
    n = len(table["loss"])
    where = list(table["_where"]) if "_where" in table else [f"row {i}" for i in range(n)]
    if n == 0:
        raise UserError("the grid table has no rows; it needs one row per (budget, learning rate, batch) run")
    values = {c: _positive_column(table[c], c, where) for c in GRID_COLUMNS}
    seeds = np.asarray([str(s) for s in table["seed"]]) if "seed" in table else np.zeros(n, dtype=str)
    keys = np.stack([values["flops"], values["learning_rate"], values["batch_tokens"]], axis=1)
    configs, config_of_row = np.unique(keys, axis=0, return_inverse=True)  # sorted by flops first
    seed_names, seed_of_row = np.unique(seeds, return_inverse=True)
    loss_KS = np.full((len(configs), len(seed_names)), np.nan)
    for row, (k, s) in enumerate(zip(config_of_row.ravel(), seed_of_row, strict=True)):
        if not np.isnan(loss_KS[k, s]):
            raise UserError(f"{where[row]} repeats the run (flops, learning_rate, batch_tokens"
                            f"{', seed' if 'seed' in table else ''}) of an earlier row; a copy is not an independent "
                            "run. Remove it, or give each replicate its own `seed`")
        loss_KS[k, s] = values["loss"][row]
    budget_values, budget = np.unique(configs[:, 0], return_inverse=True)
    if len(budget_values) < 2:
        raise UserError(f"the grid has {len(budget_values)} compute budget(s); a law of compute needs at least 2 "
                        "distinct `flops` values (every run of one budget carries the same value)")
    starts = np.searchsorted(budget, np.arange(len(budget_values)))
    return _Grid(configs[:, 0], configs[:, 1], configs[:, 2], loss_KS, budget, starts)


def _positive_column(cells, name: str, where: list[str]) -> np.ndarray:
    out = np.empty(len(cells))
    for i, cell in enumerate(cells):
        try:
            out[i] = float(cell)
        except (TypeError, ValueError):
            raise UserError(f"column {name!r} holds {cell!r} at {where[i]}, which is not a number") from None
        if not (np.isfinite(out[i]) and out[i] > 0):
            raise UserError(f"column {name!r} holds {cell!r} at {where[i]}; every {name} must be a positive, "
                            "finite number (fix or remove that run)")
    return out


def near_optimal(loss, budget_starts, tolerance: float):
    """Mask of the configurations whose loss is within `tolerance` (relative) of their budget's best.
    `loss` is [..., K] with each budget's configurations contiguous from `budget_starts`; NaN is never near."""
    loss = np.asarray(loss, dtype=np.float64)
    filled = np.where(np.isnan(loss), np.inf, loss)
    best = np.minimum.reduceat(filled, budget_starts, axis=-1)
    sizes = np.diff(np.append(budget_starts, loss.shape[-1]))
    return np.isfinite(filled) & (filled <= np.repeat(best, sizes, axis=-1) * (1.0 + tolerance))


# ---------------------------------------------------------------------------- the fit


def fit_hyperparameter_law(table, *, tolerance: float = DEEPSEEK_TOLERANCE, n_bootstrap: int = 200,
                           seed: int = 0, source: str = "") -> HyperparameterLaw:
    """Fit eta_opt(C) and B_opt(C) as power laws, DeepSeek's way, to a grid table.

    `table`: a path to a CSV, or a mapping of columns (a DataFrame will do) with flops (C = M·D, the same
    value for every run of one budget), learning_rate, batch_tokens, loss and optionally seed. A
    configuration's loss is its mean over seeds. Per budget the near-optimal set is every configuration
    within `tolerance` (relative) of the budget's best; log lr and log batch are fitted against log C by
    least squares over all near-optimal points together (a budget with a wide flat region counts more).

    Intervals: budgets are the bootstrap unit (a budget's near-optimal points share its noise and its
    grid's offset from the optimum, so they are not independent points). Each resample draws budgets with
    replacement, each with all its runs (resamples with < 2 distinct budgets are skipped), and refits; the
    95% percentile interval is then widened for the few units it rests on (`_small_sample_factor`)."""
    if not 0 <= tolerance < 1:
        raise UserError(f"--tolerance {tolerance} must be a relative loss difference in [0, 1), e.g. 0.0025 (0.25%)")
    if n_bootstrap < 2:
        raise UserError(f"--bootstrap must be at least 2, got {n_bootstrap}")
    if isinstance(table, (str, Path)):
        source = source or f"fit on {table}"
        table = read_grid_csv(table)
    grid = _grid(table)
    near = near_optimal(grid.loss, grid.starts, tolerance)
    _warn_single_configurations(grid)
    n_budgets = len(grid.starts)
    best = _fit_lines(grid, near, np.ones(n_budgets))
    rng = np.random.default_rng(seed)
    counts = [np.bincount(rng.integers(0, n_budgets, n_budgets), minlength=n_budgets) for _ in range(n_bootstrap)]
    draws = np.array([_fit_lines(grid, near, c.astype(np.float64)) for c in counts])
    draws = draws[np.isfinite(draws).all(axis=1)]
    intervals = {}
    for name, point, draws_S in zip(PARAM_NAMES, best, draws.T, strict=True):
        lo, hi = _widened_interval(point, draws_S, n_budgets)
        intervals[name] = (float(np.exp(lo)), float(np.exp(hi))) if "coef" in name else (float(lo), float(hi))
    budgets = grid.flops[grid.starts]
    return HyperparameterLaw(
        lr_coef=float(np.exp(best[0])), lr_exp=float(best[1]), batch_coef=float(np.exp(best[2])),
        batch_exp=float(best[3]), source=source or "fit on a grid table", tolerance=float(tolerance),
        flops_range=(float(budgets[0]), float(budgets[-1])), n_points=int(near.sum()), n_budgets=n_budgets,
        intervals=intervals, n_bootstrap=int(n_bootstrap), seed=int(seed),
        bootstrap=tuple(tuple(float(x) for x in row) for row in draws),
    )


def _fit_lines(grid: _Grid, near: np.ndarray, budget_weight: np.ndarray) -> np.ndarray:
    """(log lr_coef, lr_exp, log batch_coef, batch_exp) by least squares of log lr and log batch on log C over
    the near-optimal points, each weighted by how often its budget was drawn. NaN with < 2 budgets."""
    w = np.where(near, budget_weight[grid.budget], 0.0)
    used = w > 0
    if len(np.unique(grid.budget[used])) < 2:
        return np.full(4, np.nan)
    y = np.log(np.stack([grid.lr[used], grid.batch[used]], axis=1))
    # np.polyfit weights the residuals, so sqrt(count) weights the squares by count
    (lr_exp, batch_exp), (lr_icpt, batch_icpt) = np.polyfit(np.log(grid.flops[used]), y, 1, w=np.sqrt(w[used]))
    return np.array([lr_icpt, lr_exp, batch_icpt, batch_exp])


def _small_sample_factor(n_units: int, n_free: int) -> float:
    """How much to widen a bootstrap percentile interval that rests on `n_units` independent units with
    `n_free` fitted parameters. Resampling units makes the interval about as wide as a normal interval with
    the plug-in variance, which is (n-p)/n of the unbiased one, and with a normal quantile where the t quantile
    with n-p degrees of freedom is due: the factor is sqrt(n/(n-p))·t/z. (Hesterberg's 2015 "expanded
    percentile interval" makes the same correction by moving the percentile levels instead; stretching the
    sides keeps the 2.5/97.5 percentiles, which 200 resamples estimate well.) Measured on
    synthetic grids like the tests' (200 each): the law's 95% intervals held the truth 86-92% of the time
    unwidened with 8-12 budgets, 95-98% widened with 5-12; the parabola's vertex 93-95% with 2-8 seeds (400
    sweeps each). Infinite (no interval) without a degree of freedom."""
    from scipy import stats

    dof = n_units - n_free
    if dof < 1:
        return float("inf")
    level = 0.5 + CONFIDENCE / 2
    return float(np.sqrt(n_units / dof) * stats.t.ppf(level, dof) / stats.norm.ppf(level))


def _widened_interval(point: float, draws_S: np.ndarray, n_units: int, n_free: int = 2) -> tuple[float, float]:
    """The CONFIDENCE percentile interval of the draws, each side stretched away from `point` by
    `_small_sample_factor` (so a skewed interval stays skewed). NaN without draws or degrees of freedom."""
    factor = _small_sample_factor(n_units, n_free)
    if draws_S.size < 2 or not np.isfinite(factor):
        return float("nan"), float("nan")
    lo, hi = np.percentile(draws_S, _PERCENTILES)
    return float(point - factor * max(point - lo, 0.0)), float(point + factor * max(hi - point, 0.0))


def _warn_single_configurations(grid: _Grid) -> None:
    sizes = np.diff(np.append(grid.starts, len(grid.flops)))
    lone = grid.flops[grid.starts][sizes == 1]
    if len(lone):
        warnings.warn(f"budget(s) {', '.join(f'{c:.3g}' for c in lone)} have a single (learning rate, batch) "
                      "configuration, which is near-optimal by default; a grid needs several per budget (runs of "
                      "one budget must carry the same `flops` value)", ScalingFitWarning, stacklevel=3)


# ---------------------------------------------------------------------------- one budget's lr sweep


@dataclass(frozen=True)
class ParabolaOptimum:
    """The optimum of loss against log learning rate, from a parabola fitted near the sweep's minimum."""

    lr: float  # e^vertex when the vertex lies inside the fitted lrs; NaN otherwise (see in_range, note)
    interval: tuple[float, float]  # CONFIDENCE interval of the vertex over seed resamples, widened for few seeds
    # (`_small_sample_factor`); NaN without >= 2 seeds, and when not in_range
    curvature: float  # d²loss / d(ln lr)²: > 0 for a minimum; how sharply the loss punishes a wrong lr
    loss: float  # the parabola's value at its vertex
    in_range: bool  # False: the vertex lies outside the fitted lrs (or the parabola has no minimum)
    vertex_lr: float  # e^vertex, extrapolated when not in_range (where to extend the sweep); NaN if no minimum
    lrs_fitted: tuple[float, ...]
    n_draws: int  # seed resamples whose parabola has a minimum (the interval's draws)
    note: str = ""  # why in_range is False, in words


def parabola_optimum(lrs, losses, seeds=None, *, window: int = 5, n_bootstrap: int = 200,
                     seed: int = 0) -> ParabolaOptimum:
    """The loss-minimising learning rate of a 1-D sweep: loss = a·x² + b·x + c with x = ln lr, fitted (least
    squares) on the `window` distinct lrs nearest, in log lr, to the lowest mean loss; vertex at -b/(2a).
    Far from the optimum the loss is not a parabola, hence the window. Rows of one lr average over seeds; with
    >= 2 seeds the interval comes from resampling seeds (each drawn seed brings its runs at every lr) on the
    same window. A vertex outside the fitted lrs is not extrapolated: `lr` is NaN and `in_range` False."""
    lrs, losses = np.asarray(lrs, dtype=np.float64).ravel(), np.asarray(losses, dtype=np.float64).ravel()
    if lrs.shape != losses.shape:
        raise UserError(f"parabola_optimum: {lrs.size} learning rates but {losses.size} losses; give one loss per run")
    if not (np.all(np.isfinite(lrs)) and np.all(lrs > 0) and np.all(np.isfinite(losses))):
        raise UserError("parabola_optimum: learning rates must be positive and losses finite (drop diverged runs)")
    paired = seeds is not None  # runs of one seed share an init and data order across lrs
    seeds = _replicate_index(lrs) if seeds is None else np.asarray(seeds).ravel()
    if seeds.shape != lrs.shape:
        raise UserError(f"parabola_optimum: {seeds.size} seeds for {lrs.size} runs; give one seed per run")
    if window < 3:
        raise UserError(f"parabola_optimum: window={window} must be at least 3 (a parabola has 3 coefficients)")
    lr_values, lr_of_row = np.unique(lrs, return_inverse=True)
    if lr_values.size < 3:
        raise UserError(f"parabola_optimum: {lr_values.size} distinct learning rates; a parabola needs at least 3")
    _, seed_of_row = np.unique(seeds, return_inverse=True)
    loss_LS = np.full((lr_values.size, seed_of_row.max() + 1), np.nan)
    loss_LS[lr_of_row, seed_of_row] = losses
    if np.count_nonzero(~np.isnan(loss_LS)) < lrs.size:
        raise UserError("parabola_optimum: a (learning rate, seed) pair appears twice; a copy is not an independent "
                        "run, so remove it or give each replicate its own seed")
    x = np.log(lr_values)
    mean = np.nanmean(loss_LS, axis=1)
    fitted = np.sort(np.argsort(np.abs(x - x[np.argmin(mean)]), kind="stable")[:window])
    coef = np.polyfit(x[fitted], mean[fitted], 2)
    vertex = _vertex(coef)
    lo_x, hi_x = x[fitted[0]], x[fitted[-1]]
    in_range = bool(lo_x <= vertex <= hi_x)  # False for NaN too
    draws = _vertex_draws(x[fitted], loss_LS[fitted], n_bootstrap, seed) if paired and loss_LS.shape[1] > 1 else np.array([])
    # seeds are the units, the vertex a smooth function of their mean curve: one parameter, as for a mean
    interval = tuple(float(v) for v in np.exp(_widened_interval(vertex, draws, loss_LS.shape[1], n_free=1)))
    interval = interval if in_range else (float("nan"), float("nan"))  # no interval for an extrapolation
    return ParabolaOptimum(
        lr=float(np.exp(vertex)) if in_range else float("nan"), interval=interval,
        curvature=float(2 * coef[0]), loss=float(np.polyval(coef, vertex)) if np.isfinite(vertex) else float("nan"),
        in_range=in_range, vertex_lr=float(np.exp(vertex)), lrs_fitted=tuple(float(v) for v in lr_values[fitted]),
        n_draws=int(draws.size), note=_range_note(vertex, lo_x, hi_x),
    )


def _replicate_index(values: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... over the repeats of each value: unpaired replicates, averaged but not resampled."""
    seen: dict[float, int] = {}
    index = np.empty(values.size, dtype=int)
    for i, v in enumerate(values):
        index[i] = seen[v] = seen.get(v, -1) + 1
    return index


def _vertex(coef: np.ndarray) -> float:
    """-b/(2a) of a·x² + b·x + c; NaN when the parabola opens downwards or is flat (no minimum)."""
    return float(-coef[1] / (2 * coef[0])) if coef[0] > 0 else float("nan")


def _vertex_draws(x: np.ndarray, loss_LS: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """The vertex (ln lr) of each seed resample that has a minimum and >= 3 lrs with a drawn seed."""
    rng = np.random.default_rng(seed)
    present, filled = ~np.isnan(loss_LS), np.nan_to_num(loss_LS)
    n_seeds = loss_LS.shape[1]
    out = []
    for _ in range(n_bootstrap):
        weight = np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds) * present
        has = weight.sum(axis=1) > 0
        if has.sum() >= 3:
            mean = (weight[has] * filled[has]).sum(axis=1) / weight[has].sum(axis=1)
            out.append(_vertex(np.polyfit(x[has], mean, 2)))
    out = np.asarray(out)
    return out[np.isfinite(out)]


def _range_note(vertex: float, lo_x: float, hi_x: float) -> str:
    lo, hi = np.exp(lo_x), np.exp(hi_x)
    if not np.isfinite(vertex):
        return (f"the loss has no minimum over lr {lo:.3g}-{hi:.3g} (the parabola opens downwards or is flat): "
                "the sweep is too noisy or too narrow there")
    if vertex < lo_x:
        return f"the minimum lies below the fitted lrs ({np.exp(vertex):.3g} < {lo:.3g}): extend the sweep to smaller lr"
    if vertex > hi_x:
        return f"the minimum lies above the fitted lrs ({np.exp(vertex):.3g} > {hi:.3g}): extend the sweep to larger lr"
    return ""


def _power(coef: float, exponent: float, flops):
    _check_flops(flops)
    out = coef * np.power(np.asarray(flops, dtype=np.float64), exponent)
    return float(out) if np.ndim(out) == 0 else out


def _check_flops(flops) -> None:
    f = np.asarray(flops, dtype=np.float64)
    if not np.all(np.isfinite(f) & (f > 0)):
        raise UserError(f"compute C must be a positive, finite number of FLOPs, got {flops}")
