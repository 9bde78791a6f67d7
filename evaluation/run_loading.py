"""A trained model from a directory: a `chinchax train` run, a `chinchax model convert` output or a
`chinchax finetune` run (the model it exported, merged/), one API.

- A run directory (config.yaml + checkpoints/): its newest verified checkpoint, restored by the trainer's own
  Checkpointer opened read-only (unverified or damaged steps are announced and skipped, never moved aside:
  a run may still be training and about to write that step's manifest), onto this host's devices.
- A converted Hugging Face checkpoint (model.yaml + params/ + conversion.json): its parameters, with the
  tokenizer recorded at conversion (a SentencePiece `tokenizer.model` copied from the HF directory, or
  `--tokenizer`). Its `config` is an ExperimentConfig holding the model config and that tokenizer, so
  callers read `run.config.model` / `run.config.data.tokenizer` the same way for both kinds; `step` is 0.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chinchax.configlib import load_config
from chinchax.data.config import DataConfig
from chinchax.data.tokenizers import check_vocab_fits, load_tokenizer
from chinchax.errors import UserError
from chinchax.model.convert.hf import converted_tokenizer, load_converted, model_from_params
from chinchax.sharding import make_mesh
from chinchax.train import state as state_lib
from chinchax.train.checkpoint import Checkpointer
from chinchax.train.config import ExperimentConfig
from chinchax.train.optimizer import make_optimizer


@dataclass
class LoadedRun:
    run_dir: Path
    config: Any  # chinchax.train.config.ExperimentConfig
    model: Any  # chinchax.model.Transformer with the trained parameters (eval mode)
    tokenizer: Any
    step: int
    kind: str = "run"  # "run" (chinchax train), "converted" (chinchax model convert) or "finetuned" (merged/)


def load_run(run_dir: str | Path, *, tokenizer: str | None = None) -> LoadedRun:
    """`tokenizer` (a load_tokenizer spec) overrides the run's own; a converted checkpoint without a recorded
    tokenizer needs it."""
    run_dir = Path(run_dir)
    if (run_dir / "finetune.yaml").is_file():
        return _load_finetuned(run_dir, tokenizer)
    if (run_dir / "config.yaml").is_file():
        return _load_train_run(run_dir, tokenizer)
    if (run_dir / "model.yaml").is_file():
        return _load_converted(run_dir, tokenizer)
    raise UserError(
        f"{run_dir} is neither a run directory (no config.yaml: train one with `chinchax train`) nor a converted "
        "checkpoint (no model.yaml: make one with `chinchax model convert HF_DIR OUT_DIR`)"
    )


def _load_finetuned(run_dir: Path, tokenizer: str | None) -> LoadedRun:
    """A `chinchax finetune` run: its checkpoints hold trainable and frozen parts, not a model, so the model is
    the one it exported when it finished (merged/: adapters merged, NF4 dequantized)."""
    merged = run_dir / "merged"
    if (merged / "prompt_PD.npy").is_file():
        raise UserError(
            f"{run_dir} is a prompt-tuned run: its soft prompt is not part of the model's weights, so it cannot "
            "be loaded as a plain model; its run.json holds the losses measured with the prompt"
        )
    if not (merged / "model.yaml").is_file():
        raise UserError(
            f"{run_dir} is a fine-tune that has not finished (no {merged.name}/ yet): resume it with the same "
            "`chinchax finetune` command, then evaluate it"
        )
    return dataclasses.replace(_load_converted(merged, tokenizer), run_dir=run_dir, kind="finetuned")


def _load_train_run(run_dir: Path, tokenizer: str | None) -> LoadedRun:
    cfg = load_config(ExperimentConfig, run_dir / "config.yaml")
    if tokenizer is not None:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, tokenizer=tokenizer))
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"{run_dir} has no checkpoints/ yet; wait for the first checkpoint or train longer")
    mesh = make_mesh((-1, 1, 1))  # data parallel over this host's devices: parameters replicated
    seed = cfg.trainer.seed
    parts = state_lib.model_parts(cfg.model, mesh, seed)
    tx, _ = make_optimizer(cfg.optimizer, cfg.total_steps, parts.decay_mask, parts.update_scales)
    abstract, _ = state_lib.abstract_state(cfg.model, tx, parts, mesh, seed)
    checkpointer = Checkpointer((run_dir / "checkpoints").absolute(), read_only=True)
    try:
        restored = checkpointer.restore_latest(abstract, with_data=False)
    finally:
        checkpointer.close()
    if restored is None:
        raise UserError(f"{run_dir}/checkpoints holds no verified checkpoint to evaluate (yet)")
    step, state, _ = restored
    model = parts.merge(state["params"])
    model.eval()
    return LoadedRun(run_dir, cfg, model, load_tokenizer(cfg.data.tokenizer), int(step))


def check_conversion_record(model_dir: Path) -> None:
    """conversion.json, which converted_tokenizer reads, as one line when it is damaged (not UTF-8, cut short,
    not an object) rather than a traceback from inside the model package."""
    from chinchax.fileio import read_user_json

    path = model_dir / "conversion.json"
    if not path.is_file():
        return
    fix = "convert the checkpoint again with `chinchax model convert HF_DIR OUT_DIR`"
    record = read_user_json(path, what="conversion record", fix=fix)
    if not isinstance(record, dict) or not isinstance(record.get("tokenizer"), (str, type(None))):
        raise UserError(f"conversion record {path} is not a JSON object with a string 'tokenizer'; {fix}")


def _load_converted(model_dir: Path, tokenizer: str | None) -> LoadedRun:
    check_conversion_record(model_dir)
    spec = tokenizer or converted_tokenizer(model_dir)
    if spec is None:
        raise UserError(
            f"{model_dir} is a converted checkpoint with no tokenizer chinchax can read (its HF directory held no "
            "tokenizer.model or tokenizer.json); convert again with `chinchax model convert HF_DIR OUT_DIR --tokenizer "
            "SPEC` (spm:PATH or hf:PATH), or pass tokenizer=SPEC"
        )
    model_cfg, params = load_converted(model_dir)
    tok = load_tokenizer(spec)
    check_vocab_fits(tok, model_cfg.vocab_size)
    data = DataConfig(tokenizer=spec, seq_len=model_cfg.max_len).validate()
    cfg = ExperimentConfig(model=model_cfg, data=data).validate()
    model = model_from_params(model_cfg, params)
    model.eval()
    return LoadedRun(model_dir, cfg, model, tok, 0, kind="converted")
