"""The causal LM data path: data/concat_batches.py against grain's per-row chain it replaced, in one run.

    python benchmarks/concat_batches.py                     # the demo's data: stdlib, bytes, 16 x 64, window 4096
    taskset -c 1 python benchmarks/concat_batches.py --seq-len 512 --shuffle-rows 0

Prints ms a batch of each (alternating, best of --repeats), their ratio, and whether the batches are
bitwise equal. grain's chain is what `build_dataset` ran before: pack_tokens(concat) -> WindowShuffle ->
batch, then the same per-batch causal LM objective.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def grain_chain(cfg, tokenizer, batch_size: int, seed: int):
    """The per-row grain chain over the same document stream (the reference the tests compare with)."""
    from chinchax.data import objectives as obj
    from chinchax.data import pipeline
    from chinchax.data.concat_batches import per_row_chain

    special = obj.SpecialTokens.from_tokenizer(tokenizer)
    docs = pipeline.open_documents(cfg, cfg.train_split)
    tokens = pipeline._token_stream(docs, pipeline.Tokenize(tokenizer, special.eos_id), shard=(0, 1),
                                    shuffle_seed=seed, repeat=True)
    batches = per_row_chain(tokens, seq_len=cfg.seq_len, batch_size=batch_size, shuffle_rows=cfg.shuffle_rows, seed=seed)
    return iter(batches.map(pipeline.CausalLMBatch(special.bos_id)))


def ms_per_batch(it, batches: int) -> float:
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return 1e3 * (time.perf_counter() - t0) / batches


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shuffle-rows", type=int, default=4096)
    p.add_argument("--batches", type=int, default=1500)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    from chinchax.data import pipeline
    from chinchax.data.config import DataConfig
    from chinchax.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("byte")
    cfg = DataConfig(source="stdlib", tokenizer="byte", seq_len=args.seq_len, shuffle_rows=args.shuffle_rows).validate()
    seed = pipeline._host_seed(cfg.seed, 0)
    new, old = pipeline.train_iterator(cfg, tokenizer, global_batch_size=args.batch_size), grain_chain(
        cfg, tokenizer, args.batch_size, seed)
    equal = all(all(np.array_equal(a[k], b[k]) for k in a) for a, b in ((next(new), next(old)) for _ in range(300)))
    times = {"grain": [], "concat_batches": []}
    for _ in range(args.repeats):  # alternating, so both see the same machine
        times["grain"].append(ms_per_batch(old, args.batches))
        times["concat_batches"].append(ms_per_batch(new, args.batches))
    best = {k: min(v) for k, v in times.items()}
    result = {**{f"{k}_ms_per_batch": v for k, v in best.items()}, "ratio": best["grain"] / best["concat_batches"],
              "bitwise_equal_first_300": equal, "seq_len": args.seq_len, "batch_size": args.batch_size,
              "shuffle_rows": args.shuffle_rows}
    for k, v in result.items():
        print(f"{k:>26}: {v:.4g}" if isinstance(v, float) else f"{k:>26}: {v}")
    return result


if __name__ == "__main__":
    main()
