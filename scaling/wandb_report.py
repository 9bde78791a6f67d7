"""One W&B analysis run beside a sweep's training runs: `chinchax fit`, `demo` and `compare` log their results
table (wandb.Table), fitted parameters with their intervals (the run's summary) and every plot they drew
(wandb.Image of each PNG) into the sweep's group, with job type "analysis".

    log_analysis("my-project", group="demo", name="demo-analysis", kind="demo", dir=out,
                 tables={"results": df}, summary={"approach3/E": 1.7, ...}, images=[out / "isoflop.png"])

Offline unless a W&B key is configured, as every run (train/metrics.py's `wandb_mode`). Each call is a new run
(a fresh id): a re-run of a study adds an analysis run to its group instead of overwriting the last one.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

JOB_TYPE = "analysis"


def add_wandb_arguments(parser, what: str) -> None:
    """--wandb-project/-group/-mode of a command that logs W&B runs (its training runs and one analysis run)."""
    from chinchax.train.config import WANDB_MODES

    parser.add_argument("--wandb-project", metavar="PROJECT",
                        help=f"log to this W&B project: {what} (offline unless a W&B key is configured)")
    parser.add_argument("--wandb-group", metavar="GROUP", help="the W&B group (default: the sweep's name)")
    parser.add_argument("--wandb-mode", choices=WANDB_MODES, default="auto",
                        help="auto (default): online with a configured W&B key, else offline")


def log_analysis(project: str | None, *, group: str, name: str, kind: str, dir: Path, mode: str = "auto",
                 config: Mapping | None = None, tables: Mapping | None = None, summary: Mapping | None = None,
                 images: Iterable = ()) -> Path | None:
    """Log one analysis run; returns its local run folder (None when W&B is off: no project, or disabled)."""
    from chinchax.train.metrics import start_wandb

    if not project:
        return None
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    run = start_wandb(project, mode, dir, name, {"kind": kind, **(config or {})}, group=group,
                      job_type=JOB_TYPE, tags=[kind], fresh_id=True)
    if run is None:
        return None
    import wandb

    try:
        logged = {f"tables/{key}": wandb.Table(dataframe=table_frame(rows)) for key, rows in (tables or {}).items()}
        for path in images:
            path = Path(path)
            logged[f"plots/{_key(path.stem)}"] = wandb.Image(str(path), caption=path.stem)
        if logged:
            run.log(logged)
        run.summary.update({k: v for k, v in (summary or {}).items() if _loggable(v)})
        return Path(run.dir).parent  # wandb/<offline->run-<time>-<id>/files: the run's folder is the parent
    finally:
        run.finish()


def fit_summary(result, prefix: str = "") -> dict:
    """A FitResult as flat summary keys: each parameter, its 95% interval (`_lo`, `_hi`), and the law."""
    out = {f"{prefix}law": result.law, f"{prefix}n_runs": result.n_runs, f"{prefix}n_bootstrap": result.n_bootstrap}
    for name, value in result.params.items():
        out[f"{prefix}{name}"] = value
        lo, hi = (result.intervals.get(name) or [None, None])[:2]
        out[f"{prefix}{name}_lo"], out[f"{prefix}{name}_hi"] = lo, hi
    for key in ("mean_abs_rel_error", "max_abs_rel_error"):
        if result.holdout and key in result.holdout:
            out[f"{prefix}holdout_{key}"] = result.holdout[key]
    return out


def flat_numbers(data, prefix: str = "") -> dict:
    """Every number and string leaf of nested dicts as 'a/b/c' keys; a pair of numbers under a name with
    "interval" in it as 'a/interval_lo' and 'a/interval_hi'. Other lists are left out (a table holds those;
    a pair of budgets or seeds is no interval)."""
    out = {}
    for key, value in (data or {}).items():
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, f"{prefix}{key}/"))
        elif (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_number, value))
              and "interval" in f"{prefix}{key}"):
            out.update({f"{prefix}{key}_lo": value[0], f"{prefix}{key}_hi": value[1]})
        elif _loggable(value):
            out[f"{prefix}{key}"] = value
    return out


def table_frame(rows):
    """A results table (DataFrame, CSV path or list of dicts) as a DataFrame wandb.Table accepts: a column of
    mixed types (numbers and text) becomes text, missing values None."""
    import pandas as pd

    if isinstance(rows, (str, Path)):
        df = pd.read_csv(rows)
    elif isinstance(rows, pd.DataFrame):
        df = rows.copy()
    else:
        df = pd.DataFrame(list(rows))
    for column in df.columns:
        values = df[column]
        if values.dtype == object:
            kinds = {type(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or kinds - {str, int, float, bool}:
                df[column] = [None if v is None else str(v) for v in values]
    return df.astype(object).where(df.notna(), None)


def pngs(*folders_or_files) -> list[Path]:
    """The PNGs among these paths (a folder: every PNG in it, sorted), each once."""
    out: list[Path] = []
    for item in folders_or_files:
        item = Path(item)
        found = sorted(item.glob("*.png")) if item.is_dir() else [item] if item.suffix == ".png" and item.is_file() else []
        out += [p for p in found if p not in out]
    return out


def sweep_group(table) -> str:
    """The W&B group of a results table: the name its sweep was planned with (plan.json in the sweep
    directory, or beside results.csv), else the name of the folder it is in."""
    import json

    path = Path(str(table))
    folder = path if path.is_dir() else path.parent
    try:
        return json.loads((folder / "plan.json").read_text())["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return folder.resolve().name or "chinchax"


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy numbers too


def _loggable(value) -> bool:
    """A summary value: text, a flag or a finite number (NaN and None say nothing on a dashboard)."""
    return isinstance(value, (bool, str)) or (_number(value) and math.isfinite(value))
