"""The Cloud TPU executor: slices created with gcloud, each run trained on every host of a slice with its run
dir on gs://, its run.json copied back, the slices deleted at the end."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.scaling.executors.branches import CHECKPOINTS
from chinchax.scaling.executors.common import Outcome, _in_plan_order, _now, plan_work, write_run_config
from chinchax.scaling.planned import Plan, PlannedRun
from chinchax.scaling.results import FAILED_MARKER, SweepDir, write_atomic
from chinchax.scaling.sweep_config import TpuSettings


def node_name(settings: TpuSettings, sweep_name: str, index: int) -> str:
    name = f"{settings.node_prefix}-{sweep_name}-{index}".lower().replace("_", "-")
    return "".join(c for c in name if c.isalnum() or c == "-")[:61]


def _where(settings: TpuSettings) -> list[str]:
    return [f"--zone={settings.zone}"] + ([f"--project={settings.project}"] if settings.project else [])


def tpu_create_commands(settings: TpuSettings, node: str, gcloud: str = "gcloud") -> list[list[str]]:
    spot = ["--spot"] if settings.spot else []
    if settings.queued:
        return [
            [gcloud, "compute", "tpus", "queued-resources", "create", node, f"--node-id={node}",
             f"--accelerator-type={settings.accelerator_type}", f"--runtime-version={settings.runtime_version}",
             *_where(settings), *spot],
        ]
    return [[gcloud, "compute", "tpus", "tpu-vm", "create", node, f"--accelerator-type={settings.accelerator_type}",
             f"--version={settings.runtime_version}", *_where(settings), *spot]]


def tpu_wait_command(settings: TpuSettings, node: str, gcloud: str = "gcloud") -> list[str]:
    """Prints the state (ACTIVE when the slice is up) -- polled until ACTIVE (queued resources only)."""
    return [gcloud, "compute", "tpus", "queued-resources", "describe", node, *_where(settings),
            "--format=value(state.state)"]


def tpu_ssh(settings: TpuSettings, node: str, command: str, gcloud: str = "gcloud") -> list[str]:
    """The same command on every host of the slice (`chinchax train` then joins them with
    jax.distributed.initialize(), which finds the coordinator by itself on Cloud TPU)."""
    return [gcloud, "compute", "tpus", "tpu-vm", "ssh", node, *_where(settings), "--worker=all",
            f"--command={command}"]


def tpu_run_commands(settings: TpuSettings, node: str, run: PlannedRun, config_path: Path, local_run_dir: Path,
                     gcloud: str = "gcloud") -> list[list[str]]:
    """Copy the run's config to every host, train on all hosts, fetch run.json + metrics back."""
    remote_cfg = f"chinchax_sweep/{run.run_id}.yaml"
    remote_dir = f"{settings.run_root.rstrip('/')}/{run.run_id}"
    return [
        [gcloud, "compute", "tpus", "tpu-vm", "ssh", node, *_where(settings), "--worker=all",
         "--command=mkdir -p chinchax_sweep"],
        [gcloud, "compute", "tpus", "tpu-vm", "scp", str(config_path), f"{node}:{remote_cfg}",
         *_where(settings), "--worker=all"],
        # CHINCHAX_DISTRIBUTED=1: every host joins one jax.distributed job (train/distributed.py)
        tpu_ssh(settings, node, f"CHINCHAX_DISTRIBUTED=1 chinchax train {remote_cfg}", gcloud),
        [gcloud, "storage", "cp", f"{remote_dir}/run.json", f"{remote_dir}/metrics.jsonl", f"{local_run_dir}/"],
    ]


def tpu_seed_branch_commands(settings: TpuSettings, run: PlannedRun, gcloud: str = "gcloud") -> list[list[str]]:
    """WSD branch on GCS, as `seed_branch` does locally: the trunk's checkpoint at the branch step and its
    metrics (the trainer drops the rows after the step it resumes from) go into the branch's run dir."""
    root = settings.run_root.rstrip("/")
    trunk, branch = f"{root}/{run.branch_of}", f"{root}/{run.run_id}"
    return [
        [gcloud, "storage", "cp", "--recursive", f"{trunk}/{CHECKPOINTS}/{run.branch_step}", f"{branch}/{CHECKPOINTS}/"],
        [gcloud, "storage", "cp", f"{trunk}/metrics.jsonl", f"{branch}/metrics.jsonl"],
    ]


def tpu_delete_command(settings: TpuSettings, node: str, gcloud: str = "gcloud") -> list[str]:
    if settings.queued:
        return [gcloud, "compute", "tpus", "queued-resources", "delete", node, *_where(settings), "--force",
                "--quiet"]
    return [gcloud, "compute", "tpus", "tpu-vm", "delete", node, *_where(settings), "--quiet"]


def run_tpu(
    plan: Plan,
    sweep: SweepDir,
    settings: TpuSettings,
    *,
    max_retries: int = 2,
    dry_run: bool = False,
    skip_failed: bool = False,
    gcloud: str = "gcloud",
    execute: Callable[[list[str]], subprocess.CompletedProcess] | None = None,
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Create the slice(s), install chinchax on every host, train each run on all hosts of a slice,
    copy its run.json back, delete the slices. `dry_run` prints every command and runs none."""
    if not settings.run_root.startswith("gs://") and not dry_run:
        raise UserError(
            f"tpu.run_root={settings.run_root!r} must be a gs:// folder: every host of a slice writes there, and "
            "it must outlive the slice (set tpu.run_root=gs://BUCKET/sweeps/NAME)"
        )
    outcomes, phases = plan_work(plan, sweep, skip_failed)
    n_todo = sum(len(p) for p in phases)
    if not n_todo:
        return _in_plan_order(plan, outcomes)
    tpu = _TpuSweep(plan, sweep, settings, max_retries, dry_run, gcloud, execute, echo)
    nodes = [node_name(settings, plan.name, i) for i in range(min(settings.nodes, n_todo))]
    try:
        tpu.create(nodes)
        for phase in phases:
            outcomes += tpu.run_phase(nodes, phase)
    finally:
        if settings.delete_after:
            for node in nodes:
                tpu.do(tpu_delete_command(tpu.settings, node, gcloud), check=False)
    if dry_run:
        return [Outcome(o.run_id, "planned" if o.status == "done" else o.status) for o in _in_plan_order(plan, outcomes)]
    return _in_plan_order(plan, outcomes)


class _TpuSweep:
    """The steps of `run_tpu`, sharing its settings: every gcloud command goes through `do`."""

    def __init__(self, plan, sweep, settings: TpuSettings, max_retries, dry_run, gcloud, execute, echo):
        self.sweep, self.max_retries, self.dry_run, self.gcloud, self.echo = sweep, max_retries, dry_run, gcloud, echo
        self.root = (settings.run_root or f"gs://YOUR_BUCKET/chinchax/{plan.name}").rstrip("/")
        self.settings = settings if settings.run_root else _with_root(settings, self.root)
        self.execute = execute or (lambda cmd: subprocess.run(cmd, capture_output=True, text=True))

    def do(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess | None:
        self.echo(shlex.join(cmd))
        if self.dry_run:
            return None
        result = self.execute(cmd)
        if check and result.returncode:
            raise RuntimeError(f"`{shlex.join(cmd)}` failed ({result.returncode}): {(result.stderr or '')[-2000:]}")
        return result

    def create(self, nodes: list[str]) -> None:
        """Every slice created, then each waited for (queued resources) and set up."""
        for node in nodes:
            for cmd in tpu_create_commands(self.settings, node, self.gcloud):
                self.do(cmd)
        for node in nodes:
            if self.settings.queued:
                while True:
                    result = self.do(tpu_wait_command(self.settings, node, self.gcloud))
                    if self.dry_run or (result.stdout or "").strip() == "ACTIVE":
                        break
                    time.sleep(self.settings.poll_seconds)
            self.do(tpu_ssh(self.settings, node, self.settings.setup_command, self.gcloud))

    def run_phase(self, nodes: list[str], phase: list[PlannedRun]) -> list[Outcome]:
        """Runs go to the slices round-robin; slices work in parallel, each runs its share in turn."""
        shares = {node: phase[i :: len(nodes)] for i, node in enumerate(nodes)}
        if self.dry_run:  # print in a readable order
            return [o for node, share in shares.items() for o in self.work(node, share)]
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return [o for future in [pool.submit(self.work, n, s) for n, s in shares.items()] for o in future.result()]

    def work(self, node: str, share: list[PlannedRun]) -> list[Outcome]:
        return [self.train(node, run) for run in share]

    def train(self, node: str, run: PlannedRun) -> Outcome:
        local_dir = self.sweep.run_dir(run.run_id)
        if not self.dry_run:
            local_dir.mkdir(parents=True, exist_ok=True)
        if run.branch_of:
            self.seed(run)
        config = write_run_config(self.sweep, run, run_dir=f"{self.root}/{run.run_id}")
        error = ""
        for attempt in range(1, self.max_retries + 2):
            try:
                for cmd in tpu_run_commands(self.settings, node, run, config, local_dir, self.gcloud):
                    self.do(cmd)
                return Outcome(run.run_id, "done", attempt)
            except RuntimeError as e:
                error = str(e)
        write_atomic(local_dir / FAILED_MARKER, jsonio.dumps(
            {"status": "failed", "attempts": self.max_retries + 1, "error": error, "at": _now()}))
        return Outcome(run.run_id, "failed", self.max_retries + 1, error)

    def seed(self, run: PlannedRun) -> None:
        """A branch starts from its trunk's checkpoint unless its own run dir has checkpoints already
        (seeded or trained before: re-seeding would replace its metrics with the trunk's)."""
        listing = self.do([self.gcloud, "storage", "ls", f"{self.root}/{run.run_id}/{CHECKPOINTS}/"], check=False)
        if listing is not None and listing.returncode == 0 and listing.stdout.strip():
            return
        for cmd in tpu_seed_branch_commands(self.settings, run, self.gcloud):
            result = self.do(cmd, check=False)
            if result is not None and result.returncode:
                self.echo(f"[sweep] {run.run_id}: no checkpoint of trunk {run.branch_of} at step {run.branch_step} "
                          "to start from; training the branch from scratch")
                return


def _with_root(settings: TpuSettings, root: str) -> TpuSettings:
    return dataclasses.replace(settings, run_root=root)
