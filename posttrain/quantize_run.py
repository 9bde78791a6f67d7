"""`chinchax quantize RUN --format int8|int4|int3|nf4 [--group-size G] [--double-quant]`: post-training
weight quantization of a run dir or converted checkpoint into a new model dir.

The output (posttrain.model_dir layout) holds the dequantized float32 weights in params/: the values
the quantized model computes with (simulated quantization, as in Dettmers & Zettlemoyer 2022 and most
quantization studies), so `chinchax eval`/`generate` serve it unchanged. The stored form (packed codes
and scales, quantized.npz) is written beside it and its bytes measured. quantization.json records the
format, bits, stored bytes against float32, total model bits, and the validation loss before and after
on the base's own eval batches (when the base is a run dir whose data can be read).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from chinchax import jsonio, rundir
from chinchax.errors import UserError
from chinchax.posttrain.quantize import QuantSpec, dequantize_flat, model_bits, quantize_flat, stored_bytes


def _validation_loss(model_cfg, flat: dict, data_cfg, batch_size: int) -> float | None:
    from chinchax.data.pipeline import eval_batches
    from chinchax.data.tokenizers import load_tokenizer
    from chinchax.evaluation.losses import validation_loss
    from chinchax.model.convert.hf import model_from_params, unflatten

    tokenizer = load_tokenizer(data_cfg.tokenizer)
    batches = eval_batches(data_cfg, tokenizer, global_batch_size=batch_size, variant=model_cfg.variant)
    model = model_from_params(model_cfg, unflatten(flat))
    model.eval()
    return float(validation_loss(model, batches)["loss"])


def check_format(model_cfg, flat: dict, spec: QuantSpec) -> None:
    """Formats the model cannot take fail before any work, naming the flag and the fix."""
    from chinchax.posttrain.quantize import quantizable

    if not quantizable(flat):
        raise UserError("this model has no attention or MLP kernels to quantize")
    if spec.group_size and spec.format != "bf16":
        from chinchax.posttrain.adapters import KERNEL_INPUT_AXES

        for p in quantizable(flat):
            n_in = KERNEL_INPUT_AXES[p.split(".")[-1]]
            shape = flat[p].shape[1:] if ".blocks." in f".{p}" else flat[p].shape
            width = int(np.prod(shape[:n_in]))
            if width % spec.group_size:
                raise UserError(
                    f"--group-size {spec.group_size} does not divide the input width {width} of {p}; pick a "
                    f"divisor of {width} (e.g. {np.gcd(width, 64)}), or --group-size 0 (one scale per output channel)"
                )


def quantize_run(base_dir: str | Path, out_dir: str | Path, spec: QuantSpec, *, measure_loss: bool = True) -> dict:
    from chinchax.evaluation.run_loading import load_weights
    from chinchax.posttrain.model_dir import absolute_tokenizer, write_model_dir

    spec = spec.validate()
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--out {out_dir} exists and is not empty; choose a new directory")
    t0 = time.time()
    base = load_weights(base_dir)
    check_format(base.model, base.flat, spec)
    stored = quantize_flat(base.flat, spec)
    deq = {k: np.asarray(v) for k, v in dequantize_flat(stored, {k: v.shape for k, v in base.flat.items()}, spec).items()}
    flat = {**base.flat, **deq}
    float32_kernel_bytes = int(sum(base.flat[p].nbytes for p in stored))
    info = {
        "format": spec.format,
        "group_size": spec.group_size,
        "double_quant": spec.double_quant,
        "bits": spec.bits,
        "kernel_stored_bytes": stored_bytes(stored),
        "kernel_float32_bytes": float32_kernel_bytes,
        "kernel_bytes_ratio": stored_bytes(stored) / float32_kernel_bytes,
        "model_bits": model_bits(base.flat, stored, spec),
        "model_bits_float32": float(32 * sum(np.size(v) for v in base.flat.values())),
        "n_params": int(sum(np.size(v) for v in base.flat.values())),
        "max_abs_error": float(max(np.abs(deq[p] - base.flat[p]).max() for p in stored)),
    }
    if measure_loss and base.tokenizer is not None and (base_dir / rundir.CONFIG_YAML).is_file():
        from chinchax.train.config import ExperimentConfig

        run_cfg = rundir.read_run_config(base_dir, ExperimentConfig)
        batch = run_cfg.trainer.batch_size
        info["loss_before"] = _validation_loss(base.model, base.flat, run_cfg.data, batch)
        info["loss_after"] = _validation_loss(base.model, flat, run_cfg.data, batch)
    info["wall_time_s"] = time.time() - t0
    tokenizer = absolute_tokenizer(base.tokenizer, base_dir)
    write_model_dir(out_dir, base.model, flat, tokenizer=tokenizer,
                    info={"source": str(base_dir.absolute()), "quantization": info})
    tmp = out_dir / ".quantized.npz.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **{f"{p}/{k}": v for p, s in stored.items() for k, v in s.items()})
    tmp.replace(out_dir / "quantized.npz")
    jsonio.write_json(out_dir / rundir.QUANTIZATION_JSON, info)
    return info
