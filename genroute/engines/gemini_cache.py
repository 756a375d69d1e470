"""Gemini context caching: a cache per static prompt prefix, made once and reused until shortly before it expires.

The engine makes a cache (``GeminiEngine.create_cache``); ``PrefixCaches`` decides when to make one and when a
request sends its prefix inline instead (a backend such as ICL's fixed examples holds one).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field

from genroute.errors import BackendRejected, BackendUnavailable, GenrouteError
from genroute.public_model import ConfigModel
from genroute.runtime.locks import LoopsLock

if TYPE_CHECKING:
    from google.genai import types
    from opentelemetry import trace

    from genroute.engines.base import CacheCharge

# Gemini answers a request naming an expired or deleted cache with e.g. 403 "CachedContent not found
# (or permission denied)"; other wordings seen mention "cached content" too.
_CACHE_GONE = re.compile(r"cached[\s_]?content", re.IGNORECASE)
#: How long a cache create that timed out or met an outage is not tried again.
_TRANSIENT_RETRY_S = 30.0


class ContextCacheSettings(ConfigModel):
    """Gemini context caching of a static example prefix (``selector: fixed`` only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_tokens: int = Field(default=2048, ge=1, description="Cache only prefixes at least this long "
                            "(Gemini refuses small caches: 1,024 tokens on 2.5 Flash, 4,096 on 2.5 Pro).")
    ttl_s: int = Field(default=3600, ge=60, description="Cache lifetime; a new cache is made after it.")
    retry_after_s: int = Field(default=600, ge=0, description="After a failed create, send the prefix inline "
                               "this long before trying to create a cache again.")


class PrefixCaches:
    """Gemini context caches of example prefixes, one per key: made once, reused until shortly before expiry.

    A refused create is remembered for ``retry_after_s``, a timed-out one for at most 30 s (every request in
    between sends the prefix inline instead of paying another failing round trip), and concurrent first requests for a key wait
    for one create rather than each making a cache.
    """

    def __init__(self, settings: ContextCacheSettings) -> None:
        self.settings = settings
        #: key -> (cache name, or None after a failed create; monotonic time the entry stops being used)
        self._entries: dict[str, tuple[str | None, float]] = {}
        #: key -> the lock its first requests wait on for one create, whichever event loop each runs on
        self._locks: dict[str, LoopsLock] = {}

    @property
    def margin_s(self) -> float:
        """How long before expiry a cache stops being handed out (a request needs it to outlive the call)."""
        return min(60.0, self.settings.ttl_s / 10)

    def _fresh(self, key: str) -> tuple[bool, str | None]:
        name, until = self._entries.get(key, (None, 0.0))
        margin = self.margin_s if name is not None else 0.0
        return until - margin > time.monotonic(), name

    async def name(self, parts: Any, create: Callable[[], Awaitable[Any]]) -> str | None:
        """The cache for ``parts`` (hashed into the key); ``create()`` makes one when there is none."""
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()
        fresh, name = self._fresh(key)
        if fresh:
            return name
        lock = self._locks.get(key) or self._locks.setdefault(key, LoopsLock())
        async with lock:
            fresh, name = self._fresh(key)  # another request may have made it while this one waited
            if fresh:
                return name
            try:
                name = (await create()).name or None
                lifetime: float = self.settings.ttl_s if name else self.settings.retry_after_s
            except GenrouteError as exc:  # caching only saves money: the prefix goes out inline
                name = None
                # A refusal stands for retry_after_s; a timeout or outage (often a request near its own deadline)
                # must not switch caching off for everyone that long.
                lifetime = self.settings.retry_after_s
                if isinstance(exc, BackendUnavailable):
                    lifetime = min(lifetime, _TRANSIENT_RETRY_S)
            self._entries[key] = (name, time.monotonic() + lifetime)
            return name

    def forget(self, name: str) -> None:
        """Stop using cache ``name`` (the server said it is gone)."""
        for key, (have, _) in list(self._entries.items()):
            if have == name:
                del self._entries[key]


async def traced_create(call: Awaitable[types.CachedContent], provider: str, model: str, ttl_s: int, *,
                        tracer: trace.Tracer | None, charge: CacheCharge | None) -> types.CachedContent:
    """Await a cache create (``call``) in a ``create_cached_content`` span, with what ``charge`` says it cost on
    the span: the cache's tokens as the answer counts them, or estimated for a create lost after it was sent."""
    from opentelemetry import trace

    from genroute.runtime.billing import processed
    from genroute.runtime.telemetry import TRACER_NAME

    tracer = tracer or trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"create_cached_content {model}", kind=trace.SpanKind.CLIENT, record_exception=False,
        set_status_on_exception=False,
        attributes={"gen_ai.operation.name": "create_cached_content", "gen_ai.provider.name": provider,
                    "gen_ai.request.model": model, "genroute.cache.ttl_s": ttl_s},
    ) as span:
        try:
            cache = await call
        except BaseException as exc:
            if isinstance(exc, GenrouteError):
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(trace.StatusCode.ERROR, type(exc).__name__)  # never the provider's message
            # Lost after it was sent (a timeout, a broken connection, a cancellation): the cache was probably made,
            # and is billed for its lifetime though its name never came back.
            cause = (exc.__cause__ or exc) if isinstance(exc, GenrouteError) else exc  # the SDK's, before mapping
            if charge is not None and processed(cause):
                _priced(span, charge(None), estimated=True)
            raise
        if cache.name:
            span.set_attribute("genroute.cache.name", cache.name)
        meta = cache.usage_metadata
        tokens = meta.total_token_count if meta is not None and meta.total_token_count else None
        if tokens is not None:
            span.set_attribute("genroute.cache.tokens", tokens)
        if charge is not None:
            _priced(span, charge(tokens), estimated=tokens is None)
    return cache


def _priced(span: trace.Span, cost: float, *, estimated: bool) -> None:
    attrs: dict[str, Any] = {"gen_ai.usage.cost.amount": cost, "gen_ai.usage.cost.currency": "USD"}
    if estimated:
        attrs["genroute.cost.estimated"] = True
    span.set_attributes(attrs)


def cache_gone(exc: BackendRejected) -> bool:
    """Whether a 4xx says the request's cached content no longer exists (expired or deleted)."""
    return exc.status in (400, 403, 404) and _CACHE_GONE.search(str(exc)) is not None
