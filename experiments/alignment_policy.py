"""The initial policy of the alignment study and tests: a small byte-level decoder pretrained with chinchax's
own trainer (`train.trainer.train`) on Python text held in memory (train.synthetic.TokenArrayBatches), so
it writes Python-looking function bodies after a `def` line.

    from chinchax.experiments.alignment_policy import pretrain_policy
    run = pretrain_policy("runs/policy", texts, steps=300, overrides=["model.d_model=64"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

POLICY_DEFAULTS = (
    "model.preset=tiny-gpt2",
    "model.vocab_size=384",
    "model.max_len=128",
    "model.d_model=32",
    "model.n_layers=1",
    "model.n_heads=2",
    "model.d_ff=64",
    "data.seq_len=64",
    "optimizer.learning_rate=3e-3",
    "optimizer.warmup_steps=10",
    "optimizer.weight_decay=0.0",
    "trainer.batch_size=16",
    "trainer.log_every=10",
    "trainer.progress_bar=false",
)


def pretrain_policy(run_dir: str | Path, texts: Sequence[str], *, steps: int, overrides: Sequence[str] = ()) -> dict:
    """Train (or resume) a policy run dir; returns its run.json. Documents are joined with EOS."""
    from chinchax import configlib
    from chinchax.data.tokenizers import ByteTokenizer
    from chinchax.train.config import ExperimentConfig
    from chinchax.train.synthetic import TokenArrayBatches
    from chinchax.train.trainer import train

    tok = ByteTokenizer()
    ids = np.concatenate([np.append(tok.encode_array(t), tok.eos_id) for t in texts]).astype(np.int32)
    cfg = configlib.load_config(
        ExperimentConfig,
        None,
        [*POLICY_DEFAULTS, f"trainer.run_dir={run_dir}", f"trainer.steps={steps}",
         f"trainer.checkpoint_every={steps}", *overrides],
    )

    def data(i, n):
        batches = TokenArrayBatches(ids, global_batch_size=cfg.trainer.batch_size, seq_len=cfg.data.seq_len,
                                    seed=cfg.trainer.seed, process_index=i, process_count=n)
        return batches, None, tok

    return train(cfg, data=data)


# A few Python functions: enough text for a tiny test policy to pick up indentation and names.
TEST_TEXTS = (
    "def add(a, b):\n    return a + b\n",
    "def scale(x, k):\n    y = x * k\n    return y\n",
    "def first(items):\n    for item in items:\n        return item\n    return None\n",
    "def clamp(v, lo, hi):\n    if v < lo:\n        return lo\n    if v > hi:\n        return hi\n    return v\n",
) * 8
