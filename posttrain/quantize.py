"""Weight quantization of chinchax kernels with qwix: int8, int4, int3 and NF4, per channel or group-wise,
with QLoRA's double quantization of the NF4 block scales.

qwix (`qwix.quantize` / `qwix.dequantize`) does the numerics: absmax scales per output channel and per
group of `group_size` inputs, rounding to the integer grid or to the NF4 code book (QLoRA, App. E).
Two things are added here, and why:
- packing: qwix keeps 4-bit codes in jnp.uint4/int4 arrays, which XLA stores one byte per element
  (measured: a [2, 128, 6] int4 QArray holds 1,536 bytes). Codes are packed two to a uint8 here so the
  stored bytes are what a 4-bit format promises; 3-bit codes are stored in 4-bit nibbles (and counted
  at 3 bits in `model_bits`, the number the Dettmers & Zettlemoyer study uses, as the paper does).
- double quantization (Dettmers et al. 2023, sec. 3): the float32 block scales minus their mean are
  quantized again, to int8 in blocks of 256 (qwix again), leaving one float32 per 256 blocks.
Only the kernels of the blocks (attention and MLP matrices) are quantized: embeddings, norms and biases
stay float32, as in QLoRA and LLM.int8().
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from chinchax.errors import UserError
from chinchax.posttrain.adapters import KERNEL_INPUT_AXES

FORMATS = {"bf16": (None, 16), "int8": (jnp.int8, 8), "int4": (jnp.int4, 4), "int3": ("int3", 3), "nf4": ("nf4", 4)}
SCALE_BLOCK = 256  # double quantization: one float32 per this many int8 scales (QLoRA)


@dataclass(frozen=True)
class QuantSpec:
    format: str = "nf4"
    group_size: int = 64  # inputs per scale; 0 = one scale per output channel (the whole input axis)
    double_quant: bool = False

    @property
    def bits(self) -> int:
        return FORMATS[self.format][1]

    def validate(self) -> QuantSpec:
        if self.format not in FORMATS:
            raise UserError(f"--format {self.format!r} is not a quantization format; choose one of {', '.join(FORMATS)}")
        if self.group_size < 0:
            raise UserError(f"--group-size {self.group_size} must be >= 0 (0 = one scale per output channel)")
        return self


def quantizable(flat: dict) -> list[str]:
    """The kernels quantization applies to: attention and MLP matrices."""
    return sorted(p for p in flat if p.split(".")[-1] in KERNEL_INPUT_AXES)


def _as_matrix(x, n_in: int, layered: bool):
    """[Y?, *I, *O] -> [Y, I, O]."""
    lead = x.shape[:1] if layered else (1,)
    rest = x.shape[1:] if layered else x.shape
    return x.reshape(lead[0], math.prod(rest[:n_in]), math.prod(rest[n_in:]))


def _pack4(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (0..15, int4 stored as two's complement nibbles) -> two per uint8."""
    flat = codes.reshape(-1).astype(np.uint8) & 0xF
    if flat.size % 2:
        flat = np.append(flat, np.uint8(0))
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def _unpack4(packed: jax.Array, n: int, signed: bool) -> jax.Array:
    lo, hi = packed & 0xF, packed >> 4
    codes = jnp.stack([lo, hi], axis=-1).reshape(-1)[:n].astype(jnp.int8)
    if signed:
        codes = jnp.where(codes >= 8, codes - 16, codes)
    return codes


def quantize_kernel(w: np.ndarray, path: str, spec: QuantSpec) -> dict:
    """One kernel -> its stored form {codes (uint8 or int8), scale, [scale_q, scale_scale, scale_mean]}."""
    import qwix

    if spec.format == "bf16":  # a float format: rounding, no scales (the 16-bit baseline of the studies)
        return {"codes": np.asarray(jnp.asarray(w, jnp.float32).astype(jnp.bfloat16))}
    n_in = KERNEL_INPUT_AXES[path.split(".")[-1]]
    layered = ".blocks." in f".{path}"
    m_YIO = _as_matrix(jnp.asarray(w, jnp.float32), n_in, layered)
    _, width, _ = m_YIO.shape
    group = spec.group_size or width
    if width % group:
        raise UserError(
            f"--group-size {spec.group_size} does not divide the input width {width} of {path}; choose a divisor of "
            f"{width} (e.g. {math.gcd(width, 64)}), or 0 for one scale per output channel"
        )
    qtype = FORMATS[spec.format][0]
    q = qwix.quantize(m_YIO, qtype, channelwise_axes=(0, 2), tiled_axes={1: group})
    codes = np.asarray(q.qvalue).astype(np.int8)
    stored = {"codes": _pack4(codes) if spec.bits <= 4 else codes.astype(np.int8), "scale": np.asarray(q.scale)}
    if spec.double_quant:
        scale = stored.pop("scale").reshape(-1)
        mean = np.float32(scale.mean())
        pad = (-scale.size) % SCALE_BLOCK
        centred = np.concatenate([scale - mean, np.zeros(pad, np.float32)]).reshape(-1, SCALE_BLOCK)
        qs = qwix.quantize(jnp.asarray(centred), jnp.int8, channelwise_axes=(0,), tiled_axes={1: SCALE_BLOCK})
        stored.update(
            scale_q=np.asarray(qs.qvalue).astype(np.int8), scale_scale=np.asarray(qs.scale), scale_mean=mean
        )
    return stored


def dequantize_kernel(stored: dict, path: str, shape: tuple[int, ...], spec: QuantSpec) -> jax.Array:
    """The float32 kernel a stored form stands for (jit-able: the codes are unpacked on device)."""
    import qwix

    if spec.format == "bf16":
        return jnp.asarray(stored["codes"]).astype(jnp.float32).reshape(shape)
    n_in = KERNEL_INPUT_AXES[path.split(".")[-1]]
    layered = ".blocks." in f".{path}"
    n_y, n_i, n_o = _as_matrix(np.empty(shape, np.bool_), n_in, layered).shape
    group = spec.group_size or n_i
    if "scale_q" in stored:
        sq = qwix.QArray(qvalue=stored["scale_q"], scale=stored["scale_scale"], qtype=jnp.int8)
        scale = (qwix.dequantize(sq).reshape(-1)[: n_y * (n_i // group) * n_o] + stored["scale_mean"])
        scale = scale.reshape(n_y, n_i // group, n_o)
    else:
        scale = stored["scale"]
    if spec.bits <= 4:
        codes = _unpack4(stored["codes"], n_y * n_i * n_o, signed=spec.format != "nf4").reshape(n_y, n_i, n_o)
    else:
        codes = stored["codes"]
    qtype = FORMATS[spec.format][0]
    storage = {"nf4": jnp.uint4, "int3": jnp.int4}.get(spec.format, qtype)
    q = qwix.QArray(qvalue=codes.astype(storage), scale=scale.astype(jnp.float32), qtype=qtype)
    return qwix.dequantize(q).reshape(shape)


def quantize_flat(flat: dict, spec: QuantSpec) -> dict:
    """{path: stored form} for every quantizable kernel of a flat params dict."""
    spec.validate()
    return {p: quantize_kernel(np.asarray(flat[p]), p, spec) for p in quantizable(flat)}


def dequantize_flat(stored: dict, shapes: dict, spec: QuantSpec) -> dict:
    return {p: dequantize_kernel(s, p, shapes[p], spec) for p, s in stored.items()}


def stored_bytes(stored: dict) -> int:
    """Bytes of the stored forms, measured on the arrays themselves."""
    return int(sum(np.asarray(x).nbytes for s in stored.values() for x in jax.tree.leaves(s)))


def model_bits(flat: dict, stored: dict, spec: QuantSpec) -> float:
    """Total model bits as Dettmers & Zettlemoyer count them: quantized kernels at `bits` per weight plus
    one scale per group (32 bits; 8 with double quantization), every unquantized parameter at 32."""
    total = 0.0
    for p, x in flat.items():
        if p in stored:
            n = np.size(x)
            group = spec.group_size or _as_matrix(np.empty(np.shape(x), np.bool_), KERNEL_INPUT_AXES[p.split(".")[-1]],
                                                   ".blocks." in f".{p}").shape[1]
            scales = 0 if spec.format == "bf16" else (n / group) * (8 if spec.double_quant else 32)
            total += n * spec.bits + scales
        else:
            total += np.size(x) * 32
    return total
