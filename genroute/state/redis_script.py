"""The one Lua script behind every ``RedisStateStore`` operation, and the encoding of operations for it.

A call is a list of operations run in one script run (atomic on the server, one round trip). Each operation
is an opcode in ARGV followed by its arguments, and takes a fixed number of keys from KEYS in order::

    h  hold    KEYS account, holds            ARGV amount, limit, ttl_ms, keep_ms, id   -> {passed, left,
                                                                   the limit the last hold gave if not this one, else -1}
    p  probe   KEYS breaker, probe            ARGV ttl_ms                  -> {1, 0} closed, {1, 1} probing,
                                                                              {0, ms} open, {0, 0} probe taken
    s  settle  KEYS account, holds, charged, settled-markers   ARGV id, amount, keep_ms, marker_ms, settle id
                                                                                               -> {applied}
    f  fail    KEYS breaker, probe            ARGV threshold, window_ms, open_ms                -> {opened}
    o  open    KEYS breaker, probe            ARGV open_ms                                      -> {opened}
    c  close   KEYS breaker, probe                                                              -> {was open}
    x  release KEYS breaker, probe                                                              -> {0}
    u  usage   KEYS account, holds                                                              -> {spent, held}
    b  until   KEYS breaker                                                 -> {0} closed, {1, ms to half-open}
    l  push    KEYS list, list meta           ARGV value, max items (0: none), max age ms (0: none)  -> {length}
    L  push once  KEYS list, list meta, pushed-marker   ARGV as push, marker ms   -> {pushed} (0: pushed before)
    r  range   KEYS list, list meta           ARGV start, limit (0: none)  -> {first position, {items}, epoch}

ARGV[1] is the mode: ``admit`` stops at the first hold or probe that does not pass and undoes what the call
took before it (all or none); ``apply`` runs every operation. The reply is ``{refused index or 0, answers...}``.
Times come from the server's clock (``TIME``), so lapses do not depend on the processes' clocks. A hold past its TTL is
charged at its amount (its process was killed after the provider took the request, or its settle is late), so a worker
killed mid-attempt leaves no spend uncounted. It is remembered as lapsed for ``LAPSED_S`` (an hour), and a settle that
arrives within that time takes the lapse's charge back and charges its own amount (the attempt's cost), so the
spend is that cost, counted once. A settle's
marker makes it idempotent: one replayed after a timeout (that Redis may have applied) within ``SETTLED_MARKER_S``
(an hour) counts once. Markers are fields of one hash per ``SETTLE_BUCKET_S`` of settle ids (the second the id was
made, on its process's clock, is part of it, so its replay finds the same hash), and the hash expires an hour after
its last field was set: every marker lives its hour, and the markers are ~3,600 keys whatever the traffic, not one
key per settle (~360k at 100 settles a second); a push
replayed after an outage carries such a marker too (``L``), so an interrupted replay sent again appends it once.
A list item is stored as ``<server ms>|<value>`` so that a push can drop items by age; the list's meta hash keeps
its trimmed count ``t`` (position = trimmed count + index, so readers' offsets survive a trim) and its epoch ``e``
(the server time of the first push: a list emptied by a restart gets a new one).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from genroute.state import ListRead
from genroute.state.ops import LAPSED_S, Checked, Close, Fail, Held, Hold, Open, Probe, Release, Settle

SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local KEEP_MS = 600000
local LAPSED_MS = @LAPSED_MS@

-- A hold past its TTL was never settled (its process was killed, or its settle is late): it is charged at its
-- amount, and remembered as lapsed ('x:' id in the hash and the zset) for LAPSED_MS, so a late settle replaces that
-- charge by its own amount instead of adding to it.
local function purge(acct, holds)
  local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
  if #expired == 0 then return end
  redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
  for _, id in ipairs(expired) do
    if string.sub(id, 1, 2) == 'x:' then
      redis.call('HDEL', acct, id)  -- lapsed long ago: its charge stands
    else
      local amount = redis.call('HGET', acct, 'h:' .. id)
      if amount then
        redis.call('HDEL', acct, 'h:' .. id)
        if amount ~= '0' then
          redis.call('HINCRBY', acct, 'held', '-' .. amount)
          redis.call('HINCRBY', acct, 'spent', amount)
          redis.call('HSET', acct, 'x:' .. id, amount)
          redis.call('ZADD', holds, now + LAPSED_MS, 'x:' .. id)
        end
      end
    end
  end
end

-- Drop hold id; one that lapsed (charged at its amount) has that charge taken back instead.
local function drop(acct, holds, id)
  local a = redis.call('HGET', acct, 'h:' .. id)
  if a then
    redis.call('HDEL', acct, 'h:' .. id)
    redis.call('ZREM', holds, id)
    if a ~= '0' then redis.call('HINCRBY', acct, 'held', '-' .. a) end
    return
  end
  a = redis.call('HGET', acct, 'x:' .. id)
  if a then
    redis.call('HDEL', acct, 'x:' .. id)
    redis.call('ZREM', holds, 'x:' .. id)
    redis.call('HINCRBY', acct, 'spent', '-' .. a)
  end
end

local function hold(k, a)
  local acct, holds = KEYS[k], KEYS[k + 1]
  purge(acct, holds)
  local v = redis.call('HMGET', acct, 'spent', 'held', 'lim')
  local other = -1
  if v[3] ~= ARGV[a + 1] then  -- the last hold's limit: another router holding against another one is reported
    if v[3] then other = tonumber(v[3]) end
    redis.call('HSET', acct, 'lim', ARGV[a + 1])
    redis.call('PEXPIRE', acct, ARGV[a + 3])
  end
  local left = tonumber(ARGV[a + 1]) - tonumber(v[1] or '0') - tonumber(v[2] or '0')
  local amount = tonumber(ARGV[a])
  if amount > left then return {0, left, other} end
  if amount > 0 then
    redis.call('HINCRBY', acct, 'held', ARGV[a])
    redis.call('HSET', acct, 'h:' .. ARGV[a + 4], ARGV[a])
    redis.call('ZADD', holds, now + tonumber(ARGV[a + 2]), ARGV[a + 4])
    redis.call('PEXPIRE', holds, ARGV[a + 3])
  end
  redis.call('PEXPIRE', acct, ARGV[a + 3])
  return {1, left - amount, other}
end

local function probe(k, a)
  local u = tonumber(redis.call('HGET', KEYS[k], 'until') or '0')
  if u == 0 then return {1, 0} end
  if now < u then return {0, u - now} end
  if redis.call('SET', KEYS[k + 1], '1', 'NX', 'PX', ARGV[a]) then return {1, 1} end
  return {0, 0}
end

local function undo(op, k, a, r)
  if op == 'h' then drop(KEYS[k], KEYS[k + 1], ARGV[a + 4])
  elseif r[2] == 1 then redis.call('DEL', KEYS[k + 1]) end
end

local function settle(k, a)
  if redis.call('HSETNX', KEYS[k + 3], ARGV[a + 4], '1') == 0 then return {0} end
  redis.call('PEXPIRE', KEYS[k + 3], ARGV[a + 3])
  if ARGV[a] ~= '' then drop(KEYS[k], KEYS[k + 1], ARGV[a]) end
  if ARGV[a + 1] ~= '0' then redis.call('HINCRBY', KEYS[k + 2], 'spent', ARGV[a + 1]) end
  redis.call('PEXPIRE', KEYS[k + 2], ARGV[a + 2])
  return {1}
end

local function fail(k, a)
  local v = redis.call('HMGET', KEYS[k], 'ws', 'n', 'until')
  local ws, n, u = tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0')
  if now - ws > tonumber(ARGV[a + 1]) then ws = now; n = 0 end
  n = n + 1
  local opened = 0
  if n >= tonumber(ARGV[a]) and u <= now then
    u = now + tonumber(ARGV[a + 2]); n = 0; opened = 1
    redis.call('DEL', KEYS[k + 1])
  end
  redis.call('HSET', KEYS[k], 'ws', ws, 'n', n, 'until', u)
  redis.call('PEXPIRE', KEYS[k], math.max(tonumber(ARGV[a + 1]), u - now) + KEEP_MS)
  return {opened}
end

local function open(k, a)
  local u = tonumber(redis.call('HGET', KEYS[k], 'until') or '0')
  local was = u > now
  u = math.max(u, now + tonumber(ARGV[a]))
  redis.call('HSET', KEYS[k], 'until', u, 'n', 0, 'ws', now)
  redis.call('DEL', KEYS[k + 1])
  redis.call('PEXPIRE', KEYS[k], u - now + KEEP_MS)
  if was then return {0} end
  return {1}
end

local function close(k, a)
  local u = tonumber(redis.call('HGET', KEYS[k], 'until') or '0')
  redis.call('DEL', KEYS[k], KEYS[k + 1])
  if u > 0 then return {1} end
  return {0}
end

local function release(k, a)
  redis.call('DEL', KEYS[k + 1])
  return {0}
end

local function usage(k, a)
  purge(KEYS[k], KEYS[k + 1])
  local v = redis.call('HMGET', KEYS[k], 'spent', 'held')
  return {tonumber(v[1] or '0'), tonumber(v[2] or '0')}
end

local function breaker_until(k, a)
  local u = tonumber(redis.call('HGET', KEYS[k], 'until') or '0')
  if u > 0 then return {1, u - now} end
  return {0}
end

-- The push and its trim in one run; age is checked from the head, at most 1000 items a push (amortized).
local function push(k, a)
  local list = KEYS[k]
  local n = redis.call('RPUSH', list, now .. '|' .. ARGV[a])
  local cap, age = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local drop = 0
  if cap > 0 and n > cap then drop = n - cap end
  if age > 0 then
    local limit = math.min(n - 1, drop + 1000)
    while drop < limit do
      local at = tonumber(string.match(redis.call('LINDEX', list, drop), '^(%d+)|') or '0')
      if at >= now - age then break end
      drop = drop + 1
    end
  end
  redis.call('HSETNX', KEYS[k + 1], 'e', now)
  if drop > 0 then
    redis.call('LTRIM', list, drop, -1)
    redis.call('HINCRBY', KEYS[k + 1], 't', drop)
  end
  return {n - drop}
end

local function push_once(k, a)
  if not redis.call('SET', KEYS[k + 2], '1', 'NX', 'PX', ARGV[a + 3]) then return {0} end
  push(k, a)
  return {1}
end

local function range(k, a)
  local meta = redis.call('HMGET', KEYS[k + 1], 't', 'e')
  local trimmed = tonumber(meta[1] or '0')
  local n = redis.call('LLEN', KEYS[k])
  local start = tonumber(ARGV[a])
  if start < trimmed or start > trimmed + n then start = trimmed end
  local stop = -1
  if tonumber(ARGV[a + 1]) > 0 then stop = start - trimmed + tonumber(ARGV[a + 1]) - 1 end
  return {start, redis.call('LRANGE', KEYS[k], start - trimmed, stop), meta[2] or ''}
end

-- opcode -> {keys taken, arguments taken, function}
local OPS = {h = {2, 5, hold}, p = {2, 1, probe}, s = {4, 5, settle}, f = {2, 3, fail}, o = {2, 1, open},
             c = {2, 0, close}, x = {2, 0, release}, u = {2, 0, usage}, b = {1, 0, breaker_until}, l = {2, 3, push},
             r = {2, 2, range}, L = {3, 4, push_once}}
local admit = ARGV[1] == 'admit'
local out = {0}
local taken = {}
local k, a = 1, 2
while a <= #ARGV do
  local code = ARGV[a]
  local op = OPS[code]
  local r = op[3](k, a + 1)
  out[#out + 1] = r
  if admit then
    if r[1] == 0 then
      for i = #taken, 1, -1 do undo(unpack(taken[i])) end
      out[1] = #out - 1
      return out
    end
    taken[#taken + 1] = {code, k, a + 1, r}
  end
  k = k + op[1]
  a = a + 1 + op[2]
end
return out
""".replace("@LAPSED_MS@", str(int(LAPSED_S * 1000)))


class Usage:
    """Read (spent, held) of an account (only the Redis store reads through the script)."""

    __slots__ = ("account",)

    def __init__(self, account: str) -> None:
        self.account = account


class Until:
    """Read how long a breaker stays open (None: closed)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class Push(NamedTuple):
    """Append to a list and trim it (``StateStore.append``); with an id in ``encode``, at most once per id."""

    key: str
    value: bytes
    max_items: int | None
    max_age_s: float | None


class Range(NamedTuple):
    """Read a list from an absolute position (``StateStore.items``)."""

    key: str
    start: int
    limit: int | None


#: How long Redis remembers a replayed push's id: a replay sent again within this time appends nothing twice.
PUSHED_MARKER_S = 86_400.0
#: How long Redis remembers a settle's id (every settle sets one): a replay of it within this time counts nothing
#: twice. Not the account's life (a month for a monthly budget): that kept a key per request for as long.
SETTLED_MARKER_S = 3_600.0
#: Settle ids made within this many seconds (on their process's clock) share one hash of markers in Redis.
SETTLE_BUCKET_S = 1


def settle_id() -> str:
    """A new settle's id: its marker hash (the time bucket it was made in) and its own random part."""
    return f"{int(time.time()) // SETTLE_BUCKET_S}.{os.urandom(8).hex()}"


#: The longest time sent to the script, in ms (2**53, whole in Lua's doubles: ~285,000 years): a request's
#: ``timeout_s`` may be any finite number, and ``int(1e308 * 1000)`` was an ``OverflowError`` out of ``generate``.
_MAX_MS = 2**53


def _ms(seconds: float) -> int:
    return max(1, int(min(seconds * 1000, _MAX_MS)))


def encode(mode: str, ops: Sequence[Any], prefix: str, ids: Sequence[str | None]) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV for ``ops``; ``ids[i]`` is the id of a ``Hold`` or the settle id of a ``Settle``."""
    keys: list[str] = []
    args: list[Any] = [mode]
    for op, op_id in zip(ops, ids, strict=True):
        if isinstance(op, Hold):
            keys += (f"{prefix}a:{op.account}", f"{prefix}h:{op.account}")
            args += ("h", op.amount, op.limit, _ms(op.ttl_s), _ms(op.keep_s), op_id)
        elif isinstance(op, Settle):
            bucket, _, own = str(op_id).rpartition(".")
            keys += (f"{prefix}a:{op.account}", f"{prefix}h:{op.account}", f"{prefix}a:{op.charge or op.account}",
                     f"{prefix}sb:{bucket}")
            args += ("s", op.hold_id or "", op.amount, _ms(max(op.keep_s, 3600.0)), _ms(SETTLED_MARKER_S), own)
        elif isinstance(op, Usage):
            keys += (f"{prefix}a:{op.account}", f"{prefix}h:{op.account}")
            args.append("u")
        elif isinstance(op, Until):
            keys.append(f"{prefix}b:{op.name}")
            args.append("b")
        elif isinstance(op, Push):
            keys += (f"{prefix}l:{op.key}", f"{prefix}lm:{op.key}")
            args += ("l" if op_id is None else "L", op.value, op.max_items or 0,
                     0 if op.max_age_s is None else _ms(op.max_age_s))
            if op_id is not None:
                keys.append(f"{prefix}w:{op_id}")
                args.append(_ms(PUSHED_MARKER_S))
        elif isinstance(op, Range):
            keys += (f"{prefix}l:{op.key}", f"{prefix}lm:{op.key}")
            args += ("r", max(0, op.start), op.limit or 0)
        else:
            keys += (f"{prefix}b:{op.name}", f"{prefix}p:{op.name}")
            if isinstance(op, Probe):
                args += ("p", _ms(op.ttl_s))
            elif isinstance(op, Fail):
                args += ("f", op.threshold, _ms(op.window_s), _ms(op.open_s))
            elif isinstance(op, Open):
                args += ("o", _ms(op.open_s))
            elif isinstance(op, Close):
                args.append("c")
            elif isinstance(op, Release):
                args.append("x")
            else:
                raise TypeError(f"not a state operation: {op!r}")
    return keys, args


def decode(ops: Sequence[Any], reply: list[Any], ids: Sequence[str | None],
           other_limit: Callable[[str, int, int], None] | None = None) -> tuple[list[Any], int | None]:
    """The answers to ``ops`` (see ``genroute.state.ops``) and the refused index (None: none refused).
    ``other_limit(account, limit, the previous hold's limit)`` is called for a hold whose account was last held against
    another limit."""
    refused = int(reply[0]) - 1
    answers: list[Any] = []
    for op, op_id, r in zip(ops, ids, reply[1:], strict=False):
        if isinstance(op, Hold):
            answers.append(Held(op_id if r[0] else None, int(r[1])))
            if r[2] >= 0 and other_limit is not None:
                other_limit(op.account, op.limit, int(r[2]))
        elif isinstance(op, Probe):
            answers.append(Checked(True, r[1] == 1) if r[0] else Checked(False, False, int(r[1]) / 1000))
        elif isinstance(op, Settle):
            answers.append(None)
        elif isinstance(op, Usage):
            answers.append((int(r[0]), int(r[1])))
        elif isinstance(op, Until):
            answers.append(int(r[1]) / 1000 if r[0] else None)
        elif isinstance(op, Push):
            answers.append(None)
        elif isinstance(op, Range):
            answers.append(ListRead(int(r[0]), [_value(item) for item in r[1]], r[2].decode()))
        else:
            answers.append(bool(r[0]))
    return answers, (None if refused < 0 else refused)


def _value(item: bytes) -> bytes:
    """A list item without its ``<ms>|`` stamp (items pushed before stamps existed have none)."""
    stamp, sep, value = item.partition(b"|")
    return value if sep and stamp.isdigit() else item
