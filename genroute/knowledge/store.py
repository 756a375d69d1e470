"""The knowledge store: Chroma collections of documents (RAG) and examples (ICL), opened lazily.

Embedded ``PersistentClient`` by default, ``HttpClient`` for a ``chroma run`` server. genroute embeds
texts itself (so Gemini and local embedders work alike and each call gets an ``embeddings`` span) and
hands Chroma vectors; a collection records which embedder filled it, and reopening it with another
one is a ``ConfigError`` rather than silently meaningless distances. Chroma is blocking: every call
runs in a worker thread, and ``import chromadb`` (~2 s) happens on first use, not at import.

Chroma failures leave as genroute errors: unreachable, silent past ``timeout_s``, overloaded or failing (429/5xx) →
``BackendUnavailable`` (a policy can fall through); refused credentials → ``ConfigError``; anything
else Chroma rejects (bad arguments, wrong dimensions, batch too large) → ``UsageError``.

This module holds the records' reads and writes; opening the client and the collections is
``genroute.knowledge.store_collections``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genroute.bounds import is_whole
from genroute.errors import ConfigError, UsageError
from genroute.knowledge.store_collections import Kind, StoreCollections
from genroute.knowledge.store_config import (  # noqa: F401 - StoreConfig: re-exported
    StoreConfig,
    check_place,
    gemini_embedder,
    no_place,
    parse_store_config,
)

if TYPE_CHECKING:
    from opentelemetry import trace

    from genroute.engines.base import Engine
    from genroute.knowledge.routes import RouteSync
    from genroute.runtime.embeddings import RequestEmbeddings
    from genroute.runtime.resources import KnowledgeBase
    from genroute.runtime.pricing import Pricing


@dataclass(frozen=True)
class Hit:
    """One retrieved record: id, text, metadata and cosine distance (``score`` = 1 - distance)."""

    id: str
    text: str
    metadata: dict[str, Any]
    distance: float
    embedding: list[float] | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        """Cosine similarity in [-1, 1]; higher is closer."""
        return 1.0 - self.distance


def build_store(raw: Mapping[str, Any] | None, *, engines: Mapping[str, Engine],
                field: str = "knowledge", pricing: Pricing | None = None) -> KnowledgeStore:
    """A ``KnowledgeStore`` from the config section ``raw`` (nothing is opened yet); a Gemini embedder's
    calls are priced from ``pricing`` (default: the built-in list prices), which must know its model."""
    config = parse_store_config(raw, field=field)
    embedder = gemini_embedder(config, engines=engines, field=field, pricing=pricing)
    if config.path is None and config.host is None:
        # Embedded Chroma is not safe across processes: one shared default directory would be a trap.
        raise no_place(field)
    return KnowledgeStore(config, embedder=embedder)  # which checks an embedded store's place


class KnowledgeStore(StoreCollections):
    """Named Chroma collections with genroute's embedder; async API, Chroma calls in worker threads."""

    @cached_property
    def routes(self) -> RouteSync:
        """Route collections policies asked for; the router has them written (``routes.sync()``) once built."""
        from genroute.knowledge.routes import RouteSync

        return RouteSync(self)

    def check_writable(self) -> None:
        """``ConfigError`` naming ``knowledge.path`` unless an embedded store's records can be written (each
        collection's directory and files too): asked before an ingest, an example load or a route sync writes, which
        would otherwise fail part-way, or only at Chroma's next compaction. A server's store is its own business."""
        if self.config.path is not None:
            check_place(self.config.path, writes=True)

    # -- records -----------------------------------------------------------------------------

    async def existing_ids(self, name: str, ids: Sequence[str], *, kind: Kind) -> set[str]:
        """Which of ``ids`` are already stored."""
        got = await self._aon(name, lambda col: col.get(ids=list(ids), include=[]), kind=kind, create=True)
        return set(got["ids"])

    async def ids_where(self, name: str, where: Mapping[str, Any], *, kind: Kind) -> set[str]:
        """The ids of the records whose metadata matches ``where``."""
        return set(await self.metadatas_where(name, where, kind=kind))

    async def metadatas_where(self, name: str, where: Mapping[str, Any], *, kind: Kind) -> dict[str, dict[str, Any]]:
        """Id -> metadata of the records whose metadata matches ``where``."""
        got = await self._aon(name, lambda col: col.get(where=dict(where), include=["metadatas"]), kind=kind)
        return {i: dict(m or {}) for i, m in zip(got["ids"], got["metadatas"] or [None] * len(got["ids"]))}

    async def metadata_pages(self, name: str, where: Mapping[str, Any] | None, *, kind: Kind,
                             size: int) -> AsyncIterator[dict[str, dict[str, Any]]]:
        """Id -> metadata of the records matching ``where`` (all, if ``None``), ``size`` records a page, so that no
        more than a page is held at once. Records deleted while the pages are read may shift the later ones."""
        def page(at: int) -> Callable[[Any], Any]:
            return lambda col: col.get(where=dict(where) if where else None, include=["metadatas"], limit=size,
                                       offset=at)

        offset = 0
        while True:
            got = await self._aon(name, page(offset), kind=kind)
            ids = got["ids"]
            if ids:
                yield {i: dict(m or {}) for i, m in zip(ids, got["metadatas"] or [None] * len(ids))}
            if len(ids) < size:
                return
            offset += size

    async def update_metadatas(self, name: str, ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]], *,
                               kind: Kind) -> None:
        """Set the given metadata keys of stored ``ids`` in batches Chroma accepts (other keys, texts and vectors
        stay; ids no longer stored are skipped)."""
        if not ids:
            return
        cleaned, ids = [clean_metadata(m) for m in metadatas], list(ids)
        size = await self._run(self.max_batch_size)  # a file re-read may keep more records than one write takes
        try:
            for start in range(0, len(ids), size):
                batch = slice(start, start + size)
                await self._aon(name, lambda col: col.update(ids=ids[batch], metadatas=cleaned[batch]), kind=kind)
        finally:
            self.wrote(name)

    def delete_sync(self, name: str, ids: Sequence[str], *, kind: Kind, where: Mapping[str, Any] | None = None) -> None:
        """Delete ``ids`` (those also matching ``where``, if given) in batches Chroma accepts (blocking)."""
        _check_batch(ids, ids, ids, None)
        if where is not None and not isinstance(where, Mapping):
            raise UsageError(f"must be a mapping (a Chroma where filter), not {type(where).__name__}", field="where")
        if not ids:
            return
        size, ids = self.max_batch_size(), list(ids)
        try:
            for start in range(0, len(ids), size):
                batch = ids[start:start + size]
                self._guard(self._on, name, lambda col: col.delete(ids=batch, where=dict(where) if where else None),
                            kind=kind)
        finally:
            self.wrote(name)

    async def delete(self, name: str, ids: Sequence[str], *, kind: Kind, where: Mapping[str, Any] | None = None) -> None:
        """Delete ``ids`` (those also matching ``where``, if given) in batches Chroma accepts."""
        await self._run(self.delete_sync, name, ids, kind=kind, where=where)

    async def upsert(self, name: str, ids: Sequence[str], texts: Sequence[str],
                     metadatas: Sequence[Mapping[str, Any]], *, kind: Kind,
                     embeddings: Sequence[Sequence[float]] | None = None) -> None:
        """Embed (unless given) and upsert one batch; Chroma writes a batch as a whole."""
        _check_batch(ids, texts, metadatas, embeddings)
        if not ids:
            return
        await self.collection(name, kind=kind, create=True)  # made and checked before paying for embeddings
        if embeddings is not None:
            vectors = list(embeddings)
        else:
            from genroute.knowledge.embedder_base import checked_vectors

            vectors = checked_vectors(self.embedder, list(texts), await self.embedder.aembed(list(texts)))
        cleaned = [clean_metadata(m) for m in metadatas]
        try:
            await self._aon(name, lambda col: col.upsert(ids=list(ids), documents=list(texts), embeddings=vectors,
                                                         metadatas=cleaned), kind=kind, create=True)
        finally:
            self.wrote(name)

    async def query(self, name: str, text: str, *, kind: Kind, k: int, where: Mapping[str, Any] | None = None,
                    include_embeddings: bool = False, field: str = "collection",
                    tracer: trace.Tracer | None = None, embeddings: RequestEmbeddings | None = None) -> list[Hit]:
        """The ``k`` records nearest to ``text`` (embedded with this store's embedder, its span to ``tracer``; or the
        vector its request already made, ``embeddings``)."""
        from genroute.knowledge.embedder_base import aembed_text

        _check_query(k, where, field)
        await self.collection(name, kind=kind, field=field)  # an unknown collection fails before embedding
        vector = await aembed_text(self.embedder, text, tracer=tracer, embeddings=embeddings)
        return await self.query_vector(name, vector, kind=kind, k=k, where=where,
                                       include_embeddings=include_embeddings, field=field)

    async def query_vector(self, name: str, vector: Sequence[float], *, kind: Kind, k: int,
                           where: Mapping[str, Any] | None = None, include_embeddings: bool = False,
                           field: str = "collection") -> list[Hit]:
        """The ``k`` records nearest to ``vector``."""
        _check_query(k, where, field)
        include = ["documents", "metadatas", "distances"] + (["embeddings"] if include_embeddings else [])

        def run(col: Any) -> Any:
            try:
                return col.query(query_embeddings=[list(vector)], n_results=k, where=dict(where) if where else None,
                                 include=include)
            except ValueError as exc:  # Chroma validates filters with ValueError
                raise UsageError(str(exc), field=_sibling(field, "where")) from exc

        res = await self._aon(name, run, kind=kind, field=field)
        embeds = res.get("embeddings")
        return [
            Hit(id=i, text=doc or "", metadata=dict(meta or {}), distance=float(dist),
                embedding=[float(x) for x in embeds[0][n]] if include_embeddings and embeds is not None else None)
            for n, (i, doc, meta, dist) in enumerate(zip(res["ids"][0], res["documents"][0],
                                                         res["metadatas"][0], res["distances"][0]))
        ]

    async def get_all(self, name: str, *, kind: Kind, include_embeddings: bool = False,
                      field: str = "collection") -> list[Hit]:
        """Every record of ``name`` (distance 0); for small collections such as ICL examples."""
        include = ["documents", "metadatas"] + (["embeddings"] if include_embeddings else [])
        res = await self._aon(name, lambda col: col.get(include=include), kind=kind, field=field)
        embeds = res.get("embeddings")
        return [
            Hit(id=i, text=doc or "", metadata=dict(meta or {}), distance=0.0,
                embedding=[float(x) for x in embeds[n]] if include_embeddings and embeds is not None else None)
            for n, (i, doc, meta) in enumerate(zip(res["ids"], res["documents"], res["metadatas"]))
        ]


def require_store(knowledge: KnowledgeBase | None, *, who: str) -> KnowledgeStore:
    """The router's knowledge store, which ``who`` (``backend 'docs'``) queries; ``ConfigError`` if there is none."""
    if knowledge is None:
        raise ConfigError(f"{who} needs a `knowledge` section (a Chroma store)", field="knowledge")
    if not isinstance(knowledge, KnowledgeStore):
        raise ConfigError(f"{who} needs a genroute KnowledgeStore, got {type(knowledge).__name__}",
                          field="knowledge")
    return knowledge


def clean_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Chroma accepts str/int/float/bool values only: drop ``None``, JSON-encode the rest."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str | int | float | bool) else json.dumps(value, sort_keys=True)
    return out


def _check_query(k: Any, where: Any, field: str) -> None:
    """``UsageError`` naming ``k`` or ``where`` (beside ``field``) unless ``k`` is a whole number >= 1 and ``where``
    a mapping or None: Chroma's own errors named no field, or the wrong one."""
    if not is_whole(k) or k < 1:
        raise UsageError(f"must be a whole number of records >= 1, got {k!r:.40}", field=_sibling(field, "k"))
    if where is not None and not isinstance(where, Mapping):
        raise UsageError(f"must be a mapping (a Chroma where filter), not {type(where).__name__}",
                         field=_sibling(field, "where"))


def _check_batch(ids: Any, texts: Any, metadatas: Any, embeddings: Any) -> None:
    """``UsageError`` naming the argument unless ``ids``, ``texts``, ``metadatas`` (and ``embeddings``, if given)
    are lists of one length, the ids and texts text: a number was a ``TypeError``, unequal lengths an error
    that named no field."""
    given = {"ids": ids, "texts": texts, "metadatas": metadatas}
    if embeddings is not None:
        given["embeddings"] = embeddings
    for name, value in given.items():  # a numpy array of embeddings is Sized and Iterable, no Sequence
        if isinstance(value, str | bytes | Mapping) or not (isinstance(value, Sized) and isinstance(value, Iterable)):
            raise UsageError(f"must be a list, not {type(value).__name__}", field=name)
        if len(value) != len(ids):
            raise UsageError(f"holds {len(value)} items for {len(ids)} ids", field=name)
    for name in ("ids", "texts"):
        if not all(isinstance(item, str) for item in given[name]):
            raise UsageError("must be a list of text", field=name)


def _sibling(field: str, name: str) -> str:
    """``backends.x.collection`` → ``backends.x.where``."""
    head, dot, _ = field.rpartition(".")
    return f"{head}{dot}{name}"
