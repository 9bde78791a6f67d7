"""Build a folder of the user's text (or the Python standard library) into a TFDS ArrayRecord dataset.

The dataset is built ONCE by a real `tfds.core.GeneratorBasedBuilder` (file_format='array_record') and
read back with `tfds.builder_from_directory(...).as_data_source(split)`, so no TensorFlow is needed.

Layout under `data_dir` (one folder per corpus):

    chinchax_text/<name>/manifest.json                  file list, sizes, sha256, parameters, its own hash
    chinchax_text/<name>/chinchax_text/1.0.0/...        the TFDS dataset (train + validation ArrayRecord)

A corpus is rebuilt when its manifest hash changes (a file added, removed or edited, or a parameter
changed). It is built in `.<name>.tmp-*` beside the final folder and renamed into place under a file
lock, so a crash never leaves a half-built corpus where a reader would find it.

Documents:
- `.jsonl` / `.ndjson`: one document per non-blank line, the string under `text_field`;
- `.parquet`: one document per row of the column `text_field`, read a row group at a time
  (chinchax.data.parquet_files; null texts are skipped and counted in the manifest's `null_texts`);
- any other file (txt, md, code): the file's text, cut at line boundaries into documents of at most
  `max_doc_bytes` (a line longer than that stays whole), so memory stays bounded by the chunk size.

`parquet:PATH_OR_GLOB` is `text:` restricted to .parquet files (a dataset folder's README or
.gitattributes are not documents); `text:` reads .parquet files among the others.

The train/validation split is a pure function of each document's key (`relpath:index`): a document is
held out when the first 8 bytes of sha256(key), read as a fraction, fall below `validation_fraction`. It
does not depend on file order or on other files, so adding a file never moves existing documents between
splits. If no document falls below the threshold, the one with the smallest hash is held out, so the
validation split is never empty.

Memory: the scan and the generators hold one document (Parquet: one batch of rows) at a time. TFDS's
writer buffers serialized examples in memory up to 1 GB before it spills them to temporary files
(data/tfds_buckets.py), so building peaks at about 1 GB + one document however large the corpus: 1.2 GiB
RSS for 0.5 and for 1 GB of Parquet shards (docs/benchmarks.md); reading is random access from disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path

from chinchax import jsonio
from chinchax.data.parquet_files import is_parquet, parquet_documents
from chinchax.data.tfds_buckets import local_buckets
from chinchax.errors import UserError
from chinchax.fileio import sha256_file, write_text_atomic

log = logging.getLogger(__name__)

BUILDER_NAME = "chinchax_text"
BUILDER_VERSION = "1.0.0"
MANIFEST_FORMAT = 1
JSONL_SUFFIXES = (".jsonl", ".ndjson")
# Folders never part of a user's corpus (tool caches and version control).
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".ipynb_checkpoints", "node_modules"}
# Standard library parts that are not the standard library, or differ between machines with the same
# Python version (build configuration), which would change the corpus between machines.
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "lib-dynload"}
_SNIFF_BYTES = 8192


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    """What to build: a named set of files and the parameters that decide the documents."""

    name: str  # folder name under data_dir/chinchax_text
    kind: str  # "text", "parquet", "stdlib" or "site-packages"
    root: Path  # files are recorded relative to this
    files: tuple[Path, ...]  # absolute paths, sorted by relative path
    text_field: str = "text"
    validation_fraction: float = 0.02
    max_doc_bytes: int = 65536
    skip_bad_files: bool = False  # stdlib: skip empty/binary/undecodable files instead of failing
    extra: tuple[tuple[str, str], ...] = ()  # recorded in the manifest hash (e.g. the Python version)

    def relpath(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


# ----------------------------------------------------------------------------------------------------
# Finding files


def text_corpus_spec(path_or_glob: str, max_files: int | None = None, *, kind: str = "text",
                     **params) -> CorpusSpec:
    """The corpus for `text:PATH_OR_GLOB`: a file, a folder (recursively) or a glob (`**` allowed).
    kind="parquet" (`parquet:PATH_OR_GLOB`) keeps only the .parquet files of it."""
    spec = os.path.expanduser(path_or_glob)
    keep = is_parquet if kind == "parquet" else (lambda p: True)
    if os.path.isfile(spec):
        files = [p for p in [Path(spec).resolve()] if keep(p)]
        root = Path(spec).resolve().parent
    elif os.path.isdir(spec):
        root = Path(spec).resolve()
        files = [p for p in _walk(root) if p.is_file() and keep(p)]
    else:
        files = sorted({Path(p).resolve() for p in glob.glob(spec, recursive=True) if os.path.isfile(p)})
        files = [p for p in files if not (_SKIP_DIRS & set(p.parts)) and keep(p)]
        root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else Path(".")
    if not files:
        example = "'parquet:~/fineweb/**/*.parquet'" if kind == "parquet" else "'text:~/corpus/**/*.txt'"
        raise UserError(
            f"{kind}:{path_or_glob}: no {'.parquet ' if kind == 'parquet' else ''}files found. Give an existing "
            f"file, a folder, or a glob such as {example}."
        )
    files = sorted(files, key=lambda p: p.relative_to(root).as_posix())
    digest = hashlib.sha256(os.path.abspath(spec).encode()).hexdigest()[:12]
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(spec.rstrip("/*")).name)[:40]
    name = f"{kind}-{stem or 'files'}-{digest}"
    if max_files is not None:  # a subset (tests, quick looks) gets a folder of its own
        files, name = files[:max_files], f"{name}-first{max_files}"
    return CorpusSpec(name=name, kind=kind, root=root, files=tuple(files), **params)


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


def site_packages_corpus_spec(max_files: int | None = None, **params) -> CorpusSpec:
    """The larger offline corpus: the .py files of the running environment's site-packages (hundreds of MB
    with the project's extras installed; enough for a GPU-sized study without repeating data much). Its
    name carries a digest of the file list, since every environment has other packages."""
    root = Path(sysconfig.get_paths()["purelib"]).resolve()
    files = sorted((p for p in _walk(root) if p.suffix == ".py"), key=lambda p: p.relative_to(root).as_posix())
    if max_files is not None:
        if max_files < 2:
            raise UserError(f"site-packages max_files={max_files}: need at least 2 files (train and validation).")
        files = files[:max_files]
    if len(files) < 2:
        raise UserError(f"No .py files found in site-packages at {root}.")
    digest = hashlib.sha256("\n".join(p.relative_to(root).as_posix() for p in files).encode()).hexdigest()[:12]
    name = f"site-packages-py{sys.version_info.major}.{sys.version_info.minor}-{digest}"
    params.setdefault("skip_bad_files", True)
    return CorpusSpec(name=name, kind="site-packages", root=root, files=tuple(files), **params)


@functools.lru_cache(maxsize=8)
def stdlib_corpus_spec(max_files: int | None = None, **params) -> CorpusSpec:
    """The embedded default corpus: the .py files of the running interpreter's standard library (walked once
    a process: the running interpreter's library does not change under it, and a sweep worker opens the
    corpus twice a run)."""
    root = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _STDLIB_SKIP_DIRS and not d.startswith(("config-", "."))
        )
        for f in sorted(filenames):
            if f.endswith(".py") and not f.startswith("_sysconfigdata"):
                files.append(Path(dirpath) / f)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if max_files is not None:
        if max_files < 2:
            raise UserError(f"stdlib max_files={max_files}: need at least 2 files (train and validation).")
        files = files[:max_files]
    if not files:
        raise UserError(f"No .py files found in the standard library at {root}.")
    version = f"{sys.implementation.name}-{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    name = f"stdlib-py{sys.version_info.major}.{sys.version_info.minor}"
    if max_files is not None:
        name += f"-first{max_files}"
    params.setdefault("skip_bad_files", True)
    return CorpusSpec(name=name, kind="stdlib", root=root, files=tuple(files),
                      extra=(("python", version),), **params)


# ----------------------------------------------------------------------------------------------------
# Manifest


def make_manifest(spec: CorpusSpec) -> dict:
    """File list with sizes and sha256, plus every parameter that changes the documents, and its hash.

    The hash covers relative paths only (not the absolute root), so the stdlib corpus of one Python
    version has the same hash on every machine whose standard library files are the same.
    """
    files = []
    for p in spec.files:
        st = p.stat()
        digest = _stdlib_sha256(p, st) if spec.kind == "stdlib" else sha256_file(p)
        files.append({"path": spec.relpath(p), "size": st.st_size, "sha256": digest})
    body = {
        "format": MANIFEST_FORMAT,
        "kind": spec.kind,
        "text_field": spec.text_field,
        "validation_fraction": spec.validation_fraction,
        "max_doc_bytes": spec.max_doc_bytes,
        "skip_bad_files": spec.skip_bad_files,
        **dict(spec.extra),
        "files": files,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return {"manifest_hash": digest, "root": str(spec.root), "num_files": len(files),
            "num_bytes": sum(f["size"] for f in files), **body}


_digests: dict[tuple, str] = {}


def _stdlib_sha256(path: Path, st: os.stat_result) -> str:
    """sha256 of a file of the interpreter's own library, hashed again only when its size, mtime or inode
    changed: a long-lived sweep worker checks the corpus's manifest twice a run (0.1 s of hashing 3,600
    files each time). Files of `text:` corpora, which users edit, are always hashed."""
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _digests:
        _digests[key] = sha256_file(path)
    return _digests[key]


# ----------------------------------------------------------------------------------------------------
# Documents


def file_documents(path: Path, rel: str, text_field: str, max_doc_bytes: int,
                   stats: dict | None = None) -> Iterator[tuple[str, str]]:
    """Yield (key, text) for each document of one file; raise UserError naming the file on bad input.
    `stats` collects what was skipped inside a file (Parquet rows whose text is null: "null_texts")."""
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: the file is empty. Remove it or point the source at other files.")
    if is_parquet(path):
        yield from parquet_documents(path, rel, text_field, stats)
        return
    with open(path, "rb") as f:
        if b"\0" in f.read(_SNIFF_BYTES):
            raise UserError(f"{path}: looks binary (it contains NUL bytes), not text. Exclude it from the source.")
        f.seek(0)
        if path.suffix.lower() in JSONL_SUFFIXES:
            yield from _jsonl_documents(f, path, rel, text_field)
        else:
            yield from _text_documents(f, path, rel, max_doc_bytes)


def _decode_line(raw: bytes, path: Path, lineno: int) -> str:
    if b"\0" in raw:
        raise UserError(f"{path}:{lineno}: contains NUL bytes (binary data), not text. Exclude the file.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}:{lineno}: byte {e.start} of the line (0x{raw[e.start]:02x}) is not valid UTF-8. "
            f"Re-encode the file as UTF-8 (e.g. `iconv -t utf-8`) or exclude it."
        ) from None


def _text_documents(f, path: Path, rel: str, max_doc_bytes: int) -> Iterator[tuple[str, str]]:
    parts: list[str] = []
    n_bytes = 0
    index = 0
    for lineno, raw in enumerate(f, start=1):
        line = _decode_line(raw, path, lineno)
        if lineno == 1 and line.startswith("\ufeff"):  # a UTF-8 byte-order mark is not text
            line = line[1:]
        parts.append(line)
        n_bytes += len(raw)
        if n_bytes >= max_doc_bytes:
            yield f"{rel}:{index}", "".join(parts)
            parts, n_bytes, index = [], 0, index + 1
    text = "".join(parts)
    if text:
        yield f"{rel}:{index}", text
    elif index == 0:
        raise UserError(f"{path}: contains no text. Remove it or point the source at other files.")


def _jsonl_documents(f, path: Path, rel: str, text_field: str) -> Iterator[tuple[str, str]]:
    for lineno, raw in enumerate(f, start=1):
        line = _decode_line(raw, path, lineno)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}).") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object with a '{text_field}' key, got "
                            f"{type(record).__name__}.")
        if text_field not in record:
            keys = ", ".join(sorted(map(str, record))[:10]) or "none"
            raise UserError(f"{path}:{lineno}: the JSON object has no key '{text_field}' (keys: {keys}). "
                            f"Set the text field (--text-field / data.text_field) to the key that holds the text.")
        text = record[text_field]
        if not isinstance(text, str):
            raise UserError(f"{path}:{lineno}: key '{text_field}' holds {type(text).__name__}, not a string.")
        if text:  # an empty string is no document; skipping it loses nothing
            yield f"{rel}:{lineno}", text


def split_fraction(key: str) -> float:
    """A document's place in [0, 1), fixed by its key alone: the basis of the train/validation split."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


@dataclasses.dataclass
class ScanResult:
    num_docs: int
    skipped: dict[str, str]  # relpath -> reason (skip_bad_files only)
    forced_validation_key: str | None  # the min-hash document, when no document fell below the threshold
    null_texts: dict[str, int] = dataclasses.field(default_factory=dict)  # relpath -> Parquet rows with null text


def scan(spec: CorpusSpec) -> ScanResult:
    """One streaming pass over every document: check the input and settle the split, before writing."""
    num_docs = num_val = 0
    min_key, min_frac = None, 2.0
    skipped: dict[str, str] = {}
    null_texts: dict[str, int] = {}
    for path in spec.files:
        rel = spec.relpath(path)
        # a file's counts join the totals only once it has been read whole (skip_bad_files drops a file that
        # fails half-way); counted as they stream, not as a list of keys (a Parquet shard has millions of rows)
        n = n_val = 0
        f_key, f_frac = None, 2.0
        stats: dict = {}
        try:
            for key, _ in file_documents(path, rel, spec.text_field, spec.max_doc_bytes, stats):
                frac = split_fraction(key)
                n += 1
                n_val += frac < spec.validation_fraction
                if frac < f_frac:
                    f_key, f_frac = key, frac
        except UserError as e:
            if not spec.skip_bad_files:
                raise
            skipped[rel] = str(e)
            continue
        num_docs, num_val = num_docs + n, num_val + n_val
        if f_frac < min_frac:
            min_key, min_frac = f_key, f_frac
        if stats.get("null_texts"):
            null_texts[rel] = stats["null_texts"]
            log.warning("%s: skipped %d rows whose '%s' is null", path, stats["null_texts"], spec.text_field)
    if num_docs < 2:
        raise UserError(
            f"{spec.kind} source at {spec.root}: found {num_docs} document(s); a train and a validation split "
            f"need at least 2. Add text, or lower max_doc_bytes (now {spec.max_doc_bytes}) to cut files smaller."
        )
    return ScanResult(num_docs, skipped, None if num_val else min_key, null_texts)


def is_validation(key: str, spec: CorpusSpec, scan_result: ScanResult) -> bool:
    return split_fraction(key) < spec.validation_fraction or key == scan_result.forced_validation_key


def iter_documents(spec: CorpusSpec, scan_result: ScanResult, split: str) -> Iterator[tuple[str, dict]]:
    """(key, example) of one split, streaming file by file (tfds shuffles keys into its shards)."""
    want_validation = split == "validation"
    for path in spec.files:
        rel = spec.relpath(path)
        if rel in scan_result.skipped:
            continue
        for key, text in file_documents(path, rel, spec.text_field, spec.max_doc_bytes):
            if is_validation(key, spec, scan_result) == want_validation:
                yield key, {"text": text, "path": rel}


# ----------------------------------------------------------------------------------------------------
# Building


@contextlib.contextmanager
def _locked(lock_path: Path):
    """An exclusive lock on `lock_path`, which is removed again on the way out (a failing build left
    empty .lock files behind). Removing a lock file is safe only because the holder unlinks it while
    still holding it, and a waiter that wakes up on a file no longer at that path starts over."""
    while True:
        f = open(lock_path, "a")
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            current = os.stat(lock_path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        f.close()  # the holder before us removed it: lock the file now at the path instead
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def dataset_dir(corpus_dir: Path) -> Path:
    """The TFDS version folder inside a built corpus folder."""
    return corpus_dir / BUILDER_NAME / BUILDER_VERSION


def read_manifest(corpus_dir: Path) -> dict | None:
    try:
        return json.loads((corpus_dir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def ensure_built(spec: CorpusSpec, data_dir: str | os.PathLike, *, force: bool = False) -> tuple[Path, dict]:
    """Build `spec` into data_dir unless an identical build (same manifest hash) is there already.

    Returns (corpus folder, manifest). Safe against concurrent callers (file lock) and crashes (the
    build happens in a temporary folder that is renamed into place only when complete).
    """
    if str(data_dir).startswith(("gs://", "s3://")):
        raise UserError(f"data_dir {data_dir}: text and stdlib corpora are built on a local disk. Use a local "
                        f"data_dir for them (tfds: datasets can be read from {data_dir}).")
    parent = Path(data_dir).expanduser() / BUILDER_NAME
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / spec.name
    with _locked(parent / f".{spec.name}.lock"):
        for stale in parent.glob(f".{spec.name}.*-*"):  # left by a crashed build
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        manifest = make_manifest(spec)
        existing = read_manifest(final)
        if (not force and existing and existing.get("manifest_hash") == manifest["manifest_hash"]
                and (dataset_dir(final) / "dataset_info.json").exists()):
            return final, existing
        tmp = parent / f".{spec.name}.tmp-{uuid.uuid4().hex}"
        try:
            scan_result = scan(spec)
            _build_tfds(spec, scan_result, manifest, tmp)
            shutil.rmtree(tmp / "downloads", ignore_errors=True)  # tfds makes it; nothing is downloaded
            manifest["num_docs"] = scan_result.num_docs
            manifest["skipped"] = scan_result.skipped
            manifest["null_texts"] = scan_result.null_texts
            write_text_atomic(tmp / "manifest.json", jsonio.dumps(manifest, indent=1, sort_keys=True) + "\n")
            old = parent / f".{spec.name}.old-{uuid.uuid4().hex}"
            if final.exists():
                os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final, manifest


def _build_tfds(spec: CorpusSpec, scan_result: ScanResult, manifest: dict, out_dir: Path) -> None:
    import tensorflow_datasets as tfds

    class ChinchaxText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """Documents of a set of local text files (see chinchax.data.text_builder)."""

        VERSION = tfds.core.Version(BUILDER_VERSION)
        name = BUILDER_NAME

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"chinchax {spec.kind} corpus from {spec.root}",
                features=tfds.features.FeaturesDict(
                    {"text": tfds.features.Text(), "path": tfds.features.Text()}
                ),
                metadata=tfds.core.MetadataDict(
                    manifest_hash=manifest["manifest_hash"], kind=spec.kind, **dict(spec.extra)
                ),
            )

        # tfds prints "Downloading and preparing ... Unknown size" to stdout; nothing is downloaded here.
        def _log_download_bytes(self):
            log.info("building %s corpus (%d files) into %s", spec.kind, len(spec.files), out_dir)

        def _log_download_done(self):
            log.info("built %s corpus: %d documents", spec.kind, scan_result.num_docs)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in ("train", "validation")}

        def _generate_examples(self, split):
            yield from iter_documents(spec, scan_result, split)

    builder = ChinchaxText(data_dir=str(out_dir), file_format="array_record")
    with local_buckets():  # past 1 GB tfds spills to buckets through tf.io.gfile, which needs TensorFlow
        builder.download_and_prepare()
