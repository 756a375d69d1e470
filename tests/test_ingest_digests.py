"""Re-ingesting skips files settled as they are (same bytes, same chunking and embedder): no chunking, no embedding;
a changed file, one chunked with other settings, or one edited back to a text it held before is chunked again."""

from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from genroute.knowledge import aingest
from genroute.knowledge.store import KnowledgeStore

from .chroma_fixtures import Knowledge, chroma_server, knowledge  # noqa: F401 - fixtures
from .test_ingest_reingest import corpus, snapshot
from .test_knowledge import expected_ids

ingest_module = importlib.import_module("genroute.knowledge.ingest")  # the package's ``ingest`` is the function


def watch(store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the files the ingest chunks (by source) and the texts it embeds (``embedded``)."""
    seen: Counter[str] = Counter()
    chunk_documents = ingest_module.chunk_documents

    def counted(docs: Any, **kw: Any) -> Any:
        for chunk, meta in chunk_documents(docs, **kw):
            seen[meta["source"]] += 1
            yield chunk, meta

    monkeypatch.setattr(ingest_module, "chunk_documents", counted)
    embed = store.embedder.aembed

    async def aembed(texts: list[str], **kw: Any) -> list[list[float]]:
        seen["embedded"] += len(texts)
        return await embed(texts, **kw)

    monkeypatch.setattr(store.embedder, "aembed", aembed)
    return seen


async def test_reingesting_an_unchanged_corpus_chunks_and_embeds_nothing(knowledge: Knowledge, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Every file was chunked again to learn its chunks' ids (~2 s per 10,000 documents), though none had changed.
    store, collection = knowledge.store(), knowledge.name("digests")
    files, run = corpus(tmp_path / "corpus", "documents", collection)
    first = await run(store)
    stored = snapshot(store, collection)
    seen = watch(store, monkeypatch)
    again = await run(store)
    assert seen == Counter()  # not one chunk cut, not one text embedded
    assert (again.files, again.unchanged, again.documents, again.chunks) == (3, 3, first.documents, first.chunks)
    assert (again.added, again.skipped, again.removed) == (0, first.chunks, 0)
    assert snapshot(store, collection) == stored

    files[1].write_text(files[1].read_text(encoding="utf-8").replace("apples", "pears"), encoding="utf-8")
    changed = await run(store)
    assert set(seen) == {str(files[1].resolve()), "embedded"} and changed.unchanged == 2
    assert set(snapshot(store, collection)) == expected_ids(files, 20, 0)


async def test_a_file_edited_back_or_chunked_otherwise_is_chunked_again(knowledge: Knowledge, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store, collection = knowledge.store(), knowledge.name("digests")
    files, run = corpus(tmp_path / "corpus", "documents", collection)
    await run(store)
    text = files[0].read_text(encoding="utf-8")
    files[0].write_text(text.replace("apples", "pears"), encoding="utf-8")
    await run(store)
    files[0].write_text(text, encoding="utf-8")  # back to the text an earlier run settled
    seen = watch(store, monkeypatch)
    report = await run(store)
    assert seen[str(files[0].resolve())] and report.unchanged == 2
    assert set(snapshot(store, collection)) == expected_ids(files, 20, 0)

    seen.clear()  # other chunking settings: every file again
    report = await aingest(store, [tmp_path / "corpus"], collection=collection, chunk_tokens=30, overlap=5)
    assert {str(f.resolve()) for f in files} <= set(seen) and report.unchanged == 0
    assert set(snapshot(store, collection)) == expected_ids(files, 30, 5)


async def test_a_run_stopped_part_way_over_a_file_then_edited_back_is_finished_by_the_next(
        knowledge: Knowledge, tmp_path: Path) -> None:
    store, collection = knowledge.store(), knowledge.name("digests")
    files, run = corpus(tmp_path / "corpus", "documents", collection)
    await run(store)
    text = files[0].read_text(encoding="utf-8")
    files[0].write_text(text.replace("apples are red", "pears are green"), encoding="utf-8")

    def halt(batches: int, done: int) -> None:
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError, match="stopped"):  # the edited text's first chunk is written, then it stops
        await aingest(store, [tmp_path / "corpus"], collection=collection, chunk_tokens=20, overlap=0, batch_size=1,
                      on_batch=halt)
    files[0].write_text(text, encoding="utf-8")
    report = await run(store)  # the digest of the text before was cleared before anything was written
    assert report.unchanged == 2 and report.removed >= 1
    assert set(snapshot(store, collection)) == expected_ids(files, 20, 0)
