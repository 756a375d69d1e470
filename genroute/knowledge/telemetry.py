"""The ``retrieval {collection}`` span (OpenTelemetry GenAI conventions) shared by RAG and ICL, and the
``genroute.icl.examples`` span of an ICL selector that queries nothing (``fixed``, ``random``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from genroute.runtime.telemetry import CAPTURE_MAX_CHARS, clip_captured

if TYPE_CHECKING:
    from opentelemetry import trace

    from genroute.knowledge.store import Hit, KnowledgeStore

#: The most characters of one chunk or example id kept on a span. genroute's own ids are 32 hex digits
#: (``stored_chunk_id``, ``example_id``), and the usual ids other writers give (a UUID, a whole SHA-256) fit too; a
#: collection written by other means may hold an id of any length (Chroma takes a 10 MB one), which went on every span
#: of a request it served, whole.
ID_MAX_CHARS = 64


def recorded_ids(ids: Iterable[str]) -> list[str]:
    """``ids`` as spans record them: each cut to ``ID_MAX_CHARS``, then the marker a cut captured text ends with
    (``clip_captured``). A cut one no longer reads its record back: the result's ``citations`` keep it whole."""
    return [i if len(i) <= ID_MAX_CHARS else clip_captured(i, ID_MAX_CHARS) for i in ids]


@contextmanager
def retrieval_span(tracer: trace.Tracer, store: KnowledgeStore, collection: str, k: int) -> Iterator[trace.Span]:
    """A ``retrieval {collection}`` CLIENT span (GenAI conventions); errors set ``error.type``."""
    from opentelemetry.trace import SpanKind

    attrs: dict[str, Any] = {"gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": collection,
                             "gen_ai.request.top_k": float(k), "gen_ai.request.model": store.embedder.model,
                             "db.system.name": "chroma"}
    if store.config.host is not None:
        attrs["server.address"] = store.config.host
        attrs["server.port"] = store.config.port
    with _failing_span(tracer, f"retrieval {collection}", SpanKind.CLIENT, attrs) as span:
        yield span


@contextmanager
def examples_span(tracer: trace.Tracer, collection: str, selector: str) -> Iterator[trace.Span]:
    """A ``genroute.icl.examples`` INTERNAL span, for a selector that queries nothing (``fixed``, ``random``): no
    retrieval span, whose duration and counts would describe a Chroma query; errors set ``error.type``."""
    from opentelemetry.trace import SpanKind

    attrs = {"gen_ai.data_source.id": collection, "genroute.icl.selector": selector}
    with _failing_span(tracer, "genroute.icl.examples", SpanKind.INTERNAL, attrs) as span:
        yield span


@contextmanager
def _failing_span(tracer: trace.Tracer, name: str, kind: trace.SpanKind, attrs: dict[str, Any]
                  ) -> Iterator[trace.Span]:
    """A current span whose block's error is its ``error.type`` and status (the class name: never its message)."""
    from opentelemetry.trace import StatusCode

    with tracer.start_as_current_span(name, kind=kind, attributes=attrs, record_exception=False,
                                      set_status_on_exception=False) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            span.set_status(StatusCode.ERROR, type(exc).__qualname__)
            raise


def record_hits(span: trace.Span, hits: Sequence[Hit], *, capture: bool, query: str | None = None,
                max_chars: int = CAPTURE_MAX_CHARS) -> None:
    """Returned count and top score on a retrieval span; ids and scores (and ``query``), each text cut to
    ``max_chars``, only when content capture is on."""
    span.set_attribute("genroute.retrieval.returned", len(hits))
    if hits:
        span.set_attribute("genroute.retrieval.top_score", max(h.score for h in hits))
    if capture:
        ids = recorded_ids(h.id for h in hits)
        span.set_attribute("gen_ai.retrieval.documents", clip_captured(
            json.dumps([{"id": i, "score": round(h.score, 6)} for i, h in zip(ids, hits)]), max_chars))
        if query is not None:
            span.set_attribute("gen_ai.retrieval.query.text", clip_captured(query, max_chars))
