"""Peak FLOP/s of the devices, for model FLOPs utilisation (MFU).

MFU = (detailed model FLOPs of a step, causal attention halved; see chinchax.model.counting)
      / step time / (peak FLOP/s per device * number of devices).

The table holds dense peaks per chip from the vendors' data sheets. For float32 compute the accelerators
do not run true fp32 matmuls by default: XLA on TPU uses bf16 passes and on Ampere/Hopper GPUs TF32, so
the float32 column holds those rates. A CPU has no table entry: we time a plain `jnp.dot` of the same
dtype once a process (`measure_matmul_peak`; a sweep worker trains many runs and would spend 0.12 s on
each) and treat it as the peak of the whole host (fake CPU devices share the same cores), or take
`trainer.peak_flops`.
"""

from __future__ import annotations

import functools
import time

# device_kind substring (lower case) -> (bfloat16 peak, float32 peak) in FLOP/s per chip.
PEAK_FLOPS = {
    "tpu v4": (275e12, 275e12),
    "tpu v5 lite": (197e12, 197e12),  # v5e
    "tpu v5e": (197e12, 197e12),
    "tpu v5p": (459e12, 459e12),
    "tpu v5": (459e12, 459e12),  # v5p reports "TPU v5"
    "tpu v6 lite": (918e12, 918e12),  # v6e (Trillium)
    "tpu v6e": (918e12, 918e12),
    "a100": (312e12, 156e12),  # float32 = TF32 tensor cores
    "h100": (989e12, 494.5e12),  # SXM, dense
    "h200": (989e12, 494.5e12),
}


def table_peak(device_kind: str, dtype: str) -> float | None:
    kind = device_kind.lower()
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):  # "tpu v5 lite" before "tpu v5"
        if name in kind:
            bf16, f32 = PEAK_FLOPS[name]
            return bf16 if dtype == "bfloat16" else f32
    return None


def measure_matmul_peak(dtype: str = "float32", n: int = 1024, repeats: int = 5, device=None) -> float:
    """Best FLOP/s of an n x n x n `jnp.dot` on one device (the same dtype the model computes in)."""
    import jax
    import jax.numpy as jnp

    from chinchax.model.layers import compute_dtype

    device = device or jax.local_devices()[0]
    jdtype = compute_dtype(dtype)
    a = jax.device_put(jnp.ones((n, n), jdtype), device)
    b = jax.device_put(jnp.full((n, n), 0.5, jdtype), device)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def total_peak_flops(dtype: str, override_per_device: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s of all devices of the run, where the number came from)."""
    import jax

    devices = jax.devices()
    if override_per_device:
        return override_per_device * len(devices), "trainer.peak_flops"
    kind = devices[0].device_kind
    per_device = table_peak(kind, dtype)
    if per_device is not None:
        return per_device * len(devices), f"table ({kind}, {dtype})"
    if devices[0].platform == "cpu":
        # Fake CPU devices of one process share its cores: the host's peak, times the number of hosts.
        return _cpu_peak(dtype) * jax.process_count(), f"measured jnp.dot ({dtype}) on cpu"
    return float("nan"), f"unknown device {kind!r}: set trainer.peak_flops"


@functools.cache
def _cpu_peak(dtype: str) -> float:
    return measure_matmul_peak(dtype)
