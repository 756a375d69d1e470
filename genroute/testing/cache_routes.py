"""Gemini context caches (``cachedContents``) on a ``GeminiTestServer``.

``CacheRoutes(srv)`` adds create, get and delete, and makes generate requests that name a
``cachedContent`` behave as the API does: an unknown or expired cache is answered 403
``CachedContent not found (or permission denied)``, and a known one is billed in the reply's usage
(``promptTokenCount`` includes the cached tokens, ``cachedContentTokenCount`` counts them; a cache holding media is
split by modality in ``cacheTokensDetails`` and counted in ``promptTokensDetails`` too).
Create and get answer the resource as the API does: ``name``, ``model``, ``displayName``, ``createTime``,
``updateTime``, ``expireTime`` (the create time plus ``ttl``, default one hour, or the given ``expireTime``)
and ``usageMetadata``; the input-only ``ttl`` is not echoed. Caches do not expire by the clock: ``expire()``
drops them.
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from genroute.testing.replies import Response, error_body, field_of, prompt_split, render_generate

if TYPE_CHECKING:
    from genroute.testing.server import GeminiTestServer, RecordedRequest

_PARENT = r"/[^/]+/(?:projects/[^/]+/locations/[^/]+/)?cachedContents"
_NAME = r"/[^/]+/(?P<name>(?:projects/[^/]+/locations/[^/]+/)?cachedContents/[^/:]+)"
GONE_MESSAGE = "CachedContent not found (or permission denied)"
_DEFAULT_TTL = timedelta(hours=1)  # the API's lifetime for a cache created with neither ttl nor expireTime
_DURATION = re.compile(r"(\d+(?:\.\d{1,9})?)s")  # google.protobuf.Duration in JSON


@dataclass(frozen=True)
class StoredCache:
    """One cache the server holds."""

    name: str
    model: str
    tokens: int
    body: Any
    created: datetime
    expires: datetime
    #: Its tokens by modality (``cacheTokensDetails``), or None for text alone.
    details: list[dict[str, Any]] | None = None


def _merged(usage: dict[str, Any], cached: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt's split by modality with the cache's added (the prompt counts the cached tokens too)."""
    prompt = usage.get("promptTokensDetails") or [
        {"modality": "TEXT", "tokenCount": usage["promptTokenCount"] - sum(d["tokenCount"] for d in cached)}]
    counts: dict[str, int] = {}
    for detail in (*prompt, *cached):
        counts[detail["modality"]] = counts.get(detail["modality"], 0) + detail["tokenCount"]
    return [{"modality": m, "tokenCount": n} for m, n in counts.items()]


class CacheRoutes:
    """Context-cache routes on ``server``; ``min_tokens`` makes smaller creates fail as the API's do (400)."""

    def __init__(self, server: GeminiTestServer, *, min_tokens: int = 0) -> None:
        self.server = server
        self.min_tokens = min_tokens
        self.caches: dict[str, StoredCache] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        server.route("POST", _PARENT, self._create)
        server.route("GET", _NAME, self._get)
        server.route("DELETE", _NAME, self._delete)
        server.route("POST", r"/[^/]+/[^:]+:(generateContent|streamGenerateContent)", self._generate)

    @property
    def creates(self) -> list[RecordedRequest]:
        """Every create request received (failed ones included), oldest first."""
        return [r for r in self.server.requests if r.method == "POST" and re.fullmatch(_PARENT, r.path)]

    def expire(self, name: str | None = None) -> None:
        """Drop cache ``name`` (every cache if ``None``), as its TTL running out would."""
        with self._lock:
            if name is None:
                self.caches.clear()
            else:
                self.caches.pop(name, None)

    def _create(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Response:
        tokens, details = prompt_split({"contents": field_of(request.body, "contents"),
                                        "system": field_of(request.body, "systemInstruction")})
        if tokens < self.min_tokens:
            message = (f"The cached content is of {tokens} tokens. The minimum token count to start caching "
                       f"is {self.min_tokens}.")
            return Response(status=400, body=error_body(400, message))
        created = datetime.now(timezone.utc)
        try:
            expires = expire_time(request.body, created)
        except ValueError as exc:
            return Response(status=400, body=error_body(400, str(exc)))
        model = str(field_of(request.body, "model") or "")
        prefix = request.path.split("/", 2)[2].rsplit("cachedContents", 1)[0]
        cache = StoredCache(name=f"{prefix}cachedContents/c{next(self._ids)}", model=model, tokens=tokens,
                            body=request.body, created=created, expires=expires, details=details)
        with self._lock:
            self.caches[cache.name] = cache
        return Response(body=self._describe(cache))

    def _get(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Response:
        cache = self.caches.get(match["name"])
        if cache is None:
            return Response(status=403, body=error_body(403, GONE_MESSAGE))
        return Response(body=self._describe(cache))

    def _delete(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Response:
        with self._lock:
            gone = self.caches.pop(match["name"], None)
        return Response(body={}) if gone else Response(status=403, body=error_body(403, GONE_MESSAGE))

    def _generate(self, server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Response:
        name = field_of(request.body, "cachedContent")
        cache = self.caches.get(name) if name else None
        if name and cache is None:
            return Response(status=403, body=error_body(403, GONE_MESSAGE))
        model = (request.model or "").rsplit("/", 1)[-1]
        reply = server.next_reply(request)
        response = render_generate(reply, request.body, model, server.next_id(), stream=request.stream)
        if cache is not None and reply.raw is None:
            for body in response.events or [response.body]:
                usage = body["usageMetadata"]
                usage["promptTokenCount"] += cache.tokens
                usage["totalTokenCount"] += cache.tokens
                usage["cachedContentTokenCount"] = cache.tokens
                if cache.details is not None:
                    usage["cacheTokensDetails"] = [dict(d) for d in cache.details]
                    usage["promptTokensDetails"] = _merged(usage, cache.details)
        return response

    @staticmethod
    def _describe(cache: StoredCache) -> dict[str, Any]:
        body: dict[str, Any] = {"name": cache.name, "model": cache.model, "createTime": rfc3339(cache.created),
                                "updateTime": rfc3339(cache.created), "expireTime": rfc3339(cache.expires),
                                "usageMetadata": {"totalTokenCount": cache.tokens}}
        display_name = field_of(cache.body, "displayName")
        if display_name:
            body["displayName"] = display_name
        return body


def expire_time(body: Any, created: datetime) -> datetime:
    """When a cache created at ``created`` expires: its ``expireTime``, or ``created`` plus its ``ttl``."""
    given = field_of(body, "expireTime")
    if given:
        try:
            return datetime.fromisoformat(str(given)).astimezone(timezone.utc)
        except ValueError:
            raise ValueError(f"Invalid value at 'cached_content.expire_time': {given!r}") from None
    ttl = field_of(body, "ttl")
    if not ttl:
        return created + _DEFAULT_TTL
    match = _DURATION.fullmatch(str(ttl))
    if match is None:
        raise ValueError(f"Invalid value at 'cached_content.ttl': {ttl!r}")
    return created + timedelta(seconds=float(match[1]))


def rfc3339(moment: datetime) -> str:
    """``moment`` as the API writes timestamps: UTC, microseconds, a ``Z`` suffix."""
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
