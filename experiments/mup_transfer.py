"""µTransfer measured: learning-rate sweeps at several widths, SP and µP side by side, on the embedded corpus.

    python -m chinchax.experiments.mup_transfer [--quick] [--out mup_transfer]

Each width's optimum is the vertex of a parabola in log lr fitted near its lowest loss, with an interval from
resampling seeds (scaling/hyperlaws.parabola_optimum). Reported per parametrization: the drift of the optimum
across widths (largest vertex / smallest), and the loss lost at the widest width by training it at the
narrowest width's optimum (the widest width's parabola read at that lr, minus its vertex loss). Writes
results.csv (one row per run), summary.json, transfer.png (loss against lr, a curve per width; SP and µP
panels) and report.md. Runs are kept in OUT/runs: a re-run skips finished ones.

The family: experiments/tiny.yaml's decoder with RoPE, RMSNorm, no biases and an untied readout (µP: zero
initialised), 2 layers, head size 16 (heads grow with width), d_ff = 4 d_model, byte tokens of the stdlib corpus,
AdamW (no weight decay) with a cosine schedule; µP's base width is the narrowest. One compiled step per (width, parametrization): the lr is an argument of the step.
"""

from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Study:
    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int
    batch_size: int = 16
    seq_len: int = 64
    n_layers: int = 2
    head_size: int = 16


FULL = Study(widths=(32, 64, 128, 256), lrs=tuple(2.5e-4 * 2.0**k for k in range(8)), seeds=(0, 1), steps=200,
             batch_size=8)
QUICK = Study(widths=(16, 32, 64, 128), lrs=tuple(2e-3 * 2.0**k for k in range(-2, 3)), seeds=(0, 1), steps=40,
              batch_size=8, seq_len=32)


def run_overrides(study: Study, parametrization: str, width: int, lr: float, seed: int, run_dir: Path) -> list[str]:
    mup = []
    if parametrization == "mup":
        mup = ["model.parametrization=mup", f"model.mup_base_d_model={study.widths[0]}", "model.mup_zero_readout=true"]
    return [
        "model.position=rope", "model.norm=rmsnorm", "model.use_bias=false",
        "model.tie_embeddings=false", f"model.d_model={width}", f"model.d_ff={4 * width}",
        f"model.n_heads={width // study.head_size}", f"model.head_dim={study.head_size}",
        f"model.n_layers={study.n_layers}",
        f"model.max_len={study.seq_len}", f"data.seq_len={study.seq_len}", "data.eval_batches=8",
        f"optimizer.learning_rate={lr:.6g}", "optimizer.warmup_steps=" + str(max(study.steps // 10, 1)),
        "optimizer.schedule=cosine", "optimizer.weight_decay=0.0",
        f"trainer.steps={study.steps}", f"trainer.batch_size={study.batch_size}", f"trainer.seed={seed}",
        "trainer.checkpoint_every=0", "trainer.eval_every=0", f"trainer.log_every={study.steps}",
        "trainer.progress_bar=false", "trainer.steps_per_call=8", f"trainer.run_dir={run_dir}", *mup,
    ]


def run_all(study: Study, out: Path) -> list[dict]:
    from chinchax.configlib import load_config
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.trainer import train

    repo = Path(__file__).resolve().parents[1]
    rows = []
    for parametrization in ("sp", "mup"):
        for width in study.widths:
            for lr in study.lrs:
                for seed in study.seeds:
                    run_dir = out / "runs" / f"{parametrization}_d{width}_lr{lr:.3g}_s{seed}"
                    cfg = load_config(ExperimentConfig, repo / "experiments" / "tiny.yaml",
                                      run_overrides(study, parametrization, width, lr, seed, run_dir))
                    result = _finished(run_dir) or train(cfg)
                    loss = result.get("eval_loss")
                    rows.append({"parametrization": parametrization, "width": width, "learning_rate": lr,
                                 "seed": seed, "eval_loss": loss if loss is not None and math.isfinite(loss) else None})
                    print(f"{parametrization} d{width} lr {lr:.3g} seed {seed}: eval loss {rows[-1]['eval_loss']}",
                          flush=True)
    return rows


def _finished(run_dir: Path) -> dict | None:
    from chinchax import rundir

    data = rundir.run_json_or_none(run_dir)
    return data if data is not None and data.get("status") == "done" else None


def optima(rows: list[dict], parametrization: str, widths) -> dict:
    """Per width: the parabola optimum (scaling/hyperlaws.parabola_optimum) on runs that did not diverge."""
    from chinchax.scaling.hyperlaws import parabola_optimum

    out = {}
    for width in widths:
        mine = [r for r in rows if r["parametrization"] == parametrization and r["width"] == width
                and r["eval_loss"] is not None]
        lrs = [r["learning_rate"] for r in mine]
        fit = parabola_optimum(lrs, [r["eval_loss"] for r in mine], [r["seed"] for r in mine])
        out[width] = fit
    return out


def transfer_summary(rows: list[dict], study: Study) -> dict:
    summary = {}
    for parametrization in ("sp", "mup"):
        fits = optima(rows, parametrization, study.widths)
        vertices = [fits[w].lr for w in study.widths]
        narrow, wide = fits[study.widths[0]], fits[study.widths[-1]]
        # the widest width's parabola (its curvature around its vertex), read at the narrowest width's optimum
        lost = None
        if narrow.in_range and wide.in_range:
            lost = 0.5 * wide.curvature * (math.log(narrow.lr) - math.log(wide.lr)) ** 2
        finite = [v for v in vertices if math.isfinite(v)]
        summary[parametrization] = {
            "optima": {str(w): {"lr": _num(fits[w].lr), "interval": [_num(x) for x in fits[w].interval],
                                "in_range": fits[w].in_range, "loss": _num(fits[w].loss),
                                "curvature": _num(fits[w].curvature), "note": fits[w].note}
                       for w in study.widths},
            "drift": max(finite) / min(finite) if len(finite) == len(vertices) else None,
            "loss_lost_at_widest_with_narrowest_optimum": lost,
        }
    return summary


def _num(x):
    return float(x) if x is not None and math.isfinite(x) else None


def plot(rows: list[dict], study: Study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = matplotlib.colormaps["viridis"]
    for ax, parametrization in zip(axes, ("sp", "mup"), strict=True):
        for i, width in enumerate(study.widths):
            mean = []
            for lr in study.lrs:
                losses = [r["eval_loss"] for r in rows if r["parametrization"] == parametrization
                          and r["width"] == width and r["learning_rate"] == lr and r["eval_loss"] is not None]
                mean.append(np.mean(losses) if losses else np.nan)
            ax.plot(study.lrs, mean, marker="o", ms=3, color=colors(i / max(len(study.widths) - 1, 1)),
                    label=f"d_model {width}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate")
        titles = {"sp": "standard parametrization", "mup": f"µP (base d_model {study.widths[0]})"}
        ax.set_title(titles[parametrization])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"eval loss after {study.steps} steps (mean of {len(study.seeds)} seeds)")
    finite = [r["eval_loss"] for r in rows if r["eval_loss"] is not None]
    if finite:
        lo = min(finite)
        axes[0].set_ylim(lo - 0.05, lo + max(1.0, 0.25 * lo))
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(summary: dict, study: Study) -> str:
    lines = ["# µTransfer: learning-rate optimum against width", "",
             f"Widths {list(study.widths)}, lrs {[float(f'{x:.4g}') for x in study.lrs]}, seeds {list(study.seeds)}, "
             f"{study.steps} steps of {study.batch_size} x {study.seq_len} tokens.", "",
             "| parametrization | width | optimum lr | 95% interval | in range |", "|---|---|---|---|---|"]
    for p in ("sp", "mup"):
        for w, o in summary[p]["optima"].items():
            lo, hi = o["interval"]
            lr = f"{o['lr']:.4g}" if o["lr"] else "-"
            interval = f"[{lo:.4g}, {hi:.4g}]" if lo and hi else "-"
            lines.append(f"| {p} | {w} | {lr} | {interval} | {o['in_range']} |")
    lines.append("")
    for p in ("sp", "mup"):
        drift, lost = summary[p]["drift"], summary[p]["loss_lost_at_widest_with_narrowest_optimum"]
        drift_text = f"{drift:.2f}x" if drift else "n/a (a vertex out of range)"
        lost_text = f"{lost:.4f} nats" if lost is not None else "n/a"
        lines.append(f"- {p}: drift of the optimum (largest / smallest vertex) {drift_text}; loss lost at the "
                     f"widest width with the narrowest width's optimum {lost_text}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from chinchax import jsonio
    from chinchax.fileio import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="toy size (CI): 4 widths x 5 lrs x 2 seeds, 40 steps")
    parser.add_argument("--out", default=None, help="default ./mup_transfer (./mup_transfer_quick with --quick)")
    args = parser.parse_args(argv)
    study = QUICK if args.quick else FULL
    out = Path(args.out or ("mup_transfer_quick" if args.quick else "mup_transfer"))
    out.mkdir(parents=True, exist_ok=True)
    rows = run_all(study, out)
    with open(out / "results.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.csv.tmp").replace(out / "results.csv")
    summary = transfer_summary(rows, study)
    write_text_atomic(out / "summary.json", jsonio.dumps({"study": study.__dict__, **summary}, indent=1))
    plot(rows, study, out / "transfer.png")
    text = report(summary, study)
    write_text_atomic(out / "report.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
