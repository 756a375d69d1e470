"""A loopback server that speaks the Gemini REST API, for tests and benchmarks.

The real ``google-genai`` client talks to it over HTTP on ``127.0.0.1``, so code under test runs the
SDK's own serialisation, streaming and error paths; nothing in the SDK is patched::

    from google import genai
    from google.genai import types
    from genroute.testing import Fault, GeminiTestServer

    with GeminiTestServer() as srv:
        client = genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=srv.base_url))
        srv.reply_text("Hello!", usage=(10, 3))             # next generate/stream answer
        srv.fault(Fault.status(429, retry_after=1))          # ...but first a rate limit
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")   # raises ClientError 429
        client.models.generate_content(model="gemini-2.5-flash", contents="hi").text  # "Hello!"
        assert srv.requests[-1].path == "/v1/models/gemini-2.5-flash:generateContent"

Setting ``GOOGLE_GEMINI_BASE_URL=srv.base_url`` works too. Vertex clients
(``genai.Client(vertexai=True, project=..., location=..., credentials=...)`` with
``http_options=HttpOptions(base_url=srv.base_url)``) reach the same routes.

Routes served (any API version prefix, Developer API and Vertex resource names alike):

- ``POST /{version}/{resource}:generateContent`` and ``:streamGenerateContent?alt=sse`` where
  ``resource`` is ``models/M``, ``tunedModels/T``, ``projects/P/locations/L/publishers/google/models/M``
  or a tuned endpoint ``projects/P/locations/L/endpoints/E``;
- ``:countTokens`` (``{"totalTokens": n}``, about four characters per token);
- ``:embedContent``, ``:batchEmbedContents`` and Vertex ``:predict``: deterministic unit vectors from a
  hash of each text, ``embedding_dim`` (768) wide unless the request sets ``outputDimensionality``. Answers
  to Vertex AI paths report each text's tokens (``statistics.token_count``; ``usageMetadata`` for a single
  ``embedContent``) as ``srv.embed_tokens(text)`` counts them (default: about four characters a token);
  the Developer API's ``batchEmbedContents`` answer reports none, as the real one does.

Scripting:

- ``reply_text(text, usage=(prompt, output[, thoughts]), chunks=N)``, ``reply_function_call(name, args)``,
  ``reply_parts([...wire parts...])`` and ``reply(Reply(...))`` queue answers for generate/stream
  requests, oldest first. Streams split the text into ``chunks`` SSE events (default: up to 3), each text
  part on its own, so a piece keeps its part's ``thought`` / ``thoughtSignature``; as the API does, every event carries ``usageMetadata`` so far (the whole prompt, the output sent until then) and the
  last one the ``finishReason`` and the full usage. ``Fault.cut_stream(after_chunks=N)`` after such events
  leaves a client holding the usage of N chunks.
- ``reply_json(body)`` queues a raw response body (a list: one SSE event per item);
  ``reply_json(body, path=regex, method="GET", status=200, headers={...})`` answers the next request(s) to any
  path (bytes as they are; a ``Content-Type`` header given replaces the JSON one).
- ``route(method, path_regex, handler)`` adds a handler ``handler(server, request, match)`` that returns a
  JSON body or a ``Response``; later routes win. Use it for APIs not built in: ``TuningRoutes(srv)``
  (``genroute.testing.tuning_routes``) adds Vertex tuning jobs and Cloud Storage uploads this way.
- With nothing queued, generate answers ``"echo: <last user text>"`` (the last text part of a ``user`` turn;
  model turns and function results are not echoed) with usage estimated from the request size; replace
  ``srv.default_reply`` (a function of the request) to change that. A prompt with media (``inlineData`` or
  ``fileData`` parts) is counted by modality, as the API does, in ``promptTokensDetails`` on every answer and stream
  event (``TEXT``, ``AUDIO``, ``IMAGE``, ``VIDEO``, ``DOCUMENT``: an image 258 tokens, inline audio, video or a
  document a token per 1,000 bytes, about Gemini's 32 tokens a second of 16 kHz 16-bit mono audio, and a file 258); a
  text prompt gets no split, and a scripted ``usage`` is sent as it is.
- A generate, countTokens or embed request whose body is not JSON gets the API's 400 ``INVALID_ARGUMENT``.
- ``api_key="k"`` makes the server answer 400 ``API key not valid`` to any other ``x-goog-api-key``.

Faults (``srv.fault(fault, times=1)``) apply to the next requests on any path, before replies, and a
faulted request does not use up a queued reply (except ``delay`` and ``cut_stream``, which answer):

- ``Fault.status(code, retry_after=s, after_chunks=None)``: a Google error body (with a ``google.rpc.RetryInfo``
  ``retryDelay`` such as ``"0.5s"`` when ``retry_after`` is set, and a ``Retry-After`` header when it is whole
  seconds, the only form HTTP allows); on a stream with ``after_chunks`` the error
  arrives as an SSE ``{"error": ...}`` event after that many good events;
- ``Fault.delay(seconds)``: a slow server (``after_chunks=N``: a stream that stalls after N events, then goes
  on); ``Fault.malformed_json()``: 200 with invalid JSON (``status=503``: that error status with a JSON error
  body cut short);
- ``Fault.cut_stream(after_chunks=1)``: the connection drops mid-body after that many SSE events, or that many
  bytes of a plain body (at least one, never all): chunked encoding is left unterminated and a plain body falls
  short of its ``Content-Length``, so clients see an incomplete response rather than a short complete one;
- ``Fault.reset()``: the TCP connection is reset without an answer.

Every request is recorded in ``srv.requests`` (``RecordedRequest``: method, path, query, lower-cased
headers, parsed JSON ``body``, ``raw_body``, and the derived ``model``, ``action``, ``stream``).
``CacheRoutes(srv)`` adds context caches (``cachedContents`` create/get/delete, answered with ``createTime``,
``expireTime`` and ``displayName``; generate requests naming a
missing cache get the API's 403, cached tokens show in usage, split by modality in ``cacheTokensDetails`` for a cache
holding media; ``expire()`` drops caches).
Also here: ``TuningRoutes(srv)`` adds Vertex tuning-job create/get routes with scripted states,
``credentials.write_credentials(path)`` writes application-default credentials for code that finds its own, and
``OtlpReceiver`` is a loopback OTLP/HTTP collector that decodes exported spans and metrics (with
``hang()``/``fail()`` to test that telemetry never hurts requests).

The server sets ``TCP_NODELAY`` on accepted sockets (Nagle would add ~40 ms per call).
"""

from genroute.testing.cache_routes import CacheRoutes
from genroute.testing.faults import Fault
from genroute.testing.replies import Reply, Response, fake_embedding
from genroute.testing.otlp import OtlpReceiver
from genroute.testing.server import GeminiTestServer, RecordedRequest
from genroute.testing.tuning_routes import TuningRoutes

__all__ = ["CacheRoutes", "Fault", "GeminiTestServer", "OtlpReceiver", "RecordedRequest", "Reply", "Response",
           "TuningRoutes", "fake_embedding"]
