"""Document sources: random access to the text of documents, from TFDS, the user's files, or the stdlib.

    open_source("stdlib", "train")                     # the embedded default (Python standard library)
    open_source("text:~/corpus/**/*.jsonl", "validation", text_field="body")
    open_source("parquet:~/fineweb/sample/10BT/*.parquet", "train")   # the `text` column of each shard
    open_source("tfds:lm1b", "train", data_dir="gs://my-bucket/tfds")
    open_source("tfds:c4/en:3.1.0", "validation")

Every source is a TFDS ArrayRecord dataset read with `as_data_source` (no TensorFlow), wrapped in a
`DocumentSource`: `len(src)`, `src[i] -> str`, picklable, so grain can index it from worker processes.
`text:`, `parquet:` and `stdlib` are built on first use (see chinchax.data.text_builder); `tfds:` datasets must be
prepared as ArrayRecord (`chinchax data build tfds:NAME`, or by anyone with `file_format='array_record'`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import socket
import threading
from pathlib import Path

from chinchax.errors import UserError

SOURCE_FORMS = ("'stdlib', 'site-packages', 'text:PATH_OR_GLOB', 'parquet:PATH_OR_GLOB' or "
                "'tfds:NAME[/CONFIG][:VERSION]'")
# Where TFDS (and most catalog datasets) download from; probed before a download so that an offline
# machine fails in seconds rather than after minutes of tfds retries.
_PROBE_HOSTS = (("storage.googleapis.com", 443),)


def default_data_dir() -> str:
    """`$CHINCHAX_DATA_DIR`, else `~/.cache/chinchax/data`."""
    return os.environ.get("CHINCHAX_DATA_DIR") or os.path.expanduser("~/.cache/chinchax/data")


@dataclasses.dataclass(frozen=True)
class PromptTarget:
    """An instruction example. Its document is `prompt + target` (the separator belongs to the prompt, as
    at generation time); with data.loss_on=targets only the target's tokens and the EOS after it are in
    the loss. Prompt and target are tokenized separately, so a token never straddles the two."""

    prompt: str
    target: str

    @property
    def text(self) -> str:
        return self.prompt + self.target


class DocumentSource:
    """Random access to documents as `str`: the grain `RandomAccessDataSource` protocol."""

    def __init__(self, data_source, *, text_field: str, name: str, split: str, metadata: dict):
        self._data_source = data_source
        self.text_field = text_field
        self.name = name
        self.split = split
        self.metadata = metadata  # e.g. manifest_hash, python version, data dir

    def __len__(self) -> int:
        return len(self._data_source)

    def _text(self, record) -> str:
        value = record[self.text_field]
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def __getitem__(self, index) -> str:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"document {index} out of range for {self.name} [{self.split}] with {n} documents")
        return self._text(self._data_source[index % n])

    def __getitems__(self, indices) -> list[str]:
        return [self._text(r) for r in self._data_source.__getitems__([int(i) for i in indices])]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"DocumentSource({self.name!r}, split={self.split!r}, documents={len(self)})"


def open_source(
    source: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    text_field: str = "text",
    max_files: int | None = None,
    skip_bad_files: bool = False,
    validation_fraction: float = 0.02,
    max_doc_bytes: int = 65536,
    prepare: bool = True,
) -> DocumentSource:
    """Open one split of a source as random-access documents (see the module docstring for the forms).

    `prepare=True` builds `text:`/`stdlib` corpora when missing or stale and downloads+prepares a
    missing `tfds:` dataset when the network is reachable; `prepare=False` only reads what is there.
    """
    data_dir = str(data_dir) if data_dir is not None else default_data_dir()
    if not isinstance(source, str) or not source:
        raise UserError(f"data source {source!r}: expected {SOURCE_FORMS}.")
    if source.startswith("tfds:"):
        return _open_tfds(source[len("tfds:"):], split, data_dir, text_field=text_field, prepare=prepare)
    params = dict(text_field=text_field, validation_fraction=validation_fraction, max_doc_bytes=max_doc_bytes)
    _check_params(validation_fraction, max_doc_bytes)
    spec = corpus_spec(source, max_files=max_files, skip_bad_files=skip_bad_files, **params)
    return _open_corpus(spec, split, data_dir, prepare=prepare)


def corpus_spec(source: str, *, max_files: int | None = None, skip_bad_files: bool = False, **params):
    """The `CorpusSpec` of a `stdlib`, `site-packages`, `text:` or `parquet:` source (UserError otherwise)."""
    from chinchax.data import text_builder

    if source == "stdlib":
        return text_builder.stdlib_corpus_spec(max_files=max_files, **params)
    if source == "site-packages":
        return text_builder.site_packages_corpus_spec(max_files=max_files, **params)
    for kind in ("text", "parquet"):
        if source.startswith(f"{kind}:") and len(source) > len(kind) + 1:
            return text_builder.text_corpus_spec(source[len(kind) + 1:], max_files=max_files, kind=kind,
                                                 skip_bad_files=skip_bad_files, **params)
    raise UserError(f"data source {source!r}: expected {SOURCE_FORMS}.")


def _check_params(validation_fraction: float, max_doc_bytes: int) -> None:
    if not 0.0 < validation_fraction <= 0.5:
        raise UserError(f"validation_fraction={validation_fraction}: must be in (0, 0.5].")
    if max_doc_bytes < 256:
        raise UserError(f"max_doc_bytes={max_doc_bytes}: must be at least 256.")


def _open_corpus(spec, split: str, data_dir: str, *, prepare: bool) -> DocumentSource:
    import tensorflow_datasets as tfds

    from chinchax.data import text_builder

    if split not in ("train", "validation"):
        raise UserError(f"split {split!r} of {spec.kind} source: expected 'train' or 'validation'.")
    if prepare:
        corpus_dir, manifest = text_builder.ensure_built(spec, data_dir)
    else:
        corpus_dir = Path(data_dir).expanduser() / text_builder.BUILDER_NAME / spec.name
        manifest = text_builder.read_manifest(corpus_dir)
        if manifest is None:
            raise UserError(f"{spec.kind} corpus is not built in {data_dir}. Run `chinchax data build` for it.")
    builder = tfds.builder_from_directory(str(text_builder.dataset_dir(corpus_dir)))
    metadata = {
        "source_kind": spec.kind,
        "manifest_hash": manifest["manifest_hash"],
        "num_files": manifest["num_files"],
        "data_dir": str(corpus_dir),
    }
    if "python" in manifest:
        metadata["python"] = manifest["python"]
    return DocumentSource(builder.as_data_source(split=split), text_field="text", name=spec.name, split=split,
                          metadata=metadata)


# ----------------------------------------------------------------------------------------------------
# TFDS catalog datasets


def tfds_builder(name: str, data_dir: str):
    """The TFDS builder for `NAME[/CONFIG][:VERSION]`, with a short error for unknown names."""
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text  # noqa: F401  (registers the legacy text builders, e.g. c4)
    from tensorflow_datasets.core import registered

    if data_dir.startswith("gs://"):
        try:
            import gcsfs  # noqa: F401
        except ImportError:
            raise UserError(f"data_dir {data_dir}: reading gs:// without TensorFlow needs gcsfs "
                            f"(`pip install gcsfs`).") from None
    try:
        return tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except registered.DatasetNotFoundError:
        base = name.split("/")[0].split(":")[0]
        close = difflib.get_close_matches(base, tfds.list_builders(with_community_datasets=False), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UserError(f"tfds:{name}: no such TFDS dataset.{hint} See "
                        f"https://www.tensorflow.org/datasets/catalog/overview for names.") from None
    except ValueError as e:  # unknown config or version
        raise UserError(f"tfds:{name}: {e}") from None


def network_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the TFDS download host answers within `timeout_s` (DNS included, bounded by a thread)."""
    result = []

    def probe():
        for host, port in _PROBE_HOSTS:
            try:
                socket.create_connection((host, port), timeout=timeout_s).close()
                result.append(True)
                return
            except OSError:
                pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    return bool(result)


def prepare_tfds(name: str, data_dir: str):
    """Download and prepare a TFDS dataset as ArrayRecord, failing fast when offline."""
    builder = tfds_builder(name, data_dir)
    if builder.is_prepared():
        return builder
    if not network_reachable():
        raise UserError(
            f"tfds:{name} is not prepared in {data_dir} and the network is unreachable. On a machine with "
            f"network run `chinchax data build tfds:{name} --data-dir DIR` (it writes ArrayRecord files), then "
            f"copy DIR/{builder.name} here or point --data-dir / data.data_dir (or CHINCHAX_DATA_DIR) at DIR "
            f"(a gs:// bucket works with gcsfs installed)."
        )
    builder.download_and_prepare()
    return builder


def _open_tfds(name: str, split: str, data_dir: str, *, text_field: str, prepare: bool) -> DocumentSource:
    builder = prepare_tfds(name, data_dir) if prepare else tfds_builder(name, data_dir)
    if not builder.is_prepared():
        raise UserError(f"tfds:{name} is not prepared in {data_dir}. Run `chinchax data build tfds:{name}`.")
    file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if "array_record" not in file_format:
        raise UserError(
            f"tfds:{name} in {builder.data_dir} is stored as {file_format}; random access needs ArrayRecord. "
            f"Rebuild it with `chinchax data build tfds:{name}` into another data dir, or convert it with "
            f"`tfds convert_format --root_data_dir {data_dir} --out_file_format array_record`."
        )
    splits = list(builder.info.splits)
    if split.split("[")[0] not in splits:
        raise UserError(f"tfds:{name} has no split {split!r}; it has: {', '.join(splits)}.")
    features = builder.info.features
    if text_field not in features:
        raise UserError(f"tfds:{name} has no feature '{text_field}'; it has: {', '.join(features)}. "
                        f"Set the text field (--text-field / data.text_field).")
    metadata = {"source_kind": "tfds", "dataset": builder.info.full_name, "data_dir": str(builder.data_dir)}
    return DocumentSource(builder.as_data_source(split=split), text_field=text_field, name=f"tfds:{name}",
                          split=split, metadata=metadata)


def document_stats(source, tokenizer, *, max_docs: int | None = None, batch_docs: int = 256) -> dict:
    """Documents, UTF-8 bytes, tokens and bytes per token of a source, streamed in batches of documents.

    bits per byte = (loss in nats per token / ln 2) * tokens / bytes = bits per token / bytes_per_token.
    """
    n = len(source) if max_docs is None else min(max_docs, len(source))
    num_bytes = num_tokens = 0
    for start in range(0, n, batch_docs):
        docs = [source[i] for i in range(start, min(start + batch_docs, n))]
        num_bytes += sum(len(d.encode("utf-8")) for d in docs)
        num_tokens += sum(len(ids) for ids in tokenizer.encode_batch(docs))
    return {"documents": n, "bytes": num_bytes, "tokens": num_tokens,
            "bytes_per_token": num_bytes / num_tokens if num_tokens else float("nan")}


# ----------------------------------------------------------------------------------------------------
# Prompt/target records (data.loss_on=targets)

PROMPT_TARGET_SEPARATOR = " "  # between a JSONL record's prompt and target, as data.mixtures.write_jsonl's `text`


def open_prompt_targets(source: str, split: str, *, validation_fraction: float = 0.02) -> list[PromptTarget]:
    """The prompt/target records of one split of a `text:` source of JSONL files (data.loss_on=targets).

    Every non-blank line must be an object with string `prompt` and `target` fields; its document is
    prompt + " " + target. The split is the text corpus's (text_builder: the record's `relpath:line` key
    hashed against `validation_fraction`), so a file splits alike for data.loss_on=all (its `text`
    field) and targets. The records are read into memory: instruction sets, not pretraining corpora.
    """
    from chinchax.data import text_builder

    if not source.startswith("text:"):
        raise UserError(f"data.loss_on=targets needs records with prompt and target fields; data.source={source!r} "
                        "holds plain text. Use a registered mixture (data.mixtures.register_mixture), "
                        "`text:FILE.jsonl` with `prompt` and `target` fields, or set data.loss_on=all")
    if split not in ("train", "validation"):
        raise UserError(f"split {split!r} of {source}: expected 'train' or 'validation'.")
    spec = text_builder.text_corpus_spec(source[len("text:"):])
    records: list[tuple[float, str, PromptTarget]] = []
    for path in spec.files:
        if path.suffix.lower() not in text_builder.JSONL_SUFFIXES:
            raise UserError(f"data.loss_on=targets reads prompt/target records from JSONL files; {path} is not "
                            f"one ({', '.join(text_builder.JSONL_SUFFIXES)}). Point data.source at JSONL files "
                            "only, or set data.loss_on=all")
        records += _prompt_target_records(path, spec.relpath(path))
    if len(records) < 2:
        raise UserError(f"{source}: {len(records)} prompt/target record(s); a train and a validation split need "
                        "at least 2")
    held = [frac < validation_fraction for frac, _, _ in records]
    if not any(held):  # as text_builder: the smallest hash is held out, so validation is never empty
        held[min(range(len(records)), key=lambda i: records[i][0])] = True
    return [r for (_, _, r), v in zip(records, held, strict=True) if v == (split == "validation")]


def _prompt_target_records(path: Path, rel: str) -> list[tuple[float, str, PromptTarget]]:
    from chinchax.data.text_builder import split_fraction

    out = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):  # numbered as text_builder numbers them: keys agree
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise UserError(f"{path}:{lineno}: not a valid UTF-8 JSON line ({e})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            for key in ("prompt", "target"):
                if not isinstance(record.get(key), str):
                    keys = ", ".join(sorted(map(str, record))[:10]) or "none"
                    raise UserError(f"{path}:{lineno}: data.loss_on=targets needs a string {key!r} field in every "
                                    f"record (keys: {keys}); add it, or set data.loss_on=all")
            key = f"{rel}:{lineno}"
            out.append((split_fraction(key), key, PromptTarget(record["prompt"] + PROMPT_TARGET_SEPARATOR, record["target"])))
    return out
