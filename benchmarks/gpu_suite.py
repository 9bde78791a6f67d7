"""The whole one-GPU measurement in one go (issue 14's MFU targets: >= 55% for 1.3B, >= 45% for 350M).

    python benchmarks/gpu_suite.py --out /tmp/gpu                 # on the GPU: about 6-7 minutes
    python benchmarks/gpu_suite.py --tiny --out /tmp/cpu-check    # the same plan on CPU at toy sizes (tests)

Runs benchmarks/train_step.py (the trainer's own step) once per variant, each in a fresh process so one
variant's memory or a crash cannot touch the next: the two presets at the batch of docs/benchmarks.md, larger
batches, remat policies, scanned layers, and packed rows (segment masks: cuDNN's packed attention vs XLA's
masked attention); then benchmarks/int8_matmul.py (issue 16's int8 speed ratio). Writes results.jsonl (one
train_step JSON line per variant, failures included), results.md (a table to paste into docs/benchmarks.md)
and int8_matmul.jsonl. Stops starting variants when --budget-s would be
exceeded, so the suite always finishes in time and says what it skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from chinchax import jsonio
from chinchax.fileio import write_text_atomic

# (name, extra train_step arguments), most informative first: the budget may cut the tail.
VARIANTS = [
    ("1.3b", ["--preset", "1.3b"]),
    ("350m", ["--preset", "350m"]),
    ("350m b32", ["--preset", "350m", "--batch", "32"]),
    ("1.3b b16", ["--preset", "1.3b", "--batch", "16"]),
    ("350m packed8 cudnn", ["--preset", "350m", "--packed", "8"]),
    ("350m packed8 xla", ["--preset", "350m", "--packed", "8", "--max-segments", "0"]),
    ("1.3b packed8 cudnn", ["--preset", "1.3b", "--packed", "8"]),
    ("1.3b remat dots", ["--preset", "1.3b", "--batch", "16", "--remat", "dots"]),
    ("1.3b remat dots_no_batch", ["--preset", "1.3b", "--batch", "16", "--remat", "dots_no_batch"]),
    ("350m b64 remat full", ["--preset", "350m", "--batch", "64", "--remat", "full"]),
    ("1.3b scan", ["--preset", "1.3b", "--scan-layers"]),
    ("350m scan", ["--preset", "350m", "--scan-layers"]),
]
# Toy shapes for --tiny: the plan runs end to end on CPU in seconds per variant (batches scaled by 1/8).
TINY = {"--d-model": "32", "--layers": "2", "--heads": "2", "--d-ff": "64", "--vocab": "256", "--seq": "64",
        "--dtype": "float32"}  # fmt: skip
PRESET_BATCH = {"350m": 16, "1.3b": 8}
INT8 = "int8 matmul"  # the last step: benchmarks/int8_matmul.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for results.jsonl and results.md")
    p.add_argument("--budget-s", type=float, default=450.0, help="start no variant after this many seconds")
    p.add_argument("--timeout-s", type=float, default=150.0, help="the most one variant may take")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--tiny", action="store_true", help="toy shapes (a CPU check of the plan)")
    return p.parse_args(argv)


def variant_args(extra: list[str], *, tiny: bool, steps: int) -> list[str]:
    """train_step.py's arguments for a variant; with `tiny`, its shapes swapped for toy ones."""
    flags: dict[str, str | None] = {}
    for i, a in enumerate(extra):
        if a.startswith("--"):
            value = extra[i + 1] if i + 1 < len(extra) and not extra[i + 1].startswith("--") else None
            flags[a] = value
    if tiny:
        batch = int(flags.get("--batch") or PRESET_BATCH[flags["--preset"]])
        flags.update(TINY, **{"--batch": str(max(2, batch // 4))})
    flags.update({"--steps": str(steps), "--json": None})
    return [x for flag, value in flags.items() for x in ([flag] if value is None else [flag, value])]


def run_variant(name: str, args: list[str], timeout_s: float) -> dict:
    script = Path(__file__).with_name("train_step.py")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout_s, env=os.environ
        )
    except subprocess.TimeoutExpired:
        return {"variant": name, "args": args, "error": f"timed out after {timeout_s:.0f} s"}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"variant": name, "args": args, "wall_s": wall, "error": " | ".join(tail) or f"exit {proc.returncode}"}
    return {"variant": name, "args": args, "wall_s": wall, **json.loads(lines[-1])}


def run_int8(*, tiny: bool, timeout_s: float) -> list[dict]:
    """benchmarks/int8_matmul.py in its own process: one row per shape, or one row with the error."""
    script = Path(__file__).with_name("int8_matmul.py")
    cmd = [sys.executable, str(script), "--json", *(["--tiny", "--repeats", "3"] if tiny else [])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=os.environ)
    except subprocess.TimeoutExpired:
        return [{"error": f"timed out after {timeout_s:.0f} s"}]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    for r in rows:
        print(f"int8 matmul {r['shape']}: bf16/w8a8 {r['speedup_w8a8']:.2f}x, bf16/w8 {r['speedup_w8']:.2f}x", flush=True)
    if proc.returncode != 0 or not rows:
        rows.append({"error": " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:]) or f"exit {proc.returncode}"})
    return rows


def table(rows: list[dict]) -> str:
    head = "| variant | batch | step (best) | tokens/s | ratio to jnp.dot | MFU vs datasheet | compile | note |"
    out = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['variant']} | | | | | | | {r['error'][:120]} |")
            continue
        mfu = f"{100 * r['mfu_vs_datasheet']:.1f}%" if r.get("mfu_vs_datasheet") else "n/a"
        out.append(
            f"| {r['variant']} | {r['batch']} x {r['seq_len']} | {r['step_s']:.3f} s | {r['tokens_per_s']:,.0f} | "
            f"{r['ratio_to_jnp_dot']:.2f} | {mfu} | {r['compile_s']:.1f} s | |"
        )
    return "\n".join(out) + "\n"


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wanted = {v.strip() for v in args.only.split(",") if v.strip()}
    unknown = wanted - {name for name, _ in VARIANTS} - {INT8}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {[n for n, _ in VARIANTS]}")
    start, rows = time.perf_counter(), []
    for name, extra in VARIANTS:
        if wanted and name not in wanted:
            continue
        if time.perf_counter() - start > args.budget_s:
            rows.append({"variant": name, "error": f"skipped: the {args.budget_s:.0f} s budget was spent"})
            continue
        row = run_variant(name, variant_args(extra, tiny=args.tiny, steps=args.steps), args.timeout_s)
        rows.append(row)
        write_text_atomic(out / "results.jsonl", "".join(jsonio.dumps(r) + "\n" for r in rows))
        print(table([row]).splitlines()[-1], flush=True)
    write_text_atomic(out / "results.jsonl", "".join(jsonio.dumps(r) + "\n" for r in rows))
    write_text_atomic(out / "results.md", table(rows))
    if not wanted or INT8 in wanted:
        left = args.budget_s - (time.perf_counter() - start)
        int8 = run_int8(tiny=args.tiny, timeout_s=args.timeout_s) if left > 0 else [{"error": "skipped: no budget left"}]
        write_text_atomic(out / "int8_matmul.jsonl", "".join(jsonio.dumps(r) + "\n" for r in int8))
        rows.append({"variant": INT8, "shapes": int8})
    print(f"{len(rows)} variants in {time.perf_counter() - start:.0f} s -> {out / 'results.md'}")
    return rows


if __name__ == "__main__":
    main()
