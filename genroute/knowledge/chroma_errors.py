"""The one place Chroma failures become genroute errors.

    refused/reset connections, timeouts (server mode)      -> BackendUnavailable
    ChromaError 429 (RateLimitError), >= 500 (InternalError,
    VersionMismatchError)                                  -> BackendUnavailable (status set)
    ChromaError 401/403 (AuthorizationError, AuthError)    -> ConfigError (knowledge.headers)
    other ChromaError (InvalidArgumentError, InvalidDimension,
    DuplicateID, BatchSizeExceededError, NotFoundError...) -> UsageError
    ValueError / TypeError raised in chromadb's code       -> UsageError (the client's own checks)
    bare Exception from the HTTP client (an error body it
    could not parse: a crashed server's or proxy's page)   -> BackendUnavailable (server mode)
    anything else                                          -> not mapped (a bug: let it through)

Secrets are scrubbed as on the Gemini path (``genroute.engines.errors.redact``/``scrub``): the values of the
client's configured headers (an auth token, with or without its ``Bearer`` word) and the credentials of any URL
are replaced in the mapped message and, in place, in the original exception and everything chained to it
(their HTTP request and response objects, which hold the headers, are dropped), so a server or proxy that
echoes them cannot get them into a log through ``__cause__``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from genroute.engines.errors import redact, scrub
from genroute.errors import BackendUnavailable, ConfigError, GenrouteError, UsageError, header_secrets

_CONNECTION_ERRORS = frozenset({"ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout",
                                "RemoteProtocolError", "ReadError", "WriteError", "ConnectionError",
                                "ConnectionRefusedError", "ConnectionResetError"})


def map_chroma_error(exc: BaseException, *, location: str, server: bool,
                     secrets: Iterable[str] = ()) -> GenrouteError | None:
    """The genroute error for ``exc`` raised by Chroma at ``location``, or ``None`` if it is not Chroma's.

    ``secrets`` (and URL credentials) are scrubbed from its message and, in place, from ``exc``'s chain."""
    if isinstance(exc, GenrouteError):
        return exc
    secrets = tuple(secrets)
    mapped = _map(exc, location, server, lambda text: redact(text, secrets))
    scrub(exc, secrets)
    return mapped


def unreachable(exc: BaseException, *, location: str, headers: Mapping[str, str]) -> BackendUnavailable:
    """The error for a server the client could not reach when it was made, scrubbed like the others."""
    secrets = header_secrets(headers)
    scrub(exc, secrets)
    return BackendUnavailable(redact(f"cannot reach {location}: {exc}", secrets), backend="knowledge")


def _map(exc: BaseException, location: str, server: bool, clean: Callable[[str], str]) -> GenrouteError | None:
    from chromadb.errors import ChromaError

    if server and is_connection_error(exc):
        return BackendUnavailable(clean(f"{location}: {exc}"), backend="knowledge")
    if isinstance(exc, ChromaError):
        code = exc.code()
        text = clean(f"{location}: {exc.name()}: {exc}")
        if code == 429 or code >= 500:  # overloaded or failing: a policy may fall through to another rung
            return BackendUnavailable(text, backend="knowledge", status=code)
        if code in (401, 403):
            return ConfigError(text, field="knowledge.headers")
        return UsageError(text)
    if isinstance(exc, ValueError | TypeError) and _raised_in_chromadb(exc):  # not genroute's own bugs
        return UsageError(clean(f"{location}: {exc}"))
    if server and type(exc) is Exception:
        return BackendUnavailable(clean(f"{location}: {exc}")[:500], backend="knowledge")
    return None


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a failure to reach or keep talking to a server."""
    names = {type(e).__name__ for e in (exc, exc.__cause__, exc.__context__) if e is not None}
    return bool(names & _CONNECTION_ERRORS) or "Could not connect" in str(exc)


def _raised_in_chromadb(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc`` is chromadb's code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return isinstance(module, str) and module.split(".")[0] == "chromadb"
