"""A trained model from a run directory: its resolved config.yaml and newest verified checkpoint.

Uses the trainer's own pieces (chinchax.train.state / checkpoint), so a run restores exactly as the
trainer would resume it (manifest-verified, falling back past damaged steps), onto this host's devices.
"""

from __future__ import annotations

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
    from chinchax.train.checkpoint import Checkpointer
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
    checkpointer = Checkpointer(run_dir / "checkpoints", max_to_keep=cfg.trainer.max_to_keep, use_async=False)
    try:
        restored = checkpointer.restore_latest(abstract)
    finally:
        checkpointer.close()
    if restored is None:
        raise UserError(f"{run_dir}/checkpoints holds no verified checkpoint to evaluate")
    step, state, _ = restored
    model = parts.merge(state["params"])
    model.eval()
    return LoadedRun(run_dir, cfg, model, load_tokenizer(cfg.data.tokenizer), int(step))
