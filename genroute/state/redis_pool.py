"""``LoopConnections``: a Redis state store's connections, one redis-py asyncio client (and pool) per event loop.

redis-py's asyncio connections belong to the loop that opened them, so a store used from several loops (``generate``
on the router's portal loop, ``agenerate`` on the application's, ``asyncio.run`` per call) keeps one pool per loop. A
loop that ends as ``asyncio.run`` ends it closes its pool there first (``genroute.runtime.loop_end``). A pool's
connections hold their loop, so a weak key alone never lets go of one: a new loop's first call drops the pools of
loops closed since (those of a loop closed without shutting down its async generators are left to the garbage
collector, which closes their sockets).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, NamedTuple

from genroute.runtime.loop_end import LoopEnd
from genroute.state import RedisStateConfig
from genroute.state.redis_script import SCRIPT

#: How long a call may wait for a free pooled connection before the store counts as unreachable.
POOL_WAIT_S = 5.0


class Connection(NamedTuple):
    """One event loop's client, its script handle, and the lock that lets one call at a time replay."""

    client: Any
    script: Any
    replaying: asyncio.Lock


class LoopConnections:
    """The ``Connection`` of each event loop a store is used from."""

    def __init__(self, config: RedisStateConfig) -> None:
        self.config = config
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Connection] = weakref.WeakKeyDictionary()
        #: What closes each loop's pool as that loop shuts down.
        self._ends: dict[asyncio.AbstractEventLoop, LoopEnd] = {}

    def get(self) -> Connection | None:
        """The running loop's connection, if it has one."""
        return self._by_loop.get(asyncio.get_running_loop())

    def open(self) -> Connection:
        """A new connection for the running loop, after letting go of those of loops closed since."""
        import redis.asyncio

        for gone in [loop for loop in {*self._by_loop, *self._ends} if loop.is_closed()]:
            self._by_loop.pop(gone, None)
            end = self._ends.pop(gone, None)
            if end is not None:
                end.end()
        # A blocking pool: a burst of concurrent requests queues for a connection instead of failing.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            self.config.url, max_connections=self.config.max_connections, timeout=POOL_WAIT_S,
            socket_timeout=self.config.timeout_s, socket_connect_timeout=self.config.connect_timeout_s)
        # No retries below ours: the pool's connections have none (redis-py's async default).
        client = redis.asyncio.Redis(connection_pool=pool)
        loop = asyncio.get_running_loop()
        found = self._by_loop[loop] = Connection(client, client.register_script(SCRIPT), asyncio.Lock())
        self._ends[loop] = LoopEnd(loop, lambda: self.close(loop))
        return found

    async def close(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close ``loop``'s connection (the running one's), if it has one."""
        found = self._by_loop.pop(loop, None)
        end = self._ends.pop(loop, None)
        if end is not None:
            end.end()
        if found is not None:
            await found.client.aclose()
            await found.client.connection_pool.disconnect()
