"""The loopback Gemini REST server: a route table, scripted replies, a fault queue and a request log."""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from genroute.errors import UsageError
from genroute.testing.checks import check_queued, check_settings, check_status, check_times, compile_path
from genroute.testing.faults import Fault
from genroute.testing.wire import reset, send
from genroute.testing.replies import (
    Reply,
    Response,
    default_text,
    embed_response,
    error_body,
    estimate_tokens,
    retry_after_header,
    field_of,
    prompt_tokens,
    render_generate,
)

_MODEL_PATH = re.compile(r"/(?P<version>[^/]+)/(?P<resource>[^:]+):(?P<action>[A-Za-z]+)")
#: Methods whose request body is JSON: any other body gets the API's 400 INVALID_ARGUMENT.
_JSON_ACTIONS = frozenset({"generateContent", "streamGenerateContent", "countTokens", "embedContent",
                           "batchEmbedContents", "predict"})


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw_body: bytes

    @property
    def action(self) -> str | None:
        """The method after the colon (``generateContent``, ``streamGenerateContent``...), if any."""
        match = _MODEL_PATH.fullmatch(self.path)
        return match["action"] if match else None

    @property
    def model(self) -> str | None:
        """The resource before the colon, without the API version (``models/gemini-2.5-flash``)."""
        match = _MODEL_PATH.fullmatch(self.path)
        return match["resource"] if match else None

    @property
    def stream(self) -> bool:
        """Whether the client asked for an SSE stream."""
        return self.action == "streamGenerateContent"


#: A route handler: gets the server, the request and the path match; answers a Response or a JSON body.
Handler = Callable[["GeminiTestServer", RecordedRequest, "re.Match[str]"], "Response | dict[str, Any]"]


class _HTTPServer(ThreadingHTTPServer):
    owner: GeminiTestServer  # set right after construction
    daemon_threads = True
    block_on_close = False
    # socketserver's default backlog of 5 drops connections when hundreds of clients connect at once.
    request_queue_size = 1024

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (its timeout, a cancelled stream) is routine here, not a server bug to print.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        # Without this, Nagle + delayed ACK add ~40 ms to every small response.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.owner._lock:
            self.owner._connections.add(conn)
        return conn, addr

    def shutdown_request(self, request: Any) -> None:
        with self.owner._lock:
            self.owner._connections.discard(request)
        super().shutdown_request(request)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _dispatch(self) -> None:
        self.server.owner._handle(self)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _dispatch


class GeminiTestServer:
    """A Gemini REST API on ``127.0.0.1`` for tests and benchmarks; see ``genroute.testing``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, embedding_dim: int = 768,
                 api_key: str | None = None) -> None:
        check_settings(host, port, embedding_dim, api_key)
        self.embedding_dim = embedding_dim
        self.api_key = api_key
        #: Tokens a Vertex AI embedding answer reports for a text (default: about four characters a token).
        self.embed_tokens: Callable[[str], int] = estimate_tokens
        self.default_reply: Callable[[RecordedRequest], Reply] = lambda req: Reply(
            parts=({"text": default_text(req.body)},)
        )
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._faults: deque[Fault] = deque()
        self._scripted: list[tuple[str | None, re.Pattern[str], deque[Response]]] = []
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._stopped = threading.Event()
        self._counter = 0
        self._connections: set[socket.socket] = set()  # accepted and not yet closed: ``stop`` drops them
        self._httpd = _HTTPServer((host, port), _RequestHandler)
        self._httpd.owner = self
        self._thread: threading.Thread | None = None
        self.route("POST", r"/[^/]+/[^:]+:(generateContent|streamGenerateContent)", _generate)
        self.route("POST", r"/[^/]+/[^:]+:countTokens", _count_tokens)
        self.route("POST", r"/[^/]+/[^:]+:(embedContent|batchEmbedContents|predict)", _embed)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: pass it as ``HttpOptions(base_url=...)`` or ``GOOGLE_GEMINI_BASE_URL``."""
        host, port = self._httpd.socket.getsockname()[:2]  # what server_address holds, typed as a str
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self._httpd.server_address[1])

    def start(self) -> GeminiTestServer:
        """Serve in a background thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"gemini-test-server:{self.port}", daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: close the listening socket and every connection a client holds open (kept alive for its
        next request), as a server that goes down does; a later request gets a refused or dropped connection."""
        self._stopped.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        with self._lock:
            held, self._connections = list(self._connections), set()
        for conn in held:  # the handler threads still reading them end on the EOF
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by its client
                pass

    def __enter__(self) -> GeminiTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"GeminiTestServer(base_url={self.base_url!r}, requests={len(self._requests)})"

    # -- scripting -------------------------------------------------------------------------------

    def reply(self, reply: Reply, *, times: int = 1) -> None:
        """Queue ``reply`` for the next ``times`` generate/stream requests."""
        check_queued(reply, Reply, times)
        with self._lock:
            self._replies.extend([reply] * times)

    def reply_parts(self, parts: list[dict[str, Any]], *, usage: tuple[int, ...] | None = None,
                    finish_reason: str = "STOP", chunks: int | None = None, times: int = 1) -> None:
        """Queue a reply made of wire-format parts (``{"text": ...}``, ``{"functionCall": ...}``)."""
        self.reply(Reply(parts=tuple(parts), usage=usage, finish_reason=finish_reason, chunks=chunks), times=times)

    def reply_text(self, text: str, *, usage: tuple[int, ...] | None = None, finish_reason: str = "STOP",
                   chunks: int | None = None, times: int = 1) -> None:
        """Queue a text answer; ``usage`` is (prompt, output) tokens, or (prompt, output, thoughts) for a thinking
        model's answer; streams send it in ``chunks`` events."""
        if not isinstance(text, str):
            raise UsageError(f"must be text, not {type(text).__name__}", field="text")
        self.reply_parts([{"text": text}], usage=usage, finish_reason=finish_reason, chunks=chunks, times=times)

    def reply_function_call(self, name: str, args: Mapping[str, Any] | None = None, *,
                            usage: tuple[int, int] | None = None, call_id: str | None = None,
                            times: int = 1) -> None:
        """Queue a ``functionCall`` answer."""
        call: dict[str, Any] = {"name": name, "args": dict(args or {})}
        if call_id is not None:
            call["id"] = call_id
        self.reply_parts([{"functionCall": call}], usage=usage, times=times)

    def reply_json(self, body: Any, *, path: str | None = None, method: str | None = None,
                   status: int = 200, headers: Mapping[str, str] | None = None, times: int = 1) -> None:
        """Queue a raw JSON answer.

        Without ``path`` it is the next generate/stream response body (a list: one SSE event each).
        With ``path`` (a regex matched against the whole URL path) it answers the next ``times``
        requests to that path, whatever the route table says.
        """
        check_status(status)
        if path is None:
            if status != 200 or headers:  # was silently dropped: the body went out as a 200
                raise UsageError("is sent only with `path`; without it the body is the next generate answer (a 200: "
                                 "Fault.status sends an error)", field="status" if status != 200 else "headers")
            self.reply(Reply(raw=body), times=times)
            return
        pattern = compile_path(path)
        check_times(times)
        response = Response(status=status, body=body, headers=dict(headers or {}))
        with self._lock:
            for m, p, queue in self._scripted:
                if m == (method.upper() if method else None) and p.pattern == pattern.pattern:
                    queue.extend([response] * times)
                    return
            self._scripted.append((method.upper() if method else None, pattern, deque([response] * times)))

    def fault(self, fault: Fault, *, times: int = 1) -> None:
        """Queue ``fault`` for the next ``times`` requests (any path), before any reply is used."""
        check_queued(fault, Fault, times)
        with self._lock:
            self._faults.extend([fault] * times)

    def route(self, method: str, path: str, handler: Handler) -> None:
        """Add a handler for ``method`` and a path regex; later routes win over earlier ones."""
        if not isinstance(method, str) or not callable(handler):
            raise UsageError("give an HTTP method and a handler (request) -> Response",
                             field="method" if not isinstance(method, str) else "handler")
        compiled = compile_path(path)
        with self._lock:
            self._routes.insert(0, (method.upper(), compiled, handler))

    def clear(self) -> None:
        """Forget recorded requests and every queued reply and fault."""
        with self._lock:
            self._requests.clear()
            self._replies.clear()
            self._faults.clear()
            self._scripted.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def next_reply(self, request: RecordedRequest) -> Reply:
        """The queued reply for a generate request, or the default one."""
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return self.default_reply(request)

    def next_id(self) -> str:
        """A fresh ``responseId``."""
        with self._lock:
            self._counter += 1
            return f"loopback-{self._counter}"

    # -- serving ---------------------------------------------------------------------------------

    def _handle(self, h: _RequestHandler) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = _parse_json(raw)
        request = RecordedRequest(
            method=h.command, path=url.path, query=dict(parse_qsl(url.query)),
            headers={k.lower(): v for k, v in h.headers.items()}, body=body, raw_body=raw,
        )
        with self._lock:
            self._requests.append(request)
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.kind == "reset":
            reset(h)
            return
        stall: tuple[int, float] | None = None
        if fault is not None and fault.kind == "delay":
            if request.stream and fault.after_chunks:
                stall = (fault.after_chunks, fault.seconds)
            else:
                self._stopped.wait(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "status" and not (request.stream and fault.after_chunks):
            headers = retry_after_header(fault.retry_after)
            send(h, Response(status=fault.code, body=error_body(fault.code, fault.message, fault.retry_after),
                              headers=headers))
            return
        if fault is not None and fault.kind == "malformed_json":
            if fault.code not in (0, 200):  # an error answer is a plain body, streamed request or not
                send(h, Response(status=fault.code, body=b'{"error": {"code": %d, "mess' % fault.code))
            elif request.stream:
                send(h, Response(events=[b'{"candidates": [{"content": {"parts": [{"te']))
            else:
                send(h, Response(body=b'{"candidates": [{"content": {"parts": [{"te'))
            return
        response = self._route(request)
        if fault is not None and fault.kind == "status":  # a stream failing after some events
            events = list(response.events or [])[: fault.after_chunks]
            events.append(error_body(fault.code, fault.message, fault.retry_after))
            response = Response(events=events)
        send(h, response, cut_after=fault.after_chunks if fault is not None and fault.kind == "cut_stream" else None,
              stall=None if stall is None else (stall[0], lambda: self._stopped.wait(stall[1])))

    def _route(self, request: RecordedRequest) -> Response:
        if self.api_key is not None:
            given = request.headers.get("x-goog-api-key") or request.query.get("key")
            if given is not None and given != self.api_key:
                return Response(status=400, body=error_body(400, "API key not valid. Please pass a valid API key."))
        with self._lock:
            for method, pattern, queue in self._scripted:
                if (method is None or method == request.method) and queue and pattern.fullmatch(request.path):
                    return queue.popleft()
            routes = list(self._routes)
        if request.action in _JSON_ACTIONS and request.raw_body and request.body is None:
            return Response(status=400, body=error_body(400, "Invalid JSON payload received."))
        for method, pattern, handler in routes:
            match = pattern.fullmatch(request.path)
            if method == request.method and match:
                try:
                    answer = handler(self, request, match)
                except Exception as exc:  # a broken handler is a 500, as a real server would answer
                    return Response(status=500, body=error_body(500, f"handler failed: {exc!r}"))
                return answer if isinstance(answer, Response) else Response(body=answer)
        return Response(status=404, body=error_body(404, f"no route for {request.method} {request.path}"))


def _parse_json(raw: bytes) -> Any:
    """The JSON value of a request body; ``None`` for an empty body or one that is not JSON."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _generate(server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> Response:
    model = (request.model or "").rsplit("/", 1)[-1]
    reply = server.next_reply(request)
    return render_generate(reply, request.body, model, server.next_id(), stream=request.stream)


def _count_tokens(server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> dict[str, Any]:
    body = field_of(request.body, "generateContentRequest") or request.body
    return {"totalTokens": prompt_tokens(body)}


def _embed(server: GeminiTestServer, request: RecordedRequest, match: re.Match[str]) -> dict[str, Any]:
    vertex = "/projects/" in request.path  # a Vertex AI resource name: counts come with the answer
    return embed_response(request.action or "", request.body, server.embedding_dim, vertex=vertex,
                          tokens=server.embed_tokens)

