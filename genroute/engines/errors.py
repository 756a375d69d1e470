"""The one place google-genai, HTTP-library and decoding errors become genroute errors.

    google.genai.errors.ClientError 408/429  -> BackendUnavailable (retry_after_s from Retry-After/RetryInfo)
    google.genai.errors.ClientError other    -> BackendRejected
    google.genai.errors.ServerError / 5xx    -> BackendUnavailable
    aiohttp / httpx transport errors, refused or reset connections, timeouts,
    cut bodies, malformed JSON (JSONDecodeError, UnknownApiResponseError), an answer the SDK cannot read
    as its type (a pydantic ValidationError of GenerateContentResponse...)
                                             -> BackendUnavailable
    an error status whose body is not JSON (a JSONDecodeError the SDK raises before its APIError)
                                             -> as its status would be, with that status
    google.auth TransportError               -> BackendUnavailable; RefreshError -> BackendRejected
    google.auth DefaultCredentialsError      -> ConfigError naming ``engines.<name>.vertex`` (no credentials)
    anything else (an SDK ValueError, TypeError, pydantic ValidationError...)
                                             -> BackendRejected with ``status=None`` (final: retrying
                                                cannot help), its message naming the exception type and
                                                the library it came from; the original is ``__cause__``

An error raised while a cancellation unwinds, with the task still being cancelled (a transport's cleanup on an event
loop closed under the request, after ``Router.close`` resumed and cancelled it elsewhere: "Event loop is closed") is
not mapped: the cancellation goes on (``cancellation_under``), as it would have had the cleanup worked.

A ``BackendRejected`` the provider sent always carries its HTTP status; one without a status did not come
from the provider. Caller mistakes never get here: requests and configs are validated when they enter
genroute, and a mistake is a ``UsageError``/``ConfigError`` naming the field before anything is sent.

Messages are scrubbed of API keys (the configured one and anything shaped like a Google key) and of credentials
in URLs, and so is the original exception and every exception chained to it, in place: a server that echoes
the key in its error body must not get it printed by ``logger.exception`` through ``__cause__`` (their HTTP
response and request objects, which hold the key's header, are dropped). The Chroma server path
(``genroute.knowledge.chroma_errors``) scrubs its errors with the same ``redact`` and ``scrub``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from genroute.errors import BackendRejected, BackendUnavailable, ConfigError, GenrouteError, without_secrets
from genroute.runtime.billing import malformed_answer

_KEY_PARAM = re.compile(r"(?i)([?&]key=)[^&\s'\"]+")
_MAX_MESSAGE = 500


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with the given secrets, anything that looks like a credential (API keys, tokens, private keys:
    ``genroute.errors.without_secrets``) and the credentials of URLs replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_PARAM.sub(r"\1***", without_secrets(text))


def map_error(exc: BaseException, *, backend: str | None = None, secrets: Iterable[str | None] = (),
              endpoint: str | None = None) -> GenrouteError:
    """The genroute error for ``exc``, caused by ``exc``; ``secrets`` are scrubbed from its message and from ``exc``'s
    chain; ``endpoint``: the ``host:port`` the call was sent to, named by a transport error that does not say. Raise
    it without ``from``: a genroute error comes back as it is, and ``raise ... from exc`` would make it its own cause
    (a cause-chain walker would loop for ever)."""
    if isinstance(exc, GenrouteError):
        return exc
    secrets = tuple(secrets)
    mapped = _map(exc, backend, secrets, endpoint)
    scrub(exc, secrets)
    mapped.__cause__ = exc  # also suppresses the context, as ``from`` would
    return mapped


def cancellation_under(exc: BaseException) -> asyncio.CancelledError | None:
    """The cancellation ``exc`` was raised in the handling of, if the running task is still being cancelled."""
    cause = exc.__context__
    for _ in range(8):  # a chain of a few handlers, at most (and no cycle is followed for ever)
        if cause is None:
            return None
        if isinstance(cause, asyncio.CancelledError):
            task = asyncio.current_task()
            return cause if task is not None and task.cancelling() else None
        cause = cause.__context__
    return None


#: Attributes of SDK and HTTP-library exceptions that hold the request or response (and so the key header).
_CARRIERS = ("response", "request", "_request", "request_info", "headers", "_response")


def scrub(exc: BaseException, secrets: Iterable[str | None] = ()) -> None:
    """Redact secrets in place from ``exc`` and every exception chained to it or held in its arguments and
    attributes; drop their HTTP objects, and the whole text a JSON parser was given (``JSONDecodeError.doc``: a
    malformed credentials file, private key and all)."""
    secrets = tuple(secrets)
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, json.JSONDecodeError):
            item.doc = ""
        try:
            item.args = tuple(_scrubbed(a, secrets) for a in item.args)
        except Exception:  # an exotic exception type that refuses it: the message check below still holds
            pass
        attrs = getattr(item, "__dict__", {})
        for name in list(attrs):
            try:
                if name in _CARRIERS:
                    setattr(item, name, None)
                elif isinstance(attrs[name], str | dict | list | tuple):
                    setattr(item, name, _scrubbed(attrs[name], secrets))
            except Exception:  # read-only properties and the like
                pass
        held = [v for v in (*item.args, *attrs.values()) if isinstance(v, BaseException)]
        stack += [item.__cause__, item.__context__, *held]


def _scrubbed(value: Any, secrets: tuple[str | None, ...]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _scrubbed(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrubbed(v, secrets) for v in value) if not hasattr(value, "_fields") else value
    return value


def _map(exc: BaseException, backend: str | None, secrets: tuple[str | None, ...],
         endpoint: str | None) -> GenrouteError:

    def msg(text: str) -> str:
        text = _OBJECT_REPR.sub(r"\1", redact(text, secrets))
        return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE] + "..."

    from google.genai import errors as genai_errors

    if isinstance(exc, genai_errors.APIError):
        code = int(exc.code) if isinstance(exc.code, int) else None
        head = " ".join(str(part) for part in (code, exc.status) if part)
        text = msg(f"{head}: {exc.message or _other_details(exc.details) or 'the response gave no error message'}")
        retry_after_s = _retry_after(getattr(getattr(exc, "response", None), "headers", None), exc.details)
        return _by_status(code, text, backend, retry_after_s, isinstance(exc, genai_errors.ServerError))
    auth = sys.modules.get("google.auth.exceptions")
    if auth is not None and isinstance(exc, auth.DefaultCredentialsError):
        cut_credentials_chain(exc)
        return ConfigError(msg(f"no Google Cloud credentials for Vertex AI: {exc}"),
                           field=f"engines.{backend}.vertex" if backend else None)
    response = _error_response(exc) if isinstance(exc, json.JSONDecodeError) else None
    if response is not None:  # an error status whose body is not JSON: the status still says what it was
        status: int | None = getattr(response, "status", None) or getattr(response, "status_code", None)
        reason = getattr(response, "reason", None) or getattr(response, "reason_phrase", None)
        head = " ".join(str(part) for part in (status, reason) if part)
        return _by_status(status, msg(f"{head}: the error body is not valid JSON ({exc})"), backend,
                          _retry_after(getattr(response, "headers", None)), False)
    if isinstance(exc, (json.JSONDecodeError, genai_errors.UnknownApiResponseError)):
        return BackendUnavailable(msg(f"malformed response body: {exc}"), backend=backend)
    if malformed_answer(exc):
        first = exc.errors()[0]  # its location and reason, not the input (which may echo what was sent)
        where = ".".join(str(part) for part in first["loc"])
        return BackendUnavailable(msg(f"malformed response body: {exc.title}.{where}: {first['msg']}"),
                                  backend=backend)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return BackendUnavailable("request timed out", backend=backend)
    if _is_transport_error(exc):
        return BackendUnavailable(msg(f"{type(exc).__name__}: {_transport_detail(exc, endpoint)}"), backend=backend)
    # Not a provider answer but a library's own exception (an argument it refused, or a bug): say so, so
    # that it cannot pass for the provider's refusal of the request.
    return BackendRejected(
        msg(f"unexpected {type(exc).__name__} raised in {_origin(exc)}, not by the provider: {exc}"),
        backend=backend)


#: An object's default repr (``<ssl.SSLContext object at 0x7f...>``): its class name says all a reader can use.
_OBJECT_REPR = re.compile(r"<(?:[\w.<>]*\.)?(\w+) object at 0x[0-9a-fA-F]+>")


def _transport_detail(exc: BaseException, endpoint: str | None) -> str:
    """What a transport error says, for a user: the host and port it could not reach and why (aiohttp's connector
    errors print their connection key instead, an SSL context's repr and all), else its own text and where it was
    sent (the request's, else ``endpoint``)."""
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    if isinstance(host, str) and isinstance(port, int):  # aiohttp's ClientConnectorError and its kinds
        cause = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)
        errno = getattr(cause, "errno", None)
        if isinstance(errno, int) and errno > 0:
            why = os.strerror(errno)  # asyncio's own text says "Connect call failed" for a refused connection
        else:
            why = (getattr(cause, "strerror", None) or str(cause or "")) or "no reason given"
        return f"cannot connect to {host}:{port}: {why}"
    detail = str(exc) or type(exc).__name__
    where = _request_endpoint(exc) or endpoint
    return detail if where is None or where in detail else f"{detail} (at {where})"


def _request_endpoint(exc: BaseException) -> str | None:
    """The host and port of the request ``exc`` failed (httpx's transport errors carry it), None if unknown."""
    try:
        url = exc.request.url  # type: ignore[attr-defined]  # httpx raises RuntimeError where it has none
    except Exception:
        return None
    return endpoint_of(str(url))


def endpoint_of(url: str | None) -> str | None:
    """``host:port`` of ``url`` (the scheme's port if it names none), None for no URL or one without a host."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is no number: nothing to name
        return None
    if not host:
        return None
    return f"{f'[{host}]' if ':' in host else host}:{port or (443 if parts.scheme == 'https' else 80)}"


def _by_status(code: int | None, text: str, backend: str | None, retry_after_s: float | None,
               server_error: bool) -> BackendUnavailable | BackendRejected:
    """The error for an error answer with HTTP status ``code``: 408, 429 and 5xx (or the SDK's ``ServerError``) are
    retryable, any other final."""
    if code in (408, 429) or (code is not None and code >= 500) or server_error:
        return BackendUnavailable(text, backend=backend, status=code, retry_after_s=retry_after_s)
    return BackendRejected(text, backend=backend, status=code)


def _error_response(exc: json.JSONDecodeError) -> Any:
    """The HTTP response whose error body could not be parsed into ``exc``, or None (a 200's body, say).

    The SDK reads an error status's body in ``google.genai.errors`` (``raise_for_async_response``), and through
    aiohttp catches only a wrong content type: a JSON error body that is not JSON escapes as a bare
    ``JSONDecodeError``. Its response is reachable only from that frame of the traceback.
    """
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_globals.get("__name__") == "google.genai.errors" and frame.f_code.co_name.startswith("raise_for"):
            for name in ("unwrapped_response", "response"):
                response = frame.f_locals.get(name)
                status = getattr(response, "status", None)
                if isinstance(status, int) or isinstance(getattr(response, "status_code", None), int):
                    return response
        tb = tb.tb_next
    return None


def _other_details(details: Any) -> str:
    """What an error body says beyond its (empty) message and status, as text; "" for nothing."""
    if isinstance(details, dict) and isinstance(details.get("error"), str):
        return details["error"]  # a proxy's {"error": "some text"}
    if isinstance(details, dict) and isinstance(details.get("error"), dict):
        details = details["error"]  # a Google body: what it says is under "error"
    if isinstance(details, dict):
        details = {k: v for k, v in details.items() if v and k not in ("code", "message", "status")}
    return str(details) if details else ""


def cut_credentials_chain(exc: BaseException) -> None:
    """Detach ``exc``, a failure to load credentials, from the errors it was raised from, and scrub it: its cause is
    the parser's error, which holds the file it could not read (a service account's private key)."""
    exc.__cause__ = exc.__context__ = None
    exc.__suppress_context__ = True
    scrub(exc)


def _origin(exc: BaseException) -> str:
    """The module whose code raised ``exc`` (its innermost traceback frame), else its type's module."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    name = tb.tb_frame.f_globals.get("__name__") if tb is not None else None
    return name if isinstance(name, str) else type(exc).__module__


def _is_transport_error(exc: BaseException) -> bool:
    # Only look at libraries already imported: an error cannot come from one that is not loaded.
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError, ConnectionError, EOFError)):
        return True
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
        return True
    for name in ("httpx", "httpx2"):
        module = sys.modules.get(name)
        if module is not None and isinstance(exc, module.TransportError | module.DecodingError):
            return True
    auth = sys.modules.get("google.auth.exceptions")
    if auth is not None and isinstance(exc, auth.TransportError):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError | PermissionError)


def _retry_after(headers: Any, details: Any = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header or a ``google.rpc.RetryInfo`` detail."""
    value = None
    if headers is not None:
        try:
            value = headers.get("Retry-After") or headers.get("retry-after")
        except Exception:  # exotic header containers: fall back to RetryInfo
            value = None
    if value:
        parsed = parse_retry_after(str(value))
        if parsed is not None:
            return parsed
    return _retry_info_delay(details)


def parse_retry_after(value: str) -> float | None:
    """Seconds from a ``Retry-After`` value: delta-seconds or an HTTP date."""
    value = value.strip()
    try:
        return _finite(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _retry_info_delay(details: Any) -> float | None:
    if isinstance(details, dict):
        error = details.get("error", details)  # a proxy may send {"error": "some text"}
        details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return None
    for item in details:
        delay = item.get("retryDelay") if isinstance(item, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return _finite(float(delay[:-1]))
            except ValueError:
                return None
    return None


def _finite(seconds: float) -> float | None:
    """``seconds``, at least 0; None if not finite (an "inf" or "nan" would stop the retries, or open a circuit
    breaker, for ever)."""
    return max(0.0, seconds) if math.isfinite(seconds) else None


__all__ = ["cut_credentials_chain", "endpoint_of", "map_error", "parse_retry_after", "redact", "scrub"]
