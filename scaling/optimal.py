"""Compute-optimal N and D for a budget under the published laws and under a user's own fit, and the
learning rate and batch there under a hyperparameter law (DeepSeek LLM 2024's, or one fitted).

GPU-hours become FLOPs the way BloombergGPT budgeted: hours x 3600 x peak FLOP/s x MFU.

The hyperparameter laws take compute in DeepSeek's convention, C = M·D with M the non-embedding FLOPs per
token (attention included), not 6·N·D. M is a property of a model, which a budget alone does not name, so
the budget is used as C as given, unconverted. M = 6·N_non_embedding + 12·n_layer·d_model·l_seq, so for a large
model M·D is close to 6·N·D (attention adds a little, the embeddings leave a little out); at DeepSeek's
exponents a 10% error in C moves the lr by 1.2% and the batch by 3%.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from chinchax.compute import training_flops
from chinchax.errors import UserError
from chinchax.scaling.fitresult import CONFIDENCE, FitResult
from chinchax.scaling.hyperlaws import PUBLISHED_HYPERPARAMETER_LAWS, load_hyperparameter_law
from chinchax.scaling.laws import MUENNIGHOFF_2023, published_allocations

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
    return df.assign(flops=training_flops(df["n_params"], df["n_tokens"]))


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


HYPERPARAMETER_CONVENTION = "C = M*D (DeepSeek LLM 2024; M = non-embedding FLOPs per token); --flops used as C, unconverted"


def hyperparameter_rows(flops: float, laws: list[str] | None = None, seq_len: int = 2048) -> list[dict]:
    """One row per hyperparameter law (default: DeepSeek's): the learning rate and batch (tokens, and
    sequences of `seq_len`) at `flops`, read as C = M·D (see the module docstring), with 95% intervals for a
    fitted law and whether `flops` lies outside the budgets the law was fitted on."""
    if flops <= 0 or not np.isfinite(flops):
        raise UserError(f"--flops must be a positive number, got {flops}")
    if seq_len < 1:
        raise UserError(f"--seq-len must be a positive number of tokens, got {seq_len}")
    rows = []
    for name in laws or list(PUBLISHED_HYPERPARAMETER_LAWS):
        law = load_hyperparameter_law(name)
        batch = law.batch_tokens(flops)
        low, high = law.flops_range
        row = {"law": name if name in PUBLISHED_HYPERPARAMETER_LAWS else Path(name).name, "kind": "hyperparameters",
               "flops": flops, "convention": HYPERPARAMETER_CONVENTION, "learning_rate": law.lr(flops),
               "batch_tokens": batch, "seq_len": seq_len, "batch_sequences": batch / seq_len,
               "fitted_flops_range": [low, high], "extrapolated": bool(not low <= flops <= high),
               "source": law.source}
        if law.bootstrap:
            row |= {"learning_rate_interval": list(law.lr_interval(flops)),
                    "batch_tokens_interval": list(law.batch_interval(flops))}
        rows.append(row)
    return rows


def format_hyperparameter_rows(rows: list[dict]) -> str:
    seq_len = rows[0]["seq_len"]
    lines = [f"hyperparameters at {rows[0]['flops']:.3g} FLOPs, {HYPERPARAMETER_CONVENTION}",
             f"{'law':32s} {'lr':>10s} {'batch tok':>10s} {f'seqs@{seq_len}':>10s}  {CONFIDENCE:.0%} interval (lr; batch tokens)"]
    for r in rows:
        iv = ""
        if "learning_rate_interval" in r:
            (lr_lo, lr_hi), (b_lo, b_hi) = r["learning_rate_interval"], r["batch_tokens_interval"]
            iv = f"[{lr_lo:.3g}, {lr_hi:.3g}]; [{b_lo:.3g}, {b_hi:.3g}]"
        lines.append(f"{r['law']:32s} {r['learning_rate']:10.3g} {r['batch_tokens']:10.3g} "
                     f"{r['batch_sequences']:10.3g}  {iv}")
        if r["extrapolated"]:
            low, high = r["fitted_flops_range"]
            lines.append(f"  {r['law']}: extrapolated, fitted on {low:.3g} to {high:.3g} FLOPs")
    return "\n".join(lines)
