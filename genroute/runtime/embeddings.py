"""One request's embeddings of its own texts, made once: the policy that routes it and the backend that retrieves for
it (a semantic or learned policy, then kNN ICL or RAG) embed the same input with the same embedder.

``RequestEmbeddings`` lives as long as its request (the router makes one for a request whose policy embeds, and lets
it go with the request): nothing is shared across requests, so none across tenants either. A vector is reused only
for the same text and the same embedder *fingerprint* (``Embedder.fingerprint``: model, width, tokens read, a Gemini
task type), so vectors that differ are never mixed up. It is charged once: to whoever made it (deciding, for the
policy's; the rung, for a backend's); a reuse costs nothing and charges nothing.

A policy decides in a worker thread and never sees the request's run context: it finds the request's embeddings in
``remembering``'s context variable, which the worker thread inherits; a backend finds them on its ``RunContext``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_CURRENT: ContextVar[RequestEmbeddings | None] = ContextVar("genroute_request_embeddings", default=None)


class RequestEmbeddings:
    """The vectors made for one request: (embedder fingerprint, text) -> the embedder's vector, as it returned it."""

    __slots__ = ("_vectors",)

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, str], list[float]] = {}

    def get(self, key: str, text: str) -> list[float] | None:
        """The vector of ``text`` by the embedder whose fingerprint is ``key``, if this request made it."""
        return self._vectors.get((key, text))

    def put(self, key: str, text: str, vector: Any) -> list[float]:
        """Keep ``vector`` (a list, or an array row) of ``text``; return it as a list of floats."""
        tolist = getattr(vector, "tolist", None)
        kept: list[float] = tolist() if tolist is not None else list(vector)
        self._vectors[(key, text)] = kept
        return kept

    def __len__(self) -> int:
        return len(self._vectors)


@contextmanager
def remembering(embeddings: RequestEmbeddings) -> Iterator[RequestEmbeddings]:
    """Make ``embeddings`` the current request's inside the block (worker threads started inside inherit it); set
    and reset without a ``yield`` of an async generator in between."""
    token = _CURRENT.set(embeddings)
    try:
        yield embeddings
    finally:
        _CURRENT.reset(token)


def vector_key(embedder: object) -> str | None:
    """What ``embedder``'s vectors depend on (its ``fingerprint()``); ``None``: it does not say (an array embedder of
    the caller's own), and its vectors are never shared."""
    fingerprint = getattr(embedder, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else None


def shared_embedding(embedder: object, text: str, embed: Callable[[], Any]) -> Any:
    """``text``'s vector by ``embedder`` for the current request: the one it already made, else ``embed()``'s (kept
    for the request's other embedders of the same fingerprint). Outside a request: ``embed()``."""
    embeddings = _CURRENT.get()
    key = None if embeddings is None else vector_key(embedder)
    if embeddings is None or key is None:
        return embed()
    found = embeddings.get(key, text)
    return found if found is not None else embeddings.put(key, text, embed())
