"""Re-ingesting files that mostly did not change: an unchanged file costs no write, a changed one replaces exactly
its own records, and a run stopped part-way is finished by the next."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
import time
from pathlib import Path
from typing import Any

import pytest

from genroute.errors import BackendUnavailable
from genroute.knowledge import aingest
from genroute.knowledge.examples import aload_examples
from genroute.knowledge.records import GENERATION
from genroute.knowledge.store import KnowledgeStore

from .chroma_fixtures import Knowledge, chroma_server, knowledge  # noqa: F401 - fixtures
from .test_knowledge import expected_ids

Run = Callable[[KnowledgeStore], Awaitable[Any]]


def writes(store: KnowledgeStore) -> list[tuple[str, list[str]]]:
    """Wraps ``store``'s three writes (genroute's own methods) to list each call that writes records: (which, ids)."""
    seen: list[tuple[str, list[str]]] = []
    for which in ("upsert", "update_metadatas", "delete"):
        def wrap(method: Any, which: str = which) -> Any:
            async def write(name: str, ids: Any, *args: Any, **kw: Any) -> Any:
                if ids:
                    seen.append((which, list(ids)))
                return await method(name, ids, *args, **kw)
            return write
        setattr(store, which, wrap(getattr(store, which)))
    return seen


def snapshot(store: KnowledgeStore, collection: str) -> dict[str, dict[str, Any]]:
    """Every record's metadata, generation stamp included, read straight from Chroma."""
    got = store.client().get_collection(collection, embedding_function=None).get(include=["metadatas"])
    return dict(zip(got["ids"], got["metadatas"]))


def corpus(root: Path, kind: str, collection: str) -> tuple[list[Path], Run]:
    """Three files in ``root`` (and a subdirectory) and how to (re-)ingest ``root`` into ``collection``."""
    (root / "sub").mkdir(parents=True)
    files = [root / "a", root / "b", root / "sub" / "c"]
    if kind == "documents":
        files = [f.with_suffix(".txt") for f in files]
        for f in files:
            f.write_text(" ".join(f"Sentence {n} of {f.stem} says apples are red." for n in range(12)),
                         encoding="utf-8")

        async def run(store: KnowledgeStore) -> Any:
            return await aingest(store, [root], collection=collection, chunk_tokens=20, overlap=0)
    else:
        files = [f.with_suffix(".jsonl") for f in files]
        for f in files:
            f.write_text("".join(f'{{"input": "Question {n} of {f.stem}?", "output": "answer {n}"}}\n'
                                 for n in range(4)), encoding="utf-8")

        async def run(store: KnowledgeStore) -> Any:
            return await aload_examples(store, [root], collection=collection)
    return files, run


@pytest.mark.parametrize("kind", ["documents", "examples"])
async def test_reingesting_an_unchanged_directory_writes_nothing(knowledge: Knowledge, tmp_path: Path,
                                                                 kind: str) -> None:
    # Every re-ingest restamped every record it kept (one Chroma update per record: ~9,900 for a 10,000-chunk
    # directory with one file deleted), though nothing in the files had changed.
    store, collection = knowledge.store(), knowledge.name(f"same-{kind[:3]}")
    files, run = corpus(tmp_path / "corpus", kind, collection)
    await run(store)
    before = snapshot(store, collection)
    seen = writes(store)
    report = await run(store)
    assert seen == [] and (report.added, report.removed) == (0, 0)
    assert snapshot(store, collection) == before  # generation stamps included: not one record was rewritten
    files[1].unlink()  # one file gone: only its records are written (deleted), nothing of the others
    report = await run(store)
    gone = [i for i, m in before.items() if m["source"] == str(files[1].resolve())]
    assert seen == [("delete", sorted(gone))] and report.removed == len(gone)
    assert snapshot(store, collection) == {i: m for i, m in before.items() if i not in gone}


async def test_a_changed_file_replaces_exactly_its_chunks(knowledge: Knowledge, tmp_path: Path) -> None:
    store, collection = knowledge.store(), knowledge.name("changed")
    files, run = corpus(tmp_path / "corpus", "documents", collection)
    await run(store)
    before = snapshot(store, collection)
    changed = files[1]
    changed.write_text(changed.read_text(encoding="utf-8").replace("Sentence 7 ", "Sentence seven "), encoding="utf-8")
    seen = writes(store)
    report = await run(store)
    after = snapshot(store, collection)
    assert set(after) == expected_ids(files, 20, 0) != set(before)
    assert report.added >= 1 and report.removed >= 1
    # Every write touched the changed file's records only; the other files' records are as they were.
    mine = {i for i, m in {**before, **after}.items() if m["source"] == str(changed.resolve())}
    assert seen and all(set(ids) <= mine for _, ids in seen), seen
    assert {i: m for i, m in after.items() if i not in mine} == {i: m for i, m in before.items() if i not in mine}
    # The changed file's kept chunks were taken by this reading (stamped), so an older overlapping run cannot delete
    # them.
    stamps = {m[GENERATION] for i, m in after.items() if i in mine}
    assert len(stamps) == 1 and stamps.pop() > max(m[GENERATION] for m in before.values())


@pytest.mark.parametrize("stop", ["after its first batch", "in its deletes"])
async def test_an_interrupted_reingest_is_repaired_by_the_next(knowledge: Knowledge, tmp_path: Path,
                                                              stop: str) -> None:
    store, collection = knowledge.store(), knowledge.name("changed")
    files, run = corpus(tmp_path / "corpus", "documents", collection)
    await run(store)
    for f in files[:2]:  # two files changed, so the run has chunks to add and to delete in each
        f.write_text(f.read_text(encoding="utf-8").replace("apples are red", "pears are green"), encoding="utf-8")
    broken = knowledge.store()
    if stop == "after its first batch":
        def halt(batches: int, done: int) -> None:
            raise RuntimeError("stopped")

        with pytest.raises(RuntimeError, match="stopped"):
            await aingest(broken, [files[0].parent], collection=collection, chunk_tokens=20, overlap=0,
                          on_batch=halt)
    else:
        delete = broken.delete

        async def failing(name: str, ids: Any, **kw: Any) -> None:
            if ids:  # the first file's stale chunks go; then Chroma fails
                failing.calls += 1  # type: ignore[attr-defined]
                if failing.calls > 1:  # type: ignore[attr-defined]
                    raise BackendUnavailable("chroma went away", backend="knowledge")
            await delete(name, ids, **kw)

        failing.calls = 0  # type: ignore[attr-defined]
        broken.delete = failing  # type: ignore[method-assign]
        with pytest.raises(BackendUnavailable):
            await aingest(broken, [files[0].parent], collection=collection, chunk_tokens=20, overlap=0)
    half = snapshot(store, collection)
    assert set(half) != expected_ids(files, 20, 0)  # stale chunks left behind
    await run(store)
    repaired = snapshot(store, collection)
    assert set(repaired) == expected_ids(files, 20, 0)
    seen = writes(store)
    await run(store)
    assert seen == [] and snapshot(store, collection) == repaired


async def test_an_older_run_leaves_a_file_changed_since_it_read_it(knowledge: Knowledge, tmp_path: Path) -> None:
    # A newer run that finds a file stored as it reads it writes nothing, stamps included; so an older run that read
    # another version of the file must not delete the chunks that run kept (older than its own reading), or the file
    # as it is now would lose them.
    from genroute.knowledge.chunking import stored_chunk_id
    from genroute.knowledge.ingest import chunk_documents, read_documents
    from genroute.knowledge.records import file_state, settle_sources, upsert_missing

    from .test_knowledge import _version

    doc = tmp_path / "doc.txt"
    doc.write_text(_version(0), encoding="utf-8")
    store, collection = knowledge.store(), knowledge.name("older")
    await aingest(store, [doc], collection=collection, chunk_tokens=20, overlap=0)
    current = expected_ids([doc], 20, 0)
    doc.write_text(_version(1), encoding="utf-8")  # the older run reads version 1 ...
    source, state, generation = str(doc.resolve()), file_state(doc), time.time_ns()
    chunks = {stored_chunk_id(source, c.text): (c.text, {**meta, GENERATION: generation})
              for c, meta in chunk_documents(read_documents(doc), chunk_tokens=20, overlap=0)}
    time.sleep(0.05)  # (a coarse file clock: the edit below gets a later modification time)
    doc.write_text(_version(0), encoding="utf-8")  # ... the file is put back, and a newer run finds it unchanged
    seen = writes(store)
    await aingest(store, [doc], collection=collection, chunk_tokens=20, overlap=0)
    assert seen == []
    await upsert_missing(store, collection, chunks, kind="documents")  # now the older run writes and settles
    await settle_sources(store, collection, {source: generation}, chunks, kind="documents", states={source: state})
    assert set(snapshot(store, collection)) >= current  # version 0 whole (version 1's chunks left over)
    await aingest(store, [doc], collection=collection, chunk_tokens=20, overlap=0)
    assert set(snapshot(store, collection)) == current  # the next run withdraws them


async def test_a_reingest_reads_the_records_of_many_files_at_once(knowledge: Knowledge, tmp_path: Path) -> None:
    # Settling each file read its stored records in a Chroma get of its own: a directory of 30 small files cost 30.
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(30):
        (folder / f"f{n:02d}.txt").write_text(f"File {n} says apples are red.", encoding="utf-8")
    store, collection = knowledge.store(), knowledge.name("many")
    await aingest(store, [folder], collection=collection)
    calls: list[str] = []
    where_read, pages_read = store.metadatas_where, store.metadata_pages

    async def metadatas_where(*a: Any, **kw: Any) -> Any:
        calls.append("get")
        return await where_read(*a, **kw)

    async def metadata_pages(*a: Any, **kw: Any) -> Any:
        async for page in pages_read(*a, **kw):
            calls.append("page")
            yield page

    store.metadatas_where = metadatas_where  # type: ignore[method-assign]
    store.metadata_pages = metadata_pages  # type: ignore[method-assign]
    for n in range(30):  # every file changed: none is skipped by its digest (``file_digests``)
        (folder / f"f{n:02d}.txt").write_text(f"File {n} says pears are green.", encoding="utf-8")
    report = await aingest(store, [folder], collection=collection)
    assert (report.added, report.removed) == (30, 30)
    # One read of the 30 files' digests to clear (the lookup of unchanged ones finds none), one of their records to
    # settle; the directory holds no file deleted since.
    assert calls == ["page", "page"], calls
    assert set(snapshot(store, collection)) == expected_ids(sorted(folder.iterdir()), 200, 40)
