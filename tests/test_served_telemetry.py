"""Which chunks or examples served a request, on its spans without content capture: RAG's chunk ids and ICL's example
ids. Real Chroma, the loopback Gemini server and the real OTel SDK (InMemorySpanExporter)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.errors import ConfigError
from genroute.knowledge.chunking import stored_chunk_id
from genroute.knowledge.examples import example_id
from genroute.testing import GeminiTestServer
from genroute.testing.replies import field_of

from .chroma_fixtures import Knowledge, chroma_server, knowledge  # noqa: F401 - fixtures
from .conftest import Otel, gemini_config
from .test_icl import EXAMPLES, loaded
from .test_icl import router as icl_router
from .test_rag import DOCS, ingest_docs
from .test_rag import router as rag_router

_HASH = re.compile(r"[0-9a-f]{32}")


def _texts(span: Any) -> str:
    """Every attribute value of ``span`` as one string, to look for content in."""
    return repr(dict(span.attributes))


async def test_rag_records_the_ids_of_the_chunks_it_put_in_the_prompt_without_content_capture(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge, tmp_path: Path) -> None:
    # Which chunks served a request was on its spans only with content capture (gen_ai.retrieval.documents): an
    # on-call engineer could not tell what the model was shown. The packed chunks' ids are always on the retrieval
    # span now; they are hashes of each chunk's source and text, and the texts stay off the spans.
    collection = knowledge.name("rag")
    paths = await ingest_docs(knowledge, tmp_path, collection)
    async with rag_router(gemini_server, otel, knowledge, collection=collection, k=3, max_distance=None) as r:
        result = await r.agenerate("When was the Zorblax fusion reactor commissioned?")
    (span,) = otel.spans("retrieval")
    ids = span.attributes["genroute.rag.chunk_ids"]
    assert list(ids) == [c.chunk_id for c in result.citations] and len(ids) >= 1  # what the prompt held, in order
    assert ids[0] == stored_chunk_id(str(paths["reactor.txt"]), DOCS["reactor.txt"])
    assert all(_HASH.fullmatch(i) for i in ids)
    assert "gen_ai.retrieval.documents" not in span.attributes
    for s in otel.spans():
        assert "Zorblax fusion reactor in Tromsø" not in _texts(s)  # no chunk text anywhere


async def test_rag_records_no_chunk_when_none_was_close_enough(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge, tmp_path: Path) -> None:
    collection = knowledge.name("rag")
    await ingest_docs(knowledge, tmp_path, collection)
    async with rag_router(gemini_server, otel, knowledge, collection=collection, k=3, max_distance=0.0001,
                          on_no_context="answer") as r:
        await r.agenerate("Something unrelated to every document")
    (span,) = otel.spans("retrieval")
    assert span.attributes["genroute.retrieval.returned"] == 3
    assert list(span.attributes["genroute.rag.chunk_ids"]) == []


async def test_icl_records_the_ids_of_the_examples_it_showed_in_prompt_order(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge, tmp_path: Path) -> None:
    collection, examples = await loaded(knowledge, tmp_path)
    async with icl_router(gemini_server, otel, knowledge, collection=collection, k=3, format="text") as r:
        await r.agenerate("my new card never arrived")
    nearest = await examples.select("my new card never arrived", strategy="knn", k=3)
    (span,) = otel.spans("retrieval")
    ids = list(span.attributes["genroute.icl.example_ids"])
    assert ids == [e.id for e in reversed(nearest)]  # nearest_last: the prompt's order
    assert ids == [example_id(e.input, e.output, e.label) for e in reversed(nearest)]  # content hashes
    prompt = field_of(gemini_server.requests[0].body, "contents")[0]["parts"][0]["text"]
    assert all(e.input in prompt for e in nearest)
    for s in otel.spans():
        assert not any(text in _texts(s) for text, _ in EXAMPLES)  # no example text anywhere


async def test_icl_records_only_the_examples_that_fit_its_token_budget(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge, tmp_path: Path) -> None:
    collection, examples = await loaded(knowledge, tmp_path)
    async with icl_router(gemini_server, otel, knowledge, collection=collection, k=6, format="text",
                          example_tokens=30, order="nearest_first") as r:
        await r.agenerate("my new card never arrived")
    (span,) = otel.spans("retrieval")
    ids = list(span.attributes["genroute.icl.example_ids"])
    assert span.attributes["genroute.retrieval.returned"] == 6 and 1 <= len(ids) < 6
    prompt = field_of(gemini_server.requests[0].body, "contents")[0]["parts"][0]["text"]
    shown = [e for e in await examples.select("my new card never arrived", strategy="knn", k=6) if e.input in prompt]
    assert ids == [e.id for e in shown]


@pytest.mark.parametrize("selector", ["fixed", "random"])
async def test_icl_without_a_query_records_the_ids_of_the_examples_it_showed(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge, tmp_path: Path, selector: str) -> None:
    # A fixed or random selector queries nothing, so it has no retrieval span, and which examples its prompt held was
    # on no span at all. Its own span (genroute.icl.examples) names them, in the prompt's order, as ids.
    collection, examples = await loaded(knowledge, tmp_path)
    async with icl_router(gemini_server, otel, knowledge, collection=collection, k=4, format="text",
                          selector=selector, seed=7) as r:
        await r.agenerate("my new card never arrived")
    assert otel.spans("retrieval") == []  # still no query
    (span,) = otel.spans("genroute.icl.examples")
    (root,) = otel.spans("genroute.generate")
    assert span.parent.span_id == root.context.span_id
    assert span.attributes["genroute.icl.selector"] == selector
    assert span.attributes["gen_ai.data_source.id"] == collection
    ids = list(span.attributes["genroute.icl.example_ids"])
    chosen = await examples.select("my new card never arrived", strategy=selector, k=4, seed=7)
    assert ids == [e.id for e in chosen] and len(ids) == 4  # fixed and random keep their own order
    assert ids == [example_id(e.input, e.output, e.label) for e in chosen]
    prompt = field_of(gemini_server.requests[0].body, "contents")[0]["parts"][0]["text"]
    assert [prompt.index(e.input) for e in chosen] == sorted(prompt.index(e.input) for e in chosen)
    assert sum(text in prompt for text, _ in EXAMPLES) == 4
    for s in otel.spans():
        assert not any(text in _texts(s) for text, _ in EXAMPLES)  # no example text anywhere


async def test_icl_without_a_query_records_its_error_when_the_examples_cannot_be_read(
        gemini_server: GeminiTestServer, otel: Otel, knowledge: Knowledge) -> None:
    empty = knowledge.name("empty")
    await knowledge.store().collection(empty, kind="examples", create=True)
    async with icl_router(gemini_server, otel, knowledge, collection=empty, selector="fixed") as r:
        with pytest.raises(ConfigError):
            await r.agenerate("my new card never arrived")
    (span,) = otel.spans("genroute.icl.examples")
    assert span.attributes["error.type"] == "ConfigError" and "genroute.icl.example_ids" not in span.attributes
    assert gemini_server.requests == []


#: An id of 10 MB, as a collection written by other means than genroute's may hold (Chroma takes it).
_HUGE = "crm-export/" + "x" * 10_000_000
_UUID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"


def _recorded(ids: Any) -> list[str]:
    return [i if len(i) <= 64 else f"{i[:64]}…[genroute: {len(i) - 64} more chars cut]" for i in ids]


async def test_ids_a_foreign_collection_gave_are_recorded_cut_and_marked_as_cut(
        gemini_server: GeminiTestServer, otel: Otel, tmp_path: Path) -> None:
    """A collection written by other means holds the ids its writer gave, recorded as given: a 10 MB id went whole
    on the retrieval span (its chunk ids, and with content capture its documents) and on the ICL spans, and out to
    the exporter with every request it served. Each id is now cut to 64 characters (genroute's own are 32; a UUID
    stays whole) with the marker a cut captured text ends with; the result's citations keep the id whole."""
    knowledge = Knowledge("embedded", {"path": str(tmp_path / "chroma")})
    store = knowledge.store()
    docs, rag, icl = [text for text, _ in EXAMPLES[:2]], knowledge.name("foreign-rag"), knowledge.name("foreign-icl")
    vectors = store.embedder.embed(docs)
    store.client().create_collection(rag, embedding_function=None).add(
        ids=[_HUGE, _UUID], embeddings=vectors, documents=docs, metadatas=[{"source": "crm"}, {"source": "wiki"}])
    store.client().create_collection(icl, embedding_function=None).add(
        ids=[_HUGE, _UUID], embeddings=vectors, documents=docs,
        metadatas=[{"output": "card_arrival", "label": "card_arrival"}] * 2)
    config = gemini_config(gemini_server)
    config["knowledge"] = knowledge.config
    config["backends"] = {"rag": {"kind": "rag", "engine": "gemini", "model": "gemini-2.5-flash", "collection": rag,
                                  "k": 2, "max_distance": None},
                          "knn": {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash", "collection": icl,
                                  "k": 2},
                          "fixed": {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash",
                                    "collection": icl, "k": 2, "selector": "fixed"}}
    config["policy"] = {"kind": "static", "backend": "rag"}
    async with Router.from_config(config, capture_content=True, **otel.providers) as r:
        result = await r.agenerate("my card never arrived")
        for backend in ("knn", "fixed"):
            await r.agenerate("my card never arrived", backend=backend)
    assert {c.chunk_id for c in result.citations} == {_HUGE, _UUID}  # the caller's: whole, to read them back
    rag_span, knn_span = otel.spans("retrieval")
    (fixed_span,) = otel.spans("genroute.icl.examples")
    chunk_ids = list(rag_span.attributes["genroute.rag.chunk_ids"])
    assert chunk_ids == _recorded(c.chunk_id for c in result.citations)
    assert _UUID in chunk_ids and f"{_HUGE[:64]}…[genroute: {len(_HUGE) - 64} more chars cut]" in chunk_ids
    for span, name in ((knn_span, "genroute.icl.example_ids"), (fixed_span, "genroute.icl.example_ids")):
        ids = list(span.attributes[name])
        assert sorted(ids) == sorted(_recorded([_HUGE, _UUID])), ids
    documents = rag_span.attributes["gen_ai.retrieval.documents"]
    assert _UUID in documents and "more chars cut" in documents and len(documents) < 500
    assert max(len(_texts(s)) for s in otel.spans()) < 20_000  # nowhere whole
