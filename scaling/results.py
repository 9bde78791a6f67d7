"""A sweep on disk: its plan, one directory per run, each run's state, and the collected results table.

    <sweep dir>/plan.json, plan.csv      the plan (`chinchax sweep plan`)
    <sweep dir>/configs/<run>.yaml        the resolved config each run is launched with
    <sweep dir>/runs/<run>/               the run directory (`chinchax train` writes run.json, metrics.jsonl,
                                          checkpoints there; the executor adds sweep_train.log and markers)
    <sweep dir>/results.csv               one row per finished run (what `chinchax fit` reads)
    <sweep dir>/curves.csv                one row per logged step of every finished run (approach 1)

A run's state comes only from its files, so any process (or a re-run after a crash) sees the same thing:
done = run.json with status "done"; running = a trainer holds the run dir's lock (<run>/.lock, flock:
the kernel frees it when the trainer dies, however it dies), or the executor that launched it is alive (its
pid in sweep_running.json, with the pid's start time, so that a recycled pid is not taken for it);
failed = the executor's failure marker; interrupted = a run directory with none of these (a re-run resumes
it from its checkpoints);
planned = nothing on disk yet.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import socket
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.evaluation.results import flat_metrics, read_results
from chinchax.fileio import is_remote, run_path
from chinchax.fileio import write_text_atomic as write_atomic
from chinchax.jsonio import read_jsonl, read_object_or_none
from chinchax.rundir import run_json_or_none
from chinchax.scaling.planned import Plan, PlannedRun
from chinchax.scaling.run_rows import EXTRA_COLUMNS, RESULT_COLUMNS, flops_key, run_row
from chinchax.train.runlock import probe

STATES = ("planned", "running", "interrupted", "failed", "done")
FAILED_MARKER = "sweep_failed.json"
LOCK_MARKER = "sweep_running.json"
TRAIN_LOG = "sweep_train.log"

CURVE_COLUMNS = ("run", "step", "n_params", "n_params_non_embedding", "n_tokens", "flops", "loss", "budget")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the process name (state first), or None (no /proc, no process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, Linux /proc), or None where that cannot be read:
    with the pid it names one process, not whichever process is later given the same pid."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None  # field 22 of the whole line
    except (ValueError, IndexError):
        return None


def driver_marker() -> dict:
    """What `sweep_running.json` says of the process running a sweep's run (the executor: a driver, a Ray task)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": process_start(os.getpid())}


def driver_alive(marker: dict) -> bool:
    """Whether the process a `sweep_running.json` names still runs. Another host's cannot be checked from
    here: trusted. A pid given since to another process (its start time differs) is not the driver."""
    if marker.get("host") != socket.gethostname():
        return True
    try:
        pid = int(marker.get("pid", -1))
    except (TypeError, ValueError):
        return False
    if pid <= 0 or not _pid_alive(pid):
        return False
    fields = _proc_stat(pid)
    if fields and fields[0] == "Z":  # killed, not yet reaped by its parent
        return False
    started = marker.get("pid_start")
    return started is None or process_start(pid) in (None, started)


def trainer_holding(run_dir: Path) -> dict | None:
    """The trainer ({"pid", "host"}) holding the run directory's lock, or None: the run's own answer to
    "is it running", which no dead executor's pid file can fake (chinchax.train.runlock)."""
    return probe(run_dir)


class SweepDir:
    def __init__(self, root: str | Path):
        self.root = run_path(root) if is_remote(root) else Path(root)  # gs://: an etils.epath path

    # --- layout ---
    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def config_path(self, run_id: str) -> Path:
        return self.root / "configs" / f"{run_id}.yaml"

    # --- plan ---
    def write_plan(self, plan: Plan) -> None:
        existing = self.load_plan() if self.plan_path.exists() else None
        if existing is not None and existing.name != plan.name:
            raise UserError(
                f"{self.root} already holds sweep {existing.name!r}; pick another --out for sweep {plan.name!r}"
            )
        write_atomic(self.plan_path, jsonio.dumps(plan.to_json(), indent=1) + "\n")
        write_atomic(self.root / "plan.csv", csv_text([r.row() for r in plan.runs], list(plan.runs[0].row()) if plan.runs else []))

    def load_plan(self) -> Plan:
        data = read_object_or_none(self.plan_path)
        if data is None:
            raise UserError(f"{self.plan_path} is missing or unreadable; run `chinchax sweep plan` first")
        return Plan.from_json(data)

    # --- state of one run ---
    def state(self, run_id: str) -> str:
        d = self.run_dir(run_id)
        if not d.exists():
            return "planned"
        run_json = run_json_or_none(d)
        if run_json is not None and run_json.get("status") == "done":
            return "done"
        if trainer_holding(d) is not None:
            return "running"  # a trainer holds the run dir's lock, whoever started it (even a dead driver)
        if self.driver(run_id) is not None:
            return "running"  # the executor is alive between attempts (its trainer not started yet), or elsewhere
        if (d / FAILED_MARKER).exists():
            return "failed"
        return "interrupted" if any(p.name not in (TRAIN_LOG,) for p in d.iterdir()) else "planned"

    def driver(self, run_id: str) -> dict | None:
        """The `sweep_running.json` of the run if the executor it names lives (or runs on another host)."""
        marker = read_object_or_none(self.run_dir(run_id) / LOCK_MARKER)
        return marker if marker is not None and driver_alive(marker) else None

    def failure(self, run_id: str) -> dict | None:
        return read_object_or_none(self.run_dir(run_id) / FAILED_MARKER)

    def states(self, plan: Plan) -> dict[str, str]:
        return {r.run_id: self.state(r.run_id) for r in plan.runs}

    def status_table(self, plan: Plan) -> str:
        states = self.states(plan)
        counts = Counter(states.values())
        lines = [f"sweep {plan.name!r} in {self.root}: {len(plan.runs)} runs"]
        lines.append("  ".join(f"{s} {counts.get(s, 0)}" for s in STATES))
        for r in plan.runs:
            line = f"  {states[r.run_id]:<11} {r.run_id}"
            if states[r.run_id] == "failed":
                failure = self.failure(r.run_id) or {}
                last = (failure.get("error") or "").strip().splitlines()[-1:] or ["?"]
                line += f"  ({failure.get('attempts', '?')} attempts) {last[0][:120]}"
            lines.append(line)
        return "\n".join(lines)


# --- collecting results --------------------------------------------------------------------------


def result_row(run: PlannedRun, run_json: dict, convention: str) -> dict:
    """One results.csv row from a finished run's run.json (chinchax.scaling.run_rows, shared with `fit`)."""
    return run_row(run_json, convention=convention, planned=dataclasses.asdict(run))


def curve_rows(run: PlannedRun, run_dir: Path, convention: str) -> Iterable[dict]:
    """Per-step training loss of one run from its metrics.jsonl (skips eval-only rows)."""
    key = flops_key(convention)
    for m in read_jsonl(run_dir / "metrics.jsonl"):
        if m.get("loss") is None or m.get("step") is None or m.get("tokens") is None or m.get(key) is None:
            continue
        yield {
            "run": run.run_id, "step": int(m["step"]), "n_params": run.n_params,
            "n_params_non_embedding": run.n_params_non_embedding, "n_tokens": int(m["tokens"]),
            "flops": float(m[key]), "loss": float(m["loss"]), "budget": run.budget,
        }


def collect(sweep: SweepDir, plan: Plan | None = None) -> tuple[list[dict], list[dict]]:
    """Read every finished run: results rows and per-step curve rows; writes results.csv and curves.csv."""
    plan = plan or sweep.load_plan()
    rows, curves = [], []
    for run in plan.runs:
        run_json = run_json_or_none(sweep.run_dir(run.run_id))
        if run_json is None or run_json.get("status") != "done":
            continue
        row = result_row(run, run_json, plan.n_convention)
        row.update(flat_metrics(read_results(sweep.run_dir(run.run_id))))  # `chinchax eval` results, if any
        rows.append(row)
        last: dict[int, dict] = {}
        for c in curve_rows(run, sweep.run_dir(run.run_id), plan.n_convention):
            last[c["step"]] = c  # a resumed run may log a step twice: keep the last
        curves.extend(last[s] for s in sorted(last))
    eval_columns = sorted({k for row in rows for k in row if k.startswith("eval/")})
    write_atomic(sweep.root / "results.csv", csv_text(rows, [*RESULT_COLUMNS, *EXTRA_COLUMNS, *eval_columns]))
    write_atomic(sweep.root / "curves.csv", csv_text(curves, list(CURVE_COLUMNS)))
    return rows, curves


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()
