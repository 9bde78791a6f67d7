"""A trained model from any run directory chinchax writes (chinchax.rundir names the kinds), read-only.

- `load_run`: the model (eval mode) with its tokenizer and config, for anything that runs it.
- `load_weights`: the parameters only, as float32 numpy, with the tokenizer spec they were trained with (None
  for a converted checkpoint that recorded none): the base of a fine-tune or a quantization.

Where the weights come from, by kind:
- trained (config.yaml + checkpoints/): the newest verified checkpoint, restored by the trainer's own
  Checkpointer opened read-only (unverified or damaged steps are announced and skipped, never moved aside:
  a run may still be training and about to write that step's manifest), onto this host's devices.
- converted, quantized, and a fine-tune's merged/ (a model dir: model.yaml + params/ + conversion.json):
  its parameters, with the tokenizer recorded there (a SentencePiece `tokenizer.model` copied from the HF
  directory, or `--tokenizer`). Its `config` is an ExperimentConfig holding the model config and that
  tokenizer, so callers read `run.config.model` / `run.config.data.tokenizer` the same way for every kind;
  `step` is 0.
- prompt-tuned, when the caller asks for it (`soft_prompt=True`): the base of its model dir with the soft
  prompt in front (model.soft_prompt.SoftPrompted).
A reward model is a score head, not a language model: posttrain/reward.load_reward loads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chinchax import rundir
from chinchax.errors import UserError


@dataclass
class LoadedRun:
    run_dir: Path
    config: Any  # chinchax.train.config.ExperimentConfig
    model: Any  # chinchax.model.Transformer with the trained parameters (eval mode), or a SoftPrompted one
    tokenizer: Any
    step: int
    kind: str = rundir.TRAINED  # a chinchax.rundir kind


@dataclass
class RunWeights:
    model: Any  # ModelConfig
    flat: dict  # dotted path -> float32 numpy
    tokenizer: str | None  # the data.tokenizer it was trained with (None: a converted checkpoint without one)
    source: str


def load_run(run_dir: str | Path, *, tokenizer: str | None = None, soft_prompt: bool = False) -> LoadedRun:
    """`tokenizer` (a load_tokenizer spec) overrides the run's own; a converted checkpoint without a recorded
    tokenizer needs it. `soft_prompt`: a prompt-tuned run loads with its prompt (refused otherwise: the
    KV-cache decoding and scorers of `chinchax eval` have no input for it)."""
    accept = (*rundir.LANGUAGE_MODELS, rundir.PROMPT_TUNED) if soft_prompt else rundir.LANGUAGE_MODELS
    run = rundir.recognise(run_dir, accept=accept)
    if run.model_dir is None:
        from chinchax.data.tokenizers import load_tokenizer

        cfg, model, step = _restore_trained(run.path, tokenizer)
        return LoadedRun(run.path, cfg, model, load_tokenizer(cfg.data.tokenizer), step)
    loaded = _load_model_dir(run.model_dir, tokenizer)
    if run.kind == rundir.PROMPT_TUNED:
        from chinchax.model.soft_prompt import SoftPrompted

        loaded.model = SoftPrompted(loaded.model, np.load(run.model_dir / rundir.SOFT_PROMPT))
    return dataclasses.replace(loaded, run_dir=run.path, kind=run.kind)


def load_weights(run_dir: str | Path) -> RunWeights:
    """The float32 parameters of a trained, fine-tuned, converted or quantized model, and its tokenizer spec."""
    from chinchax.model.convert.hf import converted_tokenizer, flatten, load_converted

    run = rundir.recognise(run_dir, accept=rundir.LANGUAGE_MODELS)
    if run.model_dir is None:
        from flax import nnx

        cfg, model, _ = _restore_trained(run.path, None)
        model_cfg, tokenizer = cfg.model, cfg.data.tokenizer
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    else:
        model_cfg, params = load_converted(run.model_dir)
        tokenizer = converted_tokenizer(run.model_dir)
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    return RunWeights(model_cfg, flat, tokenizer, str(run.path))


def _restore_trained(run_dir: Path, tokenizer: str | None):
    """(config, model in eval mode, step) of a trained run's newest verified checkpoint."""
    from chinchax.sharding import make_mesh
    from chinchax.train import state as state_lib
    from chinchax.train.checkpoint import Checkpointer
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.optimizer import make_optimizer

    cfg = rundir.read_run_config(run_dir, ExperimentConfig)
    if tokenizer is not None:
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, tokenizer=tokenizer))
    mesh = make_mesh((-1, 1, 1))  # data parallel over this host's devices: parameters replicated
    seed = cfg.trainer.seed
    parts = state_lib.model_parts(cfg.model, mesh, seed)
    tx, _ = make_optimizer(cfg.optimizer, cfg.total_steps, parts.decay_mask, parts.update_scales)
    abstract, _ = state_lib.abstract_state(cfg.model, tx, parts, mesh, seed)
    checkpointer = Checkpointer((run_dir / rundir.CHECKPOINTS).absolute(), read_only=True)
    try:
        restored = checkpointer.restore_latest(abstract, with_data=False)
    finally:
        checkpointer.close()
    if restored is None:
        raise UserError(f"{run_dir}/{rundir.CHECKPOINTS} holds no verified checkpoint to evaluate (yet)")
    step, state, _ = restored
    model = parts.merge(state["params"])
    model.eval()
    return cfg, model, int(step)


def _load_model_dir(model_dir: Path, tokenizer: str | None) -> LoadedRun:
    from chinchax.data.config import DataConfig
    from chinchax.data.tokenizers import check_vocab_fits, load_tokenizer
    from chinchax.model.convert.hf import converted_tokenizer, load_converted, model_from_params
    from chinchax.train.config import ExperimentConfig

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
    return LoadedRun(model_dir, cfg, model, tok, 0, kind=rundir.CONVERTED)
