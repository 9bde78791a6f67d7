"""The whole embedded stdlib corpus, built once (about 10-15 s on a 2-core CPU)."""

import json
import sys
import time
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from chinchax.data import text_builder
from chinchax.data.sources import open_source

tfds.disable_progress_bar()


@pytest.mark.slow
def test_full_stdlib_corpus(tmp_path):
    t0 = time.monotonic()
    train = open_source("stdlib", "train", tmp_path)
    build_s = time.monotonic() - t0
    corpus_dir = Path(train.metadata["data_dir"])
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    assert manifest["python"].startswith(f"cpython-{sys.version_info.major}.{sys.version_info.minor}.")
    assert manifest["num_files"] > 500 and manifest["num_bytes"] > 5_000_000  # a few million tokens
    assert not any("site-packages" in f["path"] or "_sysconfigdata" in f["path"] for f in manifest["files"])
    # skipped files are the empty __init__.py files and the deliberately non-UTF-8 test modules
    assert all(r.endswith(".py") for r in manifest["skipped"])
    assert len(manifest["skipped"]) < 0.05 * manifest["num_files"]
    t0 = time.monotonic()
    val = open_source("stdlib", "validation", tmp_path)
    reopen_s = time.monotonic() - t0
    assert len(train) + len(val) == manifest["num_docs"] and len(val) >= 10
    assert 0.005 < len(val) / manifest["num_docs"] < 0.05  # validation_fraction 0.02
    n_bytes = sum(len(train[i].encode()) for i in range(len(train))) + sum(len(d.encode()) for d in val)
    skipped_bytes = sum(f["size"] for f in manifest["files"] if f["path"] in manifest["skipped"])
    assert n_bytes == manifest["num_bytes"] - skipped_bytes - 3 * _count_boms(manifest)  # nothing lost
    shard = next(text_builder.dataset_dir(corpus_dir).glob("*train.array_record*"))
    mtime = shard.stat().st_mtime_ns
    open_source("stdlib", "train", tmp_path)
    assert shard.stat().st_mtime_ns == mtime  # reused, not rebuilt
    print(f"stdlib corpus: {manifest['num_docs']} docs, {n_bytes:,} bytes, build {build_s:.1f} s, reopen {reopen_s:.2f} s")


def _count_boms(manifest) -> int:
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    return sum((root / f["path"]).read_bytes().startswith(b"\xef\xbb\xbf") for f in manifest["files"]
               if f["path"] not in manifest["skipped"])


def test_site_packages_corpus_is_the_environments_python_files(tmp_path):
    import sysconfig

    train = open_source("site-packages", "train", tmp_path, max_files=60)
    val = open_source("site-packages", "validation", tmp_path, max_files=60)
    manifest = json.loads((Path(train.metadata["data_dir"]) / "manifest.json").read_text())
    root = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert train.metadata["source_kind"] == "site-packages" and manifest["num_files"] == 60
    assert all(f["path"].endswith(".py") and (root / f["path"]).is_file() for f in manifest["files"])
    assert len(train) > 0 and len(val) > 0 and "site-packages-py" in train.metadata["data_dir"]
