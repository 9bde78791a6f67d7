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
from chinchax.scaling.laws import FLOPS_PER_PARAM_TOKEN, MUENNIGHOFF_2023, published_allocations

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


DATA_CONSTRAINED = "data-constrained"


def allocation_rows(flops: float, laws: list[str] | None = None, unique_tokens: float | None = None) -> list[dict]:
    """One row per law: name, N_opt, D_opt, tokens per parameter (and interval for a fit).

    With `unique_tokens` U every row also gives its epochs D_opt/U, and the default laws include
    `data-constrained` (Muennighoff et al. 2023), which needs U and allocates for it."""
    if flops <= 0 or not np.isfinite(flops):
        raise UserError(f"--flops must be a positive number, got {flops}")
    if unique_tokens is not None and not (unique_tokens > 0 and np.isfinite(unique_tokens)):
        raise UserError(f"--unique-tokens must be a positive number of tokens, got {unique_tokens}")
    published = published_allocations()
    names = laws or list(published) + ([DATA_CONSTRAINED] if unique_tokens is not None else [])
    rows = []
    for name in names:
        if name == DATA_CONSTRAINED:
            rows.append(_data_constrained_row(flops, unique_tokens))
        elif name in published:
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
            raise UserError(f"--law {name!r} is neither a published law ({', '.join([*published, DATA_CONSTRAINED])}) "
                            "nor a fit JSON file")
    if unique_tokens is not None:
        for row in rows:
            row["unique_tokens"] = float(unique_tokens)
            row["epochs"] = row["d_opt"] / unique_tokens
    return rows


def _data_constrained_row(flops: float, unique_tokens: float | None) -> dict:
    if unique_tokens is None:
        raise UserError("--law data-constrained needs --unique-tokens U (the unique tokens you have, e.g. 25e9)")
    law = MUENNIGHOFF_2023
    n, d = law.optimum(flops, unique_tokens)
    return {"law": DATA_CONSTRAINED, "flops": flops, "n_opt": n, "d_opt": d, "tokens_per_param": d / n,
            "loss": float(law.loss(n, d, unique_tokens)),
            "source": "Muennighoff et al. 2023: L(N, D, U) with R_N* = 5.31, R_D* = 15.39, minimised at 6ND = C"}


def format_rows(rows: list[dict]) -> str:
    epochs = any("epochs" in r for r in rows)
    lines = [f"{'law':32s} {'FLOPs':>10s} {'N_opt':>10s} {'D_opt':>10s} {'D/N':>7s}"
             + (f" {'epochs':>7s}" if epochs else "") + "  95% interval (N)"]
    for r in rows:
        interval = r.get("n_opt_interval")
        iv = f"[{interval[0]:.3g}, {interval[1]:.3g}]" if interval and np.isfinite(interval).all() else ""
        ep = f" {r['epochs']:7.2f}" if epochs else ""
        lines.append(f"{r['law']:32s} {r['flops']:10.3g} {r['n_opt']:10.3g} {r['d_opt']:10.3g} "
                     f"{r['tokens_per_param']:7.1f}{ep}  {iv}")
    return "\n".join(lines)
