"""run.json -> one results row: the only place that decides which loss, which FLOPs and which budget a
finished run stands for. `chinchax sweep collect` (results.csv) and `chinchax fit SWEEP_DIR` both use it, so
the two inputs give the same fit.

- loss: the eval loss when it is a finite number, else the final training loss;
- flops: 6·N·D with the sweep's N convention (`total`, Chinchilla; `non_embedding`, Kaplan), read from
  run.json's `flops_6nd` / `flops_6nd_non_embedding`;
- budget: the planned budget (plan.json) when the run belongs to a sweep, else run.json's own `budget` if it
  has one; otherwise none, and the fit groups runs into budgets by their FLOPs (scaling/table.py).

Pure: stdlib only (the fitting half of scaling/ reads sweeps without importing the sweep half); run.json is
read by chinchax.rundir (a missing one is a run not finished; a damaged one, an error naming it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path

from chinchax.errors import UserError
from chinchax.jsonio import read_object
from chinchax.rundir import RUN_JSON, read_run_json

N_CONVENTIONS = ("total", "non_embedding")
RESULT_COLUMNS = ("run", "n_params", "n_params_non_embedding", "n_tokens", "flops", "loss", "budget")
EXTRA_COLUMNS = (
    "family", "seed", "d_model", "n_layers", "n_heads", "d_ff", "n_params_embedding", "steps", "batch_size",
    "seq_len", "learning_rate", "flops_6nd", "flops_6nd_non_embedding", "flops_detailed", "eval_loss",
    "eval_loss_stderr", "eval_bits_per_byte", "final_train_loss", "wall_time_s", "mfu",
)
# PlannedRun field -> results column, for the columns the plan knows and run.json may not.
_PLANNED = {"family": "family", "seed": "seed", "d_model": "d_model", "n_layers": "n_layers", "n_heads": "n_heads",
            "d_ff": "d_ff", "batch_size": "batch_size", "seq_len": "seq_len", "lr": "learning_rate"}
_MEASURED_INTS = ("n_params", "n_params_non_embedding", "n_params_embedding", "n_tokens", "steps")


def flops_key(convention: str) -> str:
    if convention not in N_CONVENTIONS:
        raise UserError(f"n_convention={convention!r} is not valid; choose one of {', '.join(N_CONVENTIONS)}")
    return "flops_6nd" if convention == "total" else "flops_6nd_non_embedding"


def run_loss(run_json: Mapping) -> float | None:
    """The loss a finished run is fitted with: eval loss if finite, else the final training loss."""
    loss = run_json.get("eval_loss")
    if loss is None or not math.isfinite(float(loss)):
        loss = run_json.get("final_train_loss")
    return None if loss is None else float(loss)


def run_row(run_json: Mapping, *, convention: str = "total", planned: Mapping | None = None,
            run_id: str | None = None) -> dict:
    """One results row from a finished run's run.json; `planned` (a plan.json run) fills the budget and the
    shape columns. Measured values win over planned ones."""
    planned = planned or {}
    row: dict = {"run": run_id or planned.get("run_id") or run_json.get("run")}
    for key in _MEASURED_INTS:
        value = run_json.get(key, planned.get(key))
        row[key] = None if value is None else int(value)
    flops = run_json.get(flops_key(convention))
    row["flops"] = None if flops is None else float(flops)
    row["loss"] = run_loss(run_json)
    budget = planned.get("budget", run_json.get("budget"))
    row["budget"] = None if budget is None else float(budget)
    for field, column in _PLANNED.items():
        row[column] = planned.get(field, run_json.get(column))
    for key in EXTRA_COLUMNS:
        row.setdefault(key, run_json.get(key))
    return row


def sweep_dir_rows(root: Path) -> Iterator[tuple[dict, Path]]:
    """(row, run.json path) per finished run under `root`. A sweep directory (with plan.json) is read the
    way `chinchax sweep collect` reads it: its plan's runs, N convention and budgets. Any other directory:
    every run.json below it, N total, the budget only if run.json records one."""
    fix = "re-run or delete that run"
    if (root / "plan.json").is_file():
        plan = read_object(root / "plan.json", what="sweep plan", fix="plan the sweep again with `chinchax sweep plan`")
        convention = plan.get("n_convention", "total")
        for planned in plan.get("runs", []):
            run_dir = root / "runs" / planned["run_id"]
            run_json = read_run_json(run_dir, fix=fix) if (run_dir / RUN_JSON).is_file() else None
            if run_json is not None and run_json.get("status") == "done":
                yield run_row(run_json, convention=convention, planned=planned), run_dir / RUN_JSON
        return
    for path in sorted(root.rglob(RUN_JSON)):
        run_json = read_run_json(path.parent, fix=fix)
        if run_json.get("status", "done") == "done":
            yield run_row(run_json, run_id=run_json.get("run", path.parent.name)), path
