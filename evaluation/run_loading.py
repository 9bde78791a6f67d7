"""A trained model from a run directory: its resolved config.yaml and newest verified checkpoint.

Uses the trainer's own pieces (chinchax.train.state / checkpoint): the newest step that matches its manifest
is restored (unverified or damaged steps are announced and skipped, as the trainer's resume does), onto this
host's devices. Unlike the trainer's resume, evaluation is strictly read-only: it never moves a damaged step
aside (a run may still be training and about to write that step's manifest).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chinchax.errors import UserError


@dataclass
class LoadedRun:
    run_dir: Path
    config: Any  # chinchax.train.config.ExperimentConfig
    model: Any  # chinchax.model.Transformer with the trained parameters (eval mode)
    tokenizer: Any
    step: int


def load_run(run_dir: str | Path) -> LoadedRun:
    from chinchax.configlib import load_config
    from chinchax.data.tokenizers import load_tokenizer
    from chinchax.sharding import make_mesh
    from chinchax.train import state as state_lib
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.optimizer import make_optimizer

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir} is not a run directory: {config_path} is missing (train one with `chinchax train`)")
    cfg = load_config(ExperimentConfig, config_path)
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir} has no checkpoints/ yet; wait for the first checkpoint or train longer")
    mesh = make_mesh((-1, 1, 1))  # data parallel over this host's devices: parameters replicated
    seed = cfg.trainer.seed
    parts = state_lib.model_parts(cfg.model, mesh, seed)
    tx, _ = make_optimizer(cfg.optimizer, cfg.total_steps, parts.decay_mask)
    abstract, _ = state_lib.abstract_state(cfg.model, tx, parts, mesh, seed)
    restored = _restore_newest_verified(run_dir / "checkpoints", abstract)
    if restored is None:
        raise UserError(f"{run_dir}/checkpoints holds no verified checkpoint to evaluate (yet)")
    step, state, _ = restored
    model = parts.merge(state["params"])
    model.eval()
    return LoadedRun(run_dir, cfg, model, load_tokenizer(cfg.data.tokenizer), int(step))


def _restore_newest_verified(directory: Path, abstract_state):
    import orbax.checkpoint as ocp

    from chinchax.train.checkpoint import IteratorStateHandler, IteratorStateRestore, verify

    manager = ocp.CheckpointManager(
        directory.absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_names=("state", "data"),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": IteratorStateHandler()},
    )
    try:
        for step in sorted(manager.all_steps(), reverse=True):
            problem = verify(directory / str(step))
            if problem is None:
                try:
                    restored = manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract_state), data=IteratorStateRestore()
                        ),
                    )
                    return step, restored["state"], restored["data"]
                except Exception as e:  # noqa: BLE001 - a manifest-consistent step orbax still cannot read
                    problem = f"orbax could not restore it: {type(e).__name__}: {e}"
            print(f"[chinchax eval] skipping checkpoint step {step} of {directory}: {problem}", file=sys.stderr)
    finally:
        manager.close()
    return None
