"""Parquet shards as a source (`parquet:GLOB`, or .parquet files among `text:` files): documents, split,
fingerprint, exact resume, bounded reading, and one clear error for a bad shard with nothing half-built."""

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from chinchax.data import pipeline as P
from chinchax.data import text_builder
from chinchax.data.config import DataConfig
from chinchax.data.sources import open_source
from chinchax.data.tokenizers import load_tokenizer
from chinchax.errors import UserError

tfds.disable_progress_bar()

_spec = importlib.util.spec_from_file_location("batch_checks", Path(__file__).with_name("batch_checks.py"))
_checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_checks)
take, assert_same = _checks.take, _checks.assert_same

A_TEXTS = ["Grüße aus Köln ☃", "second row", None, "fourth\nwith a newline", "", "sixth 😀", None,
           "eighth", "ninth", "tenth"]
B_TEXTS = [f"shard b row {i}: " + "the quick brown fox " * (i % 4 + 1) for i in range(9)]


def write_shard(path: Path, texts, *, row_group_size=3, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": pa.array(range(len(texts)), pa.int64()), "text": pa.array(texts, pa.string())})
    pq.write_table(table, path, row_group_size=row_group_size, **kw)
    return path


@pytest.fixture
def shards(tmp_path):
    root = tmp_path / "shards"
    write_shard(root / "train-00000.parquet", A_TEXTS)
    write_shard(root / "sub" / "train-00001.parquet", B_TEXTS, row_group_size=4)
    (root / "README.md").write_text("# a dataset card, not a document\n")
    return root


def expected_keys(root: Path) -> dict[str, str]:
    """key (relpath:row) -> text of every non-null, non-empty row, written out by hand from the fixture."""
    keys = {f"train-00000.parquet:{i}": t for i, t in enumerate(A_TEXTS) if t}
    keys.update({f"sub/train-00001.parquet:{i}": t for i, t in enumerate(B_TEXTS)})
    return keys


def both_splits(source, data_dir, **kw):
    return open_source(source, "train", data_dir, **kw), open_source(source, "validation", data_dir, **kw)


def built_dirs(data_dir: Path) -> list[str]:
    parent = data_dir / text_builder.BUILDER_NAME
    return sorted(p.name for p in parent.iterdir()) if parent.exists() else []


def test_shards_build_row_by_row_deterministically_and_split_by_key(shards, tmp_path, caplog):
    assert pq.ParquetFile(shards / "train-00000.parquet").num_row_groups == 4  # read across row groups
    caplog.set_level(logging.WARNING)
    train, val = both_splits(f"parquet:{shards}", tmp_path / "d1", validation_fraction=0.3)
    keys = expected_keys(shards)
    held = {t for k, t in keys.items() if text_builder.split_fraction(k) < 0.3}
    assert 0 < len(held) < len(keys)  # this fixture holds some out by hash (no forced key)
    assert set(val) == held and sorted(list(train) + list(val)) == sorted(keys.values())
    # nulls skipped and counted (manifest and log), empty strings skipped, the README is no document
    manifest = json.loads((Path(train.metadata["data_dir"]) / "manifest.json").read_text())
    assert manifest["null_texts"] == {"train-00000.parquet": 2}
    assert "skipped 2 rows whose 'text' is null" in caplog.text
    assert [f["path"] for f in manifest["files"]] == ["sub/train-00001.parquet", "train-00000.parquet"]
    assert manifest["kind"] == "parquet" and manifest["num_docs"] == len(keys)
    # the same documents in the same order from a second build elsewhere
    train2, val2 = both_splits(f"parquet:{shards}", tmp_path / "d2", validation_fraction=0.3)
    assert list(train2) == list(train) and list(val2) == list(val)
    assert train2.metadata["manifest_hash"] == train.metadata["manifest_hash"]
    # text: reads .parquet files among others, with the same keys, so the same split
    (shards / "notes.txt").write_text("a plain text file\n")
    t_train, t_val = both_splits(f"text:{shards}", tmp_path / "d3", validation_fraction=0.3)
    docs = set(t_train) | set(t_val)
    assert set(keys.values()) | {"a plain text file\n", "# a dataset card, not a document\n"} == docs
    assert held <= set(t_val) and not held & set(t_train)


def test_a_changed_shard_or_column_changes_the_fingerprint_and_rebuilds(shards, tmp_path):
    data_dir = tmp_path / "data"
    first = open_source(f"parquet:{shards}", "train", data_dir)
    again = open_source(f"parquet:{shards}", "train", data_dir)
    assert again.metadata["manifest_hash"] == first.metadata["manifest_hash"]
    write_shard(shards / "sub" / "train-00001.parquet", [t.upper() for t in B_TEXTS], row_group_size=4)
    changed_train, changed_val = both_splits(f"parquet:{shards}", data_dir)
    assert changed_train.metadata["manifest_hash"] != first.metadata["manifest_hash"]
    docs = set(changed_train) | set(changed_val)
    assert B_TEXTS[0].upper() in docs and B_TEXTS[0] not in docs
    assert len(built_dirs(data_dir)) == 1  # replaced in place
    # another text column is another corpus
    for path in shards.rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.append_column("body", table["text"]), path)
    body = open_source(f"parquet:{shards}", "train", data_dir, text_field="body")
    assert body.metadata["manifest_hash"] != changed_train.metadata["manifest_hash"]


def test_training_iterator_from_shards_resumes_exactly(tmp_path):
    root = tmp_path / "shards"
    for s in range(2):
        write_shard(root / f"part-{s}.parquet", [f"shard {s} doc {i} " + "lorem ipsum dolor sit " * (i % 5 + 1)
                                                 for i in range(40)], row_group_size=16)
    tok = load_tokenizer("byte")
    cfg = DataConfig(source=f"parquet:{root}", data_dir=str(tmp_path / "data"), seq_len=32).validate()
    it = P.train_iterator(cfg, tok, global_batch_size=4)
    head = take(it, 3)
    assert_same(head, take(P.train_iterator(cfg, tok, global_batch_size=4), 3))  # the same stream twice
    state = it.get_state()
    expected = take(it, 4)
    fresh = P.train_iterator(cfg, tok, global_batch_size=4)
    fresh.set_state(state)
    assert_same(take(fresh, 4), expected)


# --------------------------------------------------------------------------------------------------
# Bad shards: one line naming the file (and column), the fix, and nothing half-built left behind


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _damage_row_group_1(path: Path) -> None:
    """Overwrite bytes inside row group 1's text pages. The shard is written with page checksums, so the
    damage is found for certain (without them a flipped byte may decode as other text)."""
    meta = pq.ParquetFile(path).metadata
    chunk = meta.row_group(1).column(1)
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    at = start + chunk.total_compressed_size - 4  # inside the chunk's last data page
    raw = bytearray(path.read_bytes())
    raw[at:at + 2] = bytes(b ^ 0xFF for b in raw[at:at + 2])
    path.write_bytes(bytes(raw))


BAD_SHARDS = [
    ("missing-column", lambda p: pq.write_table(pa.table({"body": ["x", "y"]}), p),
     r"bad\.parquet: no column 'text' \(columns: body\)\. Set the text column \(--text-field / data\.text_field\)"),
    ("not-strings", lambda p: pq.write_table(pa.table({"text": [1, 2], "content": ["x", "y"]}), p),
     r"bad\.parquet: column 'text' holds int64, not strings\. Set the text column .*\(string columns: content\)"),
    ("binary-column", lambda p: pq.write_table(pa.table({"text": pa.array([b"x", b"y"], pa.binary())}), p),
     r"bad\.parquet: column 'text' holds binary, not strings"),
    ("truncated", lambda p: (write_shard(p, B_TEXTS), _truncate(p)),
     r"bad\.parquet: not a readable Parquet file \(.*\); the file may be truncated or damaged\. Download or write"),
    ("damaged-row-group", lambda p: (write_shard(p, B_TEXTS, write_page_checksum=True), _damage_row_group_1(p)),
     r"bad\.parquet: row group 1 of 3 cannot be read \(.*\); the file may be truncated or damaged"),
    ("empty-file", lambda p: p.write_bytes(b""), r"bad\.parquet: the file is empty"),
]


@pytest.mark.parametrize("make,message", [b[1:] for b in BAD_SHARDS], ids=[b[0] for b in BAD_SHARDS])
def test_a_bad_shard_is_one_clear_error_and_nothing_is_built(shards, tmp_path, make, message):
    (shards / "zz").mkdir()
    make(shards / "zz" / "bad.parquet")
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match=message) as e:
        open_source(f"parquet:{shards}", "train", data_dir)
    assert "\n" not in str(e.value) and str(shards / "zz" / "bad.parquet") in str(e.value)
    assert built_dirs(data_dir) == []  # no corpus, no temporary folder, no lock file
    # --skip-bad-files builds the rest and records the shard and the reason
    src = open_source(f"parquet:{shards}", "train", data_dir, skip_bad_files=True)
    manifest = json.loads((Path(src.metadata["data_dir"]) / "manifest.json").read_text())
    assert list(manifest["skipped"]) == ["zz/bad.parquet"]


def test_a_shard_damaged_during_the_build_leaves_nothing_half_built(shards, tmp_path, monkeypatch):
    """The check pass reads the shard fine; it is cut short before the write pass reads it again."""
    real_scan = text_builder.scan
    started = []

    def scan_then_damage(spec):
        result = real_scan(spec)
        _truncate(shards / "sub" / "train-00001.parquet")
        return result

    real_build = text_builder._build_tfds
    monkeypatch.setattr(text_builder, "scan", scan_then_damage)
    monkeypatch.setattr(text_builder, "_build_tfds", lambda *a: started.append(a[-1]) or real_build(*a))
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match=r"train-00001\.parquet: not a readable Parquet file"):
        open_source(f"parquet:{shards}", "train", data_dir)
    assert started and not started[0].exists()  # the write began in a temporary folder, since removed
    assert built_dirs(data_dir) == []


def test_a_corpus_past_tfds_memory_buffer_spills_without_tensorflow_and_keeps_its_order(shards, tmp_path,
                                                                                         monkeypatch):
    """Past MAX_MEM_BUFFER_SIZE (1 GB; 100 bytes here) tfds spills examples to bucket files through
    tf.io.gfile, which needed TensorFlow; text_builder's buckets are plain files, and the documents come out
    in the same order as from memory."""
    import importlib.util as iu

    from tensorflow_datasets.core import shuffle

    assert iu.find_spec("tensorflow") is None  # chinchax does not install it: the real failure case
    in_memory = both_splits(f"parquet:{shards}", tmp_path / "memory")
    monkeypatch.setattr(shuffle, "MAX_MEM_BUFFER_SIZE", 100)
    spilled = both_splits(f"parquet:{shards}", tmp_path / "spilled")
    assert [list(s) for s in spilled] == [list(s) for s in in_memory]
    assert shuffle._Bucket.__module__ == shuffle.__name__  # tfds's own again after the build
    assert not list((tmp_path / "spilled").rglob("bucket_*"))  # the buckets went with the build folder


def test_parquet_source_forms_and_no_shards(tmp_path, shards):
    with pytest.raises(UserError, match=r"parquet:.*: no \.parquet files found.*'parquet:~/fineweb/\*\*/\*\.parquet'"):
        open_source(f"parquet:{tmp_path}/*.md", "train", tmp_path / "data")
    single_train, single_val = both_splits(f"parquet:{shards / 'sub' / 'train-00001.parquet'}", tmp_path / "data")
    assert sorted(list(single_train) + list(single_val)) == sorted(B_TEXTS)
    glob_train, glob_val = both_splits(f"parquet:{shards}/**/*", tmp_path / "data")  # README.md left out
    assert sorted(list(glob_train) + list(glob_val)) == sorted(expected_keys(shards).values())


_READ_PROBE = """
import sys
from pathlib import Path
import pyarrow as pa
from chinchax.data.parquet_files import parquet_documents
for path in sys.argv[1:]:
    n = sum(len(t) for _, t in parquet_documents(Path(path), "x", "text"))
    print(n, pa.default_memory_pool().max_memory())
"""


def test_reading_memory_does_not_grow_with_the_row_group(tmp_path):
    """Shards of one row group, 5.6 MB and 45 MB, read in one fresh process (pyarrow's memory pool is not
    Python's heap, and its peak never goes down): reading the big one raises pyarrow's peak by nothing
    much, and the peak stays a fraction of the row group (with pre_buffer on, it held the whole chunk)."""
    import numpy as np

    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     ", np.uint8)  # barely compressible
    doc = 2800
    paths, sizes = [], []
    for rows in (2000, 16000):
        text = letters[rng.integers(0, len(letters), rows * doc)].tobytes().decode()
        paths.append(write_shard(tmp_path / f"rows{rows}.parquet", [text[i * doc:(i + 1) * doc] for i in range(rows)],
                                 row_group_size=rows))
        sizes.append(rows * doc)
        assert pq.ParquetFile(paths[-1]).num_row_groups == 1
    out = subprocess.run([sys.executable, "-c", _READ_PROBE, *map(str, paths)], capture_output=True, text=True,
                         check=True)
    (chars_small, peak_small), (chars_big, peak_big) = [map(int, line.split()) for line in out.stdout.splitlines()]
    assert (chars_small, chars_big) == tuple(sizes)
    assert peak_big < 1.2 * peak_small + (1 << 20), (peak_small, peak_big)
    assert peak_big < sizes[1] / 3, (peak_big, sizes[1])
