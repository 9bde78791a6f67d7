"""Run directories: the kinds chinchax writes, the files that tell them apart, and the records they hold.

A kind is known by its marker files, looked for in this order:

    fine-tuned     finetune.yaml (beside the trainer's files); its model is merged/, a model dir, written
                   when the fine-tune finishes (`chinchax finetune`)
    prompt-tuned   a fine-tune whose merged/ holds prompt_PD.npy, or a model dir holding it: the base model
                   and a soft prompt in front of its input (model/soft_prompt.py)
    trained        config.yaml + checkpoints/ (`chinchax train`; DPO's run dir and PPO's policy/ too)
    quantized      a model dir with quantization.json (`chinchax quantize`)
    converted      a model dir: model.yaml + params/ + conversion.json (`chinchax model convert`, merged/)
    reward         align_config.yaml of kind reward_model + checkpoints/ + run.json (`chinchax reward train`)

`recognise` names the kind and checks that every piece it needs is there: each missing piece is one
UserError naming the directory, what is missing and the fix. Loading the weights is evaluation/run_loading.py
(and posttrain/reward.py for the reward head); this module reads files only, stdlib at import, so the
fitting half of scaling/ and the trainer can use it.

Records: run.json, what a finished run measured, strict JSON (a non-finite number is null: jsonio), read
here (`read_run_json` when it must be there, `run_json_or_none` for "has it finished?") and written with
`jsonio.write_json`; config.yaml, the resolved config a run was started with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chinchax import jsonio
from chinchax.errors import UserError

CONFIG_YAML = "config.yaml"
RUN_JSON = "run.json"
CHECKPOINTS = "checkpoints"
FINETUNE_YAML = "finetune.yaml"
MERGED = "merged"
MODEL_YAML = "model.yaml"
PARAMS = "params"
CONVERSION_JSON = "conversion.json"
QUANTIZATION_JSON = "quantization.json"
SOFT_PROMPT = "prompt_PD.npy"
ALIGN_CONFIG = "align_config.yaml"

TRAINED, FINETUNED, PROMPT_TUNED, CONVERTED, QUANTIZED, REWARD = (
    "trained", "finetuned", "prompt_tuned", "converted", "quantized", "reward")
KINDS = (TRAINED, FINETUNED, PROMPT_TUNED, CONVERTED, QUANTIZED, REWARD)
LANGUAGE_MODELS = (TRAINED, FINETUNED, CONVERTED, QUANTIZED)  # a plain Transformer's weights

_CONVERT = "convert it again with `chinchax model convert HF_DIR OUT_DIR`"


@dataclass(frozen=True)
class RunDir:
    path: Path
    kind: str

    @property
    def model_dir(self) -> Path | None:
        """Where the weights are in a model dir's layout (model.yaml + params/); None for a checkpointed run."""
        if self.kind in (TRAINED, REWARD):
            return None
        return self.path / MERGED if (self.path / FINETUNE_YAML).is_file() else self.path


def kind_of(path) -> str | None:
    """The kind of run directory at `path`, by its marker files; None where it has none."""
    path = Path(path)
    if (path / FINETUNE_YAML).is_file():
        return PROMPT_TUNED if (path / MERGED / SOFT_PROMPT).is_file() else FINETUNED
    if (path / CONFIG_YAML).is_file():
        return TRAINED
    if (path / MODEL_YAML).is_file():
        if (path / SOFT_PROMPT).is_file():
            return PROMPT_TUNED
        return QUANTIZED if (path / QUANTIZATION_JSON).is_file() else CONVERTED
    if _alignment_kind(path) == "reward_model":
        return REWARD
    return None


def recognise(path, *, accept: tuple[str, ...] = KINDS) -> RunDir:
    """The run directory at `path`, of one of the kinds in `accept`, with every piece its kind needs."""
    path = Path(path)
    kind = kind_of(path)
    if kind is None:
        raise UserError(_not_a_run_dir(path))
    if kind not in accept:
        raise UserError(_refused(path, kind, accept))
    run = RunDir(path, kind)
    _check_pieces(run)
    return run


def _check_pieces(run: RunDir) -> None:
    path, model_dir = run.path, run.model_dir
    if run.kind in (TRAINED, REWARD) and not (path / CHECKPOINTS).is_dir():
        raise UserError(f"{path} has no {CHECKPOINTS}/ yet; wait for the first checkpoint or train longer")
    if run.kind == REWARD and not (path / RUN_JSON).is_file():
        raise UserError(f"{path} is a reward-model run that has not finished (no {RUN_JSON} yet); run the same "
                        "`chinchax reward train` command again (it resumes)")
    if model_dir is None:
        return
    if model_dir != path and not (model_dir / MODEL_YAML).is_file():
        raise UserError(f"{path} is a fine-tune that has not finished (no {MERGED}/ yet): resume it with the same "
                        "`chinchax finetune` command, then evaluate it")
    if not (model_dir / PARAMS).is_dir():
        raise UserError(f"{model_dir} has {MODEL_YAML} but no {PARAMS}/ (was it written to the end?); {_CONVERT}")
    conversion_record(model_dir)


def _not_a_run_dir(path: Path) -> str:
    if (path / "policy" / CONFIG_YAML).is_file():
        return f"{path} is a policy-optimisation run; its trained policy is the run directory {path / 'policy'}"
    return (f"{path} is neither a run directory (no {CONFIG_YAML}: train one with `chinchax train`) nor a converted "
            f"checkpoint (no {MODEL_YAML}: make one with `chinchax model convert HF_DIR OUT_DIR`)")


def _refused(path: Path, kind: str, accept: tuple[str, ...]) -> str:
    if accept == (REWARD,):
        return (f"{path} is a {kind.replace('_', '-')} model, not a reward model; pass a run dir written by "
                "`chinchax reward train`")
    if kind == PROMPT_TUNED:
        what = "run" if (path / FINETUNE_YAML).is_file() else "model"
        return (f"{path} is a prompt-tuned {what}: its soft prompt is not part of the model's weights, so it cannot "
                f"be loaded as a plain model; its {RUN_JSON} holds the losses measured with the prompt")
    if kind == REWARD:
        return (f"{path} is a reward model (a score head, not a language model); score preference pairs with "
                f"`chinchax reward eval {path} PAIRS.jsonl`")
    return f"{path} is a {kind.replace('_', '-')} model; this takes only {', '.join(accept)} ones"


def _alignment_kind(path: Path) -> str | None:
    """The `kind` an alignment run's align_config.yaml records (reward_model, dpo, ppo, rloo), or None."""
    if not (path / ALIGN_CONFIG).is_file():
        return None
    from chinchax.configlib import read_yaml

    kind = read_yaml(path / ALIGN_CONFIG).get("kind")
    return kind if isinstance(kind, str) else None


# --- records -----------------------------------------------------------------------------------------------


def conversion_record(model_dir) -> dict:
    """conversion.json of a model dir ({} when it has none), as one line when it is damaged (not UTF-8, cut
    short, not an object) rather than a traceback from inside the model package."""
    path = Path(model_dir) / CONVERSION_JSON
    if not path.is_file():
        return {}
    record = jsonio.read_object(path, what="conversion record", fix=_CONVERT)
    if not isinstance(record.get("tokenizer"), (str, type(None))):
        raise UserError(f"conversion record {path} is not a JSON object with a string 'tokenizer'; {_CONVERT}")
    return record


def read_run_json(run_dir, *, fix: str = "run the same command again with this run dir (it resumes)") -> dict:
    """run.json of a run that must have finished: a missing, damaged or non-object file is a UserError
    naming it and `fix`. Old runs' "nan" strings read as null."""
    path = _path(run_dir) / RUN_JSON
    if not path.is_file():
        raise UserError(f"{_path(run_dir)} has no {RUN_JSON}: the run has not finished; {fix}")
    return jsonio.nonfinite_as_null(jsonio.read_object(path, what="run record", fix=fix))


def run_json_or_none(run_dir) -> dict | None:
    """run.json, or None when the run has not written one or it cannot be read: for "is it finished?"
    checks, where a damaged run.json means "not finished" (running the run again rewrites it)."""
    record = jsonio.read_object_or_none(_path(run_dir) / RUN_JSON)
    return None if record is None else jsonio.nonfinite_as_null(record)


def read_run_config(run_dir, cls):
    """The config a run was started with (config.yaml), typed as `cls` (an ExperimentConfig), checked."""
    from chinchax.configlib import load_config

    return load_config(cls, Path(run_dir) / CONFIG_YAML)


def write_run_config(run_dir, cfg) -> None:
    from chinchax.configlib import dump_yaml
    from chinchax.fileio import write_text_atomic

    write_text_atomic(Path(run_dir) / CONFIG_YAML, dump_yaml(cfg))


def _path(run_dir):
    """A local path as a Path; a gs:// run dir stays the etils path a sweep gives (it reads the same way)."""
    return run_dir if hasattr(run_dir, "read_text") else Path(run_dir)
