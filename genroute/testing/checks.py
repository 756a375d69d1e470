"""The checks of what a test gives the loopback servers (``GeminiTestServer``, ``OtlpReceiver``): each a
``UsageError`` naming the setting, raised in the test's own call rather than later inside a server thread."""

from __future__ import annotations

import re
from typing import Any

from genroute.bounds import is_whole
from genroute.errors import UsageError


def check_settings(host: Any, port: Any, embedding_dim: Any, api_key: Any) -> None:
    """``UsageError`` naming the server setting of the wrong kind, before the socket is bound (a port of -1 was an
    ``OverflowError``, an ``embedding_dim`` of 0 answered every embedding request with an empty vector)."""
    check_address(host, port)
    if not is_whole(embedding_dim) or embedding_dim < 1:
        raise UsageError(f"must be a whole number >= 1, got {embedding_dim!r}", field="embedding_dim")
    if api_key is not None and not isinstance(api_key, str):
        raise UsageError(f"must be text or None, not {type(api_key).__name__}", field="api_key")


def check_address(host: Any, port: Any) -> None:
    """``UsageError`` naming ``host`` or ``port`` unless they are an address a loopback server can bind (a port of
    -1 was an ``OverflowError`` from bind())."""
    if not isinstance(host, str) or not host:
        raise UsageError(f"must be a host name or address, not {host!r}", field="host")
    if not is_whole(port) or not 0 <= port <= 65535:
        raise UsageError(f"must be a TCP port from 0 (any free one) to 65535, got {port!r}", field="port")


def check_queued(item: Any, kind: type, times: Any) -> None:
    """``UsageError`` unless ``item`` is a ``kind`` (a ``Reply``, a ``Fault``) and ``times`` a whole number >= 1."""
    if not isinstance(item, kind):
        raise UsageError(f"must be a {kind.__name__} (build one with its class), not {type(item).__name__}",
                         field=kind.__name__.lower())
    check_times(times)


def check_times(times: Any) -> None:
    """``UsageError`` naming ``times`` unless it is a whole number >= 1."""
    if not is_whole(times) or times < 1:
        raise UsageError(f"must be a whole number >= 1, got {times!r}", field="times")


def check_status(status: Any) -> None:
    """``UsageError`` naming ``status`` unless it is an HTTP status."""
    if not is_whole(status) or not 100 <= status <= 599:
        raise UsageError(f"must be an HTTP status from 100 to 599, got {status!r}", field="status")


def compile_path(path: Any) -> re.Pattern[str]:
    """``path`` compiled as a regular expression; ``UsageError`` naming ``path`` if it is none."""
    try:
        return re.compile(path)
    except (TypeError, re.error) as exc:
        raise UsageError(f"must be a regular expression matching URL paths ({exc})", field="path") from None
