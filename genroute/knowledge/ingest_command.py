"""What ``genroute ingest PATH... --collection NAME`` runs: documents (RAG) or examples (ICL) into a store.

Apart from ``ingest`` so that example loading (which reuses ingestion's pieces) and ingestion do not import
each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from genroute.errors import UsageError
from genroute.knowledge.examples import aload_examples
from genroute.knowledge.ingest import IngestReport, ingest
from genroute.knowledge.store import build_store
from genroute.runtime.portal import run_sync

if TYPE_CHECKING:
    from genroute.engines.base import Engine
    from genroute.runtime.pricing import Pricing


def ingest_paths(
    paths: list[str],
    collection: str,
    *,
    store_config: Mapping[str, Any] | None = None,
    engines: Mapping[str, Engine] | None = None,
    kind: Literal["documents", "examples"] = "documents",
    chunk_tokens: int | None = None,
    overlap: int | None = None,
    text_field: str | None = None,
    progress: bool = True,
    pricing: Pricing | None = None,
) -> IngestReport:
    """What ``genroute ingest PATH... --collection NAME`` runs: build the store from config, ingest, report
    (with what the embeddings cost, priced from ``pricing``). ``chunk_tokens`` (default 200), ``overlap`` (40) and
    ``text_field`` ("text") are for documents; given with ``kind="examples"`` they are a ``UsageError``."""
    chunking = {"chunk_tokens": chunk_tokens, "overlap": overlap, "text_field": text_field}
    if kind not in ("documents", "examples"):  # anything else was ingested as documents
        raise UsageError(f"must be 'documents' or 'examples', not {kind!r:.40}", field="kind")
    if kind == "examples":
        for name, value in chunking.items():
            if value is not None:  # examples are stored whole, one a line: it would be ignored
                raise UsageError("is for documents: examples are stored whole, one JSONL line each with its input "
                                 "and output", field=name)
    store = build_store(store_config, engines=engines or {}, pricing=pricing)
    if kind == "examples":
        return run_sync(aload_examples(store, paths, collection=collection, progress=progress), "ingest_paths",
                        instead="await aload_examples()")
    given = {name: value for name, value in chunking.items() if value is not None}
    return ingest(store, paths, collection=collection, progress=progress, **given)
