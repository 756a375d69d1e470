"""Writing records into a collection so that it mirrors the files read: what ingestion and example loading share.

Each batch is one Chroma upsert (written whole or not at all) of the records not stored yet. Afterwards each source
(file) read is settled: records it no longer produces are deleted, but only those older than this run's reading of
it (``GENERATION`` stamps), so overlapping runs never delete each other's newer records (see ``ingest``); a file
stored as the run read it is left as it is, and the stored records of many small files are read in one Chroma call
(``PAGE`` records a call). Records of files gone from a directory that was read are withdrawn too: only that
directory's records are read for it, by the directory keys every record holds (``genroute.knowledge.record_dirs``),
page by page.

An example's id is its content, so several files may hold one stored example, loaded together or in separate runs.
Each file holding it is marked on it (``held_key``): a file that drops it, or is gone, gives it up, and it is deleted
only when no other file holds it (else it moves to one that does).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genroute.bounds import is_whole
from genroute.errors import GenrouteError, UsageError
from genroute.knowledge.file_digests import DIGEST
from genroute.knowledge.record_dirs import PAGE, ensure_dir_keys, placed, under
from genroute.knowledge.store import clean_metadata
from genroute.runtime.billing import Charges, charging

if TYPE_CHECKING:
    from genroute.knowledge.store import KnowledgeStore

DEFAULT_BATCH = 256
#: The most paths ``withdraw_deleted`` leaves out by a Chroma filter (past it, each stored source is checked here).
NIN_LIMIT = 10_000
#: Metadata key of a record's generation stamp: when (wall-clock ns) the run that last wrote it read its file.
GENERATION = "genroute.generation"
_HELD = "genroute.held."
#: A file's modification time, size and inode when it was read (``None``: gone).
FileState = tuple[int, int, int] | None


def held_key(source: str) -> str:
    """Metadata key marking that the file ``source`` holds an example (its value: that path; "" once given up)."""
    return _HELD + hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def other_holders(meta: Mapping[str, Any], source: str) -> list[str]:
    """The files other than ``source`` that hold a stored example (its own ``source`` among them)."""
    others = {v for k, v in meta.items() if k.startswith(_HELD) and isinstance(v, str) and v and v != source}
    if isinstance(meta.get("source"), str) and meta["source"] != source:
        others.add(meta["source"])
    return sorted(others)


async def settle_sources(store: KnowledgeStore, collection: str, generations: Mapping[str, int],
                         records: Mapping[str, tuple[str, dict[str, Any]]], *,
                         kind: Literal["documents", "examples"], produced: Mapping[str, set[str]] | None = None,
                         kept_as_stored: tuple[str, ...] = (),
                         states: Mapping[str, FileState] | None = None) -> int:
    """After a run's writes, settle each source it read (resolved path -> generation) against ``records``.

    ``records`` maps ids to (text, metadata); ``produced`` maps each source to the ids it produced (default: the
    ids whose metadata's ``source`` names it; an example two files hold is stored once but produced by both).
    ``kept_as_stored``: metadata keys a record already stored keeps (an example's place in load order). ``states``:
    each source's ``file_state`` taken before it was read; a file changed since is left alone (this run's reading of
    it is out of date; the next run settles what it wrote). A source stored as this run read it is left alone too:
    nothing is written for an unchanged file. Returns how many stale records were deleted.
    """
    mine: dict[str, set[str]] = {source: set() for source in generations}
    if produced is None:
        for rid, (_, meta) in records.items():
            mine[meta["source"]].add(rid)
    else:
        mine.update(produced)
    run = _Settling(store, collection, kind, records, kept_as_stored, set().union(*mine.values()), states or {})
    removed = 0
    for group in _groups(sorted(generations), mine, one_each=run.shared):
        stored = await run.read(group)
        for source in group:
            removed += await run.settle(source, generations[source], mine[source], stored[source])
    return removed


def _groups(sources: list[str], mine: Mapping[str, set[str]], *, one_each: bool) -> Iterator[list[str]]:
    """``sources`` in groups whose stored records are read together: as many files as produced about ``PAGE``
    records (one Chroma read for many small files), or one file a group (``one_each``: settling an example file
    changes records another file of the run holds, so each is read after the one before it was settled)."""
    group: list[str] = []
    count = 0
    for source in sources:
        if group and (one_each or count + len(mine[source]) > PAGE):
            yield group
            group, count = [], 0
        group.append(source)
        count += len(mine[source])
    if group:
        yield group


@dataclass(frozen=True)
class _Settling:
    """One run's settling: the records it produced (``taken``: by any source it read) and how to write them."""

    store: KnowledgeStore
    collection: str
    kind: Literal["documents", "examples"]
    records: Mapping[str, tuple[str, dict[str, Any]]]
    kept_as_stored: tuple[str, ...]
    taken: set[str]
    states: Mapping[str, FileState]

    @property
    def shared(self) -> bool:
        # A chunk's id names its file; an example's is its content alone, so files may share it.
        return self.kind == "examples"

    def _meta(self, rid: str, source: str, stored: Mapping[str, Any]) -> dict[str, Any]:
        """The record's metadata as this run read it, for ``source``; an example stored under another file
        (``stored``) stays that file's and is marked as ``source``'s too."""
        meta = {**self.records[rid][1], "source": source}
        if stored.get(DIGEST):  # the digest of the text it was settled for, which this reading may not have
            meta[DIGEST] = ""
        if self.shared and isinstance(stored.get("source"), str) and stored["source"] != source:
            meta.update({"source": stored["source"], held_key(source): source})
        return {k: v for k, v in meta.items() if k not in self.kept_as_stored}

    async def read(self, sources: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """Source -> id -> metadata of the records stored for ``sources`` (one file, for examples), page by page."""
        where: dict[str, Any] = {"source": sources[0]} if len(sources) == 1 else {"source": {"$in": sources}}
        if self.shared:  # an example another file was first to store is this file's too
            where = {"$or": [where, {held_key(sources[0]): sources[0]}]}
        stored: dict[str, dict[str, dict[str, Any]]] = {source: {} for source in sources}
        async for page in self.store.metadata_pages(self.collection, where, kind=self.kind, size=PAGE):
            for i, meta in page.items():
                stored[sources[0] if self.shared else meta["source"]][i] = meta
        return stored

    async def settle(self, source: str, generation: int, mine: set[str], stored: dict[str, dict[str, Any]]) -> int:
        """After this run's writes, with ``stored`` read since: stamp its kept records, delete older stale ones, re-add
        any an older run removed. Returns how many stale records were deleted."""
        store, collection, kind = self.store, self.collection, self.kind
        if source in self.states and file_state(source) != self.states[source]:
            # This reading is out of date: what it wrote is settled by the run that reads the file next, which a
            # digest a newer run left (``file_digests``) would have skip the file, leaving what this one wrote.
            marked = sorted(i for i, meta in stored.items() if meta.get(DIGEST))
            await store.update_metadatas(collection, marked, [{DIGEST: ""}] * len(marked), kind=kind)
            return 0
        stamps = {i: int(meta.get(GENERATION, 0)) for i, meta in stored.items()}
        # Records an earlier run wrote and this one kept are this reading's now: an overlapping older run
        # (which only deletes below its own stamp) must not take them. Their metadata is this reading's too (a
        # chunk's offsets move when text above it is edited); one another file read now holds moves to that file.
        restamp = {i: self._meta(i, source, stored[i]) for i in mine if i in stamps and stamps[i] < generation}
        moved = {i: self._moved(i, source, stored[i]) for i in stamps if i not in mine and i in self.taken}
        stale = sorted(i for i, stamp in stamps.items() if i not in mine and i not in moved and stamp < generation)
        # An example this file gave up that another file still holds stays, marked as no longer this file's.
        kept = {i: given_up(stored[i], source) for i in stale if self.shared and other_holders(stored[i], source)}
        stale = [i for i in stale if i not in kept]
        if self.shared:  # stored by another file, or before holders were marked: marked as this file's too
            kept |= {i: {held_key(source): source} for i in mine if i not in stamps}
        writes = restamp | moved | kept
        fresh = any(stamps.get(i, generation) >= generation for i in mine)  # written (or missing) since read
        if not stale and not fresh and all(_holds(stored.get(i, {}), writes[i]) for i in writes):
            return 0  # stored as this reading has it (its stamps aside): an unchanged file costs no write
        ids = sorted(writes)
        await store.update_metadatas(collection, ids, [placed(writes[i]) for i in ids], kind=kind)
        unstamped = [i for i in stale if GENERATION not in stored[i]]  # written before stamps existed
        await store.delete(collection, unstamped, kind=kind)
        # ``where`` re-checks the stamp at delete time: a newer run may have taken the record since the read above.
        await store.delete(collection, [i for i in stale if GENERATION in stored[i]], kind=kind,
                           where={GENERATION: {"$lt": generation}})
        if max(stamps.values(), default=0) <= generation:  # still the newest reading of this file
            # An older run may have deleted a kept record between its read and our restamp: put it back.
            await upsert_missing(store, collection, {i: (self.records[i][0], {**self.records[i][1], "source": source})
                                                     for i in sorted(mine)}, kind=kind)
        return len(stale)

    def _moved(self, rid: str, source: str, stored: Mapping[str, Any]) -> dict[str, Any]:
        # ``source`` gave the record up; the file this run read it from holds it.
        holder = self.records[rid][1]["source"]
        shared = given_up(stored, source, to=holder) if self.shared else {}
        return {**self._meta(rid, holder, stored), **shared}


def _holds(stored: Mapping[str, Any], write: Mapping[str, Any]) -> bool:
    """Whether the record ``stored`` already holds what ``write`` would set (its generation stamp aside)."""
    return GENERATION in stored and all(
        stored.get(k) == v for k, v in clean_metadata(placed(write)).items() if k != GENERATION)


def file_state(path: str | Path) -> FileState:
    """What tells that a file changed since it was read (modification time, size, inode); ``None`` if it is gone.
    Taken before a file is read, and compared before its stale records are deleted."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def given_up(meta: Mapping[str, Any], source: str, to: str | None = None) -> dict[str, Any]:
    """The metadata update by which ``source`` gives up a stored example other files hold: no longer marked as its,
    and, if it was the example's ``source``, moved to holder ``to`` (default: the first other one)."""
    update: dict[str, Any] = {held_key(source): ""}
    if meta.get("source") == source:
        update["source"] = to or other_holders(meta, source)[0]
    return update


@contextmanager
def paid_writes() -> Iterator[Charges]:
    """Collects what a run's embeddings cost; a genroute error leaving it says what was spent before it (the batches
    stored were paid for, and a re-run skips them)."""
    with charging(Charges()) as charges:
        try:
            yield charges
        except GenrouteError as exc:
            exc.cost_usd += charges.cost_usd
            exc.cost_estimated = exc.cost_estimated or charges.estimated
            raise


async def withdraw_deleted(store: KnowledgeStore, collection: str, paths: Sequence[str | Path],
                           files: Sequence[Path], *, kind: Literal["documents", "examples"]) -> int:
    """Delete the records of files that were under a directory of ``paths`` and are gone from it (deleted or
    renamed since they were ingested); ``files`` are the ones this run read there. Returns how many went."""
    folders = [Path(p).resolve() for p in paths if Path(p).is_dir()]
    if not folders or collection not in await store.collections():
        return 0
    read = sorted(str(f) for f in files)
    await ensure_dir_keys(store, collection, kind=kind)  # records written before the keys existed: once
    # Only the records of files under ``folders`` that this run did not read. One parameter a path: embedded Chroma's
    # SQLite takes at most 32,766, so past NIN_LIMIT each of the directories' sources is checked here (and with none
    # read, an emptied directory, as Chroma refuses an empty $nin).
    where = under(folders)
    if 0 < len(read) <= NIN_LIMIT:
        where = {"$and": [where, {"source": {"$nin": read}}]}
    gone: list[str] = []
    kept: dict[str, dict[str, Any]] = {}
    # Nothing is deleted until every page is read (a delete would shift the pages after it).
    async for page in store.metadata_pages(collection, where, kind=kind, size=PAGE):
        for i, meta in page.items():
            if not _gone_from(meta.get("source"), folders):
                continue
            # An example that a file still there holds too moves to that file instead.
            to = _held_elsewhere(meta) if kind == "examples" else None
            if to:
                kept[i] = placed(given_up(meta, meta["source"], to=to))
            else:
                gone.append(i)
    await store.update_metadatas(collection, sorted(kept), [kept[i] for i in sorted(kept)], kind=kind)
    await store.delete(collection, sorted(gone), kind=kind)
    return len(gone)


def _held_elsewhere(meta: Mapping[str, Any]) -> str | None:
    """Another file still on disk that holds this example (of a file that is gone), if any."""
    return next((p for p in other_holders(meta, meta["source"]) if Path(p).is_file()), None)


def _gone_from(source: Any, folders: Sequence[Path]) -> bool:
    # A file still there was left out on purpose (another suffix, ingested by name): only a missing one goes.
    if not isinstance(source, str):
        return False
    path = Path(source)
    return any(path.is_relative_to(folder) for folder in folders) and not path.is_file()


def check_target(store: Any, on_batch: Any) -> None:
    """``UsageError`` naming ``store`` unless it is a ``KnowledgeStore``, or ``on_batch`` unless it is callable (or
    None): each failed from deep inside, the second after the first batch was written."""
    from genroute.knowledge.store import KnowledgeStore

    if not isinstance(store, KnowledgeStore):
        raise UsageError(f"must be a KnowledgeStore (build_store makes one), not {type(store).__name__}", field="store")
    if on_batch is not None and not callable(on_batch):
        raise UsageError(f"must be a callable (batches, records) -> None, not {type(on_batch).__name__}",
                         field="on_batch")


async def upsert_missing(
    store: KnowledgeStore,
    collection: str,
    records: Mapping[str, tuple[str, dict[str, Any]]],
    *,
    kind: Literal["documents", "examples"],
    batch_size: int | None = None,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Upsert ``records`` (id -> (text, metadata)) batch by batch, skipping ids already stored.

    Each batch is one Chroma upsert, so a run killed half-way leaves whole batches, and a re-run adds exactly
    what is missing. Returns (records added, batches written).
    """
    if batch_size is not None and (not is_whole(batch_size) or batch_size < 1):
        raise UsageError(f"must be a whole number >= 1 (or None for the default), got {batch_size!r}",
                         field="batch_size")
    await store.collection(collection, kind=kind, create=True)
    limit = await asyncio.to_thread(store.max_batch_size)
    size = max(1, min(limit, batch_size or DEFAULT_BATCH))
    ids = list(records)
    added = batches = 0
    with _progress(progress, len(ids), collection) as advance:
        for start in range(0, len(ids), size):
            batch = ids[start:start + size]
            present = await store.existing_ids(collection, batch, kind=kind)
            todo = [i for i in batch if i not in present]
            advance(len(batch))
            if not todo:  # all stored already: no write, so no batch to count or report
                continue
            await store.upsert(collection, todo, [records[i][0] for i in todo], [placed(records[i][1]) for i in todo],
                               kind=kind)
            added += len(todo)
            batches += 1
            if on_batch is not None:
                on_batch(batches, start + len(batch))
    return added, batches


class _progress:
    """A rich progress bar (or nothing), as a context manager yielding ``advance(n)``."""

    def __init__(self, enabled: bool, total: int, collection: str) -> None:
        self.enabled = enabled
        self.total = total
        self.collection = collection
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        # On stderr: stdout is the caller's (`genroute ingest` prints its report there, perhaps into a file).
        self._bar = Progress(TextColumn("ingest {task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), transient=False, console=Console(stderr=True))
        self._bar.start()
        task = self._bar.add_task(self.collection, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
