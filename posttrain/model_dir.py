"""A model directory in the layout of `chinchax model convert` (model.yaml + params/ + conversion.json):
what fine-tuning exports (adapters merged) and post-training quantization writes, so that `chinchax eval`
and `generate` load them like any converted checkpoint (evaluation.run_loading). conversion.json records
the tokenizer spec and where the weights came from."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

from chinchax import jsonio, rundir


def write_model_dir(out_dir: str | Path, model_cfg, flat: dict, *, tokenizer: str | None, info: dict) -> Path:
    """Written to a temporary sibling and renamed into place: a crash leaves no half directory."""
    import orbax.checkpoint as ocp
    import yaml

    from chinchax.model.convert.hf import unflatten

    out_dir = Path(out_dir).absolute()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / rundir.MODEL_YAML).write_text(yaml.safe_dump(dataclasses.asdict(model_cfg), sort_keys=False))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / rundir.PARAMS, unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()}))
    checkpointer.wait_until_finished()
    record = {**info, "tokenizer": tokenizer, "n_params": int(sum(np.size(v) for v in flat.values()))}
    jsonio.write_json(tmp / rundir.CONVERSION_JSON, record)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def absolute_tokenizer(spec: str | None, base_dir: Path) -> str | None:
    """A tokenizer spec that still resolves from another directory (spm paths made absolute)."""
    if spec is None or not spec.startswith(("spm:", "hf:")):
        return spec
    prefix, path = spec.split(":", 1)
    path = Path(path)
    if not path.is_absolute() and (base_dir / path).exists():
        path = base_dir / path
    return f"{prefix}:{path.absolute()}"
