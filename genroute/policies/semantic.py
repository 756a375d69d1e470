"""``semantic``: route to the backend whose example utterances are nearest to the request.

Utterance embeddings are computed once at build (persisted in a Chroma collection when ``store`` is set, so
a restart embeds only new utterances) and held as a normalised numpy matrix: a decision is one request
embedding plus one matrix-vector product.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from genroute.errors import ConfigError
from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext
from genroute.policies.static import check_backends
from genroute.types import Decision, GenerateRequest

if TYPE_CHECKING:
    import numpy as np


class RouteStore(BaseModel):
    """Where utterance embeddings persist: an embedded Chroma directory and a collection name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    collection: str = Field(default="genroute-semantic-routes", min_length=3, max_length=512)


class SemanticConfig(PolicyConfig):
    """Config of ``SemanticPolicy``: utterances per backend (inline, JSONL file, or an existing store)."""

    kind: Literal["semantic"] = "semantic"
    routes: dict[str, tuple[str, ...]] = Field(default_factory=dict, description="Backend -> utterances.")
    routes_file: str | None = Field(default=None, description='JSONL of {"backend": ..., "utterance": ...}.')
    store: RouteStore | None = None
    threshold: float = Field(default=0.5, ge=-1.0, le=1.0, description="Minimum cosine similarity.")
    top_k: int = Field(default=1, ge=1, description="Neighbours that vote (weighted by similarity).")
    search: Literal["numpy", "chroma"] = Field(default="numpy", description="chroma needs `store`.")
    default: str = Field(min_length=1, description="Used when nothing is similar enough.")
    cache_size: int = Field(default=1024, ge=0, description="Request embeddings remembered (repeated inputs).")


@cache
def default_embedder() -> Any:
    """One offline MiniLM per process for every policy: each onnxruntime session keeps its own thread
    pool, and two pools busy-waiting on the same cores slow each other down (measured: +20 ms a decision)."""
    from genroute.knowledge.embedders import LocalEmbedder

    return LocalEmbedder()


def utterance_id(backend: str, text: str) -> str:
    """A stable id per (backend, utterance), so re-adding is a no-op."""
    return hashlib.sha1(f"{backend}\x00{text}".encode()).hexdigest()[:20]


def read_routes_file(path: str, *, field: str) -> list[tuple[str, str]]:
    """``(backend, utterance)`` pairs from a JSONL file."""
    pairs = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"routes file {path!r} does not exist", field=field) from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pairs.append((str(row["backend"]), str(row["utterance"])))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"line {n}: expected {{'backend', 'utterance'}}: {exc}", field=field) from None
    return pairs


class SemanticPolicy(Policy):
    """Nearest route by embedding, with a similarity threshold and a default."""

    kind = "semantic"
    Config = SemanticConfig
    config: SemanticConfig
    blocking = True  # embeds the request

    def __init__(self, config: SemanticConfig, *, embedder: Any = None) -> None:
        super().__init__(config)
        if config.search == "chroma" and config.store is None:
            raise ConfigError("search: chroma needs `store`", field=f"{self.field}.search")
        self.embedder = embedder if embedder is not None else default_embedder()
        self._embed_request = lru_cache(maxsize=config.cache_size)(lambda text: self._embed([text])[0])
        pairs = [(b, u) for b, utterances in config.routes.items() for u in utterances]
        if config.routes_file:
            pairs += read_routes_file(config.routes_file, field=f"{self.field}.routes_file")
        self._collection: Any = None
        if config.store is not None:
            self.backends, self.utterances, self.matrix = self._sync_store(pairs)
        elif pairs:
            self.backends = [b for b, _ in pairs]
            self.utterances = [u for _, u in pairs]
            self.matrix = self._embed(self.utterances)
        else:
            raise ConfigError("no utterances: set `routes`, `routes_file` or an existing `store`",
                              field=f"{self.field}.routes")

    def _embed(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        vectors = np.asarray(self.embedder.embed_array(texts) if hasattr(self.embedder, "embed_array")
                             else self.embedder.embed(texts), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def _sync_store(self, pairs: list[tuple[str, str]]) -> tuple[list[str], list[str], np.ndarray]:
        """Add utterances the store lacks (embedding only those), then load the ones this config names."""
        import chromadb
        import numpy as np

        store = self.config.store
        assert store is not None
        from genroute.knowledge.embedders import LocalEmbedder, register_with_chroma

        extra: dict[str, Any] = {}
        if isinstance(self.embedder, LocalEmbedder):
            # Recorded in the collection so other processes can reopen it and query by text.
            register_with_chroma()
            extra["embedding_function"] = self.embedder
        client = chromadb.PersistentClient(path=store.path)
        collection = client.get_or_create_collection(store.collection, metadata={"hnsw:space": "cosine"},
                                                     **extra)
        self._collection = collection
        ids = [utterance_id(b, u) for b, u in pairs]
        unique = dict(zip(ids, pairs))
        if unique:
            have = set(collection.get(ids=list(unique), include=[])["ids"])
            missing = [i for i in unique if i not in have]
            for start in range(0, len(missing), 1000):  # Chroma caps the batch size
                batch = missing[start:start + 1000]
                texts = [unique[i][1] for i in batch]
                collection.add(ids=batch, embeddings=self._embed(texts), documents=texts,
                               metadatas=[{"backend": unique[i][0]} for i in batch])
        got = collection.get(ids=list(unique) if unique else None, include=["embeddings", "metadatas",
                                                                             "documents"])
        if not got["ids"]:
            raise ConfigError(f"store collection {store.collection!r} holds no utterances",
                              field=f"{self.field}.store")
        matrix = np.asarray(got["embeddings"], dtype=np.float32)
        backends = [m["backend"] for m in got["metadatas"]]
        return backends, list(got["documents"]), matrix

    def nearest(self, vector: np.ndarray) -> tuple[str, float, str]:
        """``(backend, similarity, utterance)`` of the winning route for a normalised request vector."""
        import numpy as np

        if self.config.search == "chroma":
            return self._nearest_chroma(vector)
        # einsum runs in this thread; a BLAS matvec wakes BLAS worker threads that fight onnxruntime's
        # (measured: +28 ms p50 right after an embedding on 2 busy cores, vs +0.3 ms for einsum).
        sims = np.einsum("ij,j->i", self.matrix, vector)
        k = min(self.config.top_k, len(sims))
        if k == 1:
            best = int(np.argmax(sims))
            return self.backends[best], float(sims[best]), self.utterances[best]
        top = np.argpartition(-sims, k - 1)[:k]
        return self._vote([(self.backends[i], float(sims[i]), self.utterances[i]) for i in top])

    def _nearest_chroma(self, vector: np.ndarray) -> tuple[str, float, str]:
        got = self._collection.query(query_embeddings=[vector], n_results=self.config.top_k,
                                     include=["metadatas", "distances", "documents"])
        hits = [(m["backend"], 1.0 - d, doc) for m, d, doc in
                zip(got["metadatas"][0], got["distances"][0], got["documents"][0])]
        return self._vote(hits)

    @staticmethod
    def _vote(hits: list[tuple[str, float, str]]) -> tuple[str, float, str]:
        score: dict[str, float] = {}
        for backend, sim, _ in hits:
            score[backend] = score.get(backend, 0.0) + sim
        winner = max(score, key=score.__getitem__)
        best = max((h for h in hits if h[0] == winner), key=lambda h: h[1])
        return best

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        vector = self._embed_request(request.input)
        backend, sim, utterance = self.nearest(vector)
        quoted = utterance if len(utterance) <= 60 else utterance[:57] + "..."
        if sim < self.config.threshold:
            return Decision.single(self.name, self.config.default,
                                   f"semantic: nearest route {backend} similarity {sim:.3f} < "
                                   f"{self.config.threshold:g} -> default {self.config.default}")
        return Decision.single(self.name, backend, f"semantic: route {backend}, similarity {sim:.3f} >= "
                                                   f"{self.config.threshold:g} to {quoted!r}")

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(self.config.default, f"{self.field}.default")]
        named += [(b, f"{self.field}.routes.{b}") for b in self.config.routes]
        source = "routes_file" if self.config.routes_file else "store"
        named += [(b, f"{self.field}.{source}") for b in sorted(set(self.backends)) if b not in self.config.routes]
        check_backends(catalogue, named)
