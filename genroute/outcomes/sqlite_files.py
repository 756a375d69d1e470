"""The outcome store's SQLite file: its schema, how it is opened (also from a read-only directory), how a write's
refusal is worded, and how its writes are moved out of the ``-wal`` file.

A store file is in WAL mode: SQLite keeps a ``-wal`` and a ``-shm`` file beside it, made by the first connection.
In a directory this process cannot write, SQLite cannot make them and refuses even to read the file ("unable to open
database file"). When no ``-wal`` file is there either (no writer has the file open: every write is in the file
itself), it is read as an unchanging file (``mode=ro&immutable=1``: no lock, no ``-shm``); a write to it is a
``ConfigError`` naming the file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from genroute.errors import ConfigError, OutcomeStoreError, UsageError

_log = logging.getLogger("genroute.outcomes.store")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes (
    id TEXT PRIMARY KEY,
    task TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    captured INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    seq INTEGER
);
CREATE INDEX IF NOT EXISTS outcomes_task ON outcomes (task, created_at);
"""
#: ``seq`` numbers every write (1, 2, ...): ``changes_sync`` reads the rows written after a place. A file made
#: before it had no such column: added on open (its rows keep NULL and are read by a reader's first, full read), or,
#: when the file is read-only, left without it (every read of ``changes_sync`` is then a full one).
_SEQ = "CREATE INDEX IF NOT EXISTS outcomes_seq ON outcomes (seq)"
#: Reads of a file in a directory this process cannot write that another process wrote meanwhile, at most
#: (``read_file``): a writer pausing now and then lets the next one through.
_FROZEN_READS = 5
#: How long closing a store waits for readers of older snapshots to let its writes be moved into the file itself.
CHECKPOINT_WAIT_S = 5.0


def connect(path: Path, *, frozen: bool = False, timeout_s: float = 30.0,
            check_same_thread: bool = True) -> sqlite3.Connection:
    """A connection to the store file; ``frozen`` (a file in a directory this process cannot write, ``frozen_out``):
    read-only and unchanging while no ``-wal`` file is beside it, else as any (a writer with the rights to the
    directory has it open: the ``-shm`` file beside it is there to be read)."""
    if frozen and not wal_file(path).exists():
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, timeout=timeout_s,
                               isolation_level=None, check_same_thread=check_same_thread)
    return sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=check_same_thread)


def read_file(path: Path, read: Callable[[sqlite3.Connection], T], *, frozen: bool = False) -> T:
    """``read`` on a connection of its own (``connect``), closed after. ``frozen`` (a file in a directory this process
    cannot write): read again when another process wrote the file meanwhile. Read unchanging (no lock: another
    process's writing is not seen), a read that a checkpoint overlapped (another process moving its writes into the
    file) saw pages of two states of it: rows twice or missing, or SQLite's "database disk image is malformed".
    Such a read is the one whose file (inode, size, times) or ``-wal`` file changed while it ran; a read beside a
    ``-wal`` file, as any, holds SQLite's locks."""
    if not frozen:
        db = connect(path)
        try:
            return read(db)
        finally:
            db.close()
    failure: Exception | None = None
    for attempt in range(_FROZEN_READS):
        before = _written_state(path)
        db = connect(path, frozen=True)
        try:
            answer, failure = read(db), None
        except Exception as exc:  # a torn read may fail in any way (SQLite's, a row's JSON): judged below
            failure = exc
        finally:
            db.close()
        if _written_state(path) == before:
            if failure is not None:
                raise failure
            return answer
        time.sleep(0.01 * attempt)  # another process is checkpointing now: a moment for it to finish
    # genroute's error, as every other failure of the store (it was sqlite3's own OperationalError): the file, and
    # what SQLite said of the last read, if it failed (a torn read: "database disk image is malformed").
    said = "" if failure is None else f"; the last read: {type(failure).__name__}: {failure}"
    raise OutcomeStoreError(f"the outcome store {str(path)!r} changed during each of {_FROZEN_READS} reads (another "
                            f"process writing it, which this process, in a directory it cannot write, reads without "
                            f"SQLite's locks){said}", path=str(path))


def _written_state(path: Path) -> tuple[int, ...] | None:
    """What changes when another process writes ``path``: its inode, size and times; ``None`` while a ``-wal`` file
    is beside it (the file is read under SQLite's locks then)."""
    if wal_file(path).exists():
        return None
    stat = os.stat(path)
    return stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def wal_file(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def frozen_out(path: Path, exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite could not open the file because the ``-wal``/``-shm`` files it needs cannot be made beside it
    (the directory is read-only for this process) while no writer has it open: it can be read frozen. SQLite says
    so with ``SQLITE_CANTOPEN`` where the system refused with ``EPERM`` or ``EROFS`` (an immutable directory, a
    read-only mount), and with ``SQLITE_READONLY_DIRECTORY`` where it refused with ``EACCES`` (a directory whose
    permissions this user lacks: the usual case for anyone but root)."""
    cannot_make = (exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_CANTOPEN
                   or exc.sqlite_errorcode == sqlite3.SQLITE_READONLY_DIRECTORY)
    return (cannot_make and not os.access(path.parent, os.W_OK)
            and not wal_file(path).exists() and os.access(path, os.R_OK))


def read_only(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused a write because the file is read-only (``SQLITE_READONLY`` and its extended codes)."""
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_READONLY


def unwritable(path: Path, exc: BaseException, field: str) -> ConfigError | None:
    """The ``ConfigError`` naming ``field`` and the file for a write SQLite refused because the file or its directory
    cannot be written (it was sqlite3's own OperationalError); ``None`` for any other failure."""
    if not isinstance(exc, sqlite3.OperationalError) or \
            exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN):
        return None
    return ConfigError(f"cannot write the outcome store {str(path)!r}: {read_only_reason(path)}: {exc}", field=field)


def read_only_reason(path: Path) -> str:
    """Why SQLite cannot write ``path``: its directory, or the file itself."""
    return ("its directory is read-only (SQLite writes a -wal and a -shm file beside it)"
            if not os.access(path.parent, os.W_OK) else "the file is read-only")


def add_seq(db: sqlite3.Connection, *, writing: bool = False) -> bool:
    """Give a store file made before ``seq`` the column (another process may add it meanwhile) and its index; whether
    the file has the column now. A read-only file is left as it is, unless ``writing`` (SQLite's error is raised):
    it was refused on open ("attempt to write a readonly database"), and could not even be read."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(outcomes)")}
    try:
        if "seq" not in columns:
            try:
                db.execute("ALTER TABLE outcomes ADD COLUMN seq INTEGER")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
        db.execute(_SEQ)
    except sqlite3.OperationalError as exc:
        if writing or not read_only(exc):
            raise
        return "seq" in columns  # numbered without the index: reads by seq still work, if slower
    return True


def checkpoint(path: Path, db: sqlite3.Connection, *, wait: bool) -> None:
    """Move the writes in the ``-wal`` file into the file itself, so that the file alone holds them (a copy of it, a
    move). ``wait``: for readers of older snapshots (in other processes) to be done, ``CHECKPOINT_WAIT_S`` at most
    (closing a store); else what can be moved now (the writer pausing). Logged, never raised: what was written is
    written, in the ``-wal`` file if not yet in the file."""
    try:
        if wait:
            db.execute(f"PRAGMA busy_timeout={int(CHECKPOINT_WAIT_S * 1000)}")
        busy, frames, moved = db.execute(f"PRAGMA wal_checkpoint({'FULL' if wait else 'PASSIVE'})").fetchone()
    except sqlite3.Error as exc:
        _log.warning("the outcome store %r kept its last writes in its -wal file: %s", str(path), exc)
        return
    if wait and (busy or moved < frames):
        _log.warning("the outcome store %r kept %d of its last writes' pages in its -wal file: another process was "
                     "reading an older state of it; copy it with sqlite3's .backup", str(path), max(0, frames - moved))


def create_private(path: Path) -> None:
    """Create the store file (and the directories up to it that are missing) readable by its owner only: it holds
    captured inputs and outputs. SQLite gives its ``-wal``/``-shm`` files the database file's mode."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:  # an existing store keeps the mode its owner gave it
        pass


def check_filters(*, task: object = None, captured: object = None, since: object = None) -> None:
    """``UsageError`` naming the filter of the wrong kind: captured="x" was a ``ValueError``, task=5 and since="x"
    matched nothing (or everything) without a word."""
    from genroute.bounds import is_real

    if task is not None and not isinstance(task, str):
        raise UsageError(f"must be a task name, not {type(task).__name__}", field="task")
    if captured is not None and not isinstance(captured, bool):
        raise UsageError(f"must be True, False or None, not {captured!r:.40}", field="captured")
    if since is not None and not is_real(since):
        raise UsageError(f"must be a time in seconds since the epoch, not {since!r:.40}", field="since")
