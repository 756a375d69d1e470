"""The Gemini engine: google-genai's async client for the Developer API, Vertex AI and tuned endpoints."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from genroute.engines.base import CacheCharge, Embeddings, Engine, engine_config
from genroute.runtime.deadlines import deadline_at
from genroute.engines.errors import cancellation_under, endpoint_of, map_error
from genroute.engines.gemini_config import GeminiEngineConfig, VertexConfig, url_problem  # noqa: F401 - VertexConfig: re-exported
from genroute.engines.gemini_keys import FALLBACK_ENV, env_key, make_client
from genroute.engines.gemini_request import (bill_lost, counted, ends_answer, leading_chunks, not_an_answer,
                                             sdk_contents, server_timeout, with_timeout)
from genroute.engines.gemini_sessions import LoopClients, supported
from genroute.engines.retry import call_with_retry
from genroute.errors import (BackendUnavailable, ConfigError, GenrouteError, StreamInterrupted, header_secrets,
                             without_credentials)

_T = TypeVar("_T")

if TYPE_CHECKING:
    from google import genai
    from pydantic import BaseModel
    from google.genai import types
    from opentelemetry import trace


#: A deadline must undercut the client's server-side deadline (its ``X-Server-Timeout`` header) by more than this
#: before an attempt sends its own: a timer (``genroute.runtime.deadlines``) enforces the deadline either way, and
#: the SDK's merge of per-request options cost ~25 % of its throughput at 1,000 concurrent requests
#: (``benchmarks/throughput.py``).
_OVERRIDE_MARGIN_S = 1.0


async def _close_quietly(chunks: Any) -> None:
    """Close an SDK stream; a failure to close a broken stream is not news."""
    try:
        await chunks.aclose()
    except Exception:  # the stream already failed; its own error is the one that matters
        pass


#: Gemini's limit on ``stop_sequences`` (its GenerationConfig reference: "up to 5"; a sixth is a 400).
GEMINI_MAX_STOPS = 5

class GeminiEngine(Engine):
    """Gemini through google-genai: Developer API or Vertex AI; tuned endpoints are model names."""

    kind: ClassVar[str] = "gemini"
    Config: ClassVar[type[BaseModel]] = GeminiEngineConfig
    caller_bounded: ClassVar[bool] = True
    caller_bounded_stream: ClassVar[bool] = True
    takes_text: ClassVar[bool] = True

    def __init__(self, name: str, config: GeminiEngineConfig | Mapping[str, Any] | None = None, *,
                 credentials: Any = None) -> None:
        config = engine_config(GeminiEngineConfig, name, config)
        super().__init__(name, config)
        self.config: GeminiEngineConfig = config
        self.provider = "gcp.vertex_ai" if config.vertex is not None else "gcp.gemini"
        self.max_stop_sequences = GEMINI_MAX_STOPS
        # Vertex AI bills a cache's creation at the standard input price, on top of its storage (its context cache
        # overview); the Developer API documents no such charge.
        self.cache_input_billed = config.vertex is not None
        if config.base_url is None and self.base_url is not None and url_problem(self.base_url):
            # The SDK's variable, checked as the setting is (else a retryable error on every request).
            raise ConfigError(f"{url_problem(self.base_url)} (engines.{name} reads it)", field=self._base_url_env)
        if config.vertex is not None and not (config.vertex.project or os.environ.get("GOOGLE_CLOUD_PROJECT")):
            # Without a project the SDK builds a URL with no path and sends the request to "/".
            raise ConfigError("Vertex AI needs a project: set vertex.project or GOOGLE_CLOUD_PROJECT",
                              field=f"engines.{name}.vertex.project")
        self._credentials = credentials
        self._client: genai.Client | None = None
        self._key: str | None = None  # the key read from the environment, once
        if config.vertex is None:  # read now, as google-genai's Client() does: no key is a ConfigError at build
            self._api_key()
        #: The HTTP options every client of this engine is made with (fixed when the first one is made).
        self._http: types.HttpOptions | None = None
        #: The longest an attempt can take: the engine's ``timeout_s``, or the retry budget where that is shorter
        #: (an attempt never outlives it; with the client's server-side deadline at most this, an engine with a
        #: long ``timeout_s`` sends no per-request HTTP options on every attempt).
        self._attempt_bound_s = min(config.timeout_s, config.retry.deadline_s)
        #: The client's server-side deadline: an attempt's bound, or a router's deadline where that is shorter
        #: (``expect_deadline``).
        self._client_timeout_s = self._attempt_bound_s
        # Import the SDK (1-4 s) now, while the router is built, not inside the first request: there it would
        # block the event loop and eat that request's deadline.
        import google.genai  # noqa: F401

        #: Async requests go through a client per event loop whose session skips aiohttp's per-request reads of
        #: the environment (``genroute.engines.gemini_sessions``); ``None``: through ``client``.
        self._loops = (LoopClients(self._client_on, self._shared_client, trust_env=config.trust_env)
                       if config.vertex is None and config.trust_env is not True and supported() else None)

    def __repr__(self) -> str:
        base_url = self.base_url
        base_url = None if base_url is None else without_credentials(base_url)
        return f"GeminiEngine(name={self.name!r}, provider={self.provider!r}, base_url={base_url!r})"

    @property
    def base_url(self) -> str | None:
        """The endpoint override in effect (config, then the SDK's env var), or ``None`` for Google's."""
        return self.config.base_url or os.environ.get(self._base_url_env) or None

    @property
    def _base_url_env(self) -> str:
        return "GOOGLE_VERTEX_BASE_URL" if self.config.vertex is not None else "GOOGLE_GEMINI_BASE_URL"

    def _api_key(self) -> str:
        """The key: inline, else read from the environment once (every client of this engine sends the same)."""
        if self._key is not None:
            return self._key
        if self.config.api_key is not None:
            return self.config.api_key.get_secret_value()
        key = env_key(self.name, self.config.api_key_env)
        if not key:
            raise ConfigError(f"no API key: set {self.config.api_key_env} (or {FALLBACK_ENV}), give api_key, or "
                              "configure vertex", field=f"engines.{self.name}.api_key_env")
        self._key = key
        return key

    def _secrets(self) -> tuple[str | None, ...]:
        try:
            key = (self._api_key(),) if self.config.vertex is None else ()
        except ConfigError:
            key = ()
        return key + header_secrets(self.config.header_values())

    def _http_options(self) -> types.HttpOptions:
        """The HTTP options of this engine's clients, made on first use."""
        if self._http is None:
            from google.genai import types

            # No HTTP timeout: aiohttp would schedule a timer for every request, which a request in flight holds
            # (with its context) until its time comes. An attempt is bounded by its caller's deadline timer (a
            # router's) or by one of its own (``_call``); the server still learns how long the client waits.
            self._http = types.HttpOptions(
                base_url=self.base_url,
                api_version=self.config.api_version,
                headers={**self.config.header_values(), **server_timeout(self._client_timeout_s)},
                # Retries live in genroute.engines.retry; one attempt here also stops the SDK's
                # implicit sleep-and-retry on connection errors.
                retry_options=types.HttpRetryOptions(attempts=1),
            )
        return self._http

    @property
    def client(self) -> genai.Client:
        """The google-genai client with the SDK's own sessions, built on first use.

        Sync calls, Vertex AI and tuning use it; async Developer API calls may go through a client per event loop
        instead (``trust_env``).
        """
        if self._client is None:
            http = self._http_options()
            vertex = self.config.vertex
            if vertex is not None:
                self._client = make_client(vertexai=True, project=vertex.project, location=vertex.location,
                                           credentials=self._credentials, http_options=http)
            else:  # vertexai=False: GOOGLE_GENAI_USE_VERTEXAI in the environment would send the key to Vertex AI
                self._client = make_client(api_key=self._api_key(), vertexai=False, http_options=http)
        return self._client

    def _shared_client(self) -> genai.Client:
        return self.client

    def _client_on(self, session: Any, context: ssl.SSLContext) -> genai.Client:
        """A Developer API client that sends through the aiohttp ``session`` (``LoopClients``), with ``context``
        for its SSL."""
        http = self._http_options().model_copy(update={
            "aiohttp_client": session,
            "client_args": {"verify": context},
            "async_client_args": {"verify": context, "ssl": context},
        })
        return make_client(api_key=self._api_key(), vertexai=False, http_options=http)

    def _aio(self) -> Any:
        """The SDK's async API for the running event loop."""
        loops = self._loops
        return self.client.aio if loops is None else loops.for_loop()

    def _map(self, exc: Exception) -> GenrouteError:
        return map_error(exc, backend=self.name, secrets=self._secrets(), endpoint=endpoint_of(self.base_url))

    async def _call(self, call: Awaitable[_T], seconds: float | None, billed: list[types.Content] | str | None = None,
                    config: types.GenerateContentConfig | None = None, whole: bool = False) -> _T:
        """Await one SDK call bounded by ``seconds`` (``None``: by the caller's own timer), its failure mapped to
        genroute's error tree.

        The one place every engine call gets its timeout and error mapping; a failed call that sent ``billed``
        (with ``config``) is billed first if the provider processed it anyway. A cancellation passes through
        unmapped. ``whole``: the result is a whole answer, and a body that is not one fails the attempt (billed).
        """
        try:
            if seconds is None:
                result = await call
            else:
                with deadline_at(time.monotonic() + seconds):
                    result = await call
        except BaseException as exc:
            cancelled = cancellation_under(exc) if isinstance(exc, Exception) else None
            if billed is not None:
                bill_lost(exc, billed, config)  # a cleanup failed under a cancellation: billed as that
            if cancelled is not None:  # a cleanup that failed under a cancellation: the cancellation goes on
                raise cancelled from None
            if not isinstance(exc, Exception) or isinstance(exc, GenrouteError):
                raise  # a cancellation (the caller is going away), or already genroute's (``from`` would cycle it)
            raise self._map(exc)
        # Its counts are checked where they are first read (``usage_of``, which the 200 that is not an answer is
        # billed by, as a served answer is).
        if whole and not result.candidates:  # type: ignore[attr-defined]  # whole: a GenerateContentResponse
            error = not_an_answer(result, billed or "", config, self.name)  # type: ignore[arg-type]
            if error is not None:
                raise error
        return result

    def _attempt_timeout(self, remaining_s: float) -> tuple[float, float | None]:
        """This attempt's timeout, and the same if the server must be told it (else ``None``: the client's
        ``X-Server-Timeout`` is the attempt's, or at most ``_OVERRIDE_MARGIN_S`` longer; a longer deadline is
        also told)."""
        seconds = min(self._attempt_bound_s, remaining_s)
        return seconds, None if 0 <= self._client_timeout_s - seconds <= _OVERRIDE_MARGIN_S else seconds

    def expect_deadline(self, seconds: float | None) -> None:
        """Size the client's server-side deadline (``X-Server-Timeout``) to a router's deadline where that is
        shorter than an attempt's bound, so that its requests send no per-request HTTP options (the SDK's merge
        of them costs ~30 % of a request's CPU, ``benchmarks/timeouts.py``); a request with another deadline
        still tells its own. Before the first client is built only (a later hint is ignored)."""
        if self._http is None:
            bound = self._attempt_bound_s
            self._client_timeout_s = bound if seconds is None else min(bound, seconds)

    def generate(  # returns the retry loop's coroutine: awaited as the ABC's
        self,
        model: str,
        contents: list[types.Content] | str,
        config: types.GenerateContentConfig | None = None,
        *,
        timeout_s: float | None = None,
        bounded: bool = False,
    ) -> Coroutine[Any, Any, types.GenerateContentResponse]:
        """One complete response, retried on retryable failures within ``timeout_s`` (awaited like the ABC's
        ``async def``; the retry loop's own coroutine, so that a request in flight holds one coroutine less).

        ``bounded``: the caller cancels the call when ``timeout_s`` runs out (``Engine.caller_bounded``), so an
        attempt that may last that long sets no timer of its own.
        """
        # Only when the request's deadline (not the engine's shorter retry budget) bounds the retries.
        bounded = bounded and timeout_s is not None and timeout_s <= self.config.retry.deadline_s
        # The class's function and its arguments, not a bound method in a partial: fewer objects held by each
        # request in flight.
        return call_with_retry(type(self)._generate_once, self.config.retry, self, model, contents, config, bounded,
                               deadline_s=timeout_s)

    def _generate_once(self, model: str, contents: list[types.Content] | str,
                       config: types.GenerateContentConfig | None, bounded: bool, remaining_s: float
                       ) -> Awaitable[types.GenerateContentResponse]:
        """One attempt: ``_call`` around the SDK call (returned, not awaited here: a request in flight holds one
        coroutine less)."""
        seconds, override = self._attempt_timeout(remaining_s)
        call = self._aio().models.generate_content(model=model, contents=sdk_contents(contents),
                                       config=with_timeout(config, override))
        # An attempt the caller's timer ends on time needs no timer of its own (one more per request would only
        # add work, and objects a request in flight holds); a shorter bound, or no caller's timer, needs one.
        return self._call(call, None if bounded and seconds >= remaining_s else seconds, contents, config, True)

    async def stream(
        self,
        model: str,
        contents: list[types.Content] | str,
        config: types.GenerateContentConfig | None = None,
        *,
        timeout_s: float | None = None,
        bounded: bool = False,
    ) -> AsyncGenerator[types.GenerateContentResponse, None]:
        """Partial responses; retried only until the first chunk, then failures are ``StreamInterrupted``.

        ``bounded``: the caller cancels each step of the stream when ``timeout_s`` runs out (the time its reader
        holds a chunk not counted), so an attempt that may last that long sets no timer of its own.
        """
        bounded = bounded and timeout_s is not None and timeout_s <= self.config.retry.deadline_s

        async def attempt(remaining_s: float) -> tuple[Any, list[types.GenerateContentResponse], float | None]:
            seconds, override = self._attempt_timeout(remaining_s)
            # None: the caller's timer ends this attempt on time (as in ``_generate_once``).
            end = None if bounded and seconds >= remaining_s else time.monotonic() + seconds
            chunks = None

            async def first_chunks() -> list[types.GenerateContentResponse]:
                nonlocal chunks
                leading: list[types.GenerateContentResponse] = []
                try:
                    chunks = await self._aio().models.generate_content_stream(
                        model=model, contents=sdk_contents(contents), config=with_timeout(config, override)
                    )
                    # A stream of no answer: retried (billed what its events reported).
                    return await leading_chunks(chunks, contents, config, self.name, leading)
                except BaseException as exc:  # billed here, where the usage its events reported is known
                    bill_lost(exc, contents, config, leading)
                    raise

            try:
                read = await self._call(first_chunks(), None if end is None else seconds)
            except BaseException:
                if chunks is not None:
                    await _close_quietly(chunks)
                raise
            return chunks, read, end

        chunks, read, end = await call_with_retry(attempt, self.config.retry, deadline_s=timeout_s)
        chunk: types.GenerateContentResponse | None = read.pop(0)  # None: the stream ended
        try:
            finished = False
            while chunk is not None:
                finished = ends_answer(chunk) or finished
                held = time.monotonic()
                yield chunk
                if end is not None:
                    end += time.monotonic() - held  # the time its reader held the chunk is not the attempt's
                if read:  # read in the attempt, before the first that answers
                    chunk = read.pop(0)
                    continue
                try:
                    with deadline_at(end):  # None: no timer
                        chunk = await anext(chunks, None)
                except Exception as exc:
                    if (cancelled := cancellation_under(exc)) is not None:
                        raise cancelled from None
                    mapped = self._map(exc)  # caused by exc (genroute's own as it is): a breaker counts a 5xx by it
                    status = getattr(mapped, "status", None)
                    raise StreamInterrupted(str(mapped), backend=self.name, status=status) from mapped
                if chunk is not None:  # its counts checked before it is read (the leading ones were, when read)
                    counted(chunk)
            if not finished:
                # A connection closed cleanly mid-answer must not pass for a complete (or a healthy) answer.
                why = "stream ended without a finish reason"
                raise StreamInterrupted(why, backend=self.name) from BackendUnavailable(why, backend=self.name)
        finally:
            # A consumer that stops early must not leave the HTTP response open.
            await _close_quietly(chunks)

    async def embed(self, model: str, texts: list[str], *, task_type: str | None = None,
                    output_dimensionality: int | None = None) -> Embeddings:
        """Embeddings of ``texts`` in order, ``embed_batch_size`` texts per request, with the input tokens they
        are billed (reported by Vertex AI, estimated for the Developer API: ``genroute.engines.gemini_embed``)."""
        from genroute.engines.gemini_embed import embed

        return await embed(self, model, texts, task_type=task_type, output_dimensionality=output_dimensionality)

    async def count_tokens(self, model: str, contents: list[types.Content]) -> int:
        """Prompt tokens of ``contents`` as the API counts them."""
        from google.genai import types

        async def attempt(remaining_s: float) -> int:
            seconds, _ = self._attempt_timeout(remaining_s)
            cfg = types.CountTokensConfig(http_options=types.HttpOptions(headers=server_timeout(seconds)))
            result = await self._call(
                self._aio().models.count_tokens(model=model, contents=contents, config=cfg), seconds)
            return int(result.total_tokens or 0)

        return await call_with_retry(attempt, self.config.retry)

    async def probe(self, model: str) -> str:
        """One ``countTokens`` call for ``model``, not retried (free: it proves the endpoint answers, the key is
        accepted and the model exists, not that generation has quota); its failure is genroute's error."""
        await self._call(self._aio().models.count_tokens(model=model, contents="health"), None)
        return f"countTokens for {model} answered"

    context_caching = True

    async def create_cache(self, model: str, contents: list[types.Content], *, ttl_s: int,
                           system: str | None = None, display_name: str | None = None,
                           timeout_s: float | None = None, tracer: trace.Tracer | None = None,
                           charge: CacheCharge | None = None) -> types.CachedContent:
        """A context cache of ``contents`` (and ``system``) for ``model``, in a ``create_cached_content`` span;
        ``charge`` prices what it is billed for and charges the caller (``traced_create``).

        One attempt, no retries: a cache only saves money, so a caller that cannot get one sends the
        prefix inline at once rather than waiting through backoffs.
        """
        from google.genai import types

        from genroute.engines.gemini_cache import traced_create

        seconds = self.config.timeout_s if timeout_s is None else min(timeout_s, self.config.timeout_s)
        cfg = types.CreateCachedContentConfig(
            contents=contents, system_instruction=system, ttl=f"{ttl_s}s", display_name=display_name,
            http_options=types.HttpOptions(headers=server_timeout(seconds)),
        )
        return await traced_create(self._call(self._aio().caches.create(model=model, config=cfg), seconds),
                                   self.provider, model, ttl_s, tracer=tracer, charge=charge)

    async def aclose(self) -> None:
        """Close the clients' HTTP sessions."""
        if self._loops is not None:
            await self._loops.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aio.aclose()
            client.close()
