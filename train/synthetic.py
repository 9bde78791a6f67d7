"""A checkpointable iterator over batches cut from an in-memory token array (causal LM).

The GLOBAL batch of step t is a pure function of (tokens, seed, t); each host takes its rows of it. So
one process and several processes see the same global batches, which the multi-host test needs (the grain
pipeline shards documents per host instead). Also used by benchmarks (random tokens, no pipeline) and
tests. Same interface as the grain iterator: `next()`, `get_state()`, `set_state()`.
"""

from __future__ import annotations

import numpy as np


class TokenArrayBatches:
    def __init__(
        self,
        tokens: np.ndarray,
        *,
        global_batch_size: int,
        seq_len: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"global batch {global_batch_size} is not divisible by {process_count} processes"
            )
        if len(tokens) <= seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one row of {seq_len + 1}")
        self.tokens = np.asarray(tokens, np.int32)
        self.global_batch_size, self.seq_len, self.seed = global_batch_size, seq_len, seed
        per_host = global_batch_size // process_count
        self.rows = slice(process_index * per_host, (process_index + 1) * per_host)
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.position])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, self.global_batch_size)[self.rows]
        window = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts])
        self.position += 1
        return {
            "inputs": window[:, :-1],
            "targets": window[:, 1:],
            "loss_weights": np.ones((len(starts), self.seq_len), np.float32),
        }

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])


def random_tokens(n: int, vocab_size: int, seed: int = 0) -> np.ndarray:
    """Tokens with learnable structure (a noisy repeating pattern), so a tiny model's loss goes down."""
    rng = np.random.default_rng(seed)
    period = rng.integers(1, vocab_size, 97)
    tokens = np.resize(period, n)
    noise = rng.random(n) < 0.1
    tokens[noise] = rng.integers(1, vocab_size, int(noise.sum()))
    return tokens.astype(np.int32)
