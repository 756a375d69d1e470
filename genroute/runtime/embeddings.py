"""One request's embeddings of its own texts, made once: every part of a request that embeds a text — the policy that
routes it (semantic, learned), each rung that retrieves for it (kNN ICL, RAG: a fallback chain RAG -> ICL embeds the
same input twice otherwise), a validator's backend, and its shadow runs — shares the vector.

``RequestEmbeddings`` lives as long as its request (made by the router for a request whose policy embeds, else by
the first rung that embeds; the executor hands it to the next rungs and to the shadows): nothing is shared across
requests, so none across tenants either. A vector is reused only for the same text and the same embedder identity
(``vector_key``: ``Embedder.fingerprint``, i.e. model, width, tokens read, a Gemini task type), so vectors that differ
are never mixed up. It is charged once, to whoever made it (deciding, for the policy's; the rung or the shadow, for a
backend's); a reuse charges nothing, but reports what a rung's or a shadow's vector cost and how long making it took
(``billing.reused``), so that a shadow's outcome side counts what it would have cost and taken on its own, as the served
side's rungs do (the policy's vector is routing, kept apart on both sides). Shadows run concurrently: one waits for a vector another is making (and makes it
itself if that one fails or is cancelled).

A policy decides in a worker thread and never sees the request's run context: it finds the request's embeddings in
``remembering``'s context variable, which the worker thread inherits; a backend finds them on its ``RunContext``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

_CURRENT: ContextVar[RequestEmbeddings | None] = ContextVar("genroute_request_embeddings", default=None)


def _as_list(vector: Any) -> list[float]:
    tolist = getattr(vector, "tolist", None)
    kept: list[float] = tolist() if tolist is not None else list(vector)
    return kept


class RequestEmbeddings:
    """The vectors made for one request: (embedder identity, text) -> the embedder's vector, as a list of floats (or
    the future of one being made)."""

    __slots__ = ("_vectors", "_costs", "_seconds")

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, str], list[float] | asyncio.Future[list[float] | None]] = {}
        #: What a vector a backend made cost (the policy's are routing's: not here).
        self._costs: dict[tuple[str, str], float] = {}
        #: How long making a vector a backend made took (its ``embed()``, measured by the maker).
        self._seconds: dict[tuple[str, str], float] = {}

    def vector(self, key: str, text: str, embed: Callable[[], Any]) -> list[float]:
        """``text``'s vector by the embedder whose identity is ``key``: the one this request made, else ``embed()``'s
        (a list, or an array row), kept. Sync: a policy deciding in its worker thread, before any rung runs."""
        found = self._vectors.get((key, text))
        if isinstance(found, list):
            return found
        vector = _as_list(embed())
        if found is None:  # one being made (never, before the rungs run): that one is kept when it is done
            self._vectors[(key, text)] = vector
        return vector

    async def avector(self, key: str, text: str, embed: Callable[[], Awaitable[Any]]) -> list[float]:
        """``vector``, for a rung or a shadow: one being made by another shadow of the request is waited for (and
        made here if that one fails or is cancelled)."""
        from genroute.runtime.billing import Charges, charge, charging, reused

        waited = 0.0
        while True:
            found = self._vectors.get((key, text))
            if found is None:
                break
            if not isinstance(found, list):
                began = time.perf_counter()
                found = await asyncio.shield(found)  # this caller's cancellation leaves the maker alone
                waited += time.perf_counter() - began
            if found is not None:
                # The part of the making this caller did not already wait through: its own clock holds the rest.
                reused(self._costs.get((key, text), 0.0), max(0.0, self._seconds.get((key, text), 0.0) - waited))
                return found
        pending: asyncio.Future[list[float] | None] = asyncio.get_running_loop().create_future()
        self._vectors[(key, text)] = pending
        vector: list[float] | None = None
        charges = Charges()
        began = time.perf_counter()
        try:
            with charging(charges):  # to know what it cost; charged on to whoever collects around this call
                vector = _as_list(await embed())
        finally:
            if charges.cost_usd or charges.estimated:
                charge(charges.cost_usd, estimated=charges.estimated)
            if vector is None:  # failed or cancelled: a waiter makes it itself
                del self._vectors[(key, text)]
            else:
                self._vectors[(key, text)] = vector
                self._costs[(key, text)] = charges.cost_usd
                self._seconds[(key, text)] = time.perf_counter() - began
            pending.set_result(vector)
        return vector

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
    """The identity of ``embedder``'s vectors (same identity, same vectors): its ``fingerprint()``
    (``Embedder.fingerprint``); ``None``: it declares none (an array embedder of the caller's own). The one
    definition: a request's backends share vectors by it, the benchmark's embedding cache names its file by it."""
    fingerprint = getattr(embedder, "fingerprint", None)
    return str(fingerprint()) if callable(fingerprint) else None


def shared_embedding(embedder: object, text: str, embed: Callable[[], Any]) -> Any:
    """``text``'s vector by ``embedder`` for the current request (a policy's, in its worker thread): the one it
    already made, else ``embed()``'s, kept for the request's other embedders of the same identity. Outside a
    request, or for an embedder without an identity: ``embed()``."""
    embeddings = _CURRENT.get()
    key = None if embeddings is None else vector_key(embedder)
    if embeddings is None or key is None:
        return embed()
    return embeddings.vector(key, text, embed)
