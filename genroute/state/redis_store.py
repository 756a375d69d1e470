"""``RedisStateStore``: the state in Redis (or Valkey), shared by every process that uses the same prefix.

Every operation is one Lua script, so it is atomic on the server; scripts read the server's clock
(``TIME``), so hold lapses and breaker cool-downs do not depend on the clocks of the processes.

When Redis cannot be reached (refused, reset, timed out) the store either answers from this process's
memory (``on_error: open``; each such call is counted and the condition logged once per minute) or raises
``StateUnavailable`` (``on_error: closed``). A settle answered from memory is also kept and replayed to Redis
once it answers again (each settle at most once: it carries an id), so the shared spend is complete after
an outage; holds taken meanwhile live in memory, and Redis holds whose settle was lost lapse with their TTL.
For ``retry_s`` after a failure it does not try Redis again,
so a dead server costs one timeout per ``retry_s``, not one per request; after that the next call
reconnects (redis-py's pool opens a new connection), so a restarted server is used again without a
router restart. A hold taken from the fallback memory is settled there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from genroute.errors import StateUnavailable
from genroute.state import RedisStateConfig, StateStore
from genroute.state.memory import MemoryStateStore

if TYPE_CHECKING:
    import redis.asyncio

T = TypeVar("T")
_log = logging.getLogger(__name__)
#: At most one "state store unreachable" warning per this many seconds.
LOG_INTERVAL_S = 60.0
_FALLBACK_ID = "m:"
#: Settles kept for replay while Redis is unreachable (beyond this, the oldest are only in memory).
MAX_UNSETTLED = 100_000
#: How long a call may wait for a free pooled connection before the store counts as unreachable.
POOL_WAIT_S = 5.0

_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function purge(acct, holds, now)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  for _, id in ipairs(expired) do
    local amount = redis.call('HGET', acct, 'h:' .. id)
    if amount then
      redis.call('HDEL', acct, 'h:' .. id)
      if amount ~= '0' then redis.call('HINCRBY', acct, 'held', '-' .. amount) end
    end
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', holds, '-inf', now) end
end
"""

# KEYS: account, holds; ARGV: amount, limit, ttl_ms, keep_ms, id
_HOLD = _PRELUDE + """
local now = now_ms()
purge(KEYS[1], KEYS[2], now)
local v = redis.call('HMGET', KEYS[1], 'spent', 'held')
local left = tonumber(ARGV[2]) - tonumber(v[1] or '0') - tonumber(v[2] or '0')
local amount = tonumber(ARGV[1])
if amount > left then return {0, left} end
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], 'held', ARGV[1])
  redis.call('HSET', KEYS[1], 'h:' .. ARGV[5], ARGV[1])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, left - amount}
"""

# KEYS: account, holds, charged account, settled marker; ARGV: id, amount, keep_ms
# The marker makes a settle idempotent: one replayed after a timeout (that Redis may have applied) counts once.
_SETTLE = """
if not redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[3]) then return 0 end
if ARGV[1] ~= '' then
  local a = redis.call('HGET', KEYS[1], 'h:' .. ARGV[1])
  if a then
    redis.call('HDEL', KEYS[1], 'h:' .. ARGV[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    if a ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. a) end
  end
end
if ARGV[2] ~= '0' then redis.call('HINCRBY', KEYS[3], 'spent', ARGV[2]) end
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: account, holds
_USAGE = _PRELUDE + """
purge(KEYS[1], KEYS[2], now_ms())
local v = redis.call('HMGET', KEYS[1], 'spent', 'held')
return {tonumber(v[1] or '0'), tonumber(v[2] or '0')}
"""

_BREAKER_PRELUDE = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local KEEP_MS = 600000
"""

# KEYS: breaker, probe; ARGV: threshold, window_ms, open_ms
_FAIL = _BREAKER_PRELUDE + """
local now = now_ms()
local v = redis.call('HMGET', KEYS[1], 'ws', 'n', 'until')
local ws, n, u = tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')
if now - ws > tonumber(ARGV[2]) then ws = now; n = 0 end
n = n + 1
local opened = 0
if n >= tonumber(ARGV[1]) and u <= now then
  u = now + tonumber(ARGV[3]); n = 0; opened = 1
  redis.call('DEL', KEYS[2])
end
redis.call('HSET', KEYS[1], 'ws', ws, 'n', n, 'until', u)
redis.call('PEXPIRE', KEYS[1], math.max(tonumber(ARGV[2]), u - now) + KEEP_MS)
return opened
"""

# KEYS: breaker, probe; ARGV: open_ms
_OPEN = _BREAKER_PRELUDE + """
local now = now_ms()
local u = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local was = u > now
u = math.max(u, now + tonumber(ARGV[1]))
redis.call('HSET', KEYS[1], 'until', u, 'n', 0, 'ws', now)
redis.call('DEL', KEYS[2])
redis.call('PEXPIRE', KEYS[1], u - now + KEEP_MS)
if was then return 0 end
return 1
"""

# KEYS: breaker, probe
_CLOSE = """
local u = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
redis.call('DEL', KEYS[1], KEYS[2])
if u > 0 then return 1 end
return 0
"""

# KEYS: breaker, probe; ARGV: ttl_ms
_PROBE = _BREAKER_PRELUDE + """
local u = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if u == 0 then return 1 end
if now_ms() < u then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"""

# KEYS: breakers
_BREAKERS = _BREAKER_PRELUDE + """
local now = now_ms()
local out = {}
for i, key in ipairs(KEYS) do
  local u = tonumber(redis.call('HGET', key, 'until') or '0')
  if u > 0 then out[i] = u - now else out[i] = false end
end
return out
"""

_SCRIPTS = {"hold": _HOLD, "settle": _SETTLE, "usage": _USAGE, "fail": _FAIL, "open": _OPEN, "close": _CLOSE,
            "probe": _PROBE, "breakers": _BREAKERS}


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStateStore(StateStore):
    """State in Redis through redis-py's asyncio client (one connection pool per event loop)."""

    remote = True

    def __init__(self, config: RedisStateConfig) -> None:
        try:
            import redis.asyncio  # noqa: F401 - fail at build, not at the first request
        except ImportError:
            from genroute.errors import ConfigError

            raise ConfigError("state kind redis needs redis-py: pip install 'genroute[redis]'",
                              field="state.kind") from None
        self.config = config
        self.prefix = config.prefix
        self.fallback = MemoryStateStore()
        #: Calls answered by ``fallback`` because Redis was unreachable.
        self.fallbacks = 0
        self._down_until = 0.0
        #: Settles answered from memory while Redis was unreachable, replayed to Redis when it is back.
        self._unsettled: deque[tuple[str, str | None, int, str | None, float, str]] = deque()
        self._logged_at = -LOG_INTERVAL_S
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]] = \
            weakref.WeakKeyDictionary()

    # -- plumbing --------------------------------------------------------------------------------------

    def _client(self) -> tuple[redis.asyncio.Redis, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            import redis.asyncio

            # A blocking pool: a burst of concurrent requests queues for a connection instead of failing.
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.config.url, max_connections=self.config.max_connections, timeout=POOL_WAIT_S,
                socket_timeout=self.config.timeout_s, socket_connect_timeout=self.config.connect_timeout_s)
            client = redis.asyncio.Redis(connection_pool=pool, retry=None)
            found = self._clients[loop] = (client, {n: client.register_script(s) for n, s in _SCRIPTS.items()})
        return found

    async def _run(self, op: str, remote: Callable[[dict[str, Any], Any], Awaitable[T]],
                   local: Callable[[], Awaitable[T]]) -> T:
        """``remote`` against Redis; when Redis is unreachable, ``local`` (open) or ``StateUnavailable``."""
        import redis.exceptions

        now = time.monotonic()
        cause: BaseException | None = None
        if now >= self._down_until:
            client, scripts = self._client()
            try:
                if self._unsettled:
                    await self._replay(scripts)
                result = await remote(scripts, client)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                self._down_until = time.monotonic() + self.config.retry_s
                self._down(op, exc)
                cause = exc
            else:
                self.degraded = False
                return result
        if self.config.on_error == "closed":
            raise StateUnavailable(f"state store at {_where(self.config.url)} is unreachable (state.on_error: "
                                   "closed): nothing was sent") from cause
        self.degraded = True
        self.fallbacks += 1
        if self.on_fallback is not None:
            self.on_fallback(op)
        return await local()

    def _down(self, op: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_INTERVAL_S:
            self._logged_at = now
            mode = "using this process's memory" if self.config.on_error == "open" else "refusing requests"
            _log.warning("state store at %s unreachable during %s (%s): %s; retrying every %.1f s",
                         _where(self.config.url), op, type(exc).__name__, mode, self.config.retry_s)

    def _k(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    # -- accounts --------------------------------------------------------------------------------------

    async def hold(self, account: str, amount: int, limit: int, *, ttl_s: float, keep_s: float
                   ) -> tuple[str | None, int]:
        hold_id = os.urandom(8).hex()

        async def remote(s: dict[str, Any], _: Any) -> tuple[str | None, int]:
            ok, left = await s["hold"](keys=[self._k("a", account), self._k("h", account)],
                                       args=[amount, limit, _ms(ttl_s), _ms(keep_s), hold_id])
            return (hold_id if ok else None), int(left)

        async def local() -> tuple[str | None, int]:
            found, left = await self.fallback.hold(account, amount, limit, ttl_s=ttl_s, keep_s=keep_s)
            return (None if found is None else _FALLBACK_ID + found), left

        return await self._run("hold", remote, local)

    async def settle(self, account: str, hold_id: str | None, amount: int, *, charge: str | None = None,
                     keep_s: float) -> None:
        held_here = hold_id is not None and hold_id.startswith(_FALLBACK_ID)
        if held_here:  # held from memory during an outage: released there, charged to Redis (now or later)
            await self.fallback.settle(account, hold_id[len(_FALLBACK_ID):], amount, charge=charge, keep_s=keep_s)
            hold_id = None
        args = (account, hold_id, amount, charge, keep_s, os.urandom(8).hex())

        async def remote(s: dict[str, Any], _: Any) -> None:
            await self._settle_remote(s, *args)

        async def local() -> None:
            # Replayed to Redis when it answers again (the settle may also have reached Redis before the
            # failure: the replay then counts nothing), and charged here for this process's view meanwhile.
            if len(self._unsettled) < MAX_UNSETTLED:
                self._unsettled.append(args)
            if not held_here:
                await self.fallback.settle(account, None, amount, charge=charge, keep_s=keep_s)

        await self._run("settle", remote, local)

    async def _settle_remote(self, scripts: dict[str, Any], account: str, hold_id: str | None, amount: int,
                             charge: str | None, keep_s: float, settle_id: str) -> None:
        keys = [self._k("a", account), self._k("h", account), self._k("a", charge or account), self._k("s", settle_id)]
        await scripts["settle"](keys=keys, args=[hold_id or "", amount, _ms(max(keep_s, 3600.0))])

    async def _replay(self, scripts: dict[str, Any]) -> None:
        """Send the settles made while Redis was unreachable (oldest first), so its spend is complete again."""
        while self._unsettled:
            await self._settle_remote(scripts, *self._unsettled[0])
            self._unsettled.popleft()

    async def usage(self, account: str) -> tuple[int, int]:
        async def remote(s: dict[str, Any], _: Any) -> tuple[int, int]:
            spent, held = await s["usage"](keys=[self._k("a", account), self._k("h", account)])
            return int(spent), int(held)

        return await self._run("usage", remote, lambda: self.fallback.usage(account))

    # -- breakers --------------------------------------------------------------------------------------

    async def breaker_fail(self, name: str, *, threshold: int, window_s: float, open_s: float) -> bool:
        async def remote(s: dict[str, Any], _: Any) -> bool:
            return bool(await s["fail"](keys=[self._k("b", name), self._k("p", name)],
                                        args=[threshold, _ms(window_s), _ms(open_s)]))

        return await self._run("breaker_fail", remote, lambda: self.fallback.breaker_fail(
            name, threshold=threshold, window_s=window_s, open_s=open_s))

    async def breaker_open(self, name: str, open_s: float) -> bool:
        async def remote(s: dict[str, Any], _: Any) -> bool:
            return bool(await s["open"](keys=[self._k("b", name), self._k("p", name)], args=[_ms(open_s)]))

        return await self._run("breaker_open", remote, lambda: self.fallback.breaker_open(name, open_s))

    async def breaker_close(self, name: str) -> bool:
        async def remote(s: dict[str, Any], _: Any) -> bool:
            return bool(await s["close"](keys=[self._k("b", name), self._k("p", name)]))

        return await self._run("breaker_close", remote, lambda: self.fallback.breaker_close(name))

    async def breaker_probe(self, name: str, ttl_s: float) -> bool:
        async def remote(s: dict[str, Any], _: Any) -> bool:
            return bool(await s["probe"](keys=[self._k("b", name), self._k("p", name)], args=[_ms(ttl_s)]))

        return await self._run("breaker_probe", remote, lambda: self.fallback.breaker_probe(name, ttl_s))

    async def breakers(self, names: Iterable[str]) -> dict[str, float]:
        names = list(names)
        if not names:
            return {}

        async def remote(s: dict[str, Any], _: Any) -> dict[str, float]:
            found = await s["breakers"](keys=[self._k("b", n) for n in names])
            return {n: int(ms) / 1000 for n, ms in zip(names, found, strict=True) if ms is not None}

        return await self._run("breakers", remote, lambda: self.fallback.breakers(names))

    # -- lists -----------------------------------------------------------------------------------------

    async def append(self, key: str, value: bytes) -> None:
        async def remote(_: dict[str, Any], client: Any) -> None:
            await client.rpush(self._k("l", key), value)

        await self._run("append", remote, lambda: self.fallback.append(key, value))

    async def items(self, key: str, start: int = 0) -> list[bytes]:
        async def remote(_: dict[str, Any], client: Any) -> list[bytes]:
            return list(await client.lrange(self._k("l", key), start, -1))

        return await self._run("items", remote, lambda: self.fallback.items(key, start))

    async def aclose(self) -> None:
        """Send settles still kept from an outage, then close this loop's pool (others close with their loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        found = self._clients.get(loop)
        if found is not None and self._unsettled and time.monotonic() >= self._down_until:
            import redis.exceptions

            try:  # the last settles of an outage go to Redis before the process lets go of it
                await self._replay(found[1])
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
                _log.warning("%d settle(s) made during a state store outage were not sent: %s",
                             len(self._unsettled), type(exc).__name__)
        found = self._clients.pop(loop, None)
        if found is not None:
            await found[0].aclose()
            await found[0].connection_pool.disconnect()


def _where(url: str) -> str:
    """``url`` without its password (never in a log or an error)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or parts.path or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"
