"""TFDS's shuffle buckets on plain local files, so a corpus bigger than 1 GB builds without TensorFlow.

While it writes a split, TFDS keeps the serialized examples in memory up to 1 GB
(`tensorflow_datasets.core.shuffle.MAX_MEM_BUFFER_SIZE`); past that it spills them to 1,000 temporary
bucket files, which it writes and reads with `tf.io.gfile`. chinchax does not install TensorFlow, so a
`text:`/`parquet:` corpus of more than ~1 GB of text failed half-way with
`ModuleNotFoundError: No module named 'tensorflow'` (found building 1 GB of Parquet shards, 2026-12-08).

`local_buckets()` swaps in a bucket with the same file format (hkey | size | data, see tfds's `_Bucket`)
written with `open()`: text_builder builds on a local disk only, inside its temporary build folder, so
the buckets are removed with it whatever happens. Order is unchanged: buckets split the 128-bit key
hashes into ranges and each is sorted, exactly as before (tests/test_data_parquet.py builds a corpus
both ways and compares).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import threading

_lock = threading.Lock()
_users = 0
_original = None


class LocalBucket:
    """tensorflow_datasets.core.shuffle._Bucket's interface and file format, on local files."""

    def __init__(self, path):
        self._path = os.fspath(path)
        self._fobj = None
        self._length = 0
        self._size = 0

    @property
    def size(self) -> int:
        return self._size

    def __len__(self) -> int:
        return self._length

    def _open(self):
        from tensorflow_datasets.core import shuffle

        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        try:
            return open(self._path, "wb")
        except OSError as e:  # 1,000 buckets are open at once: raise the soft limit, as tfds does
            if e.errno != errno.EMFILE:
                raise
            shuffle._increase_open_files_limit()
            return open(self._path, "wb")

    def add(self, key, data: bytes) -> None:
        from tensorflow_datasets.core import shuffle

        if self._fobj is None:
            self._fobj = self._open()
        self._fobj.write(shuffle._hkey_to_bytes(key))
        self._fobj.write(struct.pack("=Q", len(data)))
        self._fobj.write(data)
        self._length += 1
        self._size += len(data)

    def flush(self) -> None:
        if self._fobj is not None:
            self._fobj.close()
            self._fobj = None

    def read_values(self):
        from tensorflow_datasets.core import shuffle

        self.flush()
        if not os.path.exists(self._path):  # a bucket nothing fell into
            return
        with open(self._path, "rb") as f:
            while buff := f.read(shuffle.HKEY_SIZE_BYTES):
                size = struct.unpack("=Q", f.read(8))[0]
                yield shuffle._read_hkey(buff), f.read(size)

    def del_file(self) -> None:
        self.flush()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._path)


@contextlib.contextmanager
def local_buckets():
    """tfds's Shuffler uses LocalBucket inside the block (nested and concurrent blocks share one swap)."""
    global _users, _original
    from tensorflow_datasets.core import shuffle

    with _lock:
        if _users == 0:
            _original = shuffle._Bucket
            shuffle._Bucket = LocalBucket
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                shuffle._Bucket = _original
