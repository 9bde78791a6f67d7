"""Peak RSS of building a corpus from Parquet shards, against the shards' size on disk.

    python benchmarks/parquet_build_rss.py --dir /tmp/pq-rss              # 1 GB of shards: generate, measure
    python benchmarks/parquet_build_rss.py --dir /tmp/pq-rss --gb 2 --shards 8 --rows-per-group 20000
    python benchmarks/parquet_build_rss.py --dir /tmp/pq-rss --clean       # delete shards and builds after

Writes synthetic shards (random words with a Zipf-like frequency, one row group at a time, snappy as
pyarrow writes by default) under DIR/shards, then measures, each in a fresh process (ru_maxrss of that
process: its VmHWM, which includes the interpreter and its imports; ru_maxrss is printed too, but Linux
carries the parent's peak RSS over fork and exec into it, so it is only right in a small parent):
  - `imports`: the imports alone (pyarrow, tensorflow_datasets, chinchax.data), the floor;
  - `scan`: text_builder.scan over all shards (reading every row group's text column: the Parquet side);
  - `build half` / `build`: ensure_built (scan, then TFDS writes train and validation ArrayRecord) over
    the first half of the shards and over all of them, so a flat peak shows the build is bounded.
Prints one JSON line per phase and the ratios peak RSS / total shard bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path


def generate(shard_dir: Path, *, gb: float, shards: int, rows_per_group: int, words_per_doc: int, seed: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    params = {"gb": gb, "shards": shards, "rows_per_group": rows_per_group, "words_per_doc": words_per_doc,
              "seed": seed}
    stamp = shard_dir / "params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        return
    shutil.rmtree(shard_dir, ignore_errors=True)
    shard_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, int(rng.integers(2, 10)))) for _ in range(20000)]
    target = gb * 1e9 / shards
    schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
    row = 0
    for s in range(shards):
        path = shard_dir / f"train-{s:05d}-of-{shards:05d}.parquet"
        with pq.ParquetWriter(path, schema) as writer:
            while not path.exists() or path.stat().st_size < target:  # sizes are exact after each row group
                ids = np.minimum(rng.zipf(1.3, (rows_per_group, words_per_doc)), len(vocab)) - 1
                lengths = rng.integers(words_per_doc // 4, words_per_doc, rows_per_group)
                texts = [" ".join([vocab[i] for i in r[:n]]) for r, n in zip(ids, lengths, strict=True)]
                writer.write_table(pa.table({"id": np.arange(row, row + rows_per_group), "text": texts}, schema),
                                   row_group_size=rows_per_group)
                row += rows_per_group
        meta = pq.ParquetFile(path).metadata
        group = meta.row_group(0)
        print(f"wrote {path.name}: {path.stat().st_size / 1e6:.0f} MB, {meta.num_row_groups} row groups of "
              f"{group.num_rows} rows, {group.total_byte_size / 1e6:.1f} MB uncompressed, "
              f"{sum(group.column(c).total_compressed_size for c in range(group.num_columns)) / 1e6:.1f} MB "
              f"on disk", flush=True)
    stamp.write_text(json.dumps(params))


def vm_hwm_bytes() -> int:
    """This process's own peak resident set (Linux /proc), not counting what it inherited at exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(phase: str, source: str, data_dir: str, max_files: int | None) -> None:
    """One measured phase in this (fresh) process; prints a JSON line."""
    t0 = time.perf_counter()
    import pyarrow  # noqa: F401
    import tensorflow_datasets as tfds

    from chinchax.data import sources, text_builder

    tfds.disable_progress_bar()
    out: dict = {"phase": phase}
    if phase != "imports":
        spec = sources.corpus_spec(source, max_files=max_files)
        out["shard_bytes"] = sum(p.stat().st_size for p in spec.files)
        out["shards"] = len(spec.files)
        if phase == "scan":
            out["documents"] = text_builder.scan(spec).num_docs
        else:
            _, manifest = text_builder.ensure_built(spec, data_dir, force=True)
            out["documents"] = manifest["num_docs"]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_rss_bytes"] = vm_hwm_bytes()
    out["ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="scratch folder outside the repository (shards, builds)")
    ap.add_argument("--gb", type=float, default=1.0, help="total size of the shards on disk (default 1)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rows-per-group", type=int, default=10000)
    ap.add_argument("--words-per-doc", type=int, default=800, help="at most; a document has 1/4 to all of it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clean", action="store_true", help="delete the shards and builds at the end")
    ap.add_argument("--child", nargs=4, metavar=("PHASE", "SOURCE", "DATA_DIR", "MAX_FILES"), help=argparse.SUPPRESS)
    ap.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    root = Path(args.dir).resolve()
    shard_dir = root / "shards"
    if args.child:
        phase, source, data_dir, max_files = args.child
        child(phase, source, data_dir, int(max_files) or None)
        return
    if args.generate_only:
        generate(shard_dir, gb=args.gb, shards=args.shards, rows_per_group=args.rows_per_group,
                 words_per_doc=args.words_per_doc, seed=args.seed)
        return
    # generated in a process of its own, so that this one stays small (see ru_maxrss above)
    subprocess.run([sys.executable, __file__, *sys.argv[1:], "--generate-only"], check=True)
    source = f"parquet:{shard_dir}"
    results = {}
    for phase, max_files in (("imports", 0), ("scan", 0), ("build half", max(1, args.shards // 2)), ("build", 0)):
        data_dir = root / "data"
        cmd = [sys.executable, __file__, "--dir", str(root), "--child", phase, source, str(data_dir), str(max_files)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"{phase} failed:\n{proc.stderr[-3000:]}")
        line = proc.stdout.strip().splitlines()[-1]
        results[phase] = json.loads(line)
        print(line, flush=True)
        shutil.rmtree(data_dir, ignore_errors=True)  # a build takes as much disk as the text
    floor = results["imports"]["peak_rss_bytes"]
    for phase in ("scan", "build half", "build"):
        r = results[phase]
        print(f"{phase:>10}: {r['shards']} shards, {r['shard_bytes'] / 1e9:.2f} GB, {r['documents']:,} documents, "
              f"{r['seconds']} s: peak RSS {r['peak_rss_bytes'] / 2**20:,.0f} MiB; peak RSS / shard bytes "
              f"{r['peak_rss_bytes'] / r['shard_bytes']:.3f}, above the imports' {floor / 2**20:.0f} MiB "
              f"{(r['peak_rss_bytes'] - floor) / r['shard_bytes']:.3f}")
    print(f"build / build half peak RSS: {results['build']['peak_rss_bytes'] / results['build half']['peak_rss_bytes']:.2f} "
          f"for {results['build']['shard_bytes'] / results['build half']['shard_bytes']:.2f}x the shards")
    if args.clean:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    main()
