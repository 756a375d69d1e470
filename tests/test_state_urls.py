"""A Redis URL with a password (in the user part or as redis-py's ``password`` option) or on a unix socket, against a
real ``redis-server`` that requires the password: taken, used, and the password never in a repr, a dump, a log line
or an error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from genroute.errors import StateUnavailable
from genroute.state import RedisStateConfig, build_state
from genroute.state.redis_store import RedisStateStore

from .chroma_fixtures import free_port
from .redis_fixtures import RedisServer

PASSWORD = "s3cr3t-Pw7"


@pytest.fixture
def locked_redis(tmp_path: Path) -> Iterator[RedisServer]:
    socket = tmp_path / "redis.sock"
    server = RedisServer(free_port(), tmp_path / "redis.log",
                         options=("--requirepass", PASSWORD, "--unixsocket", str(socket), "--unixsocketperm", "700"))
    server.start()
    yield server
    server.stop()


def _urls(server: RedisServer, socket: Path) -> list[str]:
    return [f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0?password={PASSWORD}",
            f"redis://default:{PASSWORD}@127.0.0.1:{server.port}/2",
            f"unix://:{PASSWORD}@{socket}", f"unix://{socket}?password={PASSWORD}&db=1"]


def test_a_password_or_a_unix_socket_in_the_url_is_used_and_never_shown(locked_redis: RedisServer, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    # The password given as redis-py's query option (redis://host/0?password=...) was shown in full by the config's
    # repr and dumps (only the user:password@ form was masked).
    for i, url in enumerate(_urls(locked_redis, tmp_path / "redis.sock")):
        store = build_state({"kind": "redis", "url": url, "prefix": f"u{i}:", "on_error": "closed"})
        assert isinstance(store, RedisStateStore)

        async def use(store: RedisStateStore = store) -> tuple[int, int]:
            held, _ = await store.hold("acct", 5, 10, ttl_s=60, keep_s=60)
            await store.settle("acct", held, 3, keep_s=60)
            try:
                return await store.usage("acct")
            finally:
                await store.aclose()

        assert asyncio.run(use()) == (3, 0)
        shown = [repr(store.config), str(store.config), str(store.config.model_dump()), store.config.model_dump_json()]
        assert all(PASSWORD not in text for text in shown), shown
        assert "***" in shown[0]

    # A wrong password, then the server gone: the error and the log line name the store without the password.
    for url in _urls(locked_redis, tmp_path / "redis.sock"):
        wrong = RedisStateStore(RedisStateConfig(kind="redis", url=url.replace(PASSWORD, PASSWORD + "x"),
                                                 on_error="closed"))
        with pytest.raises(StateUnavailable) as caught:
            asyncio.run(wrong.usage("acct"))
        assert PASSWORD not in str(caught.value)
    locked_redis.stop()
    with caplog.at_level(logging.WARNING, logger="genroute.state"):
        for url in _urls(locked_redis, tmp_path / "redis.sock"):
            store = RedisStateStore(RedisStateConfig(kind="redis", url=url, on_error="open", timeout_s=0.5,
                                                     connect_timeout_s=0.5))
            asyncio.run(store.usage("acct"))
            assert store.fallbacks == 1
    assert caplog.records and all(PASSWORD not in r.getMessage() for r in caplog.records)
