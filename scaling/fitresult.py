"""A fitted law with its bootstrap uncertainty, saved as JSON that `chinchax optimal --law` reads back.

The JSON keeps the bootstrap draws of the allocation law (N_opt = k·C^a per resample), so intervals
for N_opt and D_opt can be computed later at any budget, not only the ones asked for at fit time.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from chinchax.errors import UserError
from chinchax.scaling.laws import FLOPS_PER_PARAM_TOKEN, Allocation

CONFIDENCE = 0.95


@dataclass
class FitResult:
    law: str  # kaplan | chinchilla-1 | chinchilla-2 | chinchilla-3 | data-constrained
    params: dict[str, float]
    stderr: dict[str, float]
    intervals: dict[str, list[float]]  # 95% bootstrap percentile interval per parameter
    n_runs: int
    n_rows: int
    n_bootstrap: int
    seed: int
    allocation: dict[str, float]  # {"n_coef", "n_exp"}: N_opt = n_coef · C^n_exp
    bootstrap_allocation: list[list[float]] = field(default_factory=list)  # [[n_coef, n_exp], ...]
    holdout: dict | None = None
    extra: dict = field(default_factory=dict)  # fit-specific details (e.g. isoFLOP minima)

    def allocation_law(self) -> Allocation:
        return Allocation(self.law, self.allocation["n_coef"], self.allocation["n_exp"], "fit")

    def n_opt(self, flops: float) -> tuple[float, float, float]:
        """(N_opt, low, high) at `flops`, the interval from the bootstrap draws (nan if none)."""
        best = float(self.allocation_law().n_opt(flops))
        if not self.bootstrap_allocation:
            return best, float("nan"), float("nan")
        draws = np.array(self.bootstrap_allocation)
        values = draws[:, 0] * float(flops) ** draws[:, 1]
        lo, hi = np.percentile(values, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        return best, float(lo), float(hi)

    def d_opt(self, flops: float) -> tuple[float, float, float]:
        n, lo, hi = self.n_opt(flops)
        d = lambda x: float(flops) / (FLOPS_PER_PARAM_TOKEN * x)
        return d(n), d(hi), d(lo)  # more parameters means fewer tokens

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(asdict(self)), f, indent=1)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> FitResult:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"fit file {path} does not exist; write one with `chinchax fit ... --out`") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e})") from None
        missing = {"law", "params", "allocation"} - set(data)
        if missing:
            raise UserError(f"{path} is not a chinchax fit (missing {sorted(missing)})")
        return cls(**data)


def summarise(best: dict[str, float], draws: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """(stderr, intervals) from bootstrap draws of each parameter (non-finite draws ignored)."""
    stderr, intervals = {}, {}
    for name in best:
        x = np.asarray(draws.get(name, []), dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size < 2:
            stderr[name], intervals[name] = float("nan"), [float("nan"), float("nan")]
            continue
        with np.errstate(over="ignore"):  # a coefficient the data cannot pin down can span 100 decades
            stderr[name] = float(np.std(x, ddof=1))
        lo, hi = np.percentile(x, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
        intervals[name] = [float(lo), float(hi)]
    return stderr, intervals


def resample_runs(runs: np.ndarray, n_bootstrap: int, seed: int, strata: np.ndarray | None = None) -> np.ndarray:
    """[n_bootstrap, n_rows] integer weights: how often each row's run is drawn in each resample.

    Runs (not rows) are the unit: every row of a drawn run comes along (a loss curve stays whole).
    With `strata`, runs are drawn within each stratum (e.g. per isoFLOP budget) so that every
    resample keeps each budget's design.
    """
    rng = np.random.default_rng(seed)
    uniq, row_to_run = np.unique(runs, return_inverse=True)
    run_strata = np.zeros(len(uniq), dtype=np.int64)
    if strata is not None:
        _, s = np.unique(strata, return_inverse=True)
        run_strata[row_to_run] = s
    counts = np.zeros((n_bootstrap, len(uniq)))
    for s in np.unique(run_strata):
        members = np.nonzero(run_strata == s)[0]
        draws = rng.integers(0, members.size, size=(n_bootstrap, members.size))
        for k in range(n_bootstrap):
            np.add.at(counts[k], members[draws[k]], 1.0)
    return counts[:, row_to_run]


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
