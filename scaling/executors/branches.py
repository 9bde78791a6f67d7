"""WSD branches: a branch run starts from its trunk's checkpoint at the branch step, copied into its own run
dir before it is launched (locally or on gs://; the Cloud TPU executor copies with gcloud instead)."""

from __future__ import annotations

import math
import shutil
import sys

from chinchax import jsonio
from chinchax.fileio import files_under, is_remote, new_dir_atomic, remove_tree
from chinchax.jsonio import read_jsonl
from chinchax.scaling.planned import Plan, PlannedRun
from chinchax.scaling.results import SweepDir, write_atomic

# The trainer's checkpoint layout (chinchax.train.checkpoint): <run_dir>/checkpoints/<step>/ with a manifest
# written once the step is complete. Named here rather than imported, to keep jax/orbax out of the sweep.
CHECKPOINTS = "checkpoints"
CHECKPOINT_MANIFEST = "chinchax_manifest.json"
ORBAX_COMMITTED = "commit_success.txt"  # with it but no manifest, a resume trusts the step (orbax committed it)
BRANCH_MARKER = "sweep_branch.json"


def seed_branch(sweep: SweepDir, run: PlannedRun, plan: Plan) -> bool:
    """WSD branch: copy the trunk's checkpoint at `branch_step` (train state + data-iterator position) and its
    metrics up to there into the branch's run dir; `chinchax train` then resumes from it with the branch's
    own config. Returns False (the run trains from scratch: same result, more FLOPs) if the trunk has no
    such checkpoint, e.g. because it failed."""
    if not run.branch_of:
        return False
    d = sweep.run_dir(run.run_id)
    if is_remote(d):
        return _seed_branch_remote(sweep, run)
    if (d / CHECKPOINTS).is_dir() and any((d / CHECKPOINTS).iterdir()):
        return True  # seeded before (or already training): the trainer resumes from what is there
    trunk_dir = sweep.run_dir(run.branch_of)
    source = trunk_dir / CHECKPOINTS / str(run.branch_step)
    if not (source / CHECKPOINT_MANIFEST).is_file():
        print(f"[sweep] {run.run_id}: trunk {run.branch_of} has no finished checkpoint at step "
              f"{run.branch_step}; training the branch from scratch", file=sys.stderr)
        return False
    d.mkdir(parents=True, exist_ok=True)
    with new_dir_atomic(d / CHECKPOINTS) as tmp:  # all or nothing: a half-copied checkpoint is never seen
        shutil.copytree(source, tmp / str(run.branch_step))
        _copy_metrics_until(trunk_dir, d, run.branch_step)
    write_atomic(d / BRANCH_MARKER, jsonio.dumps({"trunk": run.branch_of, "step": run.branch_step}))
    return True


def _seed_branch_remote(sweep: SweepDir, run: PlannedRun) -> bool:
    """`seed_branch` for a sweep dir on gs://, which has no rename: the files are copied into
    checkpoints/<step>/ with orbax's commit marker and the manifest last, so the trainer never trusts a
    half-copied step (a copy cut short leaves a step with neither, which the trainer sets aside: the branch
    trains from scratch)."""
    d, trunk_dir = sweep.run_dir(run.run_id), sweep.run_dir(run.branch_of)
    if (d / CHECKPOINTS).exists() and any((d / CHECKPOINTS).iterdir()):
        return True
    source = trunk_dir / CHECKPOINTS / str(run.branch_step)
    if not (source / CHECKPOINT_MANIFEST).is_file():
        print(f"[sweep] {run.run_id}: trunk {run.branch_of} has no finished checkpoint at step "
              f"{run.branch_step}; training the branch from scratch", file=sys.stderr)
        return False
    _copy_metrics_until(trunk_dir, d, run.branch_step)
    target = d / CHECKPOINTS / str(run.branch_step)
    files = {str(f.relative_to(source)): f for f in files_under(source)}
    last = [name for name in (ORBAX_COMMITTED, CHECKPOINT_MANIFEST) if name in files]
    try:
        for name in [n for n in files if n not in last] + last:
            dst = target / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(files[name].read_bytes())
    except BaseException:
        remove_tree(d / CHECKPOINTS)
        raise
    write_atomic(d / BRANCH_MARKER, jsonio.dumps({"trunk": run.branch_of, "step": run.branch_step}))
    return True


def _copy_metrics_until(trunk_dir, branch_dir, step: int) -> None:
    """The trunk's metrics.jsonl rows up to `step` become the branch's (the trainer drops later rows on resume
    anyway; copying only these keeps a branch that never trains consistent)."""
    if (trunk_dir / "metrics.jsonl").is_file():
        kept = [row for row in read_jsonl(trunk_dir / "metrics.jsonl") if row.get("step", math.inf) <= step]
        write_atomic(branch_dir / "metrics.jsonl", "".join(jsonio.dumps(row) + "\n" for row in kept))
