"""A refresh of a ``fixed``/``random`` ICL backend reads its example pool from Chroma only when the store may have
changed: an embedded store's database file (``StoreCollections.place_mark``) unchanged since the last read is read no
more; a write by anyone (here a raw Chroma client, which this process's write stamps do not see, as another
process's) is read at the next refresh. A Chroma server gives no such mark: read on every refresh, as before.

Real Chroma, embedded and server (``tests/chroma_fixtures.py``); reads counted by ``ExampleStore.pool_reads``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from genroute.knowledge import aload_examples
from genroute.knowledge.examples import example_id
from genroute.knowledge.store_collections import SETTLED_S
from genroute.testing import GeminiTestServer
from genroute.testing.replies import field_of

from genroute import BackendUnavailable

from .chroma_fixtures import ChromaFaultProxy, ChromaServer, Knowledge, chroma_server, knowledge  # noqa: F401
from .conftest import Otel
from .test_icl import EXAMPLES, CountedReads, router, write_examples


@pytest.mark.parametrize("selector", ["fixed", "random"])
async def test_a_refresh_reads_the_example_pool_again_only_after_a_write(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge, tmp_path: Path, selector: str) -> None:
    collection = knowledge.name("unchanged")
    await aload_examples(knowledge.store(), [write_examples(tmp_path / "ex.jsonl", EXAMPLES[:4])],
                         collection=collection)
    embedded = knowledge.mode == "embedded"

    def shown() -> set[str]:
        turns = field_of(gemini_server.requests[-1].body, "contents")
        return {t["parts"][0]["text"].strip() for t in turns[:-1] if t["role"] == "model"}

    def relabel_elsewhere(text: str, label: str, output: str) -> None:  # a raw client: no write stamp of this process
        raw = knowledge.store().collection_sync(collection, kind="examples")
        rid = example_id(text, label, label)
        meta = raw.get(ids=[rid], include=["metadatas"])["metadatas"][0]
        raw.update(ids=[rid], metadatas=[{**meta, "output": output}])

    async def refreshes_read() -> int:
        before = examples.pool_reads
        await r.arefresh()
        return examples.pool_reads - before

    async with router(gemini_server, otel, knowledge, collection=collection, selector=selector, k=4) as r:
        await r.agenerate("unrelated question")
        examples = r.backends["icl"].examples
        assert examples.pool_reads == 1
        await asyncio.sleep(SETTLED_S + 0.2)   # the load's writes settled
        await r.arefresh()   # reads the pool again if it was read while the file was fresh
        assert await refreshes_read() == (0 if embedded else 1)   # unchanged since: not read (a server: read)
        assert await refreshes_read() == (0 if embedded else 1)
        assert r.catalogue["icl"].facts["example_count"] == 4   # counted from the pool kept

        relabel_elsewhere(*EXAMPLES[0], "card_lost")   # one metadata value: the file keeps its size
        await asyncio.sleep(SETTLED_S + 0.2)
        assert await refreshes_read() == 1   # the file's stamp changed
        assert await refreshes_read() == (0 if embedded else 1)
        await r.agenerate("unrelated question")
        assert "card_lost" in shown()

        relabel_elsewhere(*EXAMPLES[1], "card_late")
        assert await refreshes_read() == 1   # just written: a stamp that new is not trusted
        await r.agenerate("unrelated question")
        assert "card_late" in shown()
        assert r.catalogue["icl"].facts["example_count"] == 4


async def test_a_refresh_of_a_knn_backend_reads_its_example_tags_again_only_after_a_write(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge, tmp_path: Path) -> None:
    # knn keeps no pool: the facts (example count per task) read every example's metadata at each refresh.
    collection = knowledge.name("knn-unchanged")
    await aload_examples(knowledge.store(), [write_examples(tmp_path / "ex.jsonl", EXAMPLES[:4])],
                         collection=collection)
    embedded = knowledge.mode == "embedded"
    async with router(gemini_server, otel, knowledge, collection=collection, selector="knn", k=2) as r:
        store = r.resources.knowledge
        counted = CountedReads(store.collection_sync(collection, kind="examples"))
        store._collections[collection] = counted  # the collection object the store hands its readers
        await asyncio.sleep(SETTLED_S + 0.2)
        await r.arefresh()   # read if the facts at the build were read while the file was fresh
        before = counted.reads
        await r.arefresh()
        await r.arefresh()
        assert counted.reads == before + (0 if embedded else 2)
        assert r.catalogue["icl"].facts["example_count"] == 4

        counted.collection.delete(ids=[example_id(*EXAMPLES[0], EXAMPLES[0][1])])   # a raw client's write
        await asyncio.sleep(SETTLED_S + 0.2)
        before = counted.reads
        await r.arefresh()
        assert counted.reads == before + 1 and r.catalogue["icl"].facts["example_count"] == 3


async def test_a_refresh_counts_the_examples_its_own_reload_found_not_an_earlier_reloads_pool(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge, tmp_path: Path) -> None:
    # ``reload`` keeps the pool it read for the facts that follow it in a refresh (``take_reloaded``). A pool no facts
    # took (a refresh stopped between the two: another backend's reload raised, or it was cancelled) stayed kept, and
    # the next refresh whose reload found the collection empty (which forgets the pool instead of keeping one)
    # counted that old pool: the catalogue said 4 examples, the collection had none.
    collection = knowledge.name("stale-facts")
    folder = tmp_path / "examples"
    folder.mkdir()
    await aload_examples(knowledge.store(), [write_examples(folder / "ex.jsonl", EXAMPLES[:4])],
                         collection=collection)
    async with router(gemini_server, otel, knowledge, collection=collection, selector="fixed", k=2) as r:
        await r.agenerate("unrelated question")  # the pool is read
        await r.backends["icl"].reload()  # a refresh's reload whose facts were never counted
        (folder / "ex.jsonl").unlink()  # the directory loaded again: its examples withdrawn
        report = await aload_examples(knowledge.store(), [folder], collection=collection)
        assert report.removed == 4
        await r.arefresh()
        assert r.catalogue["icl"].facts["example_count"] == 0
        assert r.catalogue["icl"].facts["example_counts"] == {}


@pytest.mark.chroma_server
@pytest.mark.parametrize("selector", ["knn", "fixed"])
async def test_a_refresh_while_the_chroma_server_is_down_keeps_the_examples_counted_and_says_so(
        gemini_server: GeminiTestServer, otel: Otel, chroma_server: ChromaServer, tmp_path: Path,
        selector: str) -> None:
    # A refresh while the Chroma server could not be reached counted 0 examples and raised nothing: the catalogue
    # told the policy (a ladder's ICL step) the task had no examples until a later refresh, and the scheduled refresh
    # logged nothing. Now the reload raises the store's error, and the backend keeps the facts it had.
    proxy = ChromaFaultProxy(chroma_server)  # the router's way to the server
    knowledge = Knowledge("server", {"host": "127.0.0.1", "port": proxy.port})
    collection = knowledge.name("down")
    await aload_examples(knowledge.store(), [write_examples(tmp_path / "ex.jsonl", EXAMPLES[:4])],
                         collection=collection)
    try:
        async with router(gemini_server, otel, knowledge, collection=collection, selector=selector, k=2) as r:
            await r.agenerate("unrelated question")
            before = r.catalogue["icl"].facts
            assert before["example_count"] == 4
            for _ in range(20):  # the server is down: every call answered 503 (as unreachable, a BackendUnavailable)
                proxy.fail(503, {"error": "Unavailable", "message": "down for maintenance"})
            with pytest.raises(BackendUnavailable) as raised:
                await r.arefresh()
            proxy.faults.clear()
            assert any("['icl']" in note for note in raised.value.__notes__)
            assert r.catalogue["icl"].facts == before
    finally:
        proxy.close()


@pytest.mark.chroma_server
async def test_a_router_built_while_the_chroma_server_is_down_says_its_examples_are_uncounted(
        gemini_server: GeminiTestServer, otel: Otel, chroma_server: ChromaServer, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    # A replica started while the Chroma server was down counted 0 examples without a word: a ladder policy then
    # never chose its ICL step, and nothing in the logs said why. Now a warning names the backend and the error, and
    # a refresh once the server answers counts them.
    proxy = ChromaFaultProxy(chroma_server)
    knowledge = Knowledge("server", {"host": "127.0.0.1", "port": proxy.port})
    collection = knowledge.name("down-at-start")
    await aload_examples(knowledge.store(), [write_examples(tmp_path / "ex.jsonl", EXAMPLES[:4])],
                         collection=collection)
    try:
        for _ in range(20):  # every call answered 503, as a server down
            proxy.fail(503, {"error": "Unavailable", "message": "down for maintenance"})
        with caplog.at_level(logging.WARNING, logger="genroute.backends.icl"):
            r = router(gemini_server, otel, knowledge, collection=collection, selector="knn", k=2)
        async with r:
            assert r.catalogue["icl"].facts["example_count"] == 0
            (warning,) = [m.getMessage() for m in caplog.records if m.name == "genroute.backends.icl"]
            assert "'icl' counts 0 examples until a refresh" in warning and "BackendUnavailable" in warning
            proxy.faults.clear()  # up again
            await r.arefresh()
            assert r.catalogue["icl"].facts["example_count"] == 4
    finally:
        proxy.close()
