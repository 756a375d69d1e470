"""The outcome store: a local SQLite file (stdlib ``sqlite3``), safe for several processes on one machine.

Every write is one ``BEGIN IMMEDIATE`` transaction (read, merge, write), so a shadow's result and the user's
feedback for the same trace can arrive in either order, from different processes, and both survive. Writes that wait
at once share one transaction (a group commit, ``GroupWriter``: one writer thread per store), each caller's records
all or none; in WAL mode (genroute's files are) with ``synchronous=NORMAL``: a commit survives the process crashing,
not the machine losing power (the last commits before it may be lost, the file stays whole); ``synchronous="full"``
(``outcomes.synchronous``) syncs each commit, surviving that too. The async methods run the SQLite work off the event
loop: it never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal, TypeVar

from genroute.bounds import NUL_IN_PATH
from genroute.config_errors import check_list
from genroute.errors import ConfigError, OutcomeStoreError, UsageError
from genroute.outcomes.changes import Changes, Place
from genroute.outcomes.records import OutcomeRecord
from genroute.outcomes.room import hidden_cause
from genroute.outcomes.sqlite_files import (SCHEMA, add_seq, check_filters, checkpoint, connect, create_private,
                                            frozen_out, read_file, read_only, unwritable)
from genroute.outcomes.writer import GroupWriter
from genroute.runtime.forks import forget_at_fork

_log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``outcomes.synchronous``: how the writer's commits reach the disk in WAL mode.
Synchronous = Literal["normal", "full"]
#: Connections a forked child inherited: never used, never closed (``OutcomeStore._forget_parent``).
_PARENTS: list[sqlite3.Connection] = []
#: Rows a statement of a write reads or writes at most (7 values each: under SQLite's oldest limit of 999 variables).
_ROWS = 100


class OutcomeStore:
    """Outcome records keyed by id (a trace id for production records), in one SQLite file."""

    def __init__(self, path: str | Path, *, field: str = "outcomes.path",
                 synchronous: Synchronous = "normal") -> None:
        if not isinstance(path, str | os.PathLike):  # None or a number was a TypeError from pathlib
            raise ConfigError(f"must be the path of a SQLite file, not {type(path).__name__}", field=field)
        if "\x00" in os.fspath(path):  # was a bare ValueError from os.open
            raise ConfigError(NUL_IN_PATH, field=field)
        if synchronous not in ("normal", "full"):
            raise ConfigError(f"must be 'normal' or 'full', not {synchronous!r:.40}", field="outcomes.synchronous")
        self.path = Path(path).expanduser()
        self._field = field
        #: How the writer's commits reach the disk in WAL mode (``outcomes.synchronous``): ``normal``, synced at the
        #: WAL's checkpoints (a commit survives the process crashing); ``full``, each commit synced (and power loss).
        self.synchronous = synchronous
        self._frozen = False  # in a directory this process cannot write: read unchanging while no writer has it open
        try:
            create_private(self.path)
            try:
                self._read(self._open)
            except sqlite3.OperationalError as exc:
                if not frozen_out(self.path, exc):
                    raise
                self._frozen = True
                self._read(self._open)
            else:  # read beside a writer's -wal file: read frozen too once that writer has ended (sqlite_files)
                self._frozen = self._wal and not os.access(self.path.parent, os.W_OK)
        except (OSError, sqlite3.Error, OutcomeStoreError) as exc:  # the last: written during every frozen read
            raise ConfigError(f"cannot open the outcome store {str(self.path)!r}: {exc}", field=field) from None
        # One writer per process at a time (SQLite's own lock covers other processes): the writes waiting meanwhile
        # are committed together next. An OperationalError (locked, disk full), an OSError (the file gone) or a
        # ConfigError (the file or its directory read-only: ``unwritable``) is the whole lot's.
        self._writer = GroupWriter(self._commit, idle=self._close_writing,
                                   shared=(sqlite3.OperationalError, OSError, ConfigError),
                                   name="genroute-outcome-writer", at_exit=self._lost_at_exit)
        self._db: tuple[tuple[int, int], sqlite3.Connection] | None = None  # the writer's (``_writing``)
        forget_at_fork(self)
        self._created = 0.0  # the last creation time given: each new record's is later, so a batch keeps its order

    def _open(self, db: sqlite3.Connection) -> None:
        """Switch the file to WAL mode, give it the schema (a new file) and ``seq`` (an old one), unless read-only."""
        if self._frozen:  # refused because it is in WAL mode; read as it is
            mode: object = "wal"
        else:
            try:
                mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:  # a read-only file not in WAL mode is read as it is
                if not read_only(exc):
                    raise
                mode = None
        # Whether writes commit without an fsync each (WAL mode only: in a rollback journal it risks the file).
        self._wal = str(mode).lower() == "wal"
        db.executescript(SCHEMA)
        self._numbered = add_seq(db)

    @property
    def commits(self) -> int:
        """Write transactions this store object committed: one per lot of writes that waited at once."""
        return self._writer.commits

    @property
    def unwritten(self) -> int:
        """Writes handed to this store object and not answered yet (waiting for the writer, or being written)."""
        return self._writer.unwritten

    def _read(self, read: Callable[[sqlite3.Connection], T]) -> T:
        """``read`` on a connection of its own; in a directory this process cannot write, again if another process
        wrote the file meanwhile (``read_file``)."""
        return read_file(self.path, read, frozen=self._frozen)

    # -- sync core (runs on a worker thread when called through the async methods) ------------------

    def upsert_sync(self, record: OutcomeRecord) -> OutcomeRecord:
        """Merge ``record`` into the stored one with its id (or insert it); return what is stored now."""
        return self._writer.write(_checked([_one(record)]))[0]

    def upsert_many_sync(self, records: Sequence[OutcomeRecord]) -> list[OutcomeRecord]:
        """``upsert_sync`` for each record in order, in one transaction (all or none)."""
        return self._writer.write(_checked(records))

    def submit(self, record: OutcomeRecord) -> Future[list[OutcomeRecord]]:
        """Hand ``record`` to the writer without waiting: the future holds ``[what is stored now]``, or the error that
        refused it (its callbacks run on the writer's thread). ``close`` waits for it."""
        return self._writer.submit(_checked([_one(record)]))

    def _commit(self, records: list[OutcomeRecord]) -> list[OutcomeRecord]:
        """``_write_lot``; a file (or directory) SQLite cannot write is a ``ConfigError`` naming it, not sqlite3's
        "attempt to write a readonly database" or "unable to open database file", and a write refused for want of room
        that SQLite calls "disk I/O error" (a quota, the file size limit) an ``OSError`` saying so (``hidden_cause``)."""
        try:
            return self._write_lot(records)
        except sqlite3.OperationalError as exc:
            refused = unwritable(self.path, exc, self._field)
            if refused is not None:
                raise refused from None
            raise hidden_cause(self.path, exc) or exc

    def _write_lot(self, records: list[OutcomeRecord]) -> list[OutcomeRecord]:
        """Write ``records`` in one transaction (on the writer thread only); what is stored now, for each, in order.

        A handful of statements whatever their number (the stored records read in one query, the rows written in one
        insert per ``_ROWS``): SQLite lets go of the GIL at each, and getting it back from a busy event loop's thread
        took up to a switch interval (5 ms) each time."""
        now = time.time()
        db = self._writing()
        try:
            db.execute("BEGIN IMMEDIATE")
            if not self._numbered:  # opened read-only before it had seq: SQLite refuses this write as any other
                self._numbered = add_seq(db, writing=True)
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
            db = connect(self.path, check_same_thread=False)
            if self._wal:  # normal: no fsync per commit, the WAL is synced at its checkpoints (the module's docstring)
                db.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            self._db = (key, db)
        return self._db[1]

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Wait for the writes handed over to be answered (written, or refused: each caller is told), the writer's
        thread to end and its connection to close, then move what was written into the file itself (a checkpoint):
        the file alone holds every write, to be copied or moved (a writer that pauses does so by itself within
        ``LINGER_S``, unless another process reads the file meanwhile). Writes still unanswered after ``timeout_s``
        (another process holding the file's lock) are logged as an error; the writer goes on with them while the
        process lives. The store stays usable."""
        if not self._writer.flush(timeout_s):
            _log.error("%d outcome write(s) to %r were not written within %s s of closing the store (another process "
                       "holds its lock?): they are written if this process lives until then (its exit does not wait "
                       "for them again, unless the writer gets on meanwhile)", self.unwritten, str(self.path), timeout_s)
            return
        if self._wal and self.commits and not self._frozen and self.path.exists():  # never makes one anew
            read_file(self.path, lambda db: checkpoint(self.path, db, wait=True))

    def _lost_at_exit(self, n: int, closing_s: float) -> OutcomeStoreError:
        """``n`` writes not written ``EXIT_WAIT_S`` into an exit, ``closing_s`` of them waited by a close that gave up on
        them: logged, and the error those still waiting get (a router's recorder counts each as lost)."""
        from genroute.outcomes.writer import EXIT_WAIT_S

        when = (f"within {closing_s:.1f} s of closing the store and {max(0.0, EXIT_WAIT_S - closing_s):.1f} s more of "
                "the process exiting" if closing_s else
                f"within {EXIT_WAIT_S:g} s of the process exiting without closing the store")
        lost = OutcomeStoreError(f"{n} outcome write(s) to {str(self.path)!r} were not written {when} (another "
                                 "process holding its lock?): lost", path=str(self.path))
        _log.error("%s", lost)
        return lost

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
            if self._wal:  # also when another connection (another process) keeps the file open
                checkpoint(self.path, db, wait=False)
            db.close()

    def get_sync(self, id: str) -> OutcomeRecord | None:
        """The record with ``id``, or ``None``."""
        if not isinstance(id, str):  # a list was sqlite3's ProgrammingError, None matched nothing
            raise UsageError(f"an outcome id is text, not {type(id).__name__}", field="id")
        row = self._read(lambda db: db.execute("SELECT record FROM outcomes WHERE id = ?", (id,)).fetchone())
        return None if row is None else OutcomeRecord.model_validate_json(row[0])

    def records_sync(self, *, task: str | None = None, captured: bool | None = None,
                     since: float | None = None) -> list[OutcomeRecord]:
        """Stored records, oldest first; filtered by task, by whether text was captured, by creation time."""
        check_filters(task=task, captured=captured, since=since)
        given: list[tuple[str, str | int | float | None]] = [
            ("task = ?", task), ("captured = ?", None if captured is None else int(captured)), ("created_at >= ?", since)]
        where = [test for test, value in given if value is not None]
        args = [value for _, value in given if value is not None]
        sql = "SELECT record FROM outcomes" + (f" WHERE {' AND '.join(where)}" if where else "")
        return self._read(lambda db: [OutcomeRecord.model_validate_json(r[0])
                                      for r in db.execute(sql + " ORDER BY created_at, id", args).fetchall()])

    def changes_sync(self, place: Place | None) -> Changes:
        """The records written since ``place`` (an earlier answer's ``place``), in ``records_sync``'s order; all of
        them (``full``) when ``place`` is None or lost: another file at this path, rows renumbered, or rows written
        without a number (by a genroute before ``seq``); always from a read-only file made before ``seq``."""
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise UsageError(f"cannot read the outcome store {str(self.path)!r}: {exc}", field="outcomes.path") from None
        source = f"{stat.st_dev}:{stat.st_ino}"

        def read(db: sqlite3.Connection) -> tuple[int, int, bool, list[Any], list[OutcomeRecord]]:
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
            return top, unnumbered, full, rows, [OutcomeRecord.model_validate_json(r[1]) for r in rows]

        top, unnumbered, full, rows, found = self._read(read)
        return Changes(place=Place(source, int(top), int(unnumbered)), full=full,
                       records=[((float(created), r.id), r) for (created, _), r in zip(rows, found, strict=True)])

    def count_sync(self, *, task: str | None = None) -> int:
        """How many records are stored (for ``task``)."""
        check_filters(task=task)
        sql, args = ("SELECT COUNT(*) FROM outcomes", ()) if task is None else \
            ("SELECT COUNT(*) FROM outcomes WHERE task = ?", (task,))
        return int(self._read(lambda db: db.execute(sql, args).fetchone()[0]))

    def export_jsonl(self, path: str | Path, *, task: str | None = None) -> int:
        """Write the records as an outcome matrix (one JSON line each); return how many."""
        from genroute.jsonl import check_output_dir, write_jsonl

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

