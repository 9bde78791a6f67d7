"""Results tables in, validated float64 frames out (pure pandas; no model, data or trainer code).

A table is a CSV, a Parquet file, or a sweep directory holding `run.json` files (see
docs/interfaces.md). Required columns: `n_params`, `n_tokens`, `loss`; optional: `flops`,
`n_params_non_embedding`, `budget`, `run`, `step`, `unique_tokens` (for data-constrained fits).
Every problem is a `UserError` that names the file, the column and the fix.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from chinchax.compute import training_flops
from chinchax.errors import UserError
from chinchax.scaling.run_rows import sweep_dir_rows

REQUIRED = ("n_params", "n_tokens", "loss")
NUMERIC = ("n_params", "n_tokens", "loss", "flops", "n_params_non_embedding", "budget", "unique_tokens")


def load_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read a results table (CSV, Parquet, sweep directory, or a DataFrame) and validate it.

    Without a `budget` column, prints (to stderr) how runs were grouped into isoFLOP budgets."""
    if isinstance(source, pd.DataFrame):
        df = validate_table(source.copy(), name="table")
    else:
        path = Path(source)
        if path.is_dir():
            raw, where = _read_sweep_dir(path)
        elif not path.exists():
            raise UserError(f"results table {path} does not exist; pass a .csv, .parquet or a sweep directory")
        elif path.suffix.lower() in (".parquet", ".pq"):
            raw, where = pd.read_parquet(path), None
        elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
            raw, where = _read_csv(path)
        else:
            raise UserError(f"{path}: unknown table format {path.suffix!r}; use .csv, .parquet or a sweep directory")
        df = validate_table(raw, name=str(path), where=where)
    if "budget" not in df.columns:
        print(describe_budgets(df), file=sys.stderr)
    return df


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """A CSV/TSV, with each row's file line number (header = line 1) for messages."""
    head = path.read_bytes()[:65536]
    if not head.strip():
        raise UserError(f"{path} is empty; a results table needs a header line "
                        f"({','.join(REQUIRED)}) and one line per run")
    if head.startswith(b"PAR1"):
        raise UserError(f"{path} is a Parquet file named {path.suffix}; rename it to .parquet")
    if b"\x00" in head or not _is_text(head):
        raise UserError(f"{path} is not a text CSV (it holds binary bytes); export the results as CSV "
                        f"(comma-separated text) or Parquet")
    try:
        # Keep blank lines as empty rows so that row i is line i + 2 (header is line 1); dropped below.
        df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; a results table needs a header line ({','.join(REQUIRED)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable CSV: {e}") from None
    lines = [f"line {i + 2}" for i in range(len(df))]
    keep = ~df.isna().all(axis=1).to_numpy()
    return df[keep].reset_index(drop=True), [w for w, k in zip(lines, keep, strict=True) if k]


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a multi-byte character cut at the 64 KiB boundary is still text
    return True


def _read_sweep_dir(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per finished run under `path`, made exactly as results.csv makes it (run_rows)."""
    found = list(sweep_dir_rows(path))
    if not found:
        raise UserError(f"{path} holds no finished run.json (status 'done'); run the sweep first")
    return pd.DataFrame([row for row, _ in found]), [str(where) for _, where in found]


def validate_table(df: pd.DataFrame, name: str = "table", where: list[str] | None = None) -> pd.DataFrame:
    """Check columns and values; return float64 numeric columns, `flops` filled with 6·N·D if absent.

    `where` names each row in messages (a CSV's line numbers, a run.json path); default "row i"."""
    df = df.reset_index(drop=True)
    where = where if where is not None else [f"row {i}" for i in range(len(df))]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(
            f"{name} lacks column(s) {', '.join(missing)}; a results table needs "
            f"{', '.join(REQUIRED)} (optional: flops, n_params_non_embedding, budget, run, step)"
        )
    if len(df) == 0:
        raise UserError(f"{name} has a header but no rows; add one row per finished run")
    df = df.copy()
    for col in NUMERIC:
        if col not in df.columns:
            continue
        values = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
        bad = ~np.isfinite(values.to_numpy())
        if col == "budget" and bad.all():  # an all-empty optional column is as good as absent
            df = df.drop(columns=col)
            continue
        _check_numbers(df[col], values, col, name, where)
        if (values <= 0).any():
            row = int(np.nonzero((values <= 0).to_numpy())[0][0])
            raise UserError(
                f"{name}: column {col!r} must be positive, but {where[row]} holds {float(values.iloc[row]):g}; "
                "scaling laws work in log space"
            )
        df[col] = values
    _check_duplicates(df, name, where)
    if "flops" not in df.columns:
        df["flops"] = training_flops(df["n_params"], df["n_tokens"])
    if "run" not in df.columns:
        df["run"] = [f"row{i}" for i in range(len(df))]
    df["run"] = df["run"].astype(str)
    return df.reset_index(drop=True)


def _check_numbers(raw: pd.Series, values: pd.Series, col: str, name: str, where: list[str]) -> None:
    """Text that is not a number, then empty/NaN/inf cells, each named with its first row."""
    not_number = (raw.notna() & values.isna()).to_numpy()
    if not_number.any():
        rows = np.nonzero(not_number)[0]
        raise UserError(
            f"{name}: column {col!r} holds {str(raw.iloc[rows[0]])!r} at {where[rows[0]]}, which is not a number"
            f" ({len(rows)} such cell(s)); write plain numbers such as 1.2e9"
        )
    bad = ~np.isfinite(values.to_numpy())
    if bad.any():
        row = int(np.nonzero(bad)[0][0])
        raise UserError(
            f"{name}: column {col!r} has {int(bad.sum())} missing/NaN/inf value(s) (first at {where[row]}); "
            "drop or fix those rows"
        )


def _check_duplicates(df: pd.DataFrame, name: str, where: list[str]) -> None:
    """Identical rows are one run copied, not independent runs: counting them twice would narrow every
    bootstrap interval and weight that run double in every fit."""
    dup = df.duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    first_of = df[dup].groupby(list(df.columns), dropna=False, sort=False).groups
    pairs = [f"{where[idx[0]]} = " + " = ".join(where[i] for i in idx[1:]) for idx in first_of.values()]
    copies = int(df.duplicated().sum())
    raise UserError(
        f"{name}: {copies} row(s) repeat another row exactly ({'; '.join(pairs[:5])}"
        f"{'; ...' if len(pairs) > 5 else ''}); a copy is not an independent run: delete the copies "
        "(or, for repeated seeds, give each run its own `run` name)"
    )


def require_rows(df: pd.DataFrame, minimum: int, fit: str, what: str = "runs") -> None:
    if len(df) < minimum:
        raise UserError(f"{fit} needs at least {minimum} {what}, but the table has {len(df)}; add more runs")


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The last row of each run (a loss curve collapses to its final point)."""
    if "step" not in df.columns:
        return df
    return df.sort_values(["run", "step"]).groupby("run", sort=False).tail(1).reset_index(drop=True)


BUDGET_REL_TOL = 0.2


def budgets(df: pd.DataFrame, rel_tol: float = BUDGET_REL_TOL) -> np.ndarray:
    """Each row's compute budget: the `budget` column, else its isoFLOP group.

    Without a budget column, rows are sorted by FLOPs and a new group starts wherever the next row has
    more than (1 + rel_tol) times the FLOPs of the previous one: runs meant for one budget differ by
    rounding of N and D or by how FLOPs were counted (a few %), budgets by 1.5x or more. A group is
    labelled by its geometric-mean FLOPs rounded to 2 significant digits (unrounded if two would tie)."""
    if "budget" in df.columns:
        return df["budget"].to_numpy(np.float64)
    flops = df["flops"].to_numpy(np.float64)
    order = np.argsort(flops, kind="stable")
    starts = np.r_[True, flops[order][1:] > flops[order][:-1] * (1.0 + rel_tol)]
    group = np.empty(flops.size, dtype=np.int64)
    group[order] = np.cumsum(starts) - 1
    means = np.array([np.exp(np.mean(np.log(flops[group == g]))) for g in range(int(starts.sum()))])
    exponent = np.floor(np.log10(means))
    labels = np.round(means / 10**exponent, 1) * 10**exponent
    if np.unique(labels).size < labels.size:
        labels = means
    return labels[group]


def describe_budgets(df: pd.DataFrame, rel_tol: float = BUDGET_REL_TOL) -> str:
    """How `budgets` grouped the runs (final rows) of a table without a budget column."""
    final = final_rows(df)
    b, flops = budgets(final, rel_tol), final["flops"].to_numpy(np.float64)
    lines = [f"no 'budget' column: {len(final)} runs grouped into {np.unique(b).size} isoFLOP budget(s) "
             f"(FLOPs within {rel_tol:.0%} of a neighbour share a budget; add a 'budget' column to set them):"]
    for budget in np.unique(b):
        f = flops[b == budget]
        lines.append(f"  {float(budget):.3g} FLOPs: {f.size} run(s), FLOPs {float(f.min()):.4g} to {float(f.max()):.4g}")
    return "\n".join(lines)


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
