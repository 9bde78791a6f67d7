"""Convert between Hugging Face `transformers` checkpoints and chinchax (GPT-2, BERT, T5, LLaMA, BLOOM, BART).

    hf_cfg, state_dict = read_hf_checkpoint("path/to/hf_dir")         # config.json + safetensors / .bin
    cfg = config_from_hf(hf_cfg)                                       # a validated ModelConfig
    params, unused = params_from_hf(cfg, hf_cfg.model_type, state_dict)  # nnx pure dict (numpy float32)
    model = model_from_params(cfg, params)                             # a ready chinchax Transformer
    state_dict = params_to_hf(cfg, "gpt2", params)                    # and back (tied copies included)

`convert_hf_checkpoint(hf_dir, out_dir)` does it all and writes `out_dir/model.yaml` (the resolved
model config, loadable with `chinchax.configlib.load_config(ModelConfig, ...)`), `out_dir/params`
(an orbax checkpoint of the params pure dict, the layout of the trainer's `state["params"]`) and
`out_dir/conversion.json`. The per-family rules live in `hf_families.py`.
torch and transformers (the `dev` extra) are needed only to read HF files, not to use the results.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import yaml
from flax import nnx, traverse_util

from chinchax import jsonio
from chinchax.configlib import load_config
from chinchax.errors import UserError
from chinchax.fileio import new_dir_atomic, read_user_json
from chinchax.model.config import ModelConfig
from chinchax.model.convert import rules as rules_lib
from chinchax.model.convert.hf_families import FAMILIES, Family
from chinchax.model.counting import abstract_params
from chinchax.model.parametrization import multipliers
from chinchax.model.transformer import Transformer

TOKENIZER_FILE = "tokenizer.model"  # a SentencePiece model, as T5 and LLaMA HF directories hold it
HF_TOKENIZER_FILE = "tokenizer.json"  # a Hugging Face tokenizers file (GPT-2, BLOOM, LLaMA-3, ...)
HF_TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")  # name its eos/bos/pad (copied along)


def family(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise UserError(
            f"HF model_type {model_type!r} has no converter; supported: {', '.join(sorted(FAMILIES))}"
        )
    return FAMILIES[model_type]


def config_from_hf(hf_config, **changes) -> ModelConfig:
    """A validated `ModelConfig` from a `transformers` config object; `changes` override fields
    the checkpoint does not fix (e.g. `max_len` for T5 and BLOOM, dropout)."""
    cfg = family(hf_config.model_type).config(hf_config)
    name = Path(str(getattr(hf_config, "_name_or_path", "") or "")).name or f"hf-{hf_config.model_type}"
    return dataclasses.replace(cfg, name=name, **changes).validate()


# --- params -------------------------------------------------------------------------------------------


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Dotted parameter path -> shape, from the real (abstract) parameter tree."""
    return {
        ".".join(map(str, path)): tuple(v.get_value().shape) for path, v in _flat_state(abstract_params(cfg))
    }


def _flat_state(state):
    return nnx.to_flat_state(state)


def flatten(params: Mapping) -> dict[str, np.ndarray]:
    """{"a": {"b": x}} -> {"a.b": x} (nnx pure dicts have string keys; layers are stacked, not listed)."""
    return traverse_util.flatten_dict(dict(params), sep=".")


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep=".")


def _to_numpy(state_dict: Mapping) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # a torch tensor (bfloat16 has no numpy dtype: go through float32)
            import torch

            value = value.detach().to(torch.float32).cpu().numpy()
        out[key] = np.asarray(value)
    return out


def _with_base_prefix(fam: Family, state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Checkpoints of the bare base model (hub `gpt2`, `bigscience/bloom-560m`) lack the task model's
    prefix (`transformer.`): add it so one set of rules reads both."""
    prefix = fam.base_prefix
    if not prefix or any(k.startswith(prefix) for k in state_dict):
        return state_dict
    return {
        (k if k.startswith(("lm_head.", "cls.", "final_logits_bias")) else prefix + k): v
        for k, v in state_dict.items()
    }


def params_from_hf(
    cfg: ModelConfig, model_type: str, state_dict: Mapping, *, source: str = "state_dict", strict: bool = True
) -> tuple[dict, list[str]]:
    """(params, unused): the nnx pure dict of float32 numpy arrays, and the HF keys left unread.

    Keys that hold nothing of the converted model (GPT-2's causal-mask buffers, BERT's pooler) are
    unused but allowed; any other unused key means a wrong mapping, so `strict` raises on it."""
    fam = family(model_type)
    sd = _with_base_prefix(fam, _to_numpy(state_dict))
    flat, unused = rules_lib.hf_to_cx(fam.weights(cfg), sd, param_shapes(cfg), source)
    unexpected = [k for k in unused if not any(re.search(p, k) for p in fam.ignore)]
    if strict and unexpected:
        raise UserError(
            f"{source}: weights {unexpected[:5]} (of {len(unexpected)}) have no place in the chinchax model"
        )
    return unflatten(flat), unused


def params_to_hf(cfg: ModelConfig, model_type: str, params: Mapping) -> dict[str, np.ndarray]:
    """An HF state_dict (float32 numpy) with every key the HF task model's `state_dict()` has.
    A µP model away from its base shapes is refused: Hugging Face's families have no output, attention or
    residual-branch multipliers (at the base shapes every multiplier is 1 and the weights map as SP's)."""
    m = multipliers(cfg)
    if cfg.parametrization == "mup" and m != multipliers(cfg.replace(parametrization="sp", **_NO_MUP)):
        raise UserError(
            f"{model_type}: this model is µP (model.parametrization=mup) away from its base shapes; its output "
            f"multiplier {m.logits:.4g}, residual-branch multiplier {m.branch:.4g} and attention scale "
            f"{m.attention_scale:.4g} have no place in the Hugging Face model. Export a model at its base shapes, "
            "or train it with model.parametrization=sp"
        )
    flat = {k: np.asarray(v) for k, v in flatten(params).items()}
    return rules_lib.cx_to_hf(family(model_type).weights(cfg), flat)


_NO_MUP = dict(mup_base_d_model=None, mup_base_n_layers=None, mup_base_head_dim=None, mup_depth_alpha=1.0,
               mup_output_multiplier=1.0, mup_zero_readout=False, mup_zero_query=False)


def model_from_params(cfg: ModelConfig, params: Mapping, *, seed: int = 0):
    """A `Transformer` holding `params` (nothing but the tiny dropout RNG state is initialised)."""
    def make():
        return Transformer(cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

    graphdef, abstract, _ = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
    # The non-parameter state (RNG keys and counters) made for real; jit drops the unused param init.
    rest = jax.jit(lambda: nnx.split(make(), nnx.Param, ...)[2])()
    expected = {".".join(map(str, p)): tuple(v.get_value().shape) for p, v in nnx.to_flat_state(abstract)}
    given = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    if given != expected:
        diff = sorted(set(given.items()) ^ set(expected.items()))[:6]
        raise UserError(
            f"the params do not fit {cfg.name}'s parameter tree; differences (path, shape): {diff}"
        )
    return nnx.merge(graphdef, params_state(abstract, params), rest)


def params_state(template, params: Mapping):
    """An `nnx.State` of `nnx.Param`s like `template` (abstract or not) holding the pure dict `params`.
    (`nnx.replace_by_pure_dict` would leave bare arrays where the Params were.)"""
    flat = flatten(params)
    return nnx.from_flat_state(
        [
            (path, var.replace(jnp.asarray(flat[".".join(map(str, path))], jnp.float32)))
            for path, var in nnx.to_flat_state(template)
        ]
    )


# --- files --------------------------------------------------------------------------------------------


def read_hf_checkpoint(hf_dir: str | os.PathLike):
    """(transformers config, state_dict of numpy arrays) from a local HF directory. Never downloads."""
    return read_hf_config(hf_dir), read_hf_weights(hf_dir)


def read_hf_config(hf_dir: str | os.PathLike):
    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise UserError(
            f"{hf_dir} has no config.json; pass the directory a HF model was saved to (save_pretrained)"
        )
    try:
        import transformers
    except ImportError as e:
        raise UserError(
            f"reading HF checkpoints needs torch and transformers (pip install 'chinchax[dev]'): {e}"
        ) from None
    try:
        return transformers.AutoConfig.from_pretrained(hf_dir, local_files_only=True)
    except (ValueError, KeyError, OSError) as e:  # unknown model_type, malformed JSON
        raise UserError(f"{hf_dir / 'config.json'} cannot be read as a transformers config: {e}") from None


def read_hf_weights(hf_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state_dict (numpy; bfloat16/float16 widened to float32) from model.safetensors, sharded
    safetensors with their index, or pytorch_model.bin (sharded or not)."""
    try:
        import torch
    except ImportError as e:
        raise UserError(f"reading HF checkpoints needs torch (pip install 'chinchax[dev]'): {e}") from None
    state_dict = {}
    for f in _weight_files(Path(hf_dir)):
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state_dict.update(_to_numpy(load_file(f)))
        else:
            state_dict.update(_to_numpy(torch.load(f, map_location="cpu", weights_only=True)))
    return state_dict


def _weight_files(hf_dir: Path) -> list[Path]:
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):  # fmt: skip
        if (hf_dir / single).is_file():
            return [hf_dir / single]
        if (hf_dir / index).is_file():
            weight_map = json.loads((hf_dir / index).read_text())["weight_map"]
            return [hf_dir / name for name in sorted(set(weight_map.values()))]
    raise UserError(f"{hf_dir} has no model.safetensors, pytorch_model.bin or a sharded index of either")


def convert_hf_checkpoint(
    hf_dir: str | os.PathLike, out_dir: str | os.PathLike, overrides: Sequence[str] = (),
    tokenizer: str | None = None,
) -> ModelConfig:
    """HF directory -> `out_dir` with model.yaml, params/ (orbax) and conversion.json, written to a
    temporary sibling first and renamed into place, so a failed conversion leaves nothing behind.

    The tokenizer (for `chinchax generate`/`eval`/`finetune` on the result): `tokenizer` ('byte', a SentencePiece
    .model or a Hugging Face tokenizer.json, copied in), else the HF directory's own SentencePiece `tokenizer.model`
    (T5, LLaMA) or, without one, its `tokenizer.json` (GPT-2, BLOOM, LLaMA-3) with the tokenizer_config.json that
    names its special tokens; recorded in conversion.json (None when there is neither)."""
    with new_dir_atomic(out_dir) as tmp:  # a failed conversion leaves nothing behind
        # Config first: an unsupported model or a bad override fails before gigabytes of weights are read.
        hf_config = read_hf_config(hf_dir)
        base = dataclasses.asdict(config_from_hf(hf_config))
        cfg = load_config(ModelConfig, base, list(overrides)) if overrides else ModelConfig(**base).validate()
        tokenizer_record = _copy_tokenizer(hf_dir, tmp, tokenizer)  # a bad tokenizer file fails before the weights
        params, unused = params_from_hf(cfg, hf_config.model_type, read_hf_weights(hf_dir), source=str(hf_dir))
        (tmp / "model.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "params", params)
        checkpointer.wait_until_finished()
        n_params = int(sum(np.size(v) for v in flatten(params).values()))
        info = {"source": str(Path(hf_dir).absolute()), "model_type": hf_config.model_type,
                "architectures": getattr(hf_config, "architectures", None), "n_params": n_params,
                "unused_hf_keys": unused, "tokenizer": tokenizer_record}  # fmt: skip
        (tmp / "conversion.json").write_text(jsonio.dumps(info, indent=2) + "\n")
    return cfg


def _copy_tokenizer(hf_dir: str | os.PathLike, out_dir: Path, spec: str | None) -> str | None:
    """The tokenizer to record: 'byte', TOKENIZER_FILE or HF_TOKENIZER_FILE (copied into out_dir), or None.
    A spec is read as load_tokenizer reads it: 'spm:PATH'; 'hf:PATH', PATH.json or a directory (Hugging Face)."""
    if spec in ("byte", "bytes"):
        return "byte"
    if spec is None:
        found = [Path(hf_dir) / f for f in (TOKENIZER_FILE, HF_TOKENIZER_FILE) if (Path(hf_dir) / f).is_file()]
        if not found:
            return None
        source = found[0]  # a SentencePiece model first: T5 and LLaMA directories may hold both
    else:
        source = Path(spec.split(":", 1)[1] if spec.startswith(("spm:", "hf:")) else spec).expanduser()
        if source.is_dir() and not spec.startswith("spm:"):
            source = source / HF_TOKENIZER_FILE
        if not source.is_file():
            raise UserError(f"--tokenizer {spec!r}: no such file; pass 'byte', a SentencePiece .model file or a "
                            f"Hugging Face tokenizer.json (hf:PATH, or a directory holding one)")
    hf = spec.startswith("hf:") if spec and spec.startswith(("spm:", "hf:")) else source.suffix == ".json"
    if not hf:
        shutil.copyfile(source, out_dir / TOKENIZER_FILE)
        return TOKENIZER_FILE
    # Checked as JSON here (a damaged file fails the conversion, not a later eval); chinchax.data reads it.
    read_user_json(source, what="tokenizer file", fix="pass another with --tokenizer hf:PATH, or 'byte'")
    shutil.copyfile(source, out_dir / HF_TOKENIZER_FILE)
    if source.name == HF_TOKENIZER_FILE:  # its roles (eos, pad, ...) live in transformers' config beside it
        for name in HF_TOKENIZER_CONFIGS:
            if (source.parent / name).is_file():
                shutil.copyfile(source.parent / name, out_dir / name)
    return HF_TOKENIZER_FILE


def converted_tokenizer(out_dir: str | os.PathLike) -> str | None:
    """The tokenizer spec (for chinchax.data.tokenizers.load_tokenizer) of a converted directory, or None."""
    record = Path(out_dir) / "conversion.json"
    recorded = json.loads(record.read_text()).get("tokenizer") if record.is_file() else None
    if recorded == TOKENIZER_FILE:
        return f"spm:{Path(out_dir).absolute() / TOKENIZER_FILE}"
    if recorded == HF_TOKENIZER_FILE:
        return f"hf:{Path(out_dir).absolute() / HF_TOKENIZER_FILE}"
    return recorded


def load_converted(out_dir: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """(cfg, params) from a directory written by `convert_hf_checkpoint`."""
    out_dir = Path(out_dir).absolute()
    if not (out_dir / "model.yaml").is_file() or not (out_dir / "params").is_dir():
        raise UserError(f"{out_dir} is not a converted checkpoint (needs model.yaml and params/)")
    cfg = load_config(ModelConfig, out_dir / "model.yaml")
    target = unflatten({k: jax.ShapeDtypeStruct(s, np.float32) for k, s in param_shapes(cfg).items()})
    params = ocp.StandardCheckpointer().restore(out_dir / "params", target)
    return cfg, jax.tree.map(np.asarray, params)
