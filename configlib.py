"""YAML files + dotted CLI overrides -> frozen, validated dataclasses (OmegaConf does the merging).

    cfg = load_config(ExperimentConfig, "experiments/demo.yaml", ["model.d_model=512"])

A section whose dataclass has an `expand_spec(spec) -> dict` hook may be given as a spec, and a
`<section>.preset=NAME` override sets its `preset` key: ModelConfig's hook reads its presets
(`model: gpt2`, `model: {preset: gpt2, n_layers: 6}`, `model.preset=gpt2`; see chinchax.model.presets).
configlib knows no model. Unknown keys, wrong types and invalid values raise `UserError` naming the key
and what is valid.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from chinchax.errors import UserError
from chinchax.fileio import read_user_text

T = TypeVar("T")


def read_yaml(path) -> dict:
    """A YAML mapping from a local path, or from any path object with is_file/read_text (an etils.epath
    on gs://, as a run dir's config.yaml may be)."""
    path = path if hasattr(path, "read_text") else Path(path)
    if not path.is_file():
        if path.is_dir():
            raise UserError(f"config file {path} is a folder; pass a YAML file or a preset name")
        raise UserError(f"config file {path} does not exist; pass a YAML file or a preset name")
    text = read_user_text(path, what="config file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise UserError(yaml_error(path, e)) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def yaml_error(path, error: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: file:line:column, what the parser expected, and the fix."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = " ".join(str(p) for p in (getattr(error, "context", None), getattr(error, "problem", None)) if p)
    what = what or str(error).splitlines()[0]
    cut = " (the file ends there: was it cut short?)" if "stream end" in what or "end of the stream" in what else ""
    return (f"{where} is not valid YAML: {what}{cut}; fix the YAML there (indentation, a missing ']' or '}}', "
            "a ':' without a space after it)")


def load_config(cls: type[T], path: str | Path | Mapping | None = None, overrides: Sequence[str] = ()) -> T:
    """Build `cls`, a (nested) config dataclass, from a YAML path or mapping and dotted overrides."""
    raw = dict(path) if isinstance(path, Mapping) else (read_yaml(path) if path else {})
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. model.d_model=512)")
    for section, section_cls in _spec_sections(cls).items():
        key = f"{section}.preset" if section else "preset"
        presets = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
        overrides = [o for o in overrides if o.split("=", 1)[0] != key]
        if not section:
            raw = section_cls.expand_spec({"preset": presets[-1], **raw} if presets else raw)
        elif section in raw or presets:
            spec = raw.get(section) or {}
            spec = {"preset": spec} if isinstance(spec, str) else dict(spec)
            if presets:
                spec["preset"] = presets[-1]
            raw = {**raw, section: section_cls.expand_spec(spec)}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), raw, OmegaConf.from_dotlist(overrides))
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(_explain(e, cls)) from None
    _validate_tree(obj)
    return obj


def _spec_sections(cls: type) -> dict[str, type]:
    """"" -> cls when cls itself has the `expand_spec` hook, and field name -> type for its fields that do."""
    sections = {"": cls} if hasattr(cls, "expand_spec") else {}
    if not dataclasses.is_dataclass(cls):
        return sections
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint) and hasattr(hint, "expand_spec"):
            sections[name] = hint
    return sections


def to_dict(obj: Any) -> dict:
    """A (nested) config dataclass as plain data, e.g. for resolved-config YAML or run.json."""
    return dataclasses.asdict(obj)


def from_dict(cls: type[T], data: Mapping) -> T:
    """`cls` rebuilt from the plain data `to_dict` gave (a plan.json's run configs), then validated: each
    dataclass filled field by field, defaults for missing keys, lists back into tuple fields. No YAML, presets
    or overrides: `load_config` reads those, through OmegaConf, at about 30 ms a config, which a plan of
    hundreds of runs would pay every time it is read."""
    obj = _from_dict(cls, data, "")
    _validate_tree(obj)
    return obj


def _from_dict(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise UserError(f"{where or cls.__name__} must be a mapping of keys to values, not {type(data).__name__}")
    hints, names = _fields(cls)
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"unknown key {where + unknown[0]!r}; valid keys here: {', '.join(names)}")
    values = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value, f"{where}{key}.")
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        values[key] = value
    return cls(**values)


@functools.cache
def _fields(cls: type) -> tuple[dict[str, Any], list[str]]:
    return typing.get_type_hints(cls), [f.name for f in dataclasses.fields(cls) if f.init]


def validated(obj: T) -> T:
    """`obj`, a (nested) config dataclass built in code, validated section by section as `load_config`
    validates what it builds."""
    _validate_tree(obj)
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def refuse_changed_config(run_dir, old: Mapping, new: Mapping, *, ignored=frozenset(), what: str = "a run",
                          fix: str = "use a new run directory") -> None:
    """Refuse to resume `run_dir` when its saved (flat) config differs from the new one in a key outside
    `ignored`: resuming would mix two experiments. The message lists the first changed keys."""
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in ignored)
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
        raise UserError(
            f"{run_dir} holds {what} with a different config ({diffs}); resuming would mix two experiments. "
            f"Restore the old values, or {fix}"
        )


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
