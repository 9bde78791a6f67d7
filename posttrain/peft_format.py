"""LoRA adapters in Hugging Face peft's format: adapter_config.json + adapter_model.safetensors.

Module names and weight layouts come from the converter's own weight map (chinchax.model.convert):
each adapted chinchax kernel has a rule naming its HF weight per layer, so the adapter of that kernel
sits on the module owning that weight. peft keeps, per module, lora_A [r, in] and lora_B [out, r] with
the update s·B·A (s = lora_alpha / r); chinchax keeps A [*I, r] and B [r, *O] (adapters.py), the same
factors transposed and reshaped.

A fused HF weight (GPT-2's c_attn holds q|k|v along its output) carries one adapter for k chinchax
kernels. Exported, the k adapters become one of rank k·r with A stacked and B block-diagonal, and alpha
k·alpha (peft's rank_pattern / alpha_pattern), which is the same update exactly. Imported, peft's A is
shared by the k kernels and B is split along the output.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from chinchax import jsonio
from chinchax.errors import UserError
from chinchax.fileio import write_text_atomic
from chinchax.posttrain.adapters import KERNEL_INPUT_AXES, LoraConfig

PREFIX = "base_model.model."
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def _module_rules(cfg, model_type: str, paths) -> list[tuple[tuple[str, ...], list[str]]]:
    """[(chinchax kernel paths of one rule, HF module name per layer)] for the rules touching `paths`."""
    from chinchax.model.convert.hf import family

    out = []
    for rule in family(model_type).weights(cfg).rules:
        if not any(c in paths for c in rule.cx):
            continue
        if not all(c.split(".")[-1] in KERNEL_INPUT_AXES for c in rule.cx):
            raise UserError(f"the HF weight of {rule.cx} also holds non-kernel parameters: no peft adapter for it")
        modules = [k.removesuffix(".weight") for k in rule.hf]
        out.append((rule.cx, modules))
    return out


def _layers(a: np.ndarray, layered: bool) -> list[np.ndarray]:
    return list(a) if layered else [a]


def export_peft(out_dir: str | Path, cfg, model_type: str, adapters: dict, lora: LoraConfig,
                base_model: str | None = None) -> Path:
    """Write `adapters` ({kernel path: {"a", "b"}}) of a model converted from HF `model_type`."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    tensors: dict[str, np.ndarray] = {}
    rank_pattern, alpha_pattern, targets = {}, {}, set()
    for cx, modules in _module_rules(cfg, model_type, adapters):
        layered = ".blocks." in f".{cx[0]}"
        for i, module in enumerate(modules):
            a_parts, b_parts = [], []
            for c in cx:
                n_in = KERNEL_INPUT_AXES[c.split(".")[-1]]
                shape = cfg_shape(cfg, c)
                ins, outs = shape[:n_in], shape[n_in:]
                if c in adapters:
                    a = _layers(np.asarray(adapters[c]["a"]), layered)[i].reshape(math.prod(ins), -1)
                    b = _layers(np.asarray(adapters[c]["b"]), layered)[i].reshape(-1, math.prod(outs))
                else:
                    a = np.zeros((math.prod(ins), lora.rank), np.float32)
                    b = np.zeros((lora.rank, math.prod(outs)), np.float32)
                a_parts.append(a.T)  # [r, in]
                b_parts.append(b.T)  # [out, r]
            a_hf = np.concatenate(a_parts, axis=0)
            b_hf = _block_diagonal(b_parts)
            tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a_hf, np.float32)
            tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b_hf, np.float32)
            name = module.split(".")[-1]
            targets.add(name)
            if len(cx) > 1:
                rank_pattern[name] = lora.rank * len(cx)
                alpha_pattern[name] = lora.alpha * len(cx)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_2_SEQ_LM" if cfg.variant == "encoder_decoder" else "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(targets),
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": model_type == "gpt2",  # GPT-2's Conv1D keeps weights [in, out]
        "bias": "none",
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / WEIGHTS))
    write_text_atomic(out_dir / CONFIG, jsonio.dumps(config, indent=2) + "\n")
    return out_dir


def _block_diagonal(blocks: list[np.ndarray]) -> np.ndarray:
    rows = sum(b.shape[0] for b in blocks)
    cols = sum(b.shape[1] for b in blocks)
    out = np.zeros((rows, cols), np.float32)
    r = c = 0
    for b in blocks:
        out[r : r + b.shape[0], c : c + b.shape[1]] = b
        r, c = r + b.shape[0], c + b.shape[1]
    return out


def cfg_shape(cfg, path: str) -> tuple[int, ...]:
    """The kernel's shape without its layers axis."""
    from chinchax.model.convert.hf import param_shapes

    shape = param_shapes(cfg)[path]
    return tuple(shape[1:]) if ".blocks." in f".{path}" else tuple(shape)


def import_peft(state: dict[str, np.ndarray], cfg, model_type: str, paths) -> dict:
    """peft lora_A/lora_B tensors (keys as peft saves them, or from `get_peft_model_state_dict`) -> chinchax
    adapters {kernel path: {"a", "b"}} for the kernels `paths`."""
    out = {}
    for cx, modules in _module_rules(cfg, model_type, set(paths)):
        layered = ".blocks." in f".{cx[0]}"
        per = {c: {"a": [], "b": []} for c in cx}
        for module in modules:
            key = f"{PREFIX}{module}"
            if f"{key}.lora_A.weight" not in state:
                raise UserError(f"the peft adapter has no {key}.lora_A.weight; adapted modules: "
                                f"{sorted({k.rsplit('.lora_', 1)[0] for k in state})[:6]}...")
            a_hf, b_hf = state[f"{key}.lora_A.weight"], state[f"{key}.lora_B.weight"]
            start = 0
            for c in cx:
                shape = cfg_shape(cfg, c)
                n_in = KERNEL_INPUT_AXES[c.split(".")[-1]]
                ins, outs = shape[:n_in], shape[n_in:]
                size = math.prod(outs)
                per[c]["a"].append(a_hf.T.reshape(*ins, -1))
                per[c]["b"].append(b_hf[start : start + size].T.reshape(-1, *outs))
                start += size
        for c in cx:
            if c in paths:
                stack = np.stack if layered else (lambda xs: xs[0])
                out[c] = {"a": stack(per[c]["a"]).astype(np.float32), "b": stack(per[c]["b"]).astype(np.float32)}
    return out
