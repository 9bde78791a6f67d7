"""`chinchax coord-check`: microsoft/mup's coordinate check for chinchax models, SP against µP, with its plot.

    chinchax coord-check --out coord_check                 # width x1..x8 (d_model 64..512), SP and µP
    chinchax coord-check --axis depth --out coord_depth    # depth x1..x8 (2..16 layers), SP and depth-µP

Writes coord_check.json (mean |x| per size, seed, step and coordinate; slopes of log mean|x| against log size)
and coord_check.png: one row per parametrization, one panel per coordinate, mean |x| against size, a line per
step. Flat lines are the point of µP (train/coord_check.py says what is measured and how).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from chinchax.errors import UserError

WIDTHS = (64, 128, 256, 512)
DEPTHS = (2, 4, 8, 16)
PLOTTED = ("embedding", "attention_logits", "attention_out", "mlp_out", "residual", "logits")


def base_config(parametrization: str, axis: str, alpha: float = 0.5):
    """The family the check widens (or deepens): a RoPE pre-norm decoder over bytes, head size 16, untied
    readout. µP starts the readout at zero (microsoft/mup's check: logits exactly 0 at step 1)."""
    from chinchax.model.config import ModelConfig

    mup = {}
    if parametrization == "mup":
        mup = dict(parametrization="mup", mup_zero_readout=True)
        mup.update(mup_base_d_model=WIDTHS[0]) if axis == "width" else mup.update(
            mup_base_n_layers=DEPTHS[0], mup_depth_alpha=alpha)
    return ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=256, max_len=64, position="rope",
                       norm="rmsnorm", use_bias=False, tie_embeddings=False, activation="gelu", **mup)


def ratio_range(result, coordinate: str) -> tuple[float, float]:
    """(min, max) over steps of mean|x| at the largest size over the smallest (seed-averaged); steps where the
    coordinate is exactly 0 at both ends (a zero readout at step 1) are skipped."""
    means = result.mean_over_seeds()[:, :, result.coordinates.index(coordinate)]
    ok = (means[0] > 0) & (means[-1] > 0)
    ratios = means[-1, ok] / means[0, ok]
    return float(ratios.min()), float(ratios.max())


def plot(results: dict, path: Path, axis: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results)
    fig, axes = plt.subplots(len(rows), len(PLOTTED), figsize=(3.0 * len(PLOTTED), 2.8 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        result = results[name]
        means = result.mean_over_seeds()
        for c, coordinate in enumerate(PLOTTED):
            ax = axes[r][c]
            k = result.coordinates.index(coordinate)
            for t in range(means.shape[1]):
                ax.plot(result.sizes, means[:, t, k], marker="o", ms=3, label=f"step {t + 1}",
                        color=matplotlib.colormaps["viridis"](t / max(means.shape[1] - 1, 1)))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{name}: {coordinate}", fontsize=9)
            ax.set_xlabel("d_model" if axis == "width" else "n_layers", fontsize=8)
            if c == 0:
                ax.set_ylabel("mean |x|", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"coordinate check ({axis}): mean |activation| over {len(results[rows[0]].seeds)} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    from chinchax import jsonio
    from chinchax.fileio import write_text_atomic
    from chinchax.train.coord_check import run_coord_check

    sizes = tuple(args.sizes or (WIDTHS if args.axis == "width" else DEPTHS))
    if len(sizes) < 2 or any(s <= 0 for s in sizes):
        raise UserError(f"--sizes {sizes}: give at least two positive sizes")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, summary = {}, {}
    for name in args.parametrization:
        base = base_config(name, args.axis, args.alpha)
        if args.axis == "width" and name == "mup":
            base = base.replace(mup_base_d_model=sizes[0])
        if args.axis == "depth" and name == "mup":
            base = base.replace(mup_base_n_layers=sizes[0])
        result = run_coord_check(base, sizes, axis=args.axis, seeds=tuple(range(args.seeds)), steps=args.steps,
                                 learning_rate=args.lr)
        results[name] = result
        slopes = result.slopes()
        summary[name] = {
            **result.to_json(),
            "slopes": [[None if np.isnan(v) else float(v) for v in row] for row in slopes],
            "ratio_range": {c: ratio_range(result, c) for c in result.coordinates},
        }
        worst = np.nanmax(np.abs(slopes))
        print(f"{name}: largest |slope| of log mean|x| vs log {args.axis} over steps 1-{args.steps}: {worst:.3f}")
    write_text_atomic(out / "coord_check.json",
                      jsonio.dumps({"axis": args.axis, "learning_rate": args.lr, **summary}, indent=1))
    plot(results, out / "coord_check.png", args.axis)
    print(f"wrote {out / 'coord_check.json'} and {out / 'coord_check.png'}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "coord-check", help="µP's coordinate check: activation sizes vs width or depth, SP and µP, with the plot",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--axis", choices=("width", "depth"), default="width")
    p.add_argument("--parametrization", nargs="+", choices=("sp", "mup"), default=["sp", "mup"])
    p.add_argument("--sizes", type=int, nargs="+", help="d_model values (width) or n_layers (depth); the first is the base")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--lr", type=float, default=4e-3, help="Adam's learning rate, constant (default 4e-3)")
    p.add_argument("--alpha", type=float, default=0.5, choices=(0.5, 1.0),
                   help="depth: residual branches x (base_L/L)^alpha (0.5 depth-µP, 1 CompleteP)")
    p.add_argument("--out", default="coord_check")
    p.set_defaults(handler=run)
