"""Sources: the TFDS builder of the user's text, the stdlib corpus (small subset), tfds: datasets, bad input."""

import hashlib
import json
import os
import pickle
import time
import tracemalloc
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from chinchax.data import sources, text_builder
from chinchax.data.sources import default_data_dir, open_source
from chinchax.errors import UserError

tfds.disable_progress_bar()


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    write(root / "a.txt", "Hello wörld ☃\nsecond line\n")
    write(root / "b.jsonl", '{"text": "doc one", "id": 1}\n\n{"text": "doc two 😀"}\n{"text": ""}\n')
    write(root / "sub" / "c.py", "def f(x):\n    return x + 1\n")
    write(root / "notes.md", "# Title\n\n  indented  \ttabs\n")
    write(root / ".hidden" / "skip.txt", "never read")
    write(root / "__pycache__" / "skip.txt", "never read")
    return root


EXPECTED_DOCS = {"Hello wörld ☃\nsecond line\n", "doc one", "doc two 😀", "def f(x):\n    return x + 1\n",
                 "# Title\n\n  indented  \ttabs\n"}


def both_splits(source, data_dir, **kw):
    return open_source(source, "train", data_dir, **kw), open_source(source, "validation", data_dir, **kw)


def built_dirs(data_dir: Path) -> list[str]:
    parent = data_dir / text_builder.BUILDER_NAME
    return sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.exists() else []


def test_text_builder_reads_txt_jsonl_and_code_into_train_and_validation(corpus, tmp_path):
    data_dir = tmp_path / "data"
    train, val = both_splits(f"text:{corpus}", data_dir)
    train_docs, val_docs = list(train), list(val)
    assert len(train) + len(val) == len(EXPECTED_DOCS)
    assert sorted(train_docs + val_docs) == sorted(EXPECTED_DOCS)  # empty JSONL text skipped, hidden dirs too
    assert len(val_docs) >= 1 and len(train_docs) >= 1
    assert all(isinstance(d, str) for d in train_docs)
    assert train[-1] == train_docs[-1] and train.__getitems__([0, 1]) == train_docs[:2]
    with pytest.raises(IndexError):
        train[len(train)]
    # the manifest records every file with its size and sha256, and its hash is what the source reports
    manifest = json.loads((Path(train.metadata["data_dir"]) / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    assert sorted(files) == ["a.txt", "b.jsonl", "notes.md", "sub/c.py"]
    for rel, entry in files.items():
        raw = (corpus / rel).read_bytes()
        assert entry["size"] == len(raw) and entry["sha256"] == hashlib.sha256(raw).hexdigest()
    assert train.metadata["manifest_hash"] == manifest["manifest_hash"] == val.metadata["manifest_hash"]
    assert manifest["num_docs"] == len(EXPECTED_DOCS)
    assert built_dirs(data_dir) == [train.metadata["data_dir"].rsplit("/", 1)[1]]  # no temporary folders left
    # picklable (grain workers) and equal after the round trip
    assert list(pickle.loads(pickle.dumps(train))) == train_docs


def _doc_keys(root) -> dict[str, str]:
    spec = text_builder.text_corpus_spec(str(root))
    return {text: key for p in spec.files for key, text in text_builder.file_documents(p, spec.relpath(p), "text", 65536)}


def test_split_is_a_function_of_the_document_alone(corpus, tmp_path):
    train1, val1 = both_splits(f"text:{corpus}", tmp_path / "d1")
    train2, val2 = both_splits(f"text:{corpus}", tmp_path / "d2")
    assert set(val1) == set(val2) and set(train1) == set(train2)
    keys = _doc_keys(corpus)
    below = {d for d in EXPECTED_DOCS if text_builder.split_fraction(keys[d]) < 0.02}
    forced = set(val1) - below  # held out only because nothing fell below the threshold
    assert below or len(forced) == 1
    # more files: no document below the threshold leaves validation, none above it leaves train
    for i in range(60):
        write(corpus / "more" / f"m{i:02d}.txt", f"extra document {i}\n")
    train3, val3 = both_splits(f"text:{corpus}", tmp_path / "d1")
    assert below <= set(val3)
    assert set(train1) <= set(train3)
    assert len(train3) + len(val3) == len(EXPECTED_DOCS) + 60
    new_keys = _doc_keys(corpus)
    assert {d for d in set(train3) | set(val3) if text_builder.split_fraction(new_keys[d]) < 0.02} <= set(val3)


def test_validation_fraction_holds_out_documents_by_hash(tmp_path):
    root = tmp_path / "many"
    for i in range(400):
        write(root / f"f{i:03d}.txt", f"document number {i}\n")
    train, val = both_splits(f"text:{root}", tmp_path / "data", validation_fraction=0.25)
    expected_val = {f"document number {i}\n" for i in range(400)
                    if text_builder.split_fraction(f"f{i:03d}.txt:0") < 0.25}
    assert set(val) == expected_val
    assert 0.15 < len(val) / 400 < 0.35  # binomial(400, 0.25): 5 sigma is 0.11
    assert set(train).isdisjoint(set(val))


def test_unchanged_files_reuse_the_build_and_a_change_rebuilds(corpus, tmp_path):
    data_dir = tmp_path / "data"
    src = open_source(f"text:{corpus}", "train", data_dir)
    ds_dir = text_builder.dataset_dir(Path(src.metadata["data_dir"]))
    shard = next(ds_dir.glob("*train.array_record*"))
    stamp = shard.stat().st_mtime_ns, shard.stat().st_ino
    again = open_source(f"text:{corpus}", "train", data_dir)
    assert again.metadata["manifest_hash"] == src.metadata["manifest_hash"]
    shard2 = next(ds_dir.glob("*train.array_record*"))
    assert (shard2.stat().st_mtime_ns, shard2.stat().st_ino) == stamp  # not rebuilt
    # same size, different content: the sha256 catches it
    write(corpus / "sub" / "c.py", "def g(y):\n    return y - 1\n")
    changed_train, changed_val = both_splits(f"text:{corpus}", data_dir)
    assert changed_train.metadata["manifest_hash"] != src.metadata["manifest_hash"]
    docs = set(changed_train) | set(changed_val)
    assert "def g(y):\n    return y - 1\n" in docs and "def f(x):\n    return x + 1\n" not in docs
    assert len(built_dirs(data_dir)) == 1  # replaced in place, old build and temporaries gone
    # a changed parameter also rebuilds
    other = open_source(f"text:{corpus}", "train", data_dir, validation_fraction=0.5)
    assert other.metadata["manifest_hash"] != changed_train.metadata["manifest_hash"]


def test_crash_leftovers_are_cleaned_and_incomplete_builds_rebuilt(corpus, tmp_path):
    data_dir = tmp_path / "data"
    src = open_source(f"text:{corpus}", "train", data_dir)
    corpus_dir = Path(src.metadata["data_dir"])
    parent = corpus_dir.parent
    stale = parent / f".{corpus_dir.name}.tmp-deadbeef"
    (stale / "junk").mkdir(parents=True)
    (text_builder.dataset_dir(corpus_dir) / "dataset_info.json").unlink()  # a damaged build
    again = open_source(f"text:{corpus}", "train", data_dir)
    assert not stale.exists()
    assert sorted(again) == sorted(src)


def test_long_files_are_cut_at_line_boundaries_and_lose_nothing(tmp_path):
    lines = [f"line {i} " + "x" * (i % 37) + "\n" for i in range(300)]
    path = write(tmp_path / "corpus" / "long.txt", "".join(lines))
    chunks = list(text_builder.file_documents(path, "long.txt", "text", 512))
    assert len(chunks) > 5
    assert "".join(text for _, text in chunks) == "".join(lines)
    assert [k for k, _ in chunks] == [f"long.txt:{i}" for i in range(len(chunks))]
    assert all(text.endswith("\n") for _, text in chunks)
    assert all(len(text.encode()) < 512 + 50 for _, text in chunks)
    train, val = both_splits(f"text:{tmp_path / 'corpus'}", tmp_path / "data", max_doc_bytes=512)
    assert sorted(list(train) + list(val)) == sorted(text for _, text in chunks)


def test_glob_and_single_file_sources(corpus, tmp_path):
    train, val = both_splits(f"text:{corpus}/**/*.jsonl", tmp_path / "data")
    assert sorted(list(train) + list(val)) == ["doc one", "doc two 😀"]
    single_train, single_val = both_splits(f"text:{corpus / 'b.jsonl'}", tmp_path / "data")
    assert sorted(list(single_train) + list(single_val)) == ["doc one", "doc two 😀"]
    with pytest.raises(UserError, match="found 1 document"):  # one .py file: no room for two splits
        open_source(f"text:{corpus}/**/*.py", "train", tmp_path / "data")


# --------------------------------------------------------------------------------------------------
# Bad input: a clear UserError naming the file / line / key, and nothing half-built left behind


BAD_INPUTS = [
    ("empty.txt", b"", r"empty\.txt: the file is empty"),
    ("blob.txt", b"text\x00\x01\x02binary", r"blob\.txt: looks binary"),
    ("latin1.txt", "line one\ncaf\u00e9\n".encode("latin-1"), r"latin1\.txt:2: byte 3 of the line \(0xe9\) is not valid UTF-8"),
    ("rows.jsonl", b'{"text": "ok"}\n{"body": "no text key"}\n', r"rows\.jsonl:2: the JSON object has no key 'text' \(keys: body\)"),
    ("broken.jsonl", b'{"text": "ok"}\n{"text": oops}\n', r"broken\.jsonl:2: not valid JSON"),
    ("typed.jsonl", b'{"text": 42}\n', r"typed\.jsonl:1: key 'text' holds int, not a string"),
    ("list.jsonl", b'["text"]\n', r"list\.jsonl:1: expected a JSON object"),
    ("blank.txt", b"", r"blank\.txt: the file is empty"),
]


@pytest.mark.parametrize("name,content,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_files_fail_clearly_and_leave_nothing_built(corpus, tmp_path, name, content, message):
    write(corpus / "zz" / name, content)
    data_dir = tmp_path / "data"
    with pytest.raises(UserError, match=message):
        open_source(f"text:{corpus}", "train", data_dir)
    assert built_dirs(data_dir) == []  # no corpus folder, no temporary folder


def test_a_failed_rebuild_keeps_the_previous_build_intact(corpus, tmp_path):
    data_dir = tmp_path / "data"
    good = sorted(open_source(f"text:{corpus}", "train", data_dir))
    write(corpus / "bad.txt", b"\xff\xfe not utf-8")
    with pytest.raises(UserError, match=r"bad\.txt:1"):
        open_source(f"text:{corpus}", "train", data_dir)
    assert sorted(open_source(f"text:{corpus}", "train", data_dir, prepare=False)) == good
    assert len(built_dirs(data_dir)) == 1


def test_skip_bad_files_records_what_was_skipped(corpus, tmp_path):
    write(corpus / "empty.txt", b"")
    write(corpus / "blob.bin", b"\x00\x01")
    src = open_source(f"text:{corpus}", "train", tmp_path / "data", skip_bad_files=True)
    manifest = json.loads((Path(src.metadata["data_dir"]) / "manifest.json").read_text())
    assert sorted(manifest["skipped"]) == ["blob.bin", "empty.txt"]
    assert "empty" in manifest["skipped"]["empty.txt"] and "binary" in manifest["skipped"]["blob.bin"]
    val = open_source(f"text:{corpus}", "validation", tmp_path / "data", skip_bad_files=True)
    assert sorted(list(src) + list(val)) == sorted(EXPECTED_DOCS)


def test_other_text_field_and_bad_arguments(tmp_path):
    root = tmp_path / "c"
    write(root / "x.jsonl", '{"body": "first"}\n{"body": "second"}\n{"body": "third"}\n')
    train, val = both_splits(f"text:{root}", tmp_path / "data", text_field="body")
    assert sorted(list(train) + list(val)) == ["first", "second", "third"]
    cases = [
        (dict(source=f"text:{tmp_path}/nothing/*.txt"), r"no files found"),
        (dict(source="text:"), r"expected 'stdlib'"),
        (dict(source="hf:wikitext"), r"expected 'stdlib', 'site-packages', 'text:PATH_OR_GLOB', 'parquet:PATH_OR_GLOB' or 'tfds:"),
        (dict(source=f"text:{root}", split="test"), r"split 'test'.*'train' or 'validation'"),
        (dict(source=f"text:{root}", validation_fraction=0.0), r"validation_fraction=0.0"),
        (dict(source=f"text:{root}", max_doc_bytes=10), r"max_doc_bytes=10"),
        (dict(source="stdlib", max_files=1), r"max_files=1"),
    ]
    for kwargs, message in cases:
        kwargs = {"split": "train", "data_dir": tmp_path / "data", **kwargs}
        with pytest.raises(UserError, match=message):
            open_source(**kwargs)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CHINCHAX_DATA_DIR", str(tmp_path / "env"))
    assert default_data_dir() == str(tmp_path / "env")
    monkeypatch.delenv("CHINCHAX_DATA_DIR")
    assert default_data_dir() == os.path.expanduser("~/.cache/chinchax/data")


# --------------------------------------------------------------------------------------------------
# The embedded stdlib corpus (a small subset; tests/test_data_sources_stdlib.py builds it whole)


def test_stdlib_subset_records_python_version_and_manifest(tmp_path):
    import sys
    import sysconfig

    train, val = both_splits("stdlib", tmp_path / "data", max_files=30)
    assert train.metadata["python"] == f"cpython-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    manifest = json.loads((Path(train.metadata["data_dir"]) / "manifest.json").read_text())
    assert manifest["num_files"] == 30 and all(f["path"].endswith(".py") for f in manifest["files"])
    assert not any("site-packages" in f["path"] for f in manifest["files"])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    # every non-empty file of the subset is in the corpus, whole (they are all < max_doc_bytes here)
    expected = set()
    for f in manifest["files"]:
        text = (stdlib / f["path"]).read_text(encoding="utf-8")
        if text and len(text.encode()) < 65536:
            expected.add(text)
    docs = set(train) | set(val)
    assert expected <= docs and len(val) >= 1
    assert any("import " in d for d in docs)
    # the hash depends on the files only, so rebuilding elsewhere gives the same hash
    again = open_source("stdlib", "train", tmp_path / "elsewhere", max_files=30)
    assert again.metadata["manifest_hash"] == train.metadata["manifest_hash"]


def test_building_streams_documents_with_bounded_memory(tmp_path):
    """The scan and the document generator hold one chunk at a time, however large the corpus."""
    root = tmp_path / "big"
    line = "the quick brown fox jumps over the lazy dog " * 3 + "\n"
    block = line * ((1 << 20) // len(line))  # ~1 MiB
    for i in range(8):
        write(root / f"part{i}.txt", block)
    spec = text_builder.text_corpus_spec(str(root), max_doc_bytes=16384)
    tracemalloc.start()
    result = text_builder.scan(spec)
    n = sum(1 for _ in text_builder.iter_documents(spec, result, "train"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n + sum(1 for _ in text_builder.iter_documents(spec, result, "validation")) == result.num_docs > 400
    assert peak < 1 << 20, peak  # far below the 8 MiB corpus


# --------------------------------------------------------------------------------------------------
# tfds: catalog datasets


class ChinchaxTestDocs(tfds.core.GeneratorBasedBuilder):
    """A registered TFDS dataset to read through the `tfds:` path without any download."""

    VERSION = tfds.core.Version("1.2.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
            {"body": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(20), "test": self._generate_examples(5)}

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"body": f"body {n}-{i} ü", "label": i % 2}


def test_tfds_dataset_read_as_array_record(tmp_path):
    data_dir = str(tmp_path / "tfds")
    ChinchaxTestDocs(data_dir=data_dir, file_format="array_record").download_and_prepare()
    src = open_source("tfds:chinchax_test_docs:1.2.0", "train", data_dir, text_field="body")
    assert len(src) == 20 and sorted(src) == sorted(f"body 20-{i} ü" for i in range(20))
    assert src.metadata["source_kind"] == "tfds"
    quarter = open_source("tfds:chinchax_test_docs", "train[:25%]", data_dir, text_field="body")
    assert list(quarter) == list(src)[:5]  # tfds split slicing works on the data source too
    assert list(pickle.loads(pickle.dumps(src))) == list(src)
    with pytest.raises(UserError, match=r"no feature 'text'; it has: body, label"):
        open_source("tfds:chinchax_test_docs", "train", data_dir)
    with pytest.raises(UserError, match=r"no split 'validation'; it has: train, test"):
        open_source("tfds:chinchax_test_docs", "validation", data_dir, text_field="body")


def test_tfds_unknown_name_is_a_quick_clear_error(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(UserError, match=r"tfds:lm1bx: no such TFDS dataset\. Did you mean: lm1b"):
        open_source("tfds:lm1bx", "train", tmp_path)
    assert time.monotonic() - t0 < 10


def test_tfds_not_prepared_and_offline_fails_fast(tmp_path, monkeypatch):
    # 192.0.2.1 is TEST-NET-1: never routed, so connecting hangs like an offline machine's would
    monkeypatch.setattr(sources, "_PROBE_HOSTS", (("192.0.2.1", 443),))
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        open_source("tfds:tiny_shakespeare", "train", tmp_path / "empty")
    assert time.monotonic() - t0 < 10
    assert "not prepared" in str(e.value) and "network is unreachable" in str(e.value)
    assert "chinchax data build tfds:tiny_shakespeare" in str(e.value)
    assert not (tmp_path / "empty" / "tiny_shakespeare").exists()
    with pytest.raises(UserError, match="not prepared"):
        open_source("tfds:tiny_shakespeare", "train", tmp_path / "empty", prepare=False)


def test_concurrent_openers_build_once(corpus, tmp_path):
    """Two openers racing on a fresh data dir: the lock makes one build and the other reuse it."""
    from concurrent.futures import ThreadPoolExecutor

    data_dir = tmp_path / "data"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: open_source(f"text:{corpus}", "train", data_dir), range(2)))
    assert results[0].metadata["manifest_hash"] == results[1].metadata["manifest_hash"]
    assert sorted(results[0]) == sorted(results[1]) and len(built_dirs(data_dir)) == 1


def test_tfds_not_prepared_and_online_prepares_array_record(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "network_reachable", lambda timeout_s=3.0: True)
    data_dir = str(tmp_path / "tfds")
    src = open_source("tfds:chinchax_test_docs", "test", data_dir, text_field="body")
    assert sorted(src) == sorted(f"body 5-{i} ü" for i in range(5))
    assert list(Path(data_dir, "chinchax_test_docs", "1.2.0").glob("*.array_record-*"))


def test_stdlib_files_are_hashed_again_only_when_they_change(tmp_path, monkeypatch):
    hashed = []
    monkeypatch.setattr(text_builder, "sha256_file", lambda p: hashed.append(p) or f"h{len(hashed)}")
    f = write(tmp_path / "mod.py", "x = 1\n")
    first = text_builder._stdlib_sha256(f, f.stat())
    assert text_builder._stdlib_sha256(f, f.stat()) == first and len(hashed) == 1  # unchanged: not read again
    write(f, "x = 22\n")
    assert text_builder._stdlib_sha256(f, f.stat()) != first and len(hashed) == 2
