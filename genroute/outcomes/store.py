"""The outcome store: a local SQLite file (stdlib ``sqlite3``), safe for several processes on one machine.

Every write is one ``BEGIN IMMEDIATE`` transaction (read, merge, write), so a shadow's result and the user's
feedback for the same trace can arrive in either order, from different processes, and both survive. Writes that wait
at once share one transaction (a group commit, ``GroupWriter``: one writer thread per store), each caller's records
all or none; in WAL mode (genroute's files are) with ``synchronous=NORMAL``: a commit survives the process crashing,
not the machine losing power (the last commits before it may be lost, the file stays whole). The async methods run
the SQLite work off the event loop: it never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from genroute.config_errors import check_list, not_a, pydantic_validated
from genroute.errors import ConfigError, UsageError
from genroute.outcomes.changes import Changes, Place
from genroute.outcomes.records import OutcomeRecord, check_sides, number_refusal
from genroute.outcomes.writer import GroupWriter
from genroute.runtime.forks import forget_at_fork

_SCHEMA = """
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
#: Connections a forked child inherited: never used, never closed (``OutcomeStore._forget_parent``).
_PARENTS: list[sqlite3.Connection] = []
#: Rows a statement of a write reads or writes at most (7 values each: under SQLite's oldest limit of 999 variables).
_ROWS = 100


class OutcomeStore:
    """Outcome records keyed by id (a trace id for production records), in one SQLite file."""

    def __init__(self, path: str | Path, *, field: str = "outcomes.path") -> None:
        if not isinstance(path, str | os.PathLike):  # None or a number was a TypeError from pathlib
            raise ConfigError(f"must be the path of a SQLite file, not {type(path).__name__}", field=field)
        self.path = Path(path).expanduser()
        try:
            _create_private(self.path)
            with self._connect() as db:
                try:
                    mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                except sqlite3.OperationalError as exc:  # a read-only file not in WAL mode is read as it is
                    if not _read_only(exc):
                        raise
                    mode = None
                # Whether writes commit without an fsync each (WAL mode only: in a rollback journal it risks the file).
                self._wal = str(mode).lower() == "wal"
                db.executescript(_SCHEMA)
                self._numbered = _add_seq(db)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the outcome store {str(self.path)!r}: {exc}", field=field) from None
        # One writer per process at a time (SQLite's own lock covers other processes): the writes waiting meanwhile
        # are committed together next. An OperationalError (locked, read-only, disk full) or an OSError (the file
        # gone) is the whole lot's.
        self._writer = GroupWriter(self._commit, idle=self._close_writing, shared=(sqlite3.OperationalError, OSError),
                                   name="genroute-outcome-writer")
        self._db: tuple[tuple[int, int], sqlite3.Connection] | None = None  # the writer's (``_writing``)
        forget_at_fork(self)
        self._created = 0.0  # the last creation time given: each new record's is later, so a batch keeps its order

    @property
    def commits(self) -> int:
        """Write transactions this store object committed: one per lot of writes that waited at once."""
        return self._writer.commits

    @property
    def unwritten(self) -> int:
        """Writes handed to this store object and not answered yet (waiting for the writer, or being written)."""
        return self._writer.unwritten

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            yield db
        finally:
            db.close()

    # -- sync core (runs on a worker thread when called through the async methods) ------------------

    def upsert_sync(self, record: OutcomeRecord) -> OutcomeRecord:
        """Merge ``record`` into the stored one with its id (or insert it); return what is stored now."""
        return self._writer.write(_checked([_one(record)]))[0]

    def upsert_many_sync(self, records: Sequence[OutcomeRecord]) -> list[OutcomeRecord]:
        """``upsert_sync`` for each record in order, in one transaction (all or none)."""
        return self._writer.write(_checked(records))

    def _commit(self, records: list[OutcomeRecord]) -> list[OutcomeRecord]:
        """Write ``records`` in one transaction (on the writer thread only); what is stored now, for each, in order.

        A handful of statements whatever their number (the stored records read in one query, the rows written in one
        insert per ``_ROWS``): SQLite lets go of the GIL at each, and getting it back from a busy event loop's thread
        took up to a switch interval (5 ms) each time."""
        now = time.time()
        db = self._writing()
        db.execute("BEGIN IMMEDIATE")
        try:
            if not self._numbered:  # opened read-only before it had seq: SQLite refuses this write as any other
                self._numbered = _add_seq(db, writing=True)
            seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM outcomes").fetchone()[0])
            ids = list(dict.fromkeys(record.id for record in records))
            found: dict[str, tuple[str, float]] = {}
            for at in range(0, len(ids), _ROWS):
                some = ids[at:at + _ROWS]
                found.update((row[0], (row[1], row[2])) for row in db.execute(
                    f"SELECT id, record, created_at FROM outcomes WHERE id IN ({', '.join('?' * len(some))})", some))
            current: dict[str, tuple[OutcomeRecord, float, int]] = {}  # by id: merged so far, created, its seq
            stored = []
            for record in records:
                if record.id in current:
                    merged, created, _ = current[record.id]
                    merged = merged.merged(record)
                elif record.id in found:
                    merged = OutcomeRecord.model_validate_json(found[record.id][0]).merged(record)
                    created = found[record.id][1]
                else:
                    merged = record
                    self._created = created = max(now, self._created + 1e-6)
                seq += 1
                current[record.id] = (merged, created, seq)
                stored.append(merged)
            rows = [(merged.id, merged.task, created, now, int(merged.input is not None and merged.output is not None),
                     json.dumps(merged.line(), ensure_ascii=False), number)
                    for merged, created, number in current.values()]
            for at in range(0, len(rows), _ROWS):
                chunk = rows[at:at + _ROWS]
                db.execute("INSERT OR REPLACE INTO outcomes (id, task, created_at, updated_at, captured, record, seq) "
                           f"VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?)'] * len(chunk))}",
                           [value for row in chunk for value in row])
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):  # the next write opens the file afresh
                self._db = None
                db.close()
            raise
        return stored

    def _writing(self) -> sqlite3.Connection:
        """The writer thread's connection, kept open: closing the last connection to a WAL file checkpoints it (an
        fsync) and opening again reads the schema, which took ~1 ms of each write. Opened again for another file at
        the path (moved or replaced: a write goes where the path points, as a new connection's would)."""
        stat = os.stat(self.path)
        key = (stat.st_dev, stat.st_ino)
        if self._db is None or self._db[0] != key:
            if self._db is not None:
                self._db[1].close()
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            if self._wal:  # no fsync per commit: the WAL is synced at its checkpoints (see the module's docstring)
                db.execute("PRAGMA synchronous=NORMAL")
            self._db = (key, db)
        return self._db[1]

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Wait for the writes handed over to be written, then close the writer's connection: the file itself holds
        them (a writer that pauses does so by itself within ``LINGER_S``). The store stays usable."""
        self._writer.flush(timeout_s)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's connection is the parent's (closing it here could checkpoint the file under
        the parent's writer), kept from the garbage collector; the child opens its own."""
        if self._db is not None:
            _PARENTS.append(self._db[1])
            self._db = None

    def _close_writing(self) -> None:
        """Close the writer's connection when no write waits: closing the last connection to the file checkpoints it
        (its writes move from the ``-wal`` file into the file itself, which can then be copied or moved alone), as a
        connection per write did after each."""
        if self._db is not None:
            db, self._db = self._db[1], None
            db.close()

    def get_sync(self, id: str) -> OutcomeRecord | None:
        """The record with ``id``, or ``None``."""
        if not isinstance(id, str):  # a list was sqlite3's ProgrammingError, None matched nothing
            raise UsageError(f"an outcome id is text, not {type(id).__name__}", field="id")
        with self._connect() as db:
            row = db.execute("SELECT record FROM outcomes WHERE id = ?", (id,)).fetchone()
        return None if row is None else OutcomeRecord.model_validate_json(row[0])

    def records_sync(self, *, task: str | None = None, captured: bool | None = None,
                     since: float | None = None) -> list[OutcomeRecord]:
        """Stored records, oldest first; filtered by task, by whether text was captured, by creation time."""
        _check_filters(task=task, captured=captured, since=since)
        where: list[str] = []
        args: list[str | int | float] = []
        if task is not None:
            where.append("task = ?")
            args.append(task)
        if captured is not None:
            where.append("captured = ?")
            args.append(int(captured))
        if since is not None:
            where.append("created_at >= ?")
            args.append(since)
        sql = "SELECT record FROM outcomes" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._connect() as db:
            rows = db.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [OutcomeRecord.model_validate_json(r[0]) for r in rows]

    def changes_sync(self, place: Place | None) -> Changes:
        """The records written since ``place`` (an earlier answer's ``place``), in ``records_sync``'s order; all of
        them (``full``) when ``place`` is None or lost: another file at this path, rows renumbered, or rows written
        without a number (by a genroute before ``seq``); always from a read-only file made before ``seq``."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise UsageError(f"cannot read the outcome store {str(self.path)!r}: {exc}", field="outcomes.path") from None
        source = f"{stat.st_dev}:{stat.st_ino}"
        with self._connect() as db:
            db.execute("BEGIN")  # one snapshot: the place read is the one of the rows read
            try:
                if self._numbered:
                    top, unnumbered = db.execute("SELECT COALESCE(MAX(seq), 0), COUNT(*) - COUNT(seq) FROM outcomes"
                                                 ).fetchone()
                else:  # a read-only file from before seq: no place to keep, each read is a full one
                    top, unnumbered = 0, -1
                full = (not self._numbered or place is None or (source, unnumbered) != (place.source, place.extra)
                        or top < place.at)
                where = "" if full else " WHERE seq > ?"
                rows = db.execute(f"SELECT created_at, record FROM outcomes{where} ORDER BY created_at, id",
                                  () if full else (place.at,)).fetchall()  # type: ignore[union-attr]
            finally:
                db.execute("COMMIT")
        found = [OutcomeRecord.model_validate_json(r[1]) for r in rows]
        return Changes(place=Place(source, int(top), int(unnumbered)), full=full,
                       records=[((float(created), r.id), r) for (created, _), r in zip(rows, found, strict=True)])

    def count_sync(self, *, task: str | None = None) -> int:
        """How many records are stored (for ``task``)."""
        _check_filters(task=task)
        with self._connect() as db:
            if task is None:
                return int(db.execute("SELECT COUNT(*) FROM outcomes").fetchone()[0])
            return int(db.execute("SELECT COUNT(*) FROM outcomes WHERE task = ?", (task,)).fetchone()[0])

    def export_jsonl(self, path: str | Path, *, task: str | None = None) -> int:
        """Write the records as an outcome matrix (one JSON line each); return how many."""
        from genroute.jsonl import check_output_dir

        if not isinstance(path, str | os.PathLike) or Path(path).is_dir():  # was a TypeError or an IsADirectoryError
            raise UsageError(f"must be the path of a file to write, not {path!r:.80}", field="path")
        check_output_dir(Path(path).parent, field="path")  # a FileNotFoundError, a PermissionError
        records = self.records_sync(task=task)
        write_jsonl(path, (r.line() for r in records))
        return len(records)

    # -- async twins: the same work, off the event loop ---------------------------------------------

    async def upsert(self, record: OutcomeRecord) -> OutcomeRecord:
        """``upsert_sync`` without blocking the event loop: the store's writer thread writes it (with whatever else
        waits); a caller cancelled meanwhile leaves it written."""
        return (await self._writer.awrite(_checked([_one(record)])))[0]

    async def get(self, id: str) -> OutcomeRecord | None:
        """``get_sync`` on a worker thread."""
        return await asyncio.to_thread(self.get_sync, id)

    async def records(self, *, task: str | None = None, captured: bool | None = None,
                      since: float | None = None) -> list[OutcomeRecord]:
        """``records_sync`` on a worker thread."""
        return await asyncio.to_thread(lambda: self.records_sync(task=task, captured=captured, since=since))

    async def changes(self, place: Place | None) -> Changes:
        """``changes_sync`` on a worker thread."""
        return await asyncio.to_thread(self.changes_sync, place)


def _one(record: OutcomeRecord) -> OutcomeRecord:
    if not isinstance(record, OutcomeRecord):  # a mapping was an AttributeError from deep inside
        raise UsageError(f"must be an OutcomeRecord (OutcomeRecord.model_validate(...) reads a mapping), not "
                         f"{type(record).__name__}", field="record")
    return record


def _checked(records: Sequence[OutcomeRecord]) -> list[OutcomeRecord]:
    """``records`` as a list, each an ``OutcomeRecord`` with an id (``UsageError`` naming what is wrong)."""
    records = check_list(records, OutcomeRecord, field="records")
    for record in records:
        if not record.id:
            raise UsageError("an outcome record needs metadata.id", field="metadata.id")
    return records


def _add_seq(db: sqlite3.Connection, *, writing: bool = False) -> bool:
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
        if writing or not _read_only(exc):
            raise
        return "seq" in columns  # numbered without the index: reads by seq still work, if slower
    return True


def _read_only(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused a write because the file is read-only (``SQLITE_READONLY`` and its extended codes)."""
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_READONLY


def _check_filters(*, task: object = None, captured: object = None, since: object = None) -> None:
    """``UsageError`` naming the filter of the wrong kind: captured="x" was a ``ValueError``, task=5 and since="x"
    matched nothing (or everything) without a word."""
    from genroute.bounds import is_real

    if task is not None and not isinstance(task, str):
        raise UsageError(f"must be a task name, not {type(task).__name__}", field="task")
    if captured is not None and not isinstance(captured, bool):
        raise UsageError(f"must be True, False or None, not {captured!r:.40}", field="captured")
    if since is not None and not is_real(since):
        raise UsageError(f"must be a time in seconds since the epoch, not {since!r:.40}", field="since")


def _create_private(path: Path) -> None:
    """Create the store file (and the directories up to it that are missing) readable by its owner only: it holds
    captured inputs and outputs. SQLite gives its ``-wal``/``-shm`` files the database file's mode."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:  # an existing store keeps the mode its owner gave it
        pass


def write_jsonl(path: str | Path, lines: Iterable[Mapping[str, object]]) -> Path:
    """Write JSON lines atomically (readers see the old file or the new one)."""
    from genroute.cache import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode())
    return path


def read_outcome_file(path: str | Path, *, field: str = "outcomes") -> list[OutcomeRecord]:
    """Outcome records from a store file (``.db``/``.sqlite``) or an outcome-matrix JSONL file."""
    from pydantic import ValidationError

    from genroute.jsonl import existing_file, iter_records

    path = existing_file(path, field=field, what="outcome file")
    if path.suffix in {".db", ".sqlite", ".sqlite3"}:
        return OutcomeStore(path, field=field).records_sync()
    from genroute.bench.datasets import given_id

    records, seen = [], set()
    for lineno, raw in iter_records(path, field=field, what="outcome file"):  # .jsonl or .jsonl.gz
        try:
            record = pydantic_validated(OutcomeRecord, raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = f"{path.name}:{lineno}"
            raise UsageError(number_refusal(where, first) or not_a(where, "an outcome record", first),
                             field=field) from None
        # As genroute bench --outcomes reads the same file: a negative or infinite cost, a score outside [0, 1]
        # or a JSON true would otherwise crash the compile or be written into stats.json.
        check_sides(f"{path.name}:{lineno}", record, raw, field=field)
        # And its ids: the learned model trains on one record per id, so a file without ids (one id, "") trained
        # nothing, and an id given twice merged two records' outcomes.
        rid = given_id(record.metadata.get("id")) or f"record-{lineno}"
        if rid in seen:
            raise UsageError(f"{path.name}:{lineno}: duplicate record id {rid!r}", field=field)
        seen.add(rid)
        records.append(record.model_copy(update={"metadata": {**record.metadata, "id": rid}}))
    return records
