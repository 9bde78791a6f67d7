"""Model presets: one YAML per published architecture (gpt2, llama2-7b, t5-base, ...) and their tiny
test-sized twins. A model spec is a preset name, a YAML path (a whole experiment YAML's `model:` section is
taken), or a mapping, maybe with `preset:` naming the base that its other keys override.

    model_spec_to_dict("gpt2")                          # the preset's keys
    model_spec_to_dict({"preset": "gpt2", "n_layers": 6})

`ModelConfig.expand_spec` is this function: chinchax.configlib calls it for any config section typed
ModelConfig, without knowing what a model is.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

import yaml

from chinchax.configlib import read_yaml
from chinchax.errors import UserError


def preset_names() -> list[str]:
    folder = resources.files(__name__)
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


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
    text = resources.files(__name__).joinpath(f"{spec}.yaml").read_text()
    return model_spec_to_dict(yaml.safe_load(text) or {})
