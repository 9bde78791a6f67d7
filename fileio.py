"""Small file helpers shared by every part: whole-file writes are atomic, hashes are streamed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from chinchax.errors import UserError


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: readers never see half a file,
    and a crash leaves the previous version in place. On gs:// one upload does the same: an object appears
    whole or not at all."""
    if not isinstance(text, str):
        raise TypeError(f"write_text_atomic writes str, not {type(text).__name__}")
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """`write_text_atomic` for bytes."""
    if is_remote(path):
        path = run_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def new_dir_atomic(out_dir: str | Path) -> Iterator[Path]:
    """Fill a new directory all or nothing: yields a temporary sibling to write into, renamed to `out_dir`
    when the block ends without error, removed when it raises. `out_dir` must not exist or be empty."""
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"output directory {out_dir} exists and is not empty; choose a new one")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path) -> str:
    if is_remote(path):
        digest = hashlib.sha256()
        with run_path(path).open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
        return digest.hexdigest()
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# --- reading the user's files --------------------------------------------------------------------------


def decode_user_text(data: bytes, path, *, what: str = "file") -> str:
    """`data` (the bytes of the user's file `path`) as text: UTF-8, a leading byte-order mark dropped. Bytes
    that are not UTF-8 (a Latin-1 or UTF-16 file, a binary given by mistake) are a UserError naming the file,
    the line and column of the first one, and the fix."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise UserError(
            f"{what} {path}:{line}:{column} is not UTF-8 text (byte 0x{data[start]:02x}); save it as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8 FILE > NEW`), or check that this is the file you meant"
        ) from None


def read_user_text(path, *, what: str = "file") -> str:
    """The text of a file the user gave (a config, a task, a table; local or gs://): UTF-8, else a UserError
    naming the place of the first bad byte and the fix (decode_user_text). A folder or a missing file is a
    UserError too; other OS errors (permissions) stay OSErrors."""
    path = path if hasattr(path, "read_bytes") else Path(path)
    if not path.is_file():
        kind = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UserError(f"{what} {path} {kind}")
    return decode_user_text(path.read_bytes(), path, what=what)


def read_user_json(path, *, what: str = "JSON file", fix: str = "") -> object:
    """A JSON document the user gave (decoded as read_user_text): a file cut short or otherwise not JSON is a
    UserError naming the file, line and column and, when given, `fix`."""
    import json

    text = read_user_text(path, what=what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        cut = " (the file ends early: was it cut short?)" if e.pos >= len(text.rstrip()) else ""
        raise UserError(f"{what} {path}:{e.lineno}:{e.colno} is not valid JSON: {e.msg}{cut}"
                        f"{'; ' + fix if fix else ''}") from None


# --- run directories on object stores (gs://) -----------------------------------------------------------
# A run directory may be a local folder or a gs:// URI (Cloud TPU: every host writes there and it outlives the
# VM). URIs become etils.epath paths (what orbax itself uses; gs:// goes through fsspec/gcsfs); local paths stay
# plain pathlib paths, handled exactly as before. GCS has no rename, no append and no flock: whole-object
# uploads are atomic (an object appears complete or not at all), which is what the writers below rely on.


def is_remote(path) -> bool:
    """A URI such as gs://bucket/dir (not a local path)."""
    return "://" in str(path)


def run_path(path):
    """`path` as the object every run-dir reader and writer uses: an etils.epath.Path for a URI (gs://...),
    else an absolute pathlib.Path (never `Path('gs://b').absolute()`, which is a local folder named `gs:`)."""
    if is_remote(path):
        from etils import epath

        _no_listing_cache()
        return epath.Path(str(path))
    return Path(path).absolute()


def _no_listing_cache() -> None:
    """A run dir on GCS is written by several writers: orbax's tensorstore (not through gcsfs), other hosts,
    the trainer subprocesses of a sweep. gcsfs caches folder listings per process and would then show a
    folder as it was (a checkpoint missing files, a run.json not there yet): turn that cache off for the
    gcsfs instances made from here on (fsspec's config supplies default keyword arguments)."""
    import fsspec.config

    for protocol in ("gs", "gcs"):
        fsspec.config.conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


def file_size(path) -> int:
    st = path.stat()
    return st.st_size if hasattr(st, "st_size") else int(st.length)


def files_under(root) -> list:
    """Every file below `root` (recursively), sorted. gs:// paths are walked folder by folder: epath refuses
    `rglob` there."""
    if not is_remote(root):
        return sorted(p for p in Path(root).rglob("*") if p.is_file())
    out = []
    for folder, _, names in root.walk():
        scheme = str(root).split("://")[0]
        base = run_path(str(folder) if "://" in str(folder) else f"{scheme}://{folder}")
        out += [base / n for n in names]
    return sorted(out, key=str)


def copy_tree(source, target) -> None:
    """Copy a folder (local or gs://, either way round) file by file."""
    if not is_remote(source) and not is_remote(target):
        shutil.copytree(source, target)
        return
    for f in files_under(source):
        dst = run_path(str(target).rstrip("/") + "/" + str(f)[len(str(source).rstrip("/")) + 1 :])
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(f.read_bytes())


def remove_tree(path) -> None:
    if is_remote(path):
        path.rmtree(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
