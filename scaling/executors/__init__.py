"""Run a planned sweep: locally (one or N at a time), as Ray tasks, or on Cloud TPU VMs via gcloud.

Every executor launches the same thing per run -- `chinchax train <sweep>/configs/<run>.yaml` whose
trainer.run_dir is `<sweep>/runs/<run>` -- and talks to the run only through that config and its run.json.
That makes every executor idempotent in the same way (see `run_with_retries`):
- a run whose run.json says "done" is skipped;
- an interrupted run is simply launched again: the trainer resumes from its checkpoints in the same dir;
- a trainer stopped by a signal (exit code 75: it saved a checkpoint first, train/preemption.py) is not a
  failure and is not retried at once: its run stays interrupted, and the next `sweep run` resumes it;
- a failing run is retried up to `max_retries` times (not a full disk, exit code 74: a retry would meet
  the same disk); if it still fails, a failure marker with its exit code and the tail of its log is
  written, and the sweep goes on with the next run;
- a trainer does not outlive the process that launched it (Linux: the kernel sends it SIGTERM when that
  process dies, however it dies, so it saves and stops as on any SIGTERM); a trainer that outlived a dead
  driver anyway (started by hand, or by a driver before this) is waited for, and its run then resumed,
  by the next `sweep run`: only a live driver makes a `sweep run` refuse.
The train command is a parameter so tests can inject a fake trainer.

One module per executor (local.py: subprocesses or long-lived workers; ray_tasks.py; cloud_tpu.py), the
pieces they share in common.py (one run with retries, what is left to launch, outcomes) and the WSD branch
seeding in branches.py. Every name is importable from `chinchax.scaling.executors` as before.
"""

from chinchax.errors import UserError
from chinchax.scaling.executors.branches import (
    BRANCH_MARKER,
    CHECKPOINT_MANIFEST,
    CHECKPOINTS,
    ORBAX_COMMITTED,
    seed_branch,
)
from chinchax.scaling.executors.cloud_tpu import (
    node_name,
    run_tpu,
    tpu_create_commands,
    tpu_delete_command,
    tpu_run_commands,
    tpu_seed_branch_commands,
    tpu_ssh,
    tpu_wait_command,
)
from chinchax.scaling.executors.common import (
    DEFAULT_TRAIN_COMMAND,
    EXECUTORS,
    Outcome,
    exit_description,
    plan_work,
    run_with_retries,
    runs_to_launch,
    signal_name,
    stop_with_parent,
    write_run_config,
)
from chinchax.scaling.executors.local import launch_order, run_local
from chinchax.scaling.executors.ray_tasks import LOOPBACK, ray_on_loopback, run_ray

__all__ = [
    "BRANCH_MARKER", "CHECKPOINTS", "CHECKPOINT_MANIFEST", "DEFAULT_TRAIN_COMMAND", "EXECUTORS", "LOOPBACK",
    "ORBAX_COMMITTED", "Outcome", "UserError", "exit_description", "launch_order", "node_name", "plan_work",
    "ray_on_loopback", "run_local", "run_ray", "run_tpu", "run_with_retries", "runs_to_launch", "seed_branch",
    "signal_name", "stop_with_parent", "tpu_create_commands", "tpu_delete_command", "tpu_run_commands",
    "tpu_seed_branch_commands", "tpu_ssh", "tpu_wait_command", "write_run_config",
]
