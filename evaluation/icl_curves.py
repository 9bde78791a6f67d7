"""In-context learning across scale: every run of a sweep scored at k = 0, 1, 4, 16 shots, as a table and as
the plot of Brown et al. 2020 (fig. 1.2) and Wei et al. 2022: metric against model size N and against
training compute, one line per k, with standard-error bars.

    chinchax eval SWEEP_DIR --task quiz.jsonl --shots 0,1,4,16      # -> SWEEP_DIR/icl/icl.csv, icl.json, *.png

N is run.json's `n_params` (Chinchilla's convention, embeddings included) and compute its `flops_6nd`; a run
without run.json (still training, or a converted checkpoint) is counted from its model config
(`chinchax.model.counting`) and has no compute. Generation tasks plot ROUGE-L and BLEU (BLEU's standard
error from sacrebleu's bootstrap, `metrics.bleu`).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from chinchax import jsonio, rundir
from chinchax.errors import UserError
from chinchax.fileio import write_text_atomic

PLOTTED = {"multiple_choice": ("acc", "acc_norm"), "generation": ("rougeL", "bleu")}
COLUMNS = ("run", "n_params", "flops", "n_tokens", "task", "kind", "shots", "metric", "value", "stderr", "examples", "chance")


def _is_run(path: Path) -> bool:
    return rundir.kind_of(path) not in (None, rundir.REWARD)


def expand_run_dirs(paths: list[str]) -> tuple[list[Path], Path | None]:
    """Run directories given directly or as a sweep directory (its `runs/*`); and the sweep dir if there is one."""
    out, sweep = [], None
    for p in map(Path, paths):
        if _is_run(p):
            out.append(p)
        elif (p / "runs").is_dir():
            runs = sorted(r for r in (p / "runs").iterdir() if r.is_dir() and _is_run(r))
            if not runs:
                raise UserError(f"sweep directory {p} has no run directories under runs/ yet; run the sweep first")
            out += runs
            sweep = p if sweep is None else sweep
        else:
            out.append(p)  # loading it says what is wrong (and a sweep of several dirs skips it)
    return out, sweep


def default_out(run_dirs: list[Path], sweep: Path | None) -> Path:
    """SWEEP/icl; runs listed one by one from the same SWEEP/runs/ count as that sweep."""
    parents = {Path(r).absolute().parent for r in run_dirs}
    if sweep is None and len(parents) == 1 and next(iter(parents)).name == "runs":
        sweep = next(iter(parents)).parent
    return sweep / "icl" if sweep is not None else Path(run_dirs[0]).absolute().parent / "icl"


def run_scale(run_dir: Path, model_cfg) -> dict:
    """N, compute and tokens of a run: from run.json when the run finished, else N from the model config."""
    info = rundir.run_json_or_none(run_dir) or {}
    if info.get("n_params"):
        return {"n_params": info["n_params"], "flops": info.get("flops_6nd"), "n_tokens": info.get("n_tokens")}
    from chinchax.model.counting import count_params

    return {"n_params": count_params(model_cfg).total, "flops": None, "n_tokens": None}


def rows_for(run_name: str, scale: dict, metrics: dict) -> list[dict]:
    """Table rows of one run's task result (every metric that has a standard error)."""
    rows = []
    for name, value in metrics.items():
        stderr = metrics.get(f"{name}_stderr")
        if name.endswith("_stderr") or stderr is None or not isinstance(value, (int, float)):
            continue
        rows.append({"run": run_name, **scale, "task": metrics["task"], "kind": metrics["kind"],
                     "shots": metrics["shots"], "metric": name, "value": value, "stderr": stderr,
                     "examples": metrics["examples"], "chance": metrics.get("chance")})
    return rows


def write_table(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out_dir / "icl.csv", buf.getvalue())
    write_text_atomic(out_dir / "icl.json", jsonio.dumps({"rows": rows}, indent=1))
    return out_dir / "icl.csv", out_dir / "icl.json"


def _figures(rows: list[dict]):
    """(file stem, title, rows, line key, line label) of every figure: k-shot lines per (task, metric); for
    chain-of-thought tasks, one line per method per (task, k)."""
    for task in sorted({r["task"] for r in rows}):
        task_rows = [r for r in rows if r["task"] == task]
        kind = task_rows[0]["kind"]
        if kind == "cot":
            for k in sorted({r["shots"] for r in task_rows}):
                sel = [r for r in task_rows if r["shots"] == k and r["metric"].endswith("_acc")]
                yield f"{task}_cot_{k}shot", f"{task}, {k}-shot: chain of thought vs direct", sel, "metric", "{}", "accuracy"
            continue
        for metric in PLOTTED[kind]:
            sel = [r for r in task_rows if r["metric"] == metric]
            if sel:
                yield f"{task}_{metric}", f"{task}: {metric} vs scale, one line per k", sel, "shots", "{}-shot", metric


def plot(rows: list[dict], out_dir: Path) -> list[Path]:
    """One figure per task and metric: left vs N, right vs compute (when known); error bars 1 s.e."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    written = []
    for stem, title, sel, line_key, line_label, ylabel in _figures(rows):
        if not sel:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, x_key, label in ((axes[0], "n_params", "parameters N"), (axes[1], "flops", "training FLOPs (6ND)")):
            for line in sorted({r[line_key] for r in sel}):
                pts = sorted((r[x_key], r["value"], r["stderr"]) for r in sel if r[line_key] == line and r[x_key] is not None)
                if not pts:
                    continue
                xs, ys, es = zip(*pts, strict=True)
                es = [0.0 if e is None or not math.isfinite(e) else e for e in es]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=line_label.format(line))
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # crowded minor labels overlap
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
        chance = [r.get("chance") for r in sel if r.get("chance") is not None]
        if chance:
            axes[0].axhline(chance[0], color="grey", ls=":", lw=1, label="chance")
        axes[0].set_ylabel(ylabel)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{title} (error bars: 1 s.e.)")
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.png")
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)  # atomic, like every other output
        plt.close(fig)
        written.append(path)
    return written
