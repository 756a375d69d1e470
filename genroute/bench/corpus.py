"""A benchmark's RAG corpus (``genroute bench --corpus``): checked before the run writes anything, then ingested
into the router's knowledge store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from genroute.errors import UsageError

if TYPE_CHECKING:
    from genroute.router.router import Router


def corpus_store(router: Router, corpus: str | Path, collection: str | None) -> Any:
    """The knowledge store a RAG corpus goes into; ``UsageError`` unless ``corpus`` is a file, ``collection`` is
    named and the config has a store (checked before a run writes anything)."""
    if not Path(corpus).is_file():
        raise UsageError(f"corpus {str(corpus)!r} does not exist", field="corpus")
    if collection is None:
        raise UsageError("--corpus needs --collection (the RAG backend's collection)", field="collection")
    if router.resources.knowledge is None:
        raise UsageError("the config has no `knowledge` section to ingest the corpus into", field="corpus")
    return router.resources.knowledge


async def ingest_corpus(router: Router, corpus: str | Path, collection: str | None) -> None:
    """Ingest a RAG corpus JSONL into the router's knowledge store (already stored chunks are skipped)."""
    from genroute.knowledge.ingest import aingest

    store = corpus_store(router, corpus, collection)
    assert collection is not None  # corpus_store refuses None
    try:
        await aingest(store, [Path(corpus)], collection=collection)
    except UsageError as exc:
        if exc.field != "text_field":
            raise
        # The bench has no --text-field: named as it was, the error pointed at an option the user cannot give.
        raise UsageError(f"{exc.message}; --corpus reads each record's `text`: for another field, ingest the corpus "
                         f"with `genroute ingest {corpus} --collection {collection} --text-field FIELD --config ...` "
                         "and run the bench without --corpus", field="corpus") from None
