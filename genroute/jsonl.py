"""Reading JSONL files of records, with errors that name the file, the line and the caller's field; writing them
(atomically, owner-only); making the directory results are written to, with an error naming the caller's field
when it cannot be."""

from __future__ import annotations

import codecs
import gzip
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from genroute.bounds import NUL_IN_PATH, as_number
from genroute.errors import UsageError


def existing_file(path: Any, *, field: str, what: str = "file") -> Path:
    """``path`` as a ``Path`` to a file that exists; else a ``UsageError`` naming ``field``."""
    if not isinstance(path, str | os.PathLike):  # None or a number was a TypeError from pathlib
        raise UsageError(f"the {what} must be a file path, not {type(path).__name__}", field=field)
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is a directory, not a file", field=field)
    if not path.is_file():
        raise UsageError(f"{what} {str(path)!r} does not exist", field=field)
    return path


def iter_records(path: str | Path, *, field: str, what: str = "file") -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line (``.gz`` files are read through gzip; a leading BOM is
    skipped); a missing file, bad JSON or a non-object line is a ``UsageError`` naming ``field`` and the line."""
    path = existing_file(path, field=field, what=what)
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        # Bytes, each line decoded on its own: a text reader decodes ahead in blocks, so a bad byte on line 3 was
        # reported on line 1.
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if lineno == 1:  # a BOM (Windows tools write one) is not part of the first record's JSON
                    raw = raw.removeprefix(codecs.BOM_UTF8)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UsageError(f"{path.name}:{lineno}: not UTF-8 text", field=field) from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path.name}:{lineno}: not JSON ({exc.msg})", field=field) from None
                if not isinstance(record, dict):
                    raise UsageError(f"{path.name}:{lineno}: expected a JSON object, got {type(record).__name__}",
                                     field=field)
                yield lineno, record
    except (gzip.BadGzipFile, EOFError, OSError) as exc:  # not (whole) gzip, or unreadable
        raise UsageError(f"{path.name}:{lineno + 1}: cannot be read ({exc})", field=field) from None


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as JSON lines at ``path`` (its directories made, 0700), atomically (readers see the old file or
    the new one) and readable by their owner only: every JSONL file genroute writes holds captured inputs and outputs
    (outcome exports, tuning sets and rows)."""
    from genroute.cache import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(path, jsonl_bytes(rows), private=True)
    return path


def jsonl_bytes(rows: Iterable[Mapping[str, Any]]) -> bytes:
    """``rows`` as JSON lines, UTF-8 (non-ASCII text as it is, not escaped): what ``write_jsonl`` writes."""
    return b"".join(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n" for row in rows)


def nth_record(index: int) -> str:
    """How a message names the record at 0-based ``index`` of records given in code: ``record 1 (counting from 1)``,
    numbered as a file's lines are (a field path such as ``data.0`` stays 0-based, as pydantic's are)."""
    return f"record {index + 1} (counting from 1)"


#: The one wording of a record's text that holds nothing but whitespace (``KEY: must not be blank``), in the bench's
#: datasets, tuning files and ICL example files alike.
BLANK = "must not be blank"


def blank(value: Any, key: str) -> str | None:
    """``KEY: must not be blank`` if ``value`` is text holding nothing but whitespace, else ``None``: the refusal
    each reader puts after the file and line (``data.jsonl:2: input: must not be blank``)."""
    return f"{key}: {BLANK}" if isinstance(value, str) and not value.strip() else None


def whole_text(value: Any) -> Any:
    """``value`` as text if it is an int (not a bool): its digits; anything else as it is, for the reader to accept or
    refuse. How a task numbered ``"task": 3`` reads, as an outcome matrix reads it (``str``: ``3.0`` is no task 3)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def label_text(label: Any) -> Any:
    """A record's ``label`` as the text a class is compared as: a whole number (a star rating, a class id written
    ``"label": 4``, or ``4.0`` as pandas writes an int column holding a missing value, or a numpy integer) as its
    digits; anything else as it is, for the reader to accept or refuse (``true`` and ``4.5`` are no class)."""
    return whole_text(as_number(label))


def _as_path(path: Any, *, field: str) -> Path:
    if not isinstance(path, str | os.PathLike):  # None or a number was a TypeError from pathlib
        raise UsageError(f"must be a directory path, not {type(path).__name__}", field=field)
    if "\x00" in os.fspath(path):  # was a bare ValueError from the first stat or mkdir
        raise UsageError(NUL_IN_PATH, field=field)
    return Path(path)


def output_dir(path: str | Path, *, field: str, private: bool = False) -> Path:
    """``path`` as a directory that exists (made with its parents if needed); ``UsageError`` naming ``field`` when
    it cannot be (a file is there, no permission...), before anything is run or written. A directory made here is
    its owner's only (0700): what goes in it quotes inputs (results, reports, outcome exports). ``private``: the
    inputs are a file only its owner may read, so one already there that others may enter is warned of (its mode
    is the user's to choose)."""
    path = _as_path(path, field=field)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o700, exist_ok=True)
        shared = private and path.stat().st_mode & 0o077
    except OSError as exc:
        raise UsageError(f"cannot write results to {str(path)!r} ({exc.strerror or exc})", field=field) from None
    if shared:
        import logging

        logging.getLogger("genroute.bench").warning(
            "%s may be read by other users (mode %o), and what is written in it quotes an input file only its owner "
            "may read: chmod go-rwx it, or write elsewhere", path, path.stat().st_mode & 0o777)
    return path


def owner_only(path: object) -> bool:
    """Whether ``path`` names a file only its owner may read (an outcome export is written so); False for anything
    else (records given in memory, a file not there)."""
    try:
        return isinstance(path, str | os.PathLike) and not os.stat(path).st_mode & 0o077
    except OSError:
        return False


def check_output_dir(path: str | Path, *, field: str) -> Path:
    """``path`` if it is, or could be made as, a directory this process can write in; ``UsageError`` naming
    ``field`` otherwise. Makes nothing: for the check before a long run that must leave no files if it fails."""
    path = _as_path(path, field=field)
    existing = path
    while not existing.exists() and existing.parent != existing:  # the nearest part of the path that is there
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write results to {str(path)!r} ({str(existing)!r} is not a directory)",
                         field=field)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write results to {str(path)!r} (no permission to write in {str(existing)!r})",
                         field=field)
    return path
