"""``semantic``: route to the backend whose example utterances are nearest to the request.

When the router has a ``knowledge`` store, the route utterances live in a Chroma collection of that
store (kind ``routes``), keyed by content: a restart embeds only utterances it has not stored yet, and
utterances no longer in the config are deleted. The policy only asks for its routes (``bind``); the store
writes them when the router syncs it (``genroute.knowledge.routes``), so deciding stays pure. The store records which embedder filled the collection
(kind, model, dimension) and refuses to reopen it with another one (``ConfigError`` naming
``knowledge.embedder...``), as it does for documents and examples. Without a store the utterances are
embedded at every start. Either way what embedding them cost is in ``last_sync`` (and on a
``genroute.routes.sync`` span, and in the router's ``build_cost_usd``), and the decision searches an in-memory normalised numpy matrix (one
request embedding plus one matrix-vector product): Chroma's HNSW query costs more and is approximate.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from genroute.bounds import PathText
from genroute.errors import ConfigError, UsageError
from genroute.knowledge.routes import RouteSet, costing_routes
from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext
from genroute.policies.remembered import RememberedEmbeddings, deciding_cost
from genroute.policies.static import check_backends
from genroute.types import Decision, GenerateRequest

if TYPE_CHECKING:
    from numpy.typing import NDArray
    import numpy as np

    from opentelemetry import trace

    from genroute.knowledge.embedders import Embedder
    from genroute.knowledge.routes import StoredRoutes
    from genroute.knowledge.store import KnowledgeStore
    from genroute.runtime.resources import Resources


class SemanticConfig(PolicyConfig):
    """Config of ``SemanticPolicy``: utterances per backend (inline, a JSONL file, or the stored collection)."""

    kind: Literal["semantic"] = "semantic"
    routes: dict[str, tuple[str, ...]] = Field(default_factory=dict, description="Backend -> utterances.")
    routes_file: PathText | None = Field(default=None, description='JSONL of {"backend": ..., "utterance": ...}.')
    collection: str | None = Field(
        default=None, min_length=3, max_length=512,
        description="Collection of the router's knowledge store holding the utterances "
                    "(default genroute-routes-<policy field>, e.g. genroute-routes-policy).")
    threshold: float = Field(default=0.5, ge=-1.0, le=1.0, description="Minimum cosine similarity.")
    top_k: int = Field(default=1, ge=1, description="Neighbours that vote (weighted by similarity).")
    default: str = Field(min_length=1, description="Used when nothing is similar enough.")
    cache_size: int = Field(default=1024, ge=0, description="Request embeddings remembered (repeated inputs).")


@cache
def default_embedder() -> Embedder:
    """The offline MiniLM of a default knowledge store, shared by every policy and store in the process: each
    onnxruntime session keeps its own thread pool, and two pools busy on the same cores slow each other
    down (measured: +20 ms a decision)."""
    from genroute.knowledge.store import KnowledgeStore

    return KnowledgeStore().embedder


def utterance_id(backend: str, text: str) -> str:
    """A stable id per (backend, utterance), so re-adding is a no-op."""
    return hashlib.sha1(f"{backend}\x00{text}".encode()).hexdigest()[:20]


def read_routes_file(path: str, *, field: str) -> list[tuple[str, str]]:
    """``(backend, utterance)`` pairs from a JSONL file."""
    pairs = []
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is no part of line 1
    except FileNotFoundError:
        raise ConfigError(f"routes file {path!r} does not exist", field=field) from None
    except (OSError, UnicodeDecodeError) as exc:  # a directory, no permission, not UTF-8
        raise ConfigError(f"cannot read routes file {path!r}: {exc}", field=field) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            backend, utterance = row["backend"], row["utterance"]
            if not isinstance(backend, str) or not isinstance(utterance, str):  # null would become 'None'
                raise TypeError(f"backend and utterance must be strings, got {backend!r} and {utterance!r}")
            pairs.append((backend, utterance))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"line {n}: expected {{'backend', 'utterance'}}: {exc}", field=field) from None
    return pairs


@dataclass(frozen=True)
class RouteIndex:
    """The searchable routes: backend and text per row of a unit-length embedding matrix."""

    backends: list[str]
    utterances: list[str]
    matrix: NDArray[Any]


@dataclass(frozen=True)
class SyncReport:
    """What making the routes did: utterances embedded and added, deleted, and loaded, and what the embedding
    cost (``collection`` ``None``: no knowledge store, every utterance was embedded at start)."""

    collection: str | None
    added: int
    deleted: int
    loaded: int
    cost_usd: float = 0.0
    cost_estimated: bool = False


class SemanticPolicy(Policy):
    """Nearest route by embedding, with a similarity threshold and a default."""

    kind = "semantic"
    Config = SemanticConfig
    config: SemanticConfig
    blocking = True  # embeds the request

    def __init__(self, config: SemanticConfig, *, embedder: Embedder | None = None) -> None:
        super().__init__(config)
        self._given_embedder = embedder
        self.embedder = embedder
        pairs = [(b, u) for b, utterances in config.routes.items() for u in utterances]
        if config.routes_file:
            pairs += read_routes_file(config.routes_file, field=f"{self.field}.routes_file")
        #: id -> (backend, utterance): what the config names (empty: use whatever the collection holds).
        self.wanted = {utterance_id(b, u): (b, u) for b, u in pairs}
        self.store: KnowledgeStore | None = None
        #: Where embedding spans go: the binding router's tracer (``None``: the embedder's own, or the global).
        self.tracer: trace.Tracer | None = None
        self.last_sync: SyncReport | None = None
        self._index: RouteIndex | None = None
        self._lock = threading.Lock()
        self._embed_request = RememberedEmbeddings(self._embed_text, config.cache_size)

    # -- building the index ------------------------------------------------------------------------

    @property
    def collection_name(self) -> str:
        """The collection the routes persist in when the router has a knowledge store."""
        # Derived from the field by default, so two semantic policies in one router (split arms) never
        # overwrite each other's routes.
        return self.config.collection or f"genroute-routes-{self.field}"

    def bind(self, resources: Resources) -> None:
        """Without a knowledge store, embed the configured routes now; with one, ask the store for them: it
        writes them when the router syncs it (``store.routes.sync()``) and hands back what it holds."""
        from genroute.knowledge.store import require_store

        knowledge = resources.knowledge
        self.tracer = resources.tracer
        store = None if knowledge is None else require_store(knowledge, who=f"policy {self.field!r}")
        with self._lock:
            if store is None:
                self.store = None
                self._use_embedder(self._given_embedder)
                self._index = self._embed_routes()
                return
            if self._given_embedder is not None and self._given_embedder is not store.embedder:
                # The collection records the store's embedder; vectors from another would be silently wrong.
                raise UsageError("with a knowledge store the semantic policy embeds with the store's embedder; "
                                 "pass the embedder to the KnowledgeStore instead", field=self.field)
            self.store = store
            self._use_embedder(store.embedder)
            self._index = None
        store.routes.want(RouteSet(self.collection_name, self.wanted, self.field, self._embed, self._load,
                                   tracer=self.tracer))

    def _use_embedder(self, embedder: Embedder | None) -> None:
        embedder = embedder if embedder is not None else default_embedder()
        if embedder is not self.embedder:
            self._embed_request.cache_clear()  # vectors of another embedder are not comparable
        self.embedder = embedder

    @property
    def index(self) -> RouteIndex:
        """The routes being searched; a policy used without a router embeds its config's utterances."""
        index = self._index
        if index is None:
            if self.store is not None:
                raise UsageError("the routes are not loaded yet: the router syncs them (store.routes.sync()) "
                                 "once its policy is bound", field=self.field)
            with self._lock:
                if self._index is None:
                    self._use_embedder(self._given_embedder)
                    self._index = self._embed_routes()
                index = self._index
        return index

    @property
    def backends(self) -> list[str]:
        """Backend of each route utterance."""
        return self.index.backends

    @property
    def utterances(self) -> list[str]:
        """Every route utterance, in matrix row order."""
        return self.index.utterances

    @property
    def matrix(self) -> NDArray[Any]:
        """Unit-length utterance embeddings, one row per utterance."""
        return self.index.matrix

    def _embed_routes(self) -> RouteIndex:
        if not self.wanted:
            raise ConfigError("no utterances: set `routes` or `routes_file` (or give the router a `knowledge` "
                              "store whose collection holds them)", field=f"{self.field}.routes")
        pairs = list(self.wanted.values())
        with costing_routes(self.tracer, self.field, None) as (charges, span):
            matrix = self._embed([u for _, u in pairs])
            span.set_attributes({"genroute.routes.added": len(pairs), "genroute.routes.loaded": len(pairs)})
        self.last_sync = SyncReport(collection=None, added=len(pairs), deleted=0, loaded=len(pairs),
                                    cost_usd=charges.cost_usd, cost_estimated=charges.estimated)
        return RouteIndex([b for b, _ in pairs], [u for _, u in pairs], matrix)

    def _load(self, stored: StoredRoutes) -> None:
        """Search what the store holds after syncing this policy's routes (the store delivers it)."""
        import numpy as np

        matrix = _unit(np.asarray(stored.vectors, dtype=np.float32))
        with self._lock:
            self._index = RouteIndex(stored.backends, stored.utterances, matrix)
            self.last_sync = SyncReport(collection=stored.collection, added=stored.added, deleted=stored.deleted,
                                        loaded=len(stored.backends), cost_usd=stored.cost_usd,
                                        cost_estimated=stored.cost_estimated)

    def _embed_text(self, text: str) -> NDArray[Any]:
        """A request text's unit vector; the request's backend retrieving with the same embedder reuses it."""
        import numpy as np

        from genroute.runtime.embeddings import shared_embedding

        vector = shared_embedding(self.embedder, text, lambda: self._vectors([text])[0])
        return _unit(np.asarray([vector], dtype=np.float32))[0]

    def _embed(self, texts: list[str]) -> NDArray[Any]:
        import numpy as np

        return _unit(np.asarray(self._vectors(texts), dtype=np.float32))

    def _vectors(self, texts: list[str]) -> Any:
        """The embedder's vectors of ``texts`` as it returns them (an array, or lists of floats)."""
        from genroute.knowledge.embedders import traced as tracing

        embedder = self.embedder
        assert embedder is not None  # set by _use_embedder: when a router binds the policy, or at the first index
        traced = tracing(embedder, self.tracer)
        embed_array = getattr(embedder, "embed_array", None)
        if embed_array is not None:
            vectors = embed_array(texts, **traced)
        else:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                vectors = embedder.embed(texts, **traced)
            else:  # a router built inside async code: Embedder.embed refuses a running loop, a worker has none
                with ThreadPoolExecutor(1) as pool:  # in this context: its spans and charges are this call's
                    run = contextvars.copy_context().run
                    vectors = pool.submit(lambda: run(embedder.embed, texts, **traced)).result()
        return vectors

    # -- deciding ----------------------------------------------------------------------------------

    def nearest(self, vector: NDArray[Any]) -> tuple[str, float, str]:
        """``(backend, similarity, utterance)`` of the winning route for a normalised request vector."""
        return self._nearest(self.index, vector)

    def _nearest(self, index: RouteIndex, vector: NDArray[Any]) -> tuple[str, float, str]:
        import numpy as np

        # einsum runs in this thread; a BLAS matvec wakes BLAS worker threads that fight onnxruntime's
        # (measured: +28 ms p50 right after an embedding on 2 busy cores, vs +0.3 ms for einsum).
        sims = np.einsum("ij,j->i", index.matrix, vector)
        k = min(self.config.top_k, len(sims))
        if k == 1:
            best = int(np.argmax(sims))
            return index.backends[best], float(sims[best]), index.utterances[best]
        top = np.argpartition(-sims, k - 1)[:k]
        return self._vote([(index.backends[i], float(sims[i]), index.utterances[i]) for i in top])

    @staticmethod
    def _vote(hits: list[tuple[str, float, str]]) -> tuple[str, float, str]:
        score: dict[str, float] = {}
        for backend, sim, _ in hits:
            score[backend] = score.get(backend, 0.0) + sim
        winner = max(score, key=score.__getitem__)
        return max((h for h in hits if h[0] == winner), key=lambda h: h[1])

    def deciding_cost(self, request: GenerateRequest) -> float:
        """The request's embedding at the embedder's price (0 for a remembered one, or the offline embedder)."""
        return deciding_cost(self.embedder, self._embed_request, request.input)

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        index = self.index  # first: without a router this builds the routes and chooses the embedder
        backend, sim, utterance = self._nearest(index, self._embed_request(request.input))
        quoted = utterance if len(utterance) <= 60 else utterance[:57] + "..."
        if sim < self.config.threshold:
            return Decision.single(self.name, self.config.default,
                                   f"semantic: nearest route {backend} similarity {sim:.3f} < "
                                   f"{self.config.threshold:g} -> default {self.config.default}")
        return Decision.single(self.name, backend, f"semantic: route {backend}, similarity {sim:.3f} >= "
                                                   f"{self.config.threshold:g} to {quoted!r}")

    def compiled_inputs(self) -> frozenset[str]:
        """The input keys of its inline utterances (``genroute bench --outcomes`` takes them from training queries)."""
        from genroute.knowledge.examples import input_keys

        return frozenset(input_keys(u for us in self.config.routes.values() for u in us if isinstance(u, str)))

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(self.config.default, f"{self.field}.default")]
        named += [(b, f"{self.field}.routes.{b}") for b in self.config.routes]
        source = "routes_file" if self.config.routes_file else "collection"
        named += [(b, f"{self.field}.{source}") for b in sorted(set(self.backends)) if b not in self.config.routes]
        check_backends(catalogue, named)


def _unit(vectors: NDArray[Any]) -> NDArray[Any]:
    import numpy as np

    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
