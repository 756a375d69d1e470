"""Ingesting files as they are on disk: emptied files."""

from __future__ import annotations

from pathlib import Path

import pytest

from genroute.errors import UsageError
from genroute.knowledge import aingest

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
