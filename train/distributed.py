"""Multi-host start-up: `jax.distributed.initialize` when a run spans several processes.

- TPU pods / Cloud TPU VMs and SLURM/Open MPI clusters: jax finds the coordinator itself; set
  CHINCHAX_DISTRIBUTED=1 (or give trainer.num_processes) and we call `jax.distributed.initialize()`.
  On a Cloud TPU VM (found by jax's own check: a Google TPU on the PCI bus, no network involved) that is
  the default; CHINCHAX_DISTRIBUTED=0 turns it off, and so does TPU_PROCESS_BOUNDS (the host's chips split
  between processes by hand). The tpu sweep executor sets CHINCHAX_DISTRIBUTED=1 in its train command.
- elsewhere: trainer.coordinator_address / num_processes / process_id, or the env vars
  CHINCHAX_COORDINATOR, CHINCHAX_NUM_PROCESSES, CHINCHAX_PROCESS_ID (one process per host).
- CPU: trainer.local_device_count fakes that many devices per process (tests and local dry runs).
Must run before anything touches a jax backend.
"""

from __future__ import annotations

import os

from chinchax.errors import UserError
from chinchax.train.config import TrainerConfig


def maybe_initialize(cfg: TrainerConfig) -> None:
    import jax

    if cfg.local_device_count:
        jax.config.update("jax_num_cpu_devices", cfg.local_device_count)
    address = cfg.coordinator_address or os.environ.get("CHINCHAX_COORDINATOR")
    count = cfg.num_processes or _int_env("CHINCHAX_NUM_PROCESSES")
    pid = cfg.process_id if cfg.process_id is not None else _int_env("CHINCHAX_PROCESS_ID")
    auto = os.environ.get("CHINCHAX_DISTRIBUTED") == "1" or (
        os.environ.get("CHINCHAX_DISTRIBUTED") is None and on_cloud_tpu_vm() and not os.environ.get("TPU_PROCESS_BOUNDS")
    )
    if not (address or (count and count > 1) or auto):
        return
    if jax.distributed.is_initialized():
        return
    if address and (count is None or pid is None):
        raise UserError(
            "trainer.coordinator_address is set but trainer.num_processes / trainer.process_id are not; give "
            "all three (or CHINCHAX_COORDINATOR, CHINCHAX_NUM_PROCESSES, CHINCHAX_PROCESS_ID)"
        )
    if address:
        jax.distributed.initialize(address, num_processes=count, process_id=pid)
    else:  # TPU / SLURM / MPI: the cluster tells jax where the coordinator is
        jax.distributed.initialize()


def on_cloud_tpu_vm() -> bool:
    """Google TPU chips on this host's PCI bus: the scan jax's cloud_tpu_init does (reading /sys only), called
    here because jax sets its own flag only once the TPU backend starts, after the point where we must decide.
    A private jax name, guarded: if it moves, set CHINCHAX_DISTRIBUTED=1 by hand."""
    try:
        from jax._src.hardware_utils import num_available_tpu_chips_and_device_id

        return num_available_tpu_chips_and_device_id()[0] > 0
    except Exception:
        return False


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} must be an integer") from None
