"""grain worker processes (data.worker_count > 0): the stream is deterministic and resumes exactly."""

import numpy as np
import pytest

from chinchax.data import pipeline as P
from chinchax.data.config import DataConfig
from chinchax.data.tokenizers import load_tokenizer


@pytest.mark.slow
def test_worker_processes_resume_exactly():
    tok = load_tokenizer("byte")
    source = P.register_memory_source("workers", {"train": [f"doc {i} " * (i % 7 + 1) for i in range(200)]})
    cfg = DataConfig(source=source, seq_len=32, worker_count=2, packing="first_fit", objective="prefix_lm")
    it = P.train_iterator(cfg, tok, global_batch_size=4)
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    resumed = P.train_iterator(cfg, tok, global_batch_size=4)
    resumed.set_state(state)
    for a, b in zip(expected, [next(resumed) for _ in range(3)], strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    for i in (it, resumed):
        i.close()
