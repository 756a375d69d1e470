"""The knowledge store: Chroma collections of documents (RAG) and examples (ICL), opened lazily.

Embedded ``PersistentClient`` by default, ``HttpClient`` for a ``chroma run`` server. genroute embeds
texts itself (so Gemini and local embedders work alike and each call gets an ``embeddings`` span) and
hands Chroma vectors; a collection records which embedder filled it, and reopening it with another
one is a ``ConfigError`` rather than silently meaningless distances. Chroma is blocking: every call
runs in a worker thread, and ``import chromadb`` (~2 s) happens on first use, not at import.

Chroma failures leave as genroute errors: unreachable, silent past ``timeout_s``, overloaded or failing (429/5xx) →
``BackendUnavailable`` (a policy can fall through); refused credentials → ``ConfigError``; anything
else Chroma rejects (bad arguments, wrong dimensions, batch too large) → ``UsageError``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from genroute.errors import BackendUnavailable, ConfigError, GenrouteError, UsageError
from genroute.knowledge.chroma_timeouts import Connecting
from genroute.knowledge.collection_checks import check_collection, check_collection_name, collection_metadata
from genroute.knowledge.store_config import (
    LocalEmbedderSpec,
    StoreConfig,
    gemini_embedder,
    no_place,
    parse_store_config,
)

if TYPE_CHECKING:
    from opentelemetry import trace

    from genroute.engines.base import Engine
    from genroute.knowledge.embedders import Embedder
    from genroute.knowledge.routes import RouteSync
    from genroute.runtime.resources import KnowledgeBase
    from genroute.runtime.pricing import Pricing
    from genroute.runtime.telemetry import Telemetry

T = TypeVar("T")
Kind = Literal["documents", "examples", "routes"]



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
    if config.path is not None and Path(config.path).exists() and not Path(config.path).is_dir():
        # Chroma would fail on the first request instead, as a retryable error naming nothing.
        raise ConfigError(f"{config.path!r} is not a directory: an embedded store keeps its files in one",
                          field=f"{field}.path")
    return KnowledgeStore(config, embedder=embedder)


class KnowledgeStore:
    """Named Chroma collections with genroute's embedder; async API, Chroma calls in worker threads."""

    def __init__(self, config: StoreConfig | None = None, *, embedder: Embedder | None = None) -> None:
        self.config = config or StoreConfig()
        self._embedder = embedder
        self._client_obj: Any = None
        self._collections: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._connecting: Connecting[Any] = Connecting()
        #: Each call's bound when chromadb's HTTP session could not be given a timeout (``chroma_timeouts``).
        self._wait_s: float | None = None

    # -- opening -----------------------------------------------------------------------------

    @cached_property
    def routes(self) -> RouteSync:
        """Route collections policies asked for; the router has them written (``routes.sync()``) once built."""
        from genroute.knowledge.routes import RouteSync

        return RouteSync(self)

    def use_telemetry(self, telemetry: Telemetry) -> None:
        """Record the embedder's duration, token and cost metrics on ``telemetry`` (a router's). The offline
        embedder is one per process for each setting (``_local_embedder``): with several routers alive, its points go
        to the last one built."""
        if self._embedder is not None:
            self._embedder.telemetry = telemetry

    @property
    def embedder(self) -> Embedder:
        """The embedder every collection of this store is filled and queried with."""
        if self._embedder is None:
            spec = self.config.embedder
            assert isinstance(spec, LocalEmbedderSpec)
            self._embedder = _local_embedder(spec.intra_op_threads, spec.max_length, spec.batch_size)
        return self._embedder

    @property
    def location(self) -> str:
        """Where the store lives, for messages."""
        if self.config.host is not None:
            return f"chroma server {self.config.host}:{self.config.port}"
        return f"embedded chroma at {self.config.path}"

    def _path(self) -> str:
        if self.config.path is None:
            raise no_place()
        return self.config.path

    def client(self) -> Any:
        """The Chroma client, created on first use (blocking)."""
        with self._lock:
            if self._client_obj is None:
                self._client_obj = self._open()
            return self._client_obj

    def _open(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        cfg = self.config
        host = cfg.host
        if host is None:
            return chromadb.PersistentClient(path=self._path(), settings=settings,
                                             tenant=cfg.tenant, database=cfg.database)
        from genroute.knowledge.chroma_errors import unreachable
        from genroute.knowledge.chroma_timeouts import bound_requests, http_client

        try:
            client = self._connecting.result(lambda: http_client(
                host=host, port=cfg.port, ssl=cfg.ssl, headers=cfg.headers, settings=settings, tenant=cfg.tenant,
                database=cfg.database, timeout_s=cfg.timeout_s), cfg.timeout_s)
        except Exception as exc:  # connection failures surface here as assorted httpx/ValueError types
            raise unreachable(exc, location=self.location, headers=cfg.headers) from exc
        self._wait_s = None if bound_requests(client, cfg.timeout_s) else cfg.timeout_s
        return client

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = asyncio.to_thread(self._guard, fn, *args, **kwargs)
        if self._wait_s is None:
            return await call
        try:  # a chromadb whose session timeout could not be set: bounded here (its thread may stay blocked)
            return await asyncio.wait_for(call, self._wait_s)
        except TimeoutError:
            raise BackendUnavailable(f"{self.location}: no answer in {self._wait_s:g} s", backend="knowledge") from None

    def _guard(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except GenrouteError:
            raise
        except Exception as exc:
            from chromadb.errors import NotFoundError

            from genroute.knowledge.chroma_errors import header_secrets, map_chroma_error

            if isinstance(exc, NotFoundError):
                self._collections.clear()  # deleted behind our back: reopen (and report it) next time
            mapped = map_chroma_error(exc, location=self.location, server=self.config.host is not None,
                                      secrets=header_secrets(self.config.headers))
            if mapped is None:
                raise
            raise mapped from exc

    # -- collections -------------------------------------------------------------------------

    def collection_sync(self, name: str, *, kind: Kind, create: bool = False, field: str = "collection") -> Any:
        """The Chroma collection ``name`` (blocking); unknown → ``UsageError`` naming ``field``."""
        cached = self._collections.get(name)
        if cached is not None:
            return cached
        from chromadb.errors import NotFoundError

        check_collection_name(name, field)  # before the client: an embedded one makes its directory
        client = self.client()
        try:
            col = client.get_collection(name, embedding_function=None)
        except (NotFoundError, ValueError) as exc:
            if not create:
                known = ", ".join(sorted(c.name for c in client.list_collections())) or "none"
                raise UsageError(f"unknown collection {name!r} in {self.location} (known: {known})",
                                 field=field) from exc
            col = client.get_or_create_collection(
                name, embedding_function=None, configuration=self._configuration(),
                metadata=collection_metadata(kind, self.embedder),
            )
        check_collection(col, kind, self.embedder, field=field)
        self._collections[name] = col
        return col

    def _configuration(self) -> dict[str, Any]:
        hnsw: dict[str, Any] = {"space": "cosine"}
        if self.config.ef_search is not None:
            hnsw["ef_search"] = self.config.ef_search
        return {"hnsw": hnsw}

    async def collection(self, name: str, *, kind: Kind, create: bool = False, field: str = "collection") -> Any:
        """Async twin of ``collection_sync``."""
        return await self._run(self.collection_sync, name, kind=kind, create=create, field=field)

    def _on(self, name: str, op: Callable[[Any], T], *, kind: Kind, create: bool = False,
            field: str = "collection") -> T:
        """``op(collection)`` (blocking); a collection dropped since it was opened is opened again by its name."""
        from chromadb.errors import NotFoundError

        try:
            return op(self.collection_sync(name, kind=kind, create=create, field=field))
        except NotFoundError:
            # Another process deleted it, and may have made it again (a re-ingest): the id we held is gone, the
            # name may not be. Reopened, an unknown name is refused naming the known ones.
            self._collections.pop(name, None)
            return op(self.collection_sync(name, kind=kind, create=create, field=field))

    async def _aon(self, name: str, op: Callable[[Any], T], *, kind: Kind, create: bool = False,
                   field: str = "collection") -> T:
        """Async twin of ``_on``."""
        return await self._run(self._on, name, op, kind=kind, create=create, field=field)

    async def collections(self) -> list[str]:
        """Names of every collection in the store (none in an embedded store whose directory is not made yet)."""
        if self._client_obj is None and self.config.host is None and not Path(self._path()).exists():
            return []  # opening it would create it: a question (is a collection there?) must write nothing
        return await self._run(lambda: sorted(c.name for c in self.client().list_collections()))

    async def delete_collection(self, name: str) -> None:
        """Delete ``name`` if it exists."""
        from chromadb.errors import NotFoundError

        def run() -> None:
            try:
                self.client().delete_collection(name)
            except (NotFoundError, ValueError):
                pass

        self._collections.pop(name, None)
        await self._run(run)

    def count_sync(self, name: str, *, kind: Kind, field: str = "collection") -> int:
        """Records in ``name`` (blocking)."""
        return int(self._guard(self._on, name, lambda col: col.count(), kind=kind, field=field))

    async def count(self, name: str, *, kind: Kind, field: str = "collection") -> int:
        """Records in ``name``."""
        return int(await self._aon(name, lambda col: col.count(), kind=kind, field=field))

    def max_batch_size(self) -> int:
        """The most records Chroma accepts in one write (blocking)."""
        return int(self._guard(lambda: self.client().get_max_batch_size()))

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

    async def update_metadatas(self, name: str, ids: Sequence[str], metadatas: Sequence[Mapping[str, Any]], *,
                               kind: Kind) -> None:
        """Set the given metadata keys of stored ``ids`` in batches Chroma accepts (other keys, texts and vectors
        stay; ids no longer stored are skipped)."""
        if not ids:
            return
        cleaned, ids = [clean_metadata(m) for m in metadatas], list(ids)
        size = await self._run(self.max_batch_size)  # a file re-read may keep more records than one write takes
        for start in range(0, len(ids), size):
            batch = slice(start, start + size)
            await self._aon(name, lambda col: col.update(ids=ids[batch], metadatas=cleaned[batch]), kind=kind)

    def delete_sync(self, name: str, ids: Sequence[str], *, kind: Kind, where: Mapping[str, Any] | None = None) -> None:
        """Delete ``ids`` (those also matching ``where``, if given) in batches Chroma accepts (blocking)."""
        if not ids:
            return
        size, ids = self.max_batch_size(), list(ids)
        for start in range(0, len(ids), size):
            batch = ids[start:start + size]
            self._guard(self._on, name, lambda col: col.delete(ids=batch, where=dict(where) if where else None),
                        kind=kind)

    async def delete(self, name: str, ids: Sequence[str], *, kind: Kind, where: Mapping[str, Any] | None = None) -> None:
        """Delete ``ids`` (those also matching ``where``, if given) in batches Chroma accepts."""
        await self._run(self.delete_sync, name, ids, kind=kind, where=where)

    async def upsert(self, name: str, ids: Sequence[str], texts: Sequence[str],
                     metadatas: Sequence[Mapping[str, Any]], *, kind: Kind,
                     embeddings: Sequence[Sequence[float]] | None = None) -> None:
        """Embed (unless given) and upsert one batch; Chroma writes a batch as a whole."""
        if not ids:
            return
        await self.collection(name, kind=kind, create=True)  # made and checked before paying for embeddings
        vectors = list(embeddings) if embeddings is not None else await self.embedder.aembed(list(texts))
        cleaned = [clean_metadata(m) for m in metadatas]
        await self._aon(name, lambda col: col.upsert(ids=list(ids), documents=list(texts), embeddings=vectors,
                                                     metadatas=cleaned), kind=kind, create=True)

    async def query(self, name: str, text: str, *, kind: Kind, k: int, where: Mapping[str, Any] | None = None,
                    include_embeddings: bool = False, field: str = "collection",
                    tracer: trace.Tracer | None = None) -> list[Hit]:
        """The ``k`` records nearest to ``text`` (embedded with this store's embedder, its span to ``tracer``)."""
        await self.collection(name, kind=kind, field=field)  # an unknown collection fails before embedding
        vector = (await self.embedder.aembed([text], tracer=tracer))[0]
        return await self.query_vector(name, vector, kind=kind, k=k, where=where,
                                       include_embeddings=include_embeddings, field=field)

    async def query_vector(self, name: str, vector: Sequence[float], *, kind: Kind, k: int,
                           where: Mapping[str, Any] | None = None, include_embeddings: bool = False,
                           field: str = "collection") -> list[Hit]:
        """The ``k`` records nearest to ``vector``."""
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

    async def aclose(self) -> None:
        """Forget the client; Chroma flushes each write itself."""
        self._collections.clear()
        self._client_obj = None


def require_store(knowledge: KnowledgeBase | None, *, who: str) -> KnowledgeStore:
    """The router's knowledge store, which ``who`` (``backend 'docs'``) queries; ``ConfigError`` if there is none."""
    if knowledge is None:
        raise ConfigError(f"{who} needs a `knowledge` section (a Chroma store)", field="knowledge")
    if not isinstance(knowledge, KnowledgeStore):
        raise ConfigError(f"{who} needs a genroute KnowledgeStore, got {type(knowledge).__name__}",
                          field="knowledge")
    return knowledge


@lru_cache(maxsize=4)
def _local_embedder(threads: int, max_length: int, batch_size: int) -> Embedder:
    """One ONNX session per setting per process: stores on the same settings share it (~1 s to load)."""
    from genroute.knowledge.embedders import LocalEmbedder

    return LocalEmbedder(threads, max_length, batch_size)


def clean_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Chroma accepts str/int/float/bool values only: drop ``None``, JSON-encode the rest."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, str | int | float | bool) else json.dumps(value, sort_keys=True)
    return out


def _sibling(field: str, name: str) -> str:
    """``backends.x.collection`` → ``backends.x.where``."""
    head, dot, _ = field.rpartition(".")
    return f"{head}{dot}{name}"
