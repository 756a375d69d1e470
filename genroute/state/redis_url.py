"""A Redis URL: checked when the store is built (redis-py reads it only at its first call), and shown without its
password (never in a log or an error)."""

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
