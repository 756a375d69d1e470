"""Re-ingesting one directory of a collection that holds several: only that directory's records are read."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from genroute.knowledge import aingest, record_dirs, records
from genroute.knowledge.collection_checks import DIR_KEYS, collection_metadata
from genroute.knowledge.examples import aload_examples
from genroute.knowledge.record_dirs import DIR_PREFIX, dir_keys
from genroute.knowledge.store import KnowledgeStore

from .chroma_fixtures import Knowledge, chroma_server, knowledge  # noqa: F401 - fixtures


def test_a_records_directory_keys_name_each_directory_above_its_file(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    keys = dir_keys(str(docs / "a.txt"))
    assert keys["genroute.dir.1"] == "/" and keys[f"genroute.dir.{len(docs.parts)}"] == str(docs)
    assert keys[f"genroute.dir.{len(tmp_path.parts)}"] == str(tmp_path) and len(keys) == len(docs.parts)


def reads(store: KnowledgeStore) -> list[str]:
    """Wraps ``store``'s two metadata reads (genroute's own methods) to list the ``source`` of every record they
    return, as Chroma returned it."""
    seen: list[str] = []
    where_read, pages_read = store.metadatas_where, store.metadata_pages

    async def metadatas_where(name: str, where: Mapping[str, Any], **kw: Any) -> dict[str, dict[str, Any]]:
        got = await where_read(name, where, **kw)
        seen.extend(str(m.get("source")) for m in got.values())
        return got

    async def metadata_pages(name: str, where: Mapping[str, Any] | None,
                             **kw: Any) -> AsyncIterator[dict[str, dict[str, Any]]]:
        async for page in pages_read(name, where, **kw):
            seen.extend(str(m.get("source")) for m in page.values())
            yield page

    store.metadatas_where = metadatas_where  # type: ignore[method-assign]
    store.metadata_pages = metadata_pages  # type: ignore[method-assign]
    return seen


def two_directories(root: Path, suffix: str, line: str) -> tuple[Path, Path]:
    first, second = root / "first", root / "second"
    for folder in (first, second):
        (folder / "sub").mkdir(parents=True)
        for name in ("a", "b", "sub/c"):
            (folder / f"{name}{suffix}").write_text(line.format(f"{folder.name} {name}"), encoding="utf-8")
    return first, second


def stored_sources(store: KnowledgeStore, collection: str, root: Path) -> list[str]:
    got = store.client().get_collection(collection, embedding_function=None).get(include=["metadatas"])
    return sorted(str(Path(m["source"]).relative_to(root.resolve())) for m in got["metadatas"])


@pytest.mark.parametrize("kind", ["documents", "examples"])
async def test_reingesting_one_directory_reads_nothing_of_another(knowledge: Knowledge, tmp_path: Path,
                                                                  kind: str) -> None:
    # Withdrawing the records of files deleted from a directory read the metadata of every record of the collection
    # whose file this run had not read: all of its other directories, in one Chroma get, on every re-ingest.
    if kind == "documents":
        first, second = two_directories(tmp_path, ".txt", "The {} file says apples are red.\n")

        async def run(store: KnowledgeStore, folder: Path) -> int:
            return (await aingest(store, [folder], collection=collection)).removed
    else:
        first, second = two_directories(tmp_path, ".jsonl", '{{"input": "What does {} say?", "output": "red"}}\n')

        async def run(store: KnowledgeStore, folder: Path) -> int:
            return (await aload_examples(store, [folder], collection=collection)).removed
    store, collection = knowledge.store(), knowledge.name(f"dirs-{kind[:3]}")
    await run(store, first)
    await run(store, second)
    suffix = ".txt" if kind == "documents" else ".jsonl"
    (first / "sub" / f"c{suffix}").unlink()
    seen = reads(store)
    assert await run(store, first) == 1
    assert seen and all(Path(s).is_relative_to(first) for s in seen), seen
    assert stored_sources(store, collection, tmp_path) == sorted(
        f"{f}/{n}{suffix}" for f in ("first", "second") for n in ("a", "b", "sub/c") if (f, n) != ("first", "sub/c"))
    seen.clear()
    (second / f"b{suffix}").unlink()
    assert await run(store, second) == 1 and all(Path(s).is_relative_to(second) for s in seen), seen


async def test_a_collection_written_before_directory_keys_gets_them_once(knowledge: Knowledge, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A collection genroute wrote before records held their directories: the first re-ingest gives every record its
    # keys (page by page: 2 a page here, so that later pages are read after earlier ones were written) and marks the
    # collection, so later ones read only their own directory.
    monkeypatch.setattr(record_dirs, "PAGE", 2)
    monkeypatch.setattr(records, "PAGE", 2)
    first, second = two_directories(tmp_path, ".txt", "The {} file says apples are red.\n")
    store, collection = knowledge.store(), knowledge.name("old-dirs")
    await aingest(store, [first], collection=collection)
    await aingest(store, [second], collection=collection)
    col = store.client().get_collection(collection, embedding_function=None)
    got = col.get(include=["metadatas", "documents", "embeddings"])
    old = [{k: v for k, v in m.items() if not k.startswith(DIR_PREFIX)} for m in got["metadatas"]]
    await store.delete_collection(collection)
    unmarked = {k: v for k, v in collection_metadata("documents", store.embedder).items() if k != DIR_KEYS}
    made = store.client().create_collection(collection, configuration={"hnsw": {"space": "cosine"}},
                                            metadata=unmarked, embedding_function=None)
    made.add(ids=got["ids"], documents=got["documents"], embeddings=got["embeddings"], metadatas=old)
    (first / "a.txt").unlink()
    fresh = knowledge.store()
    seen = reads(fresh)
    assert (await aingest(fresh, [first], collection=collection)).removed == 1
    assert any(Path(s).is_relative_to(second) for s in seen)  # the one backfill reads the whole collection
    now = store.client().get_collection(collection, embedding_function=None)
    assert now.metadata[DIR_KEYS] == 1
    metas = now.get(include=["metadatas"])["metadatas"]
    assert len(metas) == 5 and all(dir_keys(m["source"]).items() <= m.items() for m in metas)
    seen.clear()
    (second / "a.txt").unlink()
    assert (await aingest(fresh, [second], collection=collection)).removed == 1
    assert seen and all(Path(s).is_relative_to(second) for s in seen), seen
