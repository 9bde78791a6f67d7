"""Strict JSON out: every JSON file or line chinchax writes parses with any standard parser.

Python's json writes NaN and Infinity as bare words by default, which JSON does not have (jq, JavaScript and
strict parsers reject the file). Here a non-finite float is written as null, numpy scalars and arrays as
plain numbers and lists, and `allow_nan=False` guards against anything this misses. Readers that want the
float back turn null into nan (`FitResult.from_json` does).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from chinchax.fileio import run_path, write_text_atomic

# Rows logged before non-finite numbers were written as null held the strings str(float) gives them.
OLD_NONFINITE = frozenset({"nan", "inf", "-inf"})


def strict(x):
    """`x` with every non-finite float replaced by None, numpy scalars/arrays as Python numbers/lists,
    tuples as lists and dict keys as strings."""
    if isinstance(x, dict):
        return {str(k): strict(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # numpy array or scalar
        return strict(x.tolist())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def dumps(x, **kwargs) -> str:
    """json.dumps of strict(x), refusing (ValueError) any NaN/Infinity left."""
    return json.dumps(strict(x), allow_nan=False, **kwargs)


def dump(x, f, **kwargs) -> None:
    json.dump(strict(x), f, allow_nan=False, **kwargs)


def write_json(path, data) -> None:
    """The one way a whole JSON file is written (run.json, eval.json, ...): strict, indented, atomic."""
    write_text_atomic(path, dumps(data, indent=2) + "\n")


def nonfinite_as_null(record: dict) -> dict:
    """`record` with the old spellings of a non-finite number ("nan", "inf", "-inf") read as null, today's."""
    return {k: None if isinstance(v, str) and v in OLD_NONFINITE else v for k, v in record.items()}


def read_object(path, *, what: str = "JSON file", fix: str = "") -> dict:
    """A JSON object that must be there: missing, not UTF-8, cut short or not an object is a UserError
    naming the file, the place and, when given, `fix` (fileio.read_user_json)."""
    from chinchax.errors import UserError
    from chinchax.fileio import read_user_json

    record = read_user_json(path, what=what, fix=fix)
    if not isinstance(record, dict):
        raise UserError(f"{what} {path} holds a JSON {type(record).__name__}, not an object{'; ' + fix if fix else ''}")
    return record


def read_object_or_none(path) -> dict | None:
    """A JSON object chinchax wrote (local or gs://), or None when the file is absent, damaged or not an
    object: for state checks (a sweep's plan and markers, a run's run.json), where that means "not there"."""
    path = path if hasattr(path, "read_text") else Path(path)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines file (metrics.jsonl), local or gs://; [] when it does not exist. Stops at
    a line cut short by a kill: everything after it is redone by the resumed run anyway. Old rows' "nan"
    strings come back as None (`nonfinite_as_null`)."""
    path = run_path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(nonfinite_as_null(json.loads(line)))
        except ValueError:
            break
    return rows


def jsonl_records(path, *, what: str = "JSONL file") -> list[tuple[str, dict]]:
    """(place, record) for every non-blank line of a user's JSON-lines file (tasks, preferences, ...), place
    being "path:line" for messages. A missing file, a line that is not JSON or not an object: UserError
    naming the file, the line and the fix."""
    from chinchax.errors import UserError
    from chinchax.fileio import read_user_text

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    text = read_user_text(path, what=what)  # not UTF-8: UserError at the first bad byte
    lines = text.splitlines()
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            cut = (" (the file's last line, with no newline after it: was the file cut short?)"
                   if n == len(lines) and not text.endswith("\n") else "")
            raise UserError(f"{path}:{n}:{e.colno} is not valid JSON ({e.msg}){cut}; each line must be one JSON "
                            "object") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}:{n} holds a JSON {type(record).__name__}; each line must be one JSON object")
        records.append((f"{path}:{n}", record))
    return records
