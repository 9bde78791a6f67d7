"""Compute-optimal N and D for a budget under the published laws and under a user's own fit.

GPU-hours become FLOPs the way BloombergGPT budgeted: hours x 3600 x peak FLOP/s x MFU.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from chinchax.errors import UserError
from chinchax.scaling.fitresult import FitResult
from chinchax.scaling.laws import FLOPS_PER_PARAM_TOKEN, published_allocations

# Dense bf16/fp16 tensor-core peak FLOP/s per chip (vendor datasheets; no sparsity).
DEVICE_PEAK_FLOPS = {
    "v100": 125e12,
    "a100": 312e12,
    "h100": 989e12,  # SXM
    "h200": 989e12,
    "tpu-v3": 123e12,
    "tpu-v4": 275e12,
    "tpu-v5e": 197e12,
    "tpu-v5p": 459e12,
}


def gpu_hours_to_flops(hours: float, device: str, mfu: float) -> float:
    device = device.lower()
    if device not in DEVICE_PEAK_FLOPS:
        raise UserError(f"unknown device {device!r}; known: {', '.join(DEVICE_PEAK_FLOPS)}")
    if not 0 < mfu <= 1:
        raise UserError(f"--mfu must be in (0, 1], got {mfu}")
    if hours <= 0:
        raise UserError(f"--gpu-hours must be positive, got {hours}")
    return float(hours * 3600.0 * DEVICE_PEAK_FLOPS[device] * mfu)


def load_catalogue() -> pd.DataFrame:
    """Well-known models (name, n_params, n_tokens, source) with flops = 6·N·D."""
    with resources.files("chinchax.scaling").joinpath("catalogue.csv").open() as f:
        df = pd.read_csv(f)
    return df.assign(flops=FLOPS_PER_PARAM_TOKEN * df["n_params"] * df["n_tokens"])


def allocation_rows(flops: float, laws: list[str] | None = None) -> list[dict]:
    """One row per law: name, N_opt, D_opt, tokens per parameter (and interval for a fit)."""
    if flops <= 0 or not np.isfinite(flops):
        raise UserError(f"--flops must be a positive number, got {flops}")
    published = published_allocations()
    names = laws or list(published)
    rows = []
    for name in names:
        if name in published:
            law = published[name]
            n, d = float(law.n_opt(flops)), float(law.d_opt(flops))
            rows.append({"law": name, "flops": flops, "n_opt": n, "d_opt": d, "tokens_per_param": d / n,
                         "source": law.source})
        elif Path(name).suffix == ".json" or Path(name).exists():
            fit = FitResult.from_json(name)
            n, n_lo, n_hi = fit.n_opt(flops)
            d, d_lo, d_hi = fit.d_opt(flops)
            rows.append({"law": f"{fit.law} ({Path(name).name})", "flops": flops, "n_opt": n, "d_opt": d,
                         "tokens_per_param": d / n, "n_opt_interval": [n_lo, n_hi],
                         "d_opt_interval": [d_lo, d_hi], "source": f"fit on {fit.n_runs} runs"})
        else:
            raise UserError(f"--law {name!r} is neither a published law ({', '.join(published)}) nor a fit JSON file")
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'law':32s} {'FLOPs':>10s} {'N_opt':>10s} {'D_opt':>10s} {'D/N':>7s}  95% interval (N)"]
    for r in rows:
        interval = r.get("n_opt_interval")
        iv = f"[{interval[0]:.3g}, {interval[1]:.3g}]" if interval and np.isfinite(interval).all() else ""
        lines.append(f"{r['law']:32s} {r['flops']:10.3g} {r['n_opt']:10.3g} {r['d_opt']:10.3g} "
                     f"{r['tokens_per_param']:7.1f}  {iv}")
    return "\n".join(lines)
