"""Ingesting files as they are on disk: emptied files, line endings, a BOM, Markdown code fences."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from genroute.errors import ConfigError, UsageError
from genroute.knowledge import aingest, records
from genroute.knowledge.ingest import chunk_documents, read_documents

from .chroma_fixtures import Knowledge, chroma_server, knowledge  # noqa: F401 - fixtures


async def stored_texts(knowledge: Knowledge, collection: str) -> list[str]:
    return sorted(h.text for h in await knowledge.store().get_all(collection, kind="documents"))


async def test_an_emptied_file_loses_its_chunks(knowledge: Knowledge, tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("The secret launch code is 1234. It must never be shared.\n", encoding="utf-8")
    b.write_text("Bananas are yellow.\n", encoding="utf-8")
    store, collection = knowledge.store(), knowledge.name("docs")
    await aingest(store, [a, b], collection=collection)
    a.write_text("", encoding="utf-8")
    report = await aingest(store, [a, b], collection=collection)
    assert report.removed == 1
    assert await stored_texts(knowledge, collection) == ["Bananas are yellow."]
    b.write_text("   \n", encoding="utf-8")  # every file given is empty now: still an edit
    report = await aingest(store, [a, b], collection=collection)
    assert (report.removed, report.chunks, report.added) == (1, 0, 0)
    assert await stored_texts(knowledge, collection) == []
    with pytest.raises(UsageError) as err:  # nothing left to remove either: refused
        await aingest(store, [a, b], collection=collection)
    assert err.value.field == "paths" and "no text" in err.value.message


async def test_empty_files_are_refused_with_nothing_written(knowledge: Knowledge, tmp_path: Path) -> None:
    empty = tmp_path / "empty.md"
    empty.write_text("\n\n", encoding="utf-8")
    store, collection = knowledge.store(), knowledge.name("fresh")
    with pytest.raises(UsageError) as err:
        await aingest(store, [empty], collection=collection)
    assert err.value.field == "paths"
    assert collection not in await store.collections()  # no collection, not even an empty one



async def test_a_refused_first_ingest_makes_no_store(tmp_path: Path) -> None:
    # `genroute ingest empty.md` into a store not made yet: refused with nothing written, the store's directory
    # included (finding out that it holds no collection created an empty Chroma store there).
    from genroute.knowledge import build_store

    empty, place = tmp_path / "empty.md", tmp_path / "kb"
    empty.write_text("\n", encoding="utf-8")
    store = build_store({"path": str(place)}, engines={})
    with pytest.raises(UsageError) as err:
        await aingest(store, [empty], collection="docs")
    assert err.value.field == "paths" and not place.exists()
    assert await store.collections() == []  # asked again, by any caller: still nothing made


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_offsets_index_the_file_whatever_its_line_endings(tmp_path: Path, newline: str) -> None:
    lines = ["# Guide", "", "Line one is here.", "Line two follows.", "", "## Setup", "", "Paragraph two. " * 20]
    for name in ("notes.txt", "guide.md"):
        path = tmp_path / name
        path.write_bytes(newline.join(lines * 3).encode("utf-8"))
        raw = path.read_bytes().decode("utf-8")
        docs = list(read_documents(path))
        for doc in docs:
            assert raw[doc.offset:doc.offset + len(doc.text)] == doc.text
        chunks = list(chunk_documents(iter(docs), chunk_tokens=20, overlap=4))
        assert len(chunks) > 3
        for chunk, meta in chunks:
            assert raw[meta["start"]:meta["end"]].strip() == chunk.text
    assert [d.section for d in docs] == ["Guide", "Setup"] * 3 and docs[0].title == "Guide"


def test_a_heading_inside_a_code_fence_is_code(tmp_path: Path) -> None:
    path = tmp_path / "setup.md"
    path.write_text("Setup guide.\n\n```bash\n# install the dependencies\npip install foo\n```\n\n"
                    "~~~~\n# not a heading\n~~~\n## still code\n~~~~\n\n# Real Title\n\nBody.\n", encoding="utf-8")
    docs = list(read_documents(path))
    assert [(d.title, d.section) for d in docs] == [("Real Title", None), ("Real Title", "Real Title")]
    assert "pip install foo\n```" in docs[0].text and "## still code" in docs[0].text


def test_a_bom_does_not_hide_the_title(tmp_path: Path) -> None:
    path = tmp_path / "bom.md"
    path.write_bytes(b"\xef\xbb\xbf# Handbook\n\nBody text.\n\n## Part\n\nMore.\n")
    docs = list(read_documents(path))
    assert [(d.title, d.section) for d in docs] == [("Handbook", "Handbook"), ("Handbook", "Part")]
    raw = path.read_bytes().decode("utf-8")
    for doc in docs:
        assert raw[doc.offset:doc.offset + len(doc.text)] == doc.text


@pytest.mark.parametrize("nin_limit", [records.NIN_LIMIT, 1])
async def test_files_gone_from_a_reingested_directory_lose_their_chunks(knowledge: Knowledge, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch,
                                                                         nin_limit: int) -> None:
    # A deleted file's chunks stayed, answerable and cited, forever; a renamed one's were stored twice. (Past
    # NIN_LIMIT files, 32,767 with embedded Chroma, the filter leaving the files read out was refused by SQLite.)
    monkeypatch.setattr(records, "NIN_LIMIT", nin_limit)
    docs, elsewhere = tmp_path / "docs", tmp_path / "elsewhere.txt"
    docs.mkdir()
    (docs / "a.txt").write_text("Apples are red.\n", encoding="utf-8")
    (docs / "b.txt").write_text("Bananas are yellow.\n", encoding="utf-8")
    (docs / "kept.csv").write_text("Cherries are dark.\n", encoding="utf-8")  # ingested by name: no walked suffix
    elsewhere.write_text("Dates are sweet.\n", encoding="utf-8")
    store, collection = knowledge.store(), knowledge.name("gone")
    await aingest(store, [docs, docs / "kept.csv", elsewhere], collection=collection)
    (docs / "b.txt").unlink()
    (docs / "a.txt").rename(docs / "c.txt")
    report = await aingest(store, [docs], collection=collection)
    assert (report.added, report.removed) == (1, 2)
    hits = await store.get_all(collection, kind="documents")
    assert sorted((Path(h.metadata["source"]).name, h.text) for h in hits) == [
        ("c.txt", "Apples are red."), ("elsewhere.txt", "Dates are sweet."), ("kept.csv", "Cherries are dark.")]


async def test_a_directorys_walk_stays_inside_it(knowledge: Knowledge, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    # A link to a file outside the directory was ingested under the target's path: once the link was removed, no
    # re-ingest of the directory withdrew it (its source is not under the directory), so its chunks stayed, cited.
    docs, outside = tmp_path / "docs", tmp_path / "private"
    (docs / "sub").mkdir(parents=True)
    outside.mkdir()
    (docs / "a.txt").write_text("Apples are red.\n", encoding="utf-8")
    (outside / "secret.txt").write_text("The launch code is 1234.\n", encoding="utf-8")
    (docs / "secret.txt").symlink_to(outside / "secret.txt")
    (docs / "alias.txt").symlink_to(docs / "a.txt")           # inside: the same file, read once
    (docs / "sub" / "loop").symlink_to(docs, target_is_directory=True)   # not followed: no loop
    (docs / "private").symlink_to(outside, target_is_directory=True)     # not followed: outside
    store, collection = knowledge.store(), knowledge.name("walk")
    report = await aingest(store, [docs], collection=collection)
    assert report.files == 1 and await stored_texts(knowledge, collection) == ["Apples are red."]
    assert f"skipped {docs / 'secret.txt'}: a link to {(outside / 'secret.txt').resolve()}" in caplog.text
    report = await aingest(store, [docs / "secret.txt"], collection=collection)   # named, it is ingested
    assert await stored_texts(knowledge, collection) == ["Apples are red.", "The launch code is 1234."]


async def test_a_directory_emptied_since_it_was_ingested_loses_its_chunks(knowledge: Knowledge, tmp_path: Path) -> None:
    # Deleting a directory's last file and ingesting it again was refused ("docs holds no ... files"), so that file's
    # chunks stayed, answerable and cited, unlike those of any other file gone from it. A directory that never held
    # a file is still refused, naming it, when there is no collection to withdraw from.
    from genroute.knowledge.examples import aload_examples

    docs, shots = tmp_path / "docs", tmp_path / "shots"
    docs.mkdir()
    shots.mkdir()
    store, collection, examples = knowledge.store(), knowledge.name("emptied"), knowledge.name("emptiedex")
    with pytest.raises(UsageError, match="holds no") as refused:
        await aingest(store, [docs], collection=collection)
    assert refused.value.field == "paths" and collection not in await store.collections()
    (docs / "a.txt").write_text("Apples are red.\n", encoding="utf-8")
    (shots / "a.jsonl").write_text('{"input": "Apples?", "output": "red"}\n', encoding="utf-8")
    await aingest(store, [docs], collection=collection)
    await aload_examples(store, [shots], collection=examples)
    (docs / "a.txt").unlink()
    (shots / "a.jsonl").unlink()
    assert (await aingest(store, [docs], collection=collection)).removed == 1
    assert (await aload_examples(store, [shots], collection=examples)).removed == 1
    assert await store.count(collection, kind="documents") == await store.count(examples, kind="examples") == 0


async def test_a_collection_made_again_elsewhere_is_read_by_its_name(knowledge: Knowledge, tmp_path: Path) -> None:
    # A running router held the collection's old id: after another process deleted it and ingested again (what the
    # embedder-mismatch error tells a user to do), its next request failed with a UsageError naming that id.
    old, new = tmp_path / "old.txt", tmp_path / "new.txt"
    old.write_text("Apples are red.\n", encoding="utf-8")
    new.write_text("Bananas are yellow.\n", encoding="utf-8")
    running, other, collection = knowledge.store(), knowledge.store(), knowledge.name("remade")
    await aingest(running, [old], collection=collection)
    assert [h.text for h in await running.query(collection, "apples", kind="documents", k=1)] == ["Apples are red."]
    await other.delete_collection(collection)
    await aingest(other, [new], collection=collection)
    assert [h.text for h in await running.query(collection, "fruit", kind="documents", k=5)] == ["Bananas are yellow."]
    await other.delete_collection(collection)
    with pytest.raises(UsageError) as err:
        await running.query(collection, "fruit", kind="documents", k=5, field="backends.docs.collection")
    assert err.value.field == "backends.docs.collection" and f"unknown collection {collection!r}" in err.value.message


async def test_a_collection_made_outside_genroute_at_another_width_is_a_config_error(knowledge: Knowledge) -> None:
    # It records no embedder or width, so a query reached Chroma and came back as a UsageError naming no field
    # ("Collection expecting embedding with dimension of 8, got 384").
    store, collection = knowledge.store(), knowledge.name("foreign")
    made = store.client().create_collection(collection, embedding_function=None)
    made.add(ids=["a"], embeddings=[[0.5] * 8], documents=["Apples are red."], metadatas=[{"source": "x"}])
    with pytest.raises(ConfigError) as err:
        await store.query(collection, "apples", kind="documents", k=1)
    assert err.value.field == "knowledge.embedder.dimension" and "8-wide" in err.value.message
    empty = knowledge.name("foreign-empty")  # nothing stored says a width: opened as before
    store.client().create_collection(empty, embedding_function=None)
    assert await store.query(empty, "apples", kind="documents", k=1) == []


async def test_more_kept_chunks_than_one_chroma_write_takes_are_restamped(knowledge: Knowledge) -> None:
    # Re-ingesting a file that keeps more chunks than Chroma's max batch size (5,461), such as a JSONL corpus of
    # 6,000 records, failed every time: their generation stamps went in one update, refused as BackendUnavailable.
    store, collection = knowledge.store(), knowledge.name("many")
    size = await asyncio.to_thread(store.max_batch_size)
    ids = [f"c{n}" for n in range(size + 10)]
    for part in (ids[:size], ids[size:]):
        await store.upsert(collection, part, part, [{"source": "s", "n": 0}] * len(part), kind="documents",
                           embeddings=[[1.0] + [0.0] * 383] * len(part))
    await store.update_metadatas(collection, ids, [{"n": 1}] * len(ids), kind="documents")
    stored = await store.metadatas_where(collection, {"n": 1}, kind="documents")
    assert len(stored) == len(ids) and stored["c0"] == {"source": "s", "n": 1}
