"""YAML files + dotted CLI overrides -> frozen, validated dataclasses (OmegaConf does the merging).

    cfg = load_config(ExperimentConfig, "experiments/demo.yaml", ["model.d_model=512"])
    model_cfg = load_model_config("gpt2", ["n_layers=6"])

A model section may name a preset (`model: gpt2`, or `model: {preset: gpt2, n_layers: 6}`, or the
override `model.preset=gpt2`): the preset's YAML from `model/presets/` is the base, other keys win.
Unknown keys, wrong types and invalid values raise `UserError` naming the key and what is valid.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chinchax.errors import UserError
from chinchax.model.config import ModelConfig

T = TypeVar("T")


def preset_names() -> list[str]:
    folder = resources.files("chinchax.model.presets")
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml(path) -> dict:
    """A YAML mapping from a local path, or from any path object with is_file/read_text (an etils.epath
    on gs://, as a run dir's config.yaml may be)."""
    path = path if hasattr(path, "read_text") else Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; pass a YAML file or a preset name")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def model_spec_to_dict(spec: str | Mapping | None) -> dict:
    """A preset name, a YAML path, or a mapping (maybe with `preset:`) -> a flat model mapping."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        spec = dict(spec)
        base = model_spec_to_dict(spec.pop("preset")) if "preset" in spec else {}
        return {**base, **spec}
    spec = str(spec)
    if spec.endswith((".yaml", ".yml")) or "/" in spec:
        data = read_yaml(spec)
        return model_spec_to_dict(data["model"] if "model" in data else data)
    names = preset_names()
    if spec not in names:
        raise UserError(f"unknown model preset {spec!r}; presets: {', '.join(names)} (or pass a YAML path)")
    text = resources.files("chinchax.model.presets").joinpath(f"{spec}.yaml").read_text()
    return model_spec_to_dict(yaml.safe_load(text) or {})


def load_config(cls: type[T], path: str | Path | Mapping | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls` (a dataclass with a `model: ModelConfig` field, or ModelConfig itself)."""
    raw = dict(path) if isinstance(path, Mapping) else (read_yaml(path) if path else {})
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. model.d_model=512)")
    preset_key = "preset" if cls is ModelConfig else "model.preset"
    presets = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == preset_key]
    overrides = [o for o in overrides if o.split("=", 1)[0] != preset_key]
    if cls is ModelConfig:
        raw = model_spec_to_dict({"preset": presets[-1], **raw} if presets else raw)
    elif "model" in raw or presets:
        model = raw.get("model") or {}
        model = {"preset": model} if isinstance(model, str) else dict(model)
        if presets:
            model["preset"] = presets[-1]
        raw = {**raw, "model": model_spec_to_dict(model)}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), raw, OmegaConf.from_dotlist(overrides))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(_explain(e, cls)) from None
    _validate_tree(obj)
    return obj


def load_model_config(spec: str | Mapping, overrides: Sequence[str] = ()) -> ModelConfig:
    """`spec` is a preset name, a YAML path or a mapping; overrides may drop the `model.` prefix."""
    overrides = [o[len("model.") :] if o.startswith("model.") else o for o in overrides]
    return load_config(ModelConfig, model_spec_to_dict(spec), overrides)


def to_dict(obj: Any) -> dict:
    """A (nested) config dataclass as plain data, e.g. for resolved-config YAML or run.json."""
    return dataclasses.asdict(obj)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def _validate_tree(obj: Any) -> None:
    if dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            _validate_tree(getattr(obj, field.name))
        if hasattr(obj, "validate"):
            obj.validate()


def _explain(error: OmegaConfBaseException, cls: type) -> str:
    message = str(error).splitlines()[0]
    key = getattr(error, "full_key", None) or ""
    node_cls: Any = cls
    for part in key.split(".")[:-1]:  # walk down to the dataclass that holds the bad key
        node_cls = typing.get_type_hints(node_cls).get(part) if dataclasses.is_dataclass(node_cls) else None
    if dataclasses.is_dataclass(node_cls):
        valid = ", ".join(f.name for f in dataclasses.fields(node_cls))
        return f"{message} (key {key!r}); valid keys here: {valid}"
    return f"{message} (key {key!r})"
