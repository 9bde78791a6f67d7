"""Documents of a Parquet shard (FineWeb, Dolma, SlimPajama...): one document per row of its text column.

Read with pyarrow one row group at a time, only the text column, in batches of `BATCH_ROWS` rows through
a buffered stream (pre_buffer off), so memory holds one batch of documents plus pyarrow's read buffers,
whatever the size of the shard or of its row groups (docs/benchmarks.md measures it).

A document's key is `relpath:ROW` with ROW the 0-based row of the file, so the train/validation split
(text_builder.split_fraction) is fixed by the file's path and the row alone. Rows whose text is null are
skipped and counted (`stats["null_texts"]`; the manifest records them); empty strings are skipped, as an
empty JSONL text is. Documents are not cut at max_doc_bytes: a row is one record, as a JSONL line is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from chinchax.errors import UserError

PARQUET_SUFFIXES = (".parquet",)
BATCH_ROWS = 512
_READ_BUFFER_BYTES = 1 << 20


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def _damaged(path: Path, e: BaseException, what: str = "not a readable Parquet file") -> UserError:
    return UserError(f"{path}: {what} ({type(e).__name__}: {_one_line(e)}); the file may be truncated or "
                     f"damaged. Download or write it again, or exclude it from the source.")


def _is_text_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def open_parquet(path: Path, text_field: str):
    """The ParquetFile, with its text column checked: UserError naming the file, the column and the fix."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        raise _damaged(path, e) from None
    schema = pf.schema_arrow
    names = schema.names
    fix = "Set the text column (--text-field / data.text_field) to the column that holds the text"
    if text_field not in names:
        pf.close()
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise UserError(f"{path}: no column '{text_field}' (columns: {shown or 'none'}). {fix}.")
    field_type = schema.field(names.index(text_field)).type
    if not _is_text_type(field_type):
        pf.close()
        strings = [f.name for f in schema if _is_text_type(f.type)]
        raise UserError(f"{path}: column '{text_field}' holds {field_type}, not strings. {fix} (string columns: "
                        f"{', '.join(strings[:10]) or 'none'}).")
    return pf


def parquet_documents(path: Path, rel: str, text_field: str, stats: dict | None = None) -> Iterator[tuple[str, str]]:
    """Yield (key, text) for each non-empty text of one shard; count null texts in stats["null_texts"]."""
    pf = open_parquet(path, text_field)
    with pf:
        row = 0
        for group in range(pf.num_row_groups):
            for texts in _row_group_texts(pf, path, group, text_field):
                for i, text in enumerate(texts):
                    if text is None:
                        if stats is not None:
                            stats["null_texts"] = stats.get("null_texts", 0) + 1
                    elif text:
                        yield f"{rel}:{row + i}", text
                row += len(texts)


def _row_group_texts(pf, path: Path, group: int, text_field: str) -> Iterator[list]:
    """The text column of one row group, BATCH_ROWS values at a time; a read error names the row group."""
    import pyarrow as pa

    what = f"row group {group} of {pf.num_row_groups} cannot be read"
    try:
        batches = pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=[text_field], use_threads=False)
    except (pa.ArrowException, OSError) as e:
        raise _damaged(path, e, what) from None
    while True:
        try:
            batch = next(batches, None)
            texts = None if batch is None else batch.column(0).to_pylist()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
            raise _damaged(path, e, what) from None
        if texts is None:
            return
        yield texts
