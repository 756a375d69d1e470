"""Route collections: the utterances a semantic policy routes by, kept in sync by the store, not the policy.

A policy asks for its routes while it is bound (``store.routes.want``); the router, once its policy is bound,
has the store write them (``store.routes.sync``: the configured utterances are stored, embedding only new
ones, stale ones deleted) and hands each policy what the collection holds. Policies never write.

Embedding routes is billed like any embedding (Gemini embeddings are priced): each sync runs in a
``genroute.routes.sync`` span (the embeddings spans are its children) that carries what it embedded and cost,
the cost is in ``StoredRoutes`` (and so in the policy's ``last_sync``), and it is passed on to whoever collects
charges around the sync (the router's ``build_cost_usd``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace

from genroute.errors import ConfigError
from genroute.runtime.billing import Charges, charge, charging


class RouteStore(Protocol):
    """What a route sync uses of ``genroute.knowledge.store.KnowledgeStore`` (which holds a ``RouteSync``)."""

    @property
    def location(self) -> str: ...

    def _guard(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...
    def collection_sync(self, name: str, *, kind: Any, create: bool = False, field: str = "collection") -> Any: ...
    def delete_sync(self, name: str, ids: Sequence[str], *, kind: Any) -> None: ...
    def check_writable(self) -> None: ...
    def max_batch_size(self) -> int: ...


@dataclass(frozen=True)
class StoredRoutes:
    """What a route collection holds after a sync: backend, utterance and vector per row; what the sync did."""

    collection: str
    backends: list[str]
    utterances: list[str]
    vectors: Any
    added: int
    deleted: int
    #: What embedding the added utterances cost (0 for the offline embedder), and whether it is an estimate.
    cost_usd: float = 0.0
    cost_estimated: bool = False


@dataclass(frozen=True)
class RouteSet:
    """The routes one policy asks for: ``wanted`` maps an id to ``(backend, utterance)`` (empty: whatever the
    collection holds); ``embed`` embeds new utterances; ``deliver`` receives the stored routes."""

    collection: str
    wanted: Mapping[str, tuple[str, str]]
    field: str
    embed: Callable[[list[str]], Any]
    deliver: Callable[[StoredRoutes], None]
    #: Where the sync's span goes (the router's tracer; ``None``: the global provider's).
    tracer: trace.Tracer | None = None


class RouteSync:
    """The route sets asked of one store, written by ``sync``."""

    def __init__(self, store: RouteStore) -> None:
        self.store = store
        self._pending: list[RouteSet] = []

    def want(self, routes: RouteSet) -> None:
        """Ask for ``routes`` at the next ``sync`` (nothing is written now)."""
        self._pending.append(routes)

    def sync(self) -> list[StoredRoutes]:
        """Make each asked-for collection hold exactly its routes, and deliver what it holds to who asked."""
        pending, self._pending = self._pending, []
        synced = []
        for routes in pending:
            stored = sync_routes(self.store, routes)
            routes.deliver(stored)
            synced.append(stored)
        return synced


def sync_routes(store: RouteStore, routes: RouteSet) -> StoredRoutes:
    """Store exactly ``routes.wanted`` in its collection (embedding only the new ones), then load the collection."""
    with costing_routes(routes.tracer, routes.field, routes.collection) as (charges, span):
        stored = _sync(store, routes)
        span.set_attributes({"genroute.routes.added": stored.added, "genroute.routes.deleted": stored.deleted,
                             "genroute.routes.loaded": len(stored.backends)})
    return dataclasses.replace(stored, cost_usd=charges.cost_usd, cost_estimated=charges.estimated)


@contextmanager
def costing_routes(tracer: trace.Tracer | None, field: str, collection: str | None
                   ) -> Iterator[tuple[Charges, trace.Span]]:
    """Collect what embedding a policy's routes costs, on a ``genroute.routes.sync`` span, then pass it on to
    the enclosing collector (a router's build)."""
    charges = Charges()
    attrs: dict[str, Any] = {"genroute.policy.field": field}
    if collection is not None:
        attrs["genroute.routes.collection"] = collection
    with (tracer or trace.get_tracer("genroute")).start_as_current_span("genroute.routes.sync",
                                                                       attributes=attrs) as span:
        try:
            with charging(charges):
                yield charges, span
        finally:  # a sync that failed half-way was billed for what it embedded before
            cost: dict[str, Any] = {"gen_ai.usage.cost.amount": charges.cost_usd,
                                    "gen_ai.usage.cost.currency": "USD"}
            if charges.estimated:
                cost["genroute.cost.estimated"] = True
            span.set_attributes(cost)
            charge(charges.cost_usd, estimated=charges.estimated)


def _sync(store: RouteStore, routes: RouteSet) -> StoredRoutes:
    name, wanted = routes.collection, routes.wanted
    try:  # opening checks the embedder kind, model and dimension the collection was made with
        col = store.collection_sync(name, kind="routes", create=True, field=f"{routes.field}.collection")
    except ConfigError as exc:
        if not (exc.field or "").startswith("knowledge.embedder"):
            raise
        raise ConfigError(f"{exc.message}; or give the routes a new collection ({routes.field}.collection): "
                          "they are embedded again from the config", field=exc.field) from exc
    added = deleted = 0
    if wanted:
        stored = set(store._guard(col.get, include=[])["ids"])
        stale = sorted(stored - wanted.keys())
        missing = [i for i in wanted if i not in stored]
        if stale or missing:  # a store read-only where it is written serves routes already stored, no others
            store.check_writable()
        store.delete_sync(name, stale, kind="routes")
        size = store.max_batch_size()
        for start in range(0, len(missing), size):
            ids = missing[start:start + size]
            texts = [wanted[i][1] for i in ids]
            store._guard(col.upsert, ids=ids, embeddings=routes.embed(texts), documents=texts,
                         metadatas=[{"backend": wanted[i][0]} for i in ids])
        added, deleted = len(missing), len(stale)
    got = store._guard(col.get, include=["embeddings", "metadatas", "documents"])
    rows = [n for n, i in enumerate(got["ids"]) if not wanted or i in wanted]
    if not rows:
        raise ConfigError(f"no utterances: collection {name!r} in {store.location} is empty and the config "
                          "names none", field=f"{routes.field}.routes")
    return StoredRoutes(collection=name, backends=[str(got["metadatas"][n]["backend"]) for n in rows],
                        utterances=[str(got["documents"][n]) for n in rows],
                        vectors=[got["embeddings"][n] for n in rows], added=added, deleted=deleted)
