"""Batch comparisons shared by the data tests (loaded by path, like sweep_fakes.py)."""

import numpy as np


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
    """Equal batch lists: the same keys, dtypes and values, bitwise."""
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
