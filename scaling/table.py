"""Results tables in, validated float64 frames out (pure pandas; no model, data or trainer code).

A table is a CSV, a Parquet file, or a sweep directory holding `run.json` files (see
docs/interfaces.md). Required columns: `n_params`, `n_tokens`, `loss`; optional: `flops`,
`n_params_non_embedding`, `budget`, `run`, `step`, `unique_tokens` (for data-constrained fits).
Every problem is a `UserError` that names the file, the column and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from chinchax.errors import UserError

REQUIRED = ("n_params", "n_tokens", "loss")
NUMERIC = ("n_params", "n_tokens", "loss", "flops", "n_params_non_embedding", "budget", "unique_tokens")


def load_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read a results table (CSV, Parquet, sweep directory, or a DataFrame) and validate it."""
    if isinstance(source, pd.DataFrame):
        return validate_table(source.copy(), name="table")
    path = Path(source)
    if path.is_dir():
        df = _read_sweep_dir(path)
    elif not path.exists():
        raise UserError(f"results table {path} does not exist; pass a .csv, .parquet or a sweep directory")
    elif path.suffix.lower() in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        try:
            df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        except pd.errors.ParserError as e:
            raise UserError(f"{path} is not a readable CSV: {e}") from None
    else:
        raise UserError(f"{path}: unknown table format {path.suffix!r}; use .csv, .parquet or a sweep directory")
    return validate_table(df, name=str(path))


def _read_sweep_dir(path: Path) -> pd.DataFrame:
    """One row per finished run.json under `path` (eval loss when there is one, else train loss)."""
    rows = []
    for run_json in sorted(path.rglob("run.json")):
        try:
            rec = json.loads(run_json.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{run_json} is not valid JSON ({e}); re-run or delete that run") from None
        if rec.get("status", "done") != "done":
            continue
        loss = rec.get("eval_loss")
        if loss is None or not np.isfinite(loss):
            loss = rec.get("final_train_loss")
        rows.append(
            {
                "run": rec.get("run", run_json.parent.name),
                "n_params": rec.get("n_params"),
                "n_params_non_embedding": rec.get("n_params_non_embedding"),
                "n_tokens": rec.get("n_tokens"),
                "flops": rec.get("flops_6nd"),
                "loss": loss,
                **({"budget": rec["budget"]} if "budget" in rec else {}),
            }
        )
    if not rows:
        raise UserError(f"{path} holds no finished run.json (status 'done'); run the sweep first")
    return pd.DataFrame(rows)


def validate_table(df: pd.DataFrame, name: str = "table") -> pd.DataFrame:
    """Check columns and values; return float64 numeric columns, `flops` filled with 6·N·D if absent."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(
            f"{name} lacks column(s) {', '.join(missing)}; a results table needs "
            f"{', '.join(REQUIRED)} (optional: flops, n_params_non_embedding, budget, run, step)"
        )
    df = df.copy()
    for col in NUMERIC:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
        bad = ~np.isfinite(values.to_numpy())
        if col == "budget" and bad.all():  # an all-empty optional column is as good as absent
            df = df.drop(columns=col)
            continue
        if bad.any():
            row = int(np.nonzero(bad)[0][0])
            raise UserError(
                f"{name}: column {col!r} has {int(bad.sum())} missing/NaN/inf value(s) (first at row {row}); "
                "drop or fix those rows"
            )
        if (values <= 0).any():
            row = int(np.nonzero((values <= 0).to_numpy())[0][0])
            raise UserError(
                f"{name}: column {col!r} must be positive, but row {row} holds {values.iloc[row]!r}; "
                "scaling laws work in log space"
            )
        df[col] = values
    if "flops" not in df.columns:
        df["flops"] = 6.0 * df["n_params"] * df["n_tokens"]
    if "run" not in df.columns:
        df["run"] = [f"row{i}" for i in range(len(df))]
    df["run"] = df["run"].astype(str)
    return df.reset_index(drop=True)


def require_rows(df: pd.DataFrame, minimum: int, fit: str, what: str = "runs") -> None:
    if len(df) < minimum:
        raise UserError(f"{fit} needs at least {minimum} {what}, but the table has {len(df)}; add more runs")


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last row of each run (a loss curve collapses to its final point)."""
    if "step" not in df.columns:
        return df
    return df.sort_values(["run", "step"]).groupby("run", sort=False).tail(1).reset_index(drop=True)


def budgets(df: pd.DataFrame) -> np.ndarray:
    """Each row's compute budget: the `budget` column, else its FLOPs rounded to 2 significant digits
    (runs of one isoFLOP budget have C = 6ND equal up to rounding of N and D)."""
    if "budget" in df.columns:
        return df["budget"].to_numpy(np.float64)
    flops = df["flops"].to_numpy(np.float64)
    exponent = np.floor(np.log10(flops))
    return np.round(flops / 10**exponent, 1) * 10**exponent


def holdout_split(df: pd.DataFrame, holdout: str | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(fit rows, held-out rows). `largest` holds out every run of the largest budget."""
    if holdout in (None, "none"):
        return df, None
    if holdout != "largest":
        raise UserError(f"--holdout {holdout!r} is not known; use 'largest' or 'none'")
    b = budgets(final_rows(df))
    if len(np.unique(b)) < 2:
        raise UserError("--holdout largest needs runs at 2 or more budgets; the table has one")
    held_runs = set(final_rows(df)["run"][b == b.max()])
    mask = df["run"].isin(held_runs)
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)
