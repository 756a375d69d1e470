"""The outcome store on the shared state store (Redis when the router's ``state`` section names one).

Records go into one list of the state store, one JSON line per write (a shadow's pair, a feedback): an append is
atomic on the server, so writes from every process land, in order. Readers replay the list and merge the writes
per id exactly as the SQLite store merges them, keeping their place so that later reads fetch only what was
appended since.

The list is bounded: each append drops, in the same atomic call, the oldest writes beyond ``max_items`` (and, if
set, those older than ``max_age_s``). Positions stay absolute, so a reader's place survives the trim; a reader
that fell more than ``max_items`` writes behind skips what was trimmed (counted in ``skipped`` and logged, not an
error); a process that starts reads from the oldest write kept. What a process has read stays merged in its
memory as compact JSON, bounded the same way (the newest ``max_items`` records), so its view never holds less than
the list does and never grows without limit. With an ``archive`` (``outcomes.path`` beside a shared store) every write this
process reads is also merged into that SQLite file, in one transaction a batch, and ``records`` and ``get`` read
the file: the full history, for as long as the process reads at least once every ``max_items`` writes (each of its
own writes and each refresh reads). Several processes on one machine may share the file: merging a write twice
changes nothing. The same async methods as ``OutcomeStore``.

When the state store is unreachable and answers from its fallback memory (``on_error: open``), writes go to that
memory's list, which readers here read meanwhile; the state store replays them to the shared list when it answers
again (each once, in order: ``replayed``, and ``dropped`` beyond its bound), and readers here go back to the
shared list where they left it, so they read the replayed writes there once more (merging a write again changes
nothing) and the writes other processes made meanwhile.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from genroute.errors import UsageError
from genroute.log_every import LogEvery
from genroute.outcomes.changes import Changes, Place
from genroute.outcomes.records import OutcomeRecord
from genroute.outcomes.settings import OutcomeSettings
from genroute.runtime.locks import LoopsLock
from genroute.runtime.threads import to_thread_to_end

if TYPE_CHECKING:
    from genroute.outcomes.store import OutcomeStore
    from genroute.state import StateStore

_log = logging.getLogger(__name__)
A = TypeVar("A")
T = TypeVar("T")
#: Writes kept by default (``outcomes.shared_max_items``); see benchmarks/RESULTS.md for the memory it takes.
DEFAULT_MAX_ITEMS = OutcomeSettings.model_fields["shared_max_items"].default
#: Writes fetched per round trip when catching up.
PAGE = 5_000
#: Other incarnations of the list (the shared one, the fallback memory's) whose read position is remembered.
MAX_PLACES = 8


class SharedOutcomeStore:
    """Outcome records in a bounded ``StateStore`` list (``key``), merged per id on read."""

    def __init__(self, state: StateStore, *, key: str = "outcomes", max_items: int | None = DEFAULT_MAX_ITEMS,
                 max_age_s: float | None = None, archive: OutcomeStore | None = None) -> None:
        self.state = state
        self.key = key
        self.max_items = max_items
        self.max_age_s = max_age_s
        #: The SQLite store that keeps every write read here (None: only the bounded view in memory).
        self.archive = archive
        self.path = None if archive is None else archive.path
        #: id -> the merged record as JSON: ~0.7 KB a record where the parsed model takes ~4 KB (RESULTS.md)
        self._merged: dict[str, bytes] = {}
        #: id -> when its first write was made (``since`` filters on it, as the SQLite store filters on creation)
        self._created: dict[str, float] = {}
        self._seen = 0  # absolute position of the next write to read
        self._started = False  # a new process starts from the oldest write kept: not a skip
        self._epoch = ""  # the incarnation of the list read so far (see ``ListRead.epoch``)
        self._places: dict[str, int] = {}  # other incarnations read before -> where reading them stopped
        #: Writes trimmed from the list before this process read them (it fell ``max_items`` behind).
        self.skipped = 0
        #: Times the list was another than the one read before (emptied by a restart, or the fallback memory).
        self.resets = 0
        self._reset_log = LogEvery(60.0)
        self._resets_unlogged = 0
        # What ``changes`` reads: each merge or drop of a record counts one version; ``_log`` holds each changed
        # id's latest version, oldest first, bounded (a reader behind ``_floor`` reads everything again).
        self._source = uuid.uuid4().hex
        self._version = 0
        self._log: dict[str, int] = {}
        self._floor = 0
        self._rank: dict[str, int] = {}  # id -> its place in the order of first writes (``records``' order)
        # A router serves several event loops (its sync API's and the application's, a loop per asyncio.run):
        # an asyncio.Lock, bound to the first loop that waited on it, failed every other loop's writes.
        self._lock = LoopsLock()

    @property
    def replayed(self) -> int:
        """Writes made in the state store's fallback memory during an outage and replayed to the shared list."""
        return self.state.replays(self.key).replayed

    @property
    def dropped(self) -> int:
        """Writes made in fallback memory during an outage and never replayed (beyond the bound kept for it)."""
        return self.state.replays(self.key).dropped

    async def upsert(self, record: OutcomeRecord) -> OutcomeRecord:
        """Append ``record``; return the merged record with its id as the store now holds it."""
        if not record.id:
            raise UsageError("an outcome record needs metadata.id", field="metadata.id")
        await self.state.append(self.key, _dump(record), max_items=self.max_items,
                                max_age_s=self.max_age_s)
        await self._catch_up()
        found = self._merged.get(record.id)
        return record if found is None else _load(found)

    async def get(self, id: str) -> OutcomeRecord | None:
        """The merged record with ``id``, or ``None``."""
        await self._catch_up()
        found = self._merged.get(id)
        if found is None and self.archive is not None:
            return await self.archive.get(id)
        return None if found is None else _load(found)

    async def records(self, *, task: str | None = None, captured: bool | None = None,
                      since: float | None = None) -> list[OutcomeRecord]:
        """Merged records in order of first write, filtered like ``OutcomeStore.records`` (from the archive if any)."""
        await self._catch_up()
        if self.archive is not None:
            return await self.archive.records(task=task, captured=captured, since=since)
        async with self._lock:  # one view: ``_merged`` and ``_created`` as one merge left them (copies, ~1 ms at 100k)
            lines = list(self._merged.values())
            created = dict(self._created) if since is not None else {}
        found = await _run(len(lines) > 100, _load_all, lines)
        if task is not None:
            found = [r for r in found if r.task == task]
        if captured is not None:
            found = [r for r in found if (r.input is not None and r.output is not None) == captured]
        if since is not None:
            found = [r for r in found if created.get(r.id, 0.0) >= since]
        return found

    async def changes(self, place: Place | None) -> Changes:
        """The records merged, and the ids dropped, since ``place`` (an earlier answer's ``place``), in ``records``'
        order; all of them (``full``) when ``place`` is None or lost (another store, or read too long ago). With an
        ``archive``, the archive's changes. A trim of the list, a restart of the state store or its fallback memory
        do not lose a reader's place here: this process's merged view stays, and what they change reaches it as
        merges and drops."""
        await self._catch_up()
        if self.archive is not None:
            return await self.archive.changes(place)
        async with self._lock:
            full = place is None or place.source != self._source or place.at < self._floor
            if full:
                ids = list(self._merged)
            else:
                ids = list(itertools.takewhile(lambda id: self._log[id] > place.at, reversed(self._log)))  # type: ignore[union-attr]
            # Read under the lock with the lines: a write while they parse may drop an id (``_bound``).
            lines = [(id, self._merged.get(id), self._rank.get(id, 0)) for id in ids]
            here = Place(self._source, self._version, 0)
        found = await _run(len(lines) > 100, _load_all, [line for _, line, _ in lines if line is not None])
        kept = [(id, rank) for id, line, rank in lines if line is not None]
        records = sorted((((float(rank), id), record) for (id, rank), record in zip(kept, found, strict=True)),
                         key=lambda item: item[0])
        return Changes(place=here, full=full, records=records,
                       removed=[id for id, line, _ in lines if line is None])

    def _changed(self, id: str) -> None:
        self._version += 1
        self._log.pop(id, None)
        self._log[id] = self._version
        bound = None if self.max_items is None else 2 * self.max_items + PAGE
        while bound is not None and len(self._log) > bound:
            self._floor = self._log.pop(next(iter(self._log)))

    async def _catch_up(self) -> None:
        async with self._lock:  # one replay at a time: each appended line is merged exactly once
            while True:
                read = await self.state.items(self.key, self._seen, limit=PAGE)
                wanted: int | None = self._seen
                if self._started and read.epoch and self._epoch and read.epoch != self._epoch:
                    # Another list now: one read before (back from the fallback memory) from where this process
                    # left it, else from its head.
                    wanted = self._switch(read.epoch)
                    read = await self.state.items(self.key, wanted or 0, limit=PAGE)
                    self._reset(read.start)
                elif read.start < self._seen:
                    self._reset(read.start)
                    wanted = None
                if wanted is not None and read.start > wanted and self._started:
                    self.skipped += read.start - wanted
                    _log.warning("%d outcome write(s) were trimmed from the shared list (outcomes.shared_max_items="
                                 "%s, shared_max_age_s=%s) before this process read them: they are not in its "
                                 "records (%d so far)", read.start - wanted, self.max_items, self.max_age_s,
                                 self.skipped)
                big = len(read.items) > 100  # a start or a long lag: parsed and merged off the event loop
                written = await _run(big, _load_all, read.items)
                if self.archive is not None and written:  # first: a failed write is read again next time
                    await to_thread_to_end(self.archive.upsert_many_sync, written)
                await _run(big, self._merge, list(zip(written, read.items, strict=True)))
                self._seen = read.start + len(read.items)
                self._epoch = read.epoch
                self._started = True
                if len(read.items) < PAGE:
                    break
            self._bound()

    def _merge(self, written: list[tuple[OutcomeRecord, bytes]]) -> None:
        for record, line in written:
            old = self._merged.get(record.id)
            if old is None:
                self._created[record.id] = _written_at(record)
                self._rank[record.id] = self._version
            self._merged[record.id] = line if old is None else _dump(_load(old).merged(record))
            self._changed(record.id)

    def _switch(self, epoch: str) -> int | None:
        """Leave the list read so far for the one named ``epoch``: where reading it stopped before, if it was."""
        self._places[self._epoch] = self._seen
        if len(self._places) > MAX_PLACES:
            del self._places[next(iter(self._places))]
        return self._places.pop(epoch, None)

    def _reset(self, start: int) -> None:
        """Counted (``resets``), and logged once a minute at most with the count since: each outage of the state
        store is two (into its fallback memory's list, and back), and a flapping one warned at each."""
        self.resets += 1
        self._resets_unlogged += 1
        if not self._reset_log.due():
            return
        since = (f" ({self._resets_unlogged} such switches since the last such warning)"
                 if self._resets_unlogged > 1 else "")
        self._resets_unlogged = 0
        _log.warning("the shared outcome list is not the one this process read before (the store was emptied or "
                     "restarted without persistence, or is unreachable and this process uses its own memory "
                     "meanwhile): reading it from position %d; logged once a minute%s", start, since)

    def _bound(self) -> None:
        """Forget the oldest records beyond ``max_items``, and those last written before ``max_age_s`` ago."""
        drop = []
        if self.max_items is not None and len(self._merged) > self.max_items:
            drop = list(itertools.islice(self._merged, len(self._merged) - self.max_items))
        if self.max_age_s is not None:
            cutoff = time.time() - self.max_age_s
            for id, line in itertools.islice(self._merged.items(), len(drop), None):
                if _written_at(_load(line)) >= cutoff:
                    break
                drop.append(id)
        for id in drop:
            del self._merged[id]
            self._created.pop(id, None)
            self._rank.pop(id, None)
            self._changed(id)


def _dump(record: OutcomeRecord) -> bytes:
    """``record`` as one JSON line. Unset fields stay out, so a partial write (a feedback's score) merges as SQLite
    merges it instead of resetting the record's other fields to their defaults."""
    return record.model_dump_json(exclude_unset=True).encode()


def _load(line: bytes) -> OutcomeRecord:
    return OutcomeRecord.model_validate_json(line)


def _load_all(lines: list[bytes]) -> list[OutcomeRecord]:
    return [_load(line) for line in lines]


async def _run(big: bool, work: Callable[[A], T], arg: A) -> T:
    """``work(arg)``: on a worker thread when ``big`` (100k records parse in seconds), else here. To its end even if
    the caller is cancelled meanwhile: a merge left running on its thread after ``_catch_up`` let go of its lock
    changed the view while the next holder merged the same page again or iterated the view (``_bound``: "dictionary
    changed size during iteration")."""
    return await to_thread_to_end(work, arg) if big else work(arg)


def _written_at(record: OutcomeRecord) -> float:
    """When ``record``'s latest write was made (its ``metadata.at``; 0 if it has none a number)."""
    at = record.metadata.get("at")
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else 0.0
