"""Concat-then-split packing, window shuffle of rows and batching in one numpy pass per window.

    ds = ConcatBatchesIterDataset(tokens, seq_len=L, batch_size=B, shuffle_rows=W, seed=s)
    next(iter(ds))  # {"tokens", "segment_ids", "positions"}: int32 [B, L]

`tokens` is an IterDataset of 1-D int32 token arrays, one per document (EOS included). The batches are
bitwise those of grain's chain, in the same order (tests/test_data_concat_batches.py checks it):

    pack_tokens(tokens, packing="concat")                       # ConcatThenSplitIterDataset
    -> WindowShuffleIterDataset(rows, window_size=W, seed=s)    # only when W > 0
    -> .batch(B, drop_remainder=True)

Why not grain's chain: it handles one row at a time in Python (a buffer object per piece of a document,
one `index_shuffle` call and two iterator/stats wrappers per row, then stacking B dicts); measured at 0.49
ms a batch of 16 x 64, 20-30% of a d_model 16 training step. Here a window of W rows is cut from the
concatenated documents with a few whole-array numpy operations, and a batch is a slice of it.

What grain does, and this reproduces:
  - rows are the concatenated stream cut every L tokens; segment_ids number the pieces of documents in a
    row from 1, positions restart at 0 in each piece, so a document cut by a row boundary continues in the
    next row as segment 1 at position 0;
  - a finite stream (repeat=False) ends with one last row padded with zeros (tokens, segment_ids and
    positions), if any tokens are left; the last window holds the n < W rows left and is shuffled with
    max_index n - 1; the last batch is dropped if it is short;
  - a window's output order is window[index_shuffle(p, max_index=n-1, seed=seed+window_index, rounds=4)]
    for p = n-1, n-2, ..., 0 (grain pops its shuffled list from the end). index_shuffle_all computes it for
    all p at once, bitwise as grain's C++ index_shuffle (see there why), and each window checks one index
    against grain's own function.

State (JSON): the parent's state before the document holding the current window's first token, the
number of that document's tokens already used by earlier windows, the window's index and how many of its
rows were handed out. Restoring re-reads and re-cuts that one window (as grain's window shuffle does).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import grain
import numpy as np

# Rows cut at once when there is no shuffle window: big enough that the per-window Python is negligible,
# small enough that eval (a fixed prefix of a finite stream) reads little more than it uses.
UNSHUFFLED_BLOCK_ROWS = 1024


class ConcatBatchesIterDataset(grain.IterDataset):
    """Token arrays -> concat-then-split rows -> optional window shuffle -> batches of `batch_size`."""

    def __init__(self, parent: grain.IterDataset, *, seq_len: int, batch_size: int, shuffle_rows: int, seed: int):
        super().__init__(parent)
        if seq_len < 1 or batch_size < 1 or shuffle_rows < 0:
            raise ValueError(f"need seq_len >= 1, batch_size >= 1, shuffle_rows >= 0; got {seq_len}, "
                             f"{batch_size}, {shuffle_rows}")
        self._seq_len = seq_len
        self._batch_size = batch_size
        self._shuffle_rows = shuffle_rows
        self._seed = seed

    def __iter__(self) -> _ConcatBatchesIterator:
        return _ConcatBatchesIterator(self._parent.__iter__(), seq_len=self._seq_len, batch_size=self._batch_size,
                                      shuffle_rows=self._shuffle_rows, seed=self._seed)

    def __str__(self) -> str:
        return (f"ConcatBatchesIterDataset(seq_len={self._seq_len}, batch_size={self._batch_size}, "
                f"shuffle_rows={self._shuffle_rows})")


def per_row_chain(tokens: grain.IterDataset, *, seq_len: int, batch_size: int, shuffle_rows: int, seed: int):
    """grain's per-row chain that ConcatBatchesIterDataset equals bitwise: the reference of the tests and of
    benchmarks/concat_batches.py (the pipeline itself never builds it)."""
    from chinchax.data import packing as pk

    rows = pk.pack_tokens(tokens, length=seq_len, packing="concat")
    if shuffle_rows:
        rows = grain.experimental.WindowShuffleIterDataset(rows, window_size=shuffle_rows, seed=seed)
    return rows.batch(batch_size, drop_remainder=True)


def _window_order(n: int, seed: int) -> np.ndarray:
    """Rows of a window of n in grain's WindowShuffle output order (its shuffled list, popped from the end)."""
    shuffled = index_shuffle_all(n, seed)
    # Guard against a grain whose index_shuffle differs from this copy (it also checks the arguments as
    # grain does: a seed past 2**32 raises its TypeError, as WindowShuffleIterDataset would).
    if int(shuffled[0]) != grain.experimental.index_shuffle(0, max_index=n - 1, seed=seed, rounds=SHUFFLE_ROUNDS):
        raise RuntimeError("grain's index_shuffle no longer matches data/concat_batches.py index_shuffle_all; "
                           "update it from grain's index_shuffle.cc")
    return shuffled[::-1].astype(np.int64)


# --- grain's index_shuffle for a whole window at once ----------------------------------------------------
# Why a copy: grain's C++ index_shuffle permutes one index per call, by cycle-walking a Simon block cipher
# of at least 16 bits; for a 4096-row window that is 16 cipher calls per row on average, 10 us a call,
# 41 ms a window (65% of the pipeline after the packing moved to numpy). Here the cipher is applied to its
# whole domain at once in numpy and the cycles walked on that table: ~4 ms a window, bitwise the same
# (tests/test_data_concat_batches.py compares every index with grain's for many sizes and seeds).
SHUFFLE_ROUNDS = 4  # grain's WindowShuffle uses 4
_M32 = 0xFFFFFFFF


def _seed_seq_words(seed: int, n: int) -> list[int]:
    """std::seed_seq{seed}.generate(n) (C++ [rand.util.seedseq]): the round keys of grain's cipher."""
    b, v = [0x8B8B8B8B] * n, [seed & _M32]
    s = len(v)
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(s + 1, n)
    for k in range(m):
        x = b[k % n] ^ b[(k + p) % n] ^ b[(k + n - 1) % n]
        r1 = (1664525 * (x ^ (x >> 27))) & _M32
        r2 = (r1 + (s if k == 0 else (k % n + v[k - 1]) if k <= s else k % n)) & _M32
        b[(k + p) % n] = (b[(k + p) % n] + r1) & _M32
        b[(k + q) % n] = (b[(k + q) % n] + r2) & _M32
        b[k % n] = r2
    for k in range(m, m + n):
        x = (b[k % n] + b[(k + p) % n] + b[(k + n - 1) % n]) & _M32
        r3 = (1566083941 * (x ^ (x >> 27))) & _M32
        r4 = (r3 - k % n) & _M32
        b[(k + p) % n] ^= r3
        b[(k + q) % n] ^= r4
        b[k % n] = r4
    return b


def index_shuffle_all(n: int, seed: int, rounds: int = SHUFFLE_ROUNDS) -> np.ndarray:
    """[index_shuffle(p, max_index=n-1, seed, rounds) for p in range(n)] as uint64, like grain's C++."""
    if n == 1:
        return np.zeros(1, np.uint64)
    max_index = n - 1
    block = math.ceil(math.log2(max_index))  # in floating point, as the C++ does
    block = max(block + block % 2, 16)
    w, mask = np.uint64(block // 2), np.uint64((1 << (block // 2)) - 1)
    keys = [np.uint64(k) & mask for k in _seed_seq_words(seed, rounds)]  # a bitset<W> keeps the low bits

    def rotl(x, r):
        return ((x << np.uint64(r)) | (x >> (w - np.uint64(r)))) & mask

    def f(x):
        return (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

    left = (np.arange(1 << block, dtype=np.uint64) >> w) & mask
    right = np.arange(1 << block, dtype=np.uint64) & mask
    for i in range(0, rounds, 2):  # the Feistel rounds, two keys at a time (SIMON_Rx2)
        left ^= f(right) ^ keys[i]
        right ^= f(left) ^ keys[i + 1]
    cipher = (left << w) | right  # cipher[x]: the block cipher over its whole domain
    out = cipher[:n].copy()
    todo = np.flatnonzero(out > max_index)
    while len(todo) > 64:  # cycle-walk: encrypt again until the value is in range
        out[todo] = cipher[out[todo]]
        todo = todo[out[todo] > max_index]
    table = cipher.tolist()
    for i in todo.tolist():  # the few long walks: scalar steps are cheaper than numpy calls here
        x = int(out[i])
        while x > max_index:
            x = table[x]
        out[i] = x
    return out


def pack_rows(pieces: list[np.ndarray], n_tokens: int, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pieces of documents, back to back (the first `n_tokens` tokens) -> tokens, segment_ids, positions
    [rows, L], the last row zero-padded (grain's ConcatThenSplit on one feature)."""
    L = seq_len
    n_rows = -(-n_tokens // L)
    size = n_rows * L
    tokens_T = np.zeros(size, np.int32)
    is_start_T = np.zeros(size, bool)
    at = 0
    for piece in pieces:  # one iteration per document, not per row
        take = min(len(piece), n_tokens - at)
        if take <= 0:
            break
        tokens_T[at : at + take] = piece[:take]
        is_start_T[at] = True
        at += take
    is_start_T[::L] = True  # every row starts a segment (a cut document continues as a new one)
    index_T = np.arange(size, dtype=np.int32)
    last_start_T = np.maximum.accumulate(np.where(is_start_T, index_T, 0))
    positions_T = index_T - last_start_T
    segment_ids_RL = np.cumsum(is_start_T.reshape(n_rows, L), axis=1, dtype=np.int32)
    pad_T = index_T >= n_tokens
    positions_T[pad_T] = 0
    segment_ids_RL.reshape(-1)[pad_T] = 0
    return tokens_T.reshape(n_rows, L), segment_ids_RL, positions_T.reshape(n_rows, L)


class _ConcatBatchesIterator(grain.DatasetIterator):
    def __init__(self, parent, *, seq_len: int, batch_size: int, shuffle_rows: int, seed: int):
        super().__init__(parent)
        self._L, self._B, self._seed = seq_len, batch_size, seed
        self._shuffle = shuffle_rows > 0
        self._window_rows = shuffle_rows if self._shuffle else UNSHUFFLED_BLOCK_ROWS
        # The document holding the next window's first token: (parent state before it, tokens, tokens used).
        self._carry: tuple[dict, np.ndarray, int] | None = None
        self._start: tuple[dict, int] = (self._parent.get_state(), 0)  # the current window's start
        self._window_index = 0
        self._rows: tuple[np.ndarray, ...] | None = None  # the current window, in output order
        self._taken = 0  # its rows handed out
        self._last_window = False  # the stream ended inside the current window

    def _fill(self) -> None:
        """Cut the window that starts at the carry (or at the parent's next document)."""
        if self._carry is None:
            entries: list[tuple[dict, np.ndarray, int]] = []
            self._start = (self._parent.get_state(), 0)
        else:
            entries = [self._carry]
            self._start = (self._carry[0], self._carry[2])
        have = sum(len(doc) - used for _, doc, used in entries)
        want = self._window_rows * self._L
        self._carry = None
        while have < want:
            state = self._parent.get_state()
            try:
                doc = np.asarray(next(self._parent), np.int32)
            except StopIteration:
                self._last_window = True
                break
            if len(doc) == 0:  # grain would give it a segment id of its own that holds no token
                raise ValueError("ConcatBatchesIterDataset got an empty document; every document needs at "
                                 "least its EOS token (pipeline.Tokenize appends it)")
            entries.append((state, doc, 0))
            have += len(doc)
        if have > want:  # the window ends inside its last document: the next window starts there
            state, doc, _ = entries[-1]
            self._carry = (state, doc, len(doc) - (have - want))
        pieces = [doc[used:] for _, doc, used in entries]
        n_tokens = min(have, want)
        self._taken = 0
        if n_tokens == 0:
            self._rows = (np.zeros((0, self._L), np.int32),) * 3
            return
        rows = pack_rows(pieces, n_tokens, self._L)
        if self._shuffle:
            order = _window_order(len(rows[0]), self._seed + self._window_index)
            rows = tuple(r[order] for r in rows)
        self._rows = rows

    def __next__(self) -> dict[str, np.ndarray]:
        parts: list[tuple[np.ndarray, ...]] = []
        need = self._B
        while need:
            if self._rows is None:
                self._fill()
            n = len(self._rows[0])
            if self._taken == n:
                if self._last_window or n == 0:
                    raise StopIteration  # drop_remainder: a short last batch is never made
                self._window_index += 1
                self._fill()
                continue
            take = min(need, n - self._taken)
            parts.append(tuple(r[self._taken : self._taken + take] for r in self._rows))
            self._taken += take
            need -= take
        if len(parts) == 1:
            out = [r.copy() for r in parts[0]]  # its own buffer: a batch never pins the window
        else:
            out = [np.concatenate(cols) for cols in zip(*parts, strict=True)]
        return dict(zip(("tokens", "segment_ids", "positions"), out, strict=True))

    def get_state(self) -> dict[str, Any]:
        return {"parent": copy.deepcopy(self._start[0]), "tokens_used": int(self._start[1]),
                "window_index": self._window_index, "rows_taken": self._taken}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(copy.deepcopy(state["parent"]))
        used = int(state["tokens_used"])
        self._carry = None
        if used:
            self._carry = (copy.deepcopy(state["parent"]), np.asarray(next(self._parent), np.int32), used)
        self._window_index = int(state["window_index"])
        self._last_window = False
        self._fill()
        self._taken = min(int(state["rows_taken"]), len(self._rows[0]))

    def __str__(self) -> str:
        return f"ConcatBatchesIterator(window_rows={self._window_rows}, batch_size={self._B})"
