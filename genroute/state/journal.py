"""``Journal``: the writes a Redis state store owes Redis (``UnsentWrites``), also kept in a local SQLite file
(``state.journal``), so that those of a process killed during an outage (SIGKILL, OOM, a deploy) are replayed by
the next router started with the same file, not lost with the process.

Each unsent write (a settle, an outcome-list append) is a row, inserted before the write is kept in memory and
deleted once Redis has applied it (a process killed in between leaves it to be sent again: its marker makes it
apply once). Rows carry their **owner**, the process that keeps them in its queue; an owner holds an exclusive
``flock`` on a file of its own (``<journal>.owners/<owner>``) for as long as it lives, which the system lets go
when the process dies, however it dies. A router that opens the journal (at build, and again when it replays after
an outage) takes over, in one transaction, the rows under its ``prefix`` whose owner no longer holds its lock (or
that a closed store let go): two processes never both replay one row. A write is sent only by the owner of its row,
checked as each replay batch is taken (``mine``): a process forked after build (gunicorn ``--preload``) has a copy of
its parent's queue, and the first child to send a row of its parent's takes it over; its siblings and the parent
leave it.

The file is WAL with ``synchronous=NORMAL``: a committed row survives the process being killed (what the journal is
for), not the machine losing power (the last rows before it may be lost; the file stays whole). A row costs one
small transaction, no fsync (``benchmarks/RESULTS.md``), on the event loop of the request that settles: a write
waits at most ``BUSY_S`` for another process's transaction on the file, then is kept in memory only. It is made
readable and writable by its owner only (it holds the accounts' names and the outcome records): an existing file that
another user owns or may write, or a directory, is a ``ConfigError`` naming ``state.journal`` when the router is built.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from genroute.errors import ConfigError
from genroute.log_every import LogEvery
from genroute.state.journal_file import FIELD, check_file
from genroute.state.ops import Settle
from genroute.state.redis_script import SETTLED_MARKER_S, Push

_log = logging.getLogger("genroute.state.redis_store")
#: At most one "the journal refused a write" warning per this many seconds.
LOG_INTERVAL_S = 60.0
#: Ids a statement deletes at most (SQLite's oldest limit is 999 variables).
_CHUNK = 500
#: How long a write waits for another process's transaction on the file. Writes run on the event loop of the request
#: that settles: one that finds the file busy longer is kept in memory only (counted, logged), not waited for.
BUSY_S = 0.1

SCHEMA = """
CREATE TABLE IF NOT EXISTS unsent (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    owner TEXT,
    made REAL NOT NULL,
    op TEXT NOT NULL,
    value BLOB
);
CREATE INDEX IF NOT EXISTS unsent_owner ON unsent (prefix, owner);
"""

#: A journaled write: (settle or push, its id, wall-clock time it was made).
Row = tuple[Settle | Push, str, float]


class Journal:
    """The unsent writes of the stores with ``prefix``, in the SQLite file ``path`` (see the module docstring)."""

    def __init__(self, path: str, prefix: str) -> None:
        self.path = Path(path).expanduser()
        self.prefix = prefix
        self.owners = self.path.with_name(self.path.name + ".owners")
        #: Settles taken over from a journal older than Redis's settle markers (an hour): replayed all the same.
        self.stale = 0
        #: Writes the file refused (disk full, removed): kept in memory only.
        self.failures = 0
        self._lock = threading.Lock()
        self._fail_log = LogEvery(LOG_INTERVAL_S)
        self._pid = -1
        self._db: sqlite3.Connection | None = None
        self._held: int | None = None  # the fd of this owner's lock file, once it owns rows
        #: Ids of rows Redis applied whose deletion the file refused (busy, disk full): deleted with the next write.
        self._applied: list[str] = []
        #: Ids of writes the file refused to record (kept in memory only): this process's to send, though no row
        #: says so.
        self._unrecorded: set[str] = set()
        #: The owners this process was forked from (its queue is a copy of theirs): rows of theirs it claims as it
        #: sends them.
        self._parents: list[str] = []
        self.owner = ""
        try:
            check_file(self.path)
            self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot use {self.path} as the journal of unsent state writes: "
                              f"{getattr(exc, 'strerror', None) or exc}", field=FIELD) from None
        self._sweep()

    # -- the file and this process's ownership -------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """This process's connection (a forked child makes its own, under an owner of its own)."""
        if self._db is not None and self._pid == os.getpid():
            return self._db
        if self._pid != os.getpid():  # new, or forked: the parent's connection, lock and rows are the parent's
            if self._held is not None:
                os.close(self._held)  # this copy only: the lock stays the parent's while it lives, not while we do
            self._db, self._held = None, None
            if self.owner:
                self._parents.append(self.owner)
            self.owner = f"{os.getpid()}.{os.urandom(6).hex()}"
        db = sqlite3.connect(self.path, timeout=BUSY_S, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        self._db, self._pid = db, os.getpid()
        return db

    def _own(self) -> None:
        """Take this owner's lock (before any row names it), held until ``close`` or the process's end."""
        if self._held is not None:
            return
        import fcntl

        self.owners.mkdir(mode=0o700, exist_ok=True)
        mine = self.owners / self.owner
        while True:
            fd = os.open(mine, os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0), 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                named = os.stat(mine)
            except FileNotFoundError:
                named = None
            held = os.fstat(fd)
            if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                break
            os.close(fd)  # a sweep took the file for a gone owner's between its making and its lock: made again
        self._held = fd

    def _sweep(self) -> None:
        """Remove the lock files of owners that are gone and own no row (a process killed after Redis took its
        writes leaves one): best effort, at build."""
        try:
            names = os.listdir(self.owners)
        except OSError:
            return
        try:
            with self._lock:
                named = {row[0] for row in self._connect().execute("SELECT DISTINCT owner FROM unsent")}
            for name in names:
                if name in named or name == self.owner:
                    continue
                fd = self._dead(name)
                if fd is not None and fd >= 0:
                    (self.owners / name).unlink(missing_ok=True)
                    os.close(fd)
        except (OSError, sqlite3.Error):
            pass

    def _dead(self, owner: str) -> int | None:
        """The locked fd of ``owner``'s lock file when that owner is gone (its lock let go, or its file removed: -1),
        ``None`` while it lives."""
        import fcntl

        if not owner.replace(".", "").isalnum():  # only names ``_connect`` makes
            return None
        try:
            fd = os.open(self.owners / owner, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    # -- rows --------------------------------------------------------------------------------------------

    def add(self, rows: Sequence[Row]) -> None:
        """Record ``rows`` under this owner (a failure is counted and logged, not raised: they stay in memory)."""
        def insert(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO unsent (id, prefix, owner, made, op, value) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           [(entry_id, self.prefix, self.owner, made, *_encode(op)) for op, entry_id, made in rows])

        if not self._write(insert, own=True):
            with self._lock:
                self._unrecorded.update(entry_id for _, entry_id, _ in rows)

    def remove(self, ids: Iterable[str]) -> None:
        """Delete the rows of writes Redis applied (or that were dropped); those the file refuses now are deleted with
        the next write (left in it, they would be sent again by the router that takes them over: twice, after the
        markers' hour)."""
        with self._lock:
            self._applied.extend(ids)
            if self._unrecorded:
                self._unrecorded.difference_update(self._applied)
        if self._applied:
            self._write(lambda db: None)

    def adopt(self, limit: int) -> list[Row]:
        """Take over at most ``limit`` rows of owners that are gone (killed, or closed with rows left), oldest first
        (the rest stay theirs, for the next call: a large journal is not read into memory at once)."""
        found: list[Row] = []
        locks: list[tuple[str, int]] = []

        def take(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                owners = [row[0] for row in db.execute(
                    "SELECT DISTINCT owner FROM unsent WHERE prefix = ? AND (owner IS NULL OR owner != ?)",
                    (self.prefix, self.owner))]
                gone: list[str | None] = []
                for owner in owners:
                    fd = -1 if owner is None else self._dead(owner)
                    if fd is not None:
                        gone.append(owner)
                        if owner is not None:
                            locks.append((owner, fd))
                if gone:
                    self._own()
                for owner in gone:
                    if len(found) >= limit:
                        break
                    match = "owner IS NULL" if owner is None else "owner = ?"
                    args = (self.prefix,) if owner is None else (self.prefix, owner)
                    rows = db.execute(f"SELECT seq, id, made, op, value FROM unsent WHERE prefix = ? AND {match} "
                                      "ORDER BY seq LIMIT ?", (*args, limit - len(found))).fetchall()
                    found.extend((_decode(op, value), entry_id, made) for _, entry_id, made, op, value in rows)
                    if rows:
                        db.execute(f"UPDATE unsent SET owner = ? WHERE prefix = ? AND {match} AND seq <= ?",
                                   (self.owner, *args, rows[-1][0]))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                for owner, fd in locks:  # the gone owner's lock file (rows of it left over stay anyone's to take)
                    if fd >= 0:
                        (self.owners / owner).unlink(missing_ok=True)
                        os.close(fd)

        if not self._write(take):
            return []
        found.sort(key=lambda row: row[2])
        old = [row for row in found if isinstance(row[0], Settle) and time.time() - row[2] > SETTLED_MARKER_S]
        if found:
            _log.warning("replaying %d write(s) that a process killed (or closed) during a state store outage left in "
                         "the journal %s", len(found), self.path)
        if old:
            # Replayed, not skipped: skipping would leave the shared spend short by each one's amount (it was recorded
            # because Redis could not be reached). Redis's marker of one that reached Redis before its reply was lost
            # has expired: that one counts twice.
            self.stale += len(old)
            _log.warning("%d of them are settles older than an hour (Redis's settle markers' life): replayed all the "
                         "same, so the shared spend is not short; one that reached Redis before the outage cut its "
                         "reply counts twice", len(old))
        return found

    def mine(self, ids: Sequence[str]) -> set[str] | None:
        """Which of ``ids`` (waiting in this process's queue) this process is to send: those whose row it owns, or that
        the file refused to record. Another's (a process forked from the same parent that claimed them first) or gone
        (sent and deleted by one) are not; a forked process first claims its parents' (``None``: the file cannot
        say)."""
        found: set[str] = set()

        def check(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(ids), _CHUNK):
                    chunk = list(ids[start:start + _CHUNK])
                    among = ",".join("?" * len(chunk))
                    if self._parents:
                        db.execute(f"UPDATE unsent SET owner = ? WHERE id IN ({among}) AND owner IN "
                                   f"({','.join('?' * len(self._parents))})", (self.owner, *chunk, *self._parents))
                    found.update(row[0] for row in db.execute(
                        f"SELECT id FROM unsent WHERE owner = ? AND id IN ({among})", (self.owner, *chunk)))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        if not self._write(check, own=True):
            return None
        with self._lock:
            return found | self._unrecorded.intersection(ids)

    def close(self) -> None:
        """Let go of this process's rows (another router may take them over) and of the file."""
        if self._applied and self._pid == os.getpid():
            self._write(lambda db: None)  # once more: what Redis applied is not another router's to send
        with self._lock:
            if self._held is not None and self._pid == os.getpid():
                (self.owners / self.owner).unlink(missing_ok=True)
                os.close(self._held)
            self._held = None
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None

    def _write(self, work: Callable[[sqlite3.Connection], object], *, own: bool = False) -> bool:
        with self._lock:
            try:
                db = self._connect()
                if own:
                    self._own()
                if self._applied:
                    _delete(db, self._applied)
                    self._applied = []
                work(db)
                return True
            except (OSError, sqlite3.Error) as exc:
                self.failures += 1
                if self._fail_log.due():
                    _log.warning("the journal %s refused a write (%s: %s): the unsent state writes are kept in this "
                                 "process's memory only, the deletion of those Redis applied is tried again with the "
                                 "next write (%d refused so far)", self.path, type(exc).__name__, exc, self.failures)
                return False


def _delete(db: sqlite3.Connection, ids: list[str]) -> None:
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        db.execute(f"DELETE FROM unsent WHERE id IN ({','.join('?' * len(chunk))})", chunk)


def _encode(op: Settle | Push) -> tuple[str, bytes | None]:
    if isinstance(op, Settle):
        return json.dumps(["s", op.account, op.hold_id, op.amount, op.charge, op.keep_s]), None
    return json.dumps(["p", op.key, op.max_items, op.max_age_s]), op.value


def _decode(op: str, value: bytes | None) -> Settle | Push:
    kind, *args = json.loads(op)
    if kind == "s":
        return Settle(*args)
    return Push(args[0], bytes(value or b""), *args[1:])
