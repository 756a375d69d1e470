"""A Redis URL: checked when the store is built (redis-py reads it only at its first call), and shown without its
password (never in a log or an error), and how a store at one failed."""

from __future__ import annotations

import re

#: The path of a redis:// URL: none, or the database's number.
_DB_PATH = re.compile(r"/?([0-9]+/?)?", re.ASCII)


def check_url(url: str) -> None:
    """Raise ``ConfigError`` naming ``state.url`` unless redis-py can connect with ``url`` (checked at build: redis-py
    itself reads it only at the first call). The message never holds the URL: it may carry a password."""
    from urllib.parse import urlsplit

    from redis.asyncio.connection import Connection, parse_url
    from redis.exceptions import RedisError

    from genroute.errors import ConfigError, without_credentials

    try:
        scheme, _, path, _, _ = urlsplit(url)
        if scheme in ("redis", "rediss") and not _DB_PATH.fullmatch(path):
            # redis-py reads a path that is not a number as database 0, silently (and "/1/2" as 12).
            raise ConfigError(f"the path after the host is the database's number, as in redis://host:6379/0; "
                              f"{path!r} is not one", field="state.url")
        options = parse_url(url)
        # What the pool does at the first call: an unknown query option fails here, not in a request.
        # The type leaves out the query options parse_url adds, and does not see pop() take connection_class out.
        options.pop("connection_class", Connection)(**options)  # type: ignore[misc]
    except (ValueError, TypeError, RedisError) as exc:
        raise ConfigError(f"not a Redis URL redis-py can use: {without_credentials(str(exc))}",
                          field="state.url") from None


def redacted(url: str) -> str:
    """``url`` without its password (never in a log or an error)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def failure(exc: BaseException) -> str:
    """How the store failed, for an error or a log line: unreachable, or the error reply (its first line)."""
    import redis.exceptions

    from genroute.errors import without_credentials

    detail = without_credentials(str(exc).split("\n", 1)[0][:200])
    if isinstance(exc, redis.exceptions.ResponseError):
        return f"answered with an error ({type(exc).__name__}: {detail})"
    refused: BaseException | None = exc
    while refused is not None and not isinstance(refused, redis.exceptions.AuthenticationError):
        refused = refused.__cause__  # redis-py 5 raises it as a ConnectionError's cause on a unix socket
    if refused is not None:  # a wrong or missing password: not a network fault
        return f"refused this router's credentials ({type(refused).__name__}: {detail})"
    # Why (refused, timed out, a certificate not trusted...): never the password (redis-py's messages name the host).
    return f"is unreachable ({type(exc).__name__}: {detail})" if detail else "is unreachable"


def advice(failed: str) -> str:
    """What to do about a failure ``failure`` described, to end an error or a log line with ("" when it depends)."""
    if failed.startswith("is unreachable"):
        return "; start Redis (or Valkey) at that address, or correct state.url"
    if failed.startswith("refused this router's credentials"):
        return "; correct the password in state.url"
    return ""
