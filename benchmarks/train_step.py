"""Speed of the train step: achieved FLOP/s (detailed count) against a plain `jnp.dot` of the same dtype.

    python benchmarks/train_step.py                      # CPU preset: d512, 8 layers, seq 512, float32
    python benchmarks/train_step.py --preset 350m        # GPU/TPU: 350M decoder, seq 2048, bfloat16
    python benchmarks/train_step.py --preset 1.3b --batch 8 --remat dots
    python benchmarks/train_step.py --d-model 768 --layers 12 --seq 1024 --dtype bfloat16 --steps 10

Prints: compile time, step time (the best of --steps timed steps, like the best-of-5 `jnp.dot` it is
compared with; the mean is printed too), tokens/s, achieved FLOP/s (chinchax.model.counting `detailed`: forward +
backward matmuls, causal attention halved), the peak of a plain `jnp.dot` measured in the same process and
dtype, their ratio, and on accelerators the MFU against the data-sheet peak (chinchax.train.mfu). One
process, random tokens, no data pipeline; the step is the trainer's own (sharded over all local devices
with the mesh given by --mesh, default data-parallel).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from chinchax import jsonio

PRESETS = {
    # name: (d_model, n_layers, n_heads, d_ff, vocab, seq_len, batch, dtype)
    "cpu": (512, 8, 8, 2048, 8192, 512, 4, "float32"),
    "350m": (1024, 24, 16, 4096, 32768, 2048, 16, "bfloat16"),
    "1.3b": (2048, 24, 16, 8192, 32768, 2048, 8, "bfloat16"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    for name in ("d-model", "layers", "heads", "d-ff", "vocab", "seq", "batch"):
        p.add_argument(f"--{name}", type=int, default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--remat", choices=("none", "full", "dots", "dots_no_batch"), default="none")
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument(
        "--scan-layers",
        action="store_true",
        help="run the layers with nnx.scan (the trainer's default: fast compiles for deep models); "
        "by default they are unrolled, which was 1.2x faster per step on CPU (docs/benchmarks.md)",
    )
    p.add_argument(
        "--packed",
        type=int,
        default=0,
        metavar="DOCS",
        help="pack DOCS documents of random lengths into each row (segment_ids and positions in the batch, as "
        "the data pipeline's packing makes them): the attention then has a segment mask (0 = one document)",
    )
    p.add_argument(
        "--max-segments",
        type=int,
        default=None,
        help="model.attention_max_segments: packed rows take cuDNN's fused attention on GPU; 0 = XLA's "
        "masked attention (default: DOCS of --packed)",
    )
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes; -1 = fill")
    p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    return p.parse_args(argv)


def peak_dot(dtype: str) -> tuple[float, int]:
    """Best FLOP/s of a square `jnp.dot` over a few sizes (small ones underuse big chips, big ones are slow
    on CPU): the practical peak of this device for this dtype."""
    import jax

    from chinchax.train.mfu import measure_matmul_peak

    sizes = (512, 1024, 2048) if jax.devices()[0].platform == "cpu" else (4096, 8192)
    return max((measure_matmul_peak(dtype, n=n, repeats=5), n) for n in sizes)


def sustained_dot(dtype: str, n: int, seconds: float) -> float:
    """FLOP/s of back-to-back n x n `jnp.dot`s over `seconds`: on a shared CPU this sees the same
    contention as the train step it is compared with (the best-of-5 burst does not)."""
    import jax
    import jax.numpy as jnp

    from chinchax.model.layers import compute_dtype

    jdtype = compute_dtype(dtype)
    a, b = jnp.ones((n, n), jdtype), jnp.full((n, n), 0.5, jdtype)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        dot(a, b).block_until_ready()
        count += 1
    return 2.0 * n**3 * count / (time.perf_counter() - t0)


def pack_documents(batch: dict, docs: int, rng) -> dict:
    """Cut every row into `docs` documents at random points: segment ids 1..docs, positions restarting at
    0 in each, as data/packing.py's rows have them."""
    B, L = batch["inputs"].shape
    segment_ids_BL = np.zeros((B, L), np.int32)
    positions_BL = np.zeros((B, L), np.int32)
    for b in range(B):
        cuts = np.sort(rng.choice(np.arange(1, L), size=docs - 1, replace=False)) if docs > 1 else []
        for i, (start, end) in enumerate(zip([0, *cuts], [*cuts, L], strict=True), start=1):
            segment_ids_BL[b, start:end] = i
            positions_BL[b, start:end] = np.arange(end - start)
    return {**batch, "segment_ids": segment_ids_BL, "positions": positions_BL}


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    from chinchax.model.config import ModelConfig
    from chinchax.model.counting import count_params, flops_per_token
    from chinchax.sharding import make_mesh
    from chinchax.train.config import OptimizerConfig
    from chinchax.train.mfu import table_peak
    from chinchax.train.optimizer import make_optimizer
    from chinchax.train.state import init_train_state, model_parts
    from chinchax.train.step import batch_sharding, jit_train_step
    from chinchax.train.synthetic import TokenArrayBatches

    d, n_layers, heads, d_ff, vocab, seq, batch, dtype = PRESETS[args.preset]
    d, n_layers, heads = args.d_model or d, args.layers or n_layers, args.heads or heads
    d_ff, vocab, seq, batch = args.d_ff or d_ff, args.vocab or vocab, args.seq or seq, args.batch or batch
    dtype = args.dtype or dtype
    cfg = ModelConfig(
        name=f"bench-{args.preset}",
        vocab_size=vocab,
        d_model=d,
        n_layers=n_layers,
        n_heads=heads,
        d_ff=d_ff,
        max_len=seq,
        position="rope",
        norm="rmsnorm",
        activation="gelu",
        use_bias=False,
        dtype=dtype,
        remat=args.remat,
        scan_layers=args.scan_layers,
        attention_max_segments=args.packed if args.max_segments is None else args.max_segments,
    ).validate()
    mesh = make_mesh(tuple(int(x) for x in args.mesh.split(",")))
    parts = model_parts(cfg, mesh, 0)
    tx, _ = make_optimizer(OptimizerConfig(warmup_steps=1), 1000, parts.decay_mask)
    lr = np.float32(3e-4)
    state, shardings = init_train_state(cfg, tx, parts, mesh, 0)
    rng = np.random.default_rng(0)
    batches = TokenArrayBatches(
        rng.integers(1, vocab, 1 << 20).astype(np.int32), global_batch_size=batch, seq_len=seq
    )
    if args.packed:
        batches = (pack_documents(b, args.packed, rng) for b in batches)
    data = batch_sharding(mesh)
    put = lambda b: {k: jax.device_put(v, data) for k, v in b.items()}  # noqa: E731
    first = put(next(batches))
    step = jit_train_step(
        mesh,
        shardings,
        first.keys(),
        parts=parts,
        tx=tx,
        microbatches=args.microbatches,
        z_loss=0.0,
    )

    t0 = time.perf_counter()
    compiled = step.lower(state, first, lr).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = compiled(state, first, lr)  # warm-up
    jax.block_until_ready(metrics)
    inputs = [put(next(batches)) for _ in range(args.steps)]
    times = []
    for b in inputs:  # each step timed alone: on a shared machine the best step is the machine's own speed
        t0 = time.perf_counter()
        state, metrics = compiled(state, b, lr)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    step_s, mean_step_s = min(times), sum(times) / len(times)

    tokens = batch * seq
    flops = flops_per_token(cfg, seq)
    achieved = flops.detailed * tokens / step_s
    peak, peak_n = peak_dot(dtype)
    sustained = sustained_dot(dtype, peak_n, seconds=min(max(sum(times), 2.0), 30.0))
    n_dev = len(jax.devices())
    table = table_peak(jax.devices()[0].device_kind, dtype)
    result = {
        "preset": args.preset,
        "device": jax.devices()[0].device_kind,
        "n_devices": n_dev,
        "dtype": dtype,
        "d_model": d,
        "n_layers": n_layers,
        "seq_len": seq,
        "batch": batch,
        "remat": args.remat,
        "scan_layers": args.scan_layers,
        "packed_docs": args.packed,
        "attention_max_segments": cfg.attention_max_segments,
        "n_params": count_params(cfg).total,
        "compile_s": compile_s,
        "step_s": step_s,
        "mean_step_s": mean_step_s,
        "tokens_per_s": tokens / step_s,
        "achieved_flops_per_s": achieved,
        "jnp_dot_peak_flops_per_s": peak * n_dev,
        "jnp_dot_size": peak_n,
        "ratio_to_jnp_dot": achieved / (peak * n_dev),
        "sustained_jnp_dot_flops_per_s": sustained * n_dev,
        "sustained_ratio": (flops.detailed * tokens / mean_step_s) / (sustained * n_dev),
        "mfu_vs_datasheet": achieved / (table * n_dev) if table else None,
        "loss": float(metrics["loss"]),
    }
    if args.json:
        print(jsonio.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v:,.4g}" if isinstance(v, float) else f"{k:>26}: {v}")
    return result


if __name__ == "__main__":
    from chinchax.hostenv import reexec_with_hugepage_malloc

    reexec_with_hugepage_malloc()  # as `chinchax` does: the step's buffers on huge pages
    main()
