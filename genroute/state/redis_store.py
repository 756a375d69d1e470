"""``RedisStateStore``: the state in Redis (or Valkey), shared by every process that uses the same prefix.

Every call is one run of one Lua script (``genroute.state.redis_script``): an admission's claims together, its
settlements together, so it is atomic on the server and one round trip; the script reads the server's clock
(``TIME``), so hold lapses and breaker cool-downs do not depend on the clocks of the processes.

When Redis cannot be reached (refused, reset, timed out), or answers with an error (out of memory, a read-only
replica, no permission, a key of another type under the prefix), the store either answers from this process's
memory (``on_error: open``; each such call is counted and the condition logged once per minute) or raises
``StateUnavailable`` (``on_error: closed``). A settle or a list append answered from memory because Redis could
not be reached (and, with ``on_error: closed``, one refused so: its attempt was sent, its spend is owed; an append
records what already ran, an outcome) is also kept and replayed to Redis once it answers again, oldest first, by the first call that
finds it back, so the shared spend and the shared lists (the outcome log) are complete after an outage. One Redis
refused with an error reply is not kept (a replay would be refused again, or leave its marker set without its
write and count as done); nor does an error reply stop the calls after it from trying Redis. What is kept is bounded
(``genroute.state.unsent``); with ``journal`` it is also kept in a local file, which the next router started with it
sends (``genroute.state.journal``): a process killed meanwhile does not take it along. Each replayed write applies once: it carries an id that the script marks, so a replay
interrupted and sent again applies nothing twice (an append's first try carries none: one whose reply was lost as
the outage began is in the list twice). An append that finds a replay running waits for it, so it lands after the
writes made before it; other calls go on. One call per event loop replays at a time (the lock is the loop's): a
store used from two loops may send their replays' batches interleaved, each still once. Holds taken meanwhile live
in memory, and Redis holds whose settle was lost lapse with their TTL, charged at their amount. A hold taken from the fallback memory is
settled there. A call its caller gives up on (a cancelled request) goes on: a settle is still made, and what an
admission took is given back once Redis answers; one that the end of its event loop cuts off (``asyncio.run`` per
call) is replayed instead by the next call, on any loop (``genroute.state.background``).

For ``retry_s`` after Redis could not be reached it does not try Redis again (but ``aclose`` tries once, to send what
is kept), so a dead server costs one timeout per ``retry_s``,
not one per request; after that the next call reconnects (redis-py's pool opens a new connection), so a restarted
server is used again without a router restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from genroute.errors import StateUnavailable
from genroute.log_every import LogEvery
from genroute.state import ListReplay, RedisStateConfig, StateStore
from genroute.state.background import Background
from genroute.state.memory import MemoryStateStore
from genroute.state.ops import Admitted, Claim, Held, Hold, Release, Settle, Settlement, op_name
from genroute.state.redis_pool import Connection, LoopConnections
from genroute.state.redis_records import RedisRecords
from genroute.state.redis_script import Until, Usage, decode, encode, settle_id
from genroute.state.redis_url import advice, check_url, failure, redacted
from genroute.state.unsent import UnsentWrites

if TYPE_CHECKING:
    import redis.asyncio

T = TypeVar("T")
_log = logging.getLogger(__name__)
#: At most one "state store unreachable" warning per this many seconds.
LOG_INTERVAL_S = 60.0
_FALLBACK_ID = "m:"
#: Writes (settles, appends) replayed in one call after an outage.
REPLAY_BATCH = 100


class RedisStateStore(RedisRecords, StateStore):
    """State in Redis through redis-py's asyncio client (one connection pool per event loop)."""

    shared = True

    def __init__(self, config: RedisStateConfig) -> None:
        try:
            import redis.asyncio  # noqa: F401 - fail at build, not at the first request
        except ImportError:
            from genroute.errors import ConfigError

            raise ConfigError("state kind redis needs redis-py: pip install 'genroute[redis]'",
                              field="state.kind") from None
        check_url(config.url)
        self.config = config
        self.prefix = config.prefix
        self.promotions_every_s = config.promotions_every_s
        self.fallback = MemoryStateStore()
        self.fallback.limit_mismatch = self.limit_mismatch  # type: ignore[method-assign]  # counted here
        #: Calls answered by ``fallback`` because Redis was unreachable.
        self.fallbacks = 0
        self._down_until = 0.0
        #: How the last outage began (unreachable, or an error reply to a replay), for the errors meanwhile.
        self._failed = "is unreachable"
        #: Settles and appends answered from memory while Redis was unreachable, replayed to Redis when it is back;
        #: with ``journal``, also kept in that file, and those a process killed meanwhile left there taken over now.
        self._unsent = UnsentWrites(self._replayed)
        if config.journal is not None:
            from genroute.state.journal import Journal  # sqlite3: imported only by a store with a journal

            self._unsent.journal = Journal(config.journal, config.prefix)
            self._unsent.adopt()
        self._down_log = LogEvery(LOG_INTERVAL_S)
        self._connections = LoopConnections(config)
        #: Store calls that go on after their caller was cancelled (settles, and giving back what an admit took).
        self._background = Background()

    # -- plumbing --------------------------------------------------------------------------------------

    def _client(self) -> Connection:
        """The running loop's connection; a new loop's first call also keeps for replay what calls cut off by the
        end of loops closed since still owed (``asyncio.run`` per call)."""
        found = self._connections.get()
        if found is None:
            self._background.rescue()
            found = self._connections.open()
        return found

    async def _run(self, op: str, remote: Callable[[Any, Any], Awaitable[T]],
                   local: Callable[[], Awaitable[T]] | None, *, ordered: bool = False,
                   keep: Callable[[], None] | None = None, owed: bool = False) -> T:
        """``remote`` against Redis; when Redis is unreachable or answers with an error, ``local`` (open) or
        ``StateUnavailable`` (always without ``local``). ``keep`` queues this call's writes for replay: only when Redis was not reached (an
        error reply refused them; replayed, it would be refused again, or half-applied behind its marker).
        ``ordered``: after a replay another call is running (an append must land after the writes before it).
        ``owed``: the writes record what already happened (a settle: the provider was sent the request; an append: an
        outcome of a request that ran), so they are kept for replay with ``on_error: closed`` too (refusing them would
        lose that spend or that outcome, not prevent it)."""
        import redis.exceptions

        cause: BaseException | None = None
        if time.monotonic() >= self._down_until:
            connection = self._client()
            replayed = False
            try:
                await self._replay(connection, wait=ordered)
                replayed = True
                result = await remote(connection.script, connection.client)
            except (redis.exceptions.RedisError, OSError) as exc:
                cause, failed = exc, failure(exc)
                # An error reply to this call's own script is a refusal, not an outage: Redis is asked again next
                # call, and what it refused is not replayed. (One to a replay leaves this call's writes unsent.)
                outage = not (replayed and isinstance(exc, redis.exceptions.ResponseError))
                if outage:
                    self._down_until = time.monotonic() + self.config.retry_s
                    self._failed = failed
                else:
                    keep = None
                self._down(op, exc, failed, outage=outage)
            else:
                self.degraded = False
                return result
        else:
            failed = self._failed
        if local is None:
            raise StateUnavailable(f"state store at {redacted(self.config.url)} {failed}: this {op} was not recorded "
                                   f"(refused whatever state.on_error says){advice(failed)}") from cause
        if self.config.on_error == "closed":
            if owed and keep is not None:
                keep()
                raise StateUnavailable(f"state store at {redacted(self.config.url)} {failed} (state.on_error: "
                                       f"closed): this {op} is kept and sent to it once it answers{advice(failed)}",
                                       kept=True) from cause
            raise StateUnavailable(f"state store at {redacted(self.config.url)} {failed} (state.on_error: "
                                   f"closed): nothing was sent{advice(failed)}") from cause
        self.degraded = True
        self.fallbacks += 1
        if self.on_fallback is not None:
            self.on_fallback(op)
        if keep is not None:
            keep()
        return await local()

    def _down(self, op: str, exc: BaseException, failed: str, *, outage: bool) -> None:
        if self._down_log.due():
            if self.config.on_error == "closed":
                mode = "refusing what needs it (state.on_error: closed)"
                if op == "promotions":  # the one warning a router built during an outage gives: what it means too
                    mode += ("; the promotions recorded there are not read, the router routes as its config says "
                             "until it reads them (every state.promotions_every_s)")
            else:
                mode = "using this process's memory" + ("" if outage else " (the refused writes are not replayed)")
            again = f"; retrying every {self.config.retry_s:.1f} s{advice(failed)}" if outage else ""
            _log.warning("state store at %s %s during %s (%s): %s%s",
                         redacted(self.config.url), failed, op, type(exc).__name__, mode, again)

    def _k(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    async def _call(self, script: Any, mode: str, ops: Sequence[Any], ids: Sequence[str | None]
                    ) -> tuple[list[Any], int | None]:
        keys, args = encode(mode, ops, self.prefix, ids)
        return decode(ops, await script(keys=keys, args=args), ids)

    # -- the two calls of an admission -----------------------------------------------------------------

    async def admit(self, claims: Sequence[Claim]) -> Admitted:
        ids = [os.urandom(8).hex() if isinstance(c, Hold) else None for c in claims]

        async def local() -> Admitted:
            results, refused = await self.fallback.admit(claims)
            return [Held(_FALLBACK_ID + r.hold_id, r.left) if isinstance(r, Held) and r.hold_id is not None else r
                    for r in results], refused

        async def remote(script: Any, _: Any) -> Admitted:
            keys, args = encode("admit", claims, self.prefix, ids)
            return decode(claims, await script(keys=keys, args=args), ids, self.limit_mismatch)

        admitting = asyncio.ensure_future(self._run(op_name(claims, "admit"), remote, local))
        try:
            admitted = await asyncio.shield(admitting)
        except asyncio.CancelledError:
            # The caller went away while Redis was asked: what the script took (it may have run, or run later) is given
            # back once it answers, since no attempt will settle it (a hold would lapse only with its TTL).
            holds = [Settle(c.account, hold_id, 0, keep_s=c.keep_s)
                     for c, hold_id in zip(claims, ids, strict=True) if isinstance(c, Hold)]
            # Cut off by its loop's end, the admission may still have run: its holds are given back by replay.
            self._background.add(admitting, lambda: self._keeper(holds, [settle_id() for _ in holds])())
            admitting.add_done_callback(lambda done: self._give_back(claims, done))
            raise
        return admitted

    def _give_back(self, claims: Sequence[Claim], admitting: asyncio.Future[Admitted]) -> None:
        if admitting.cancelled() or admitting.exception() is not None:
            return
        results, refused = admitting.result()
        if refused is not None:  # all or none: nothing is held
            return
        undo: list[Settlement] = [Settle(c.account, r.hold_id, 0, keep_s=c.keep_s) if isinstance(c, Hold)
                                  else Release(c.name) for c, r in zip(claims, results, strict=True)
                                  if isinstance(c, Hold) or r.probing]
        if undo:
            ids = _settle_ids(undo)
            self._background.add(asyncio.ensure_future(self._apply(undo, ids)), self._keeper(undo, ids))

    async def apply(self, settlements: Sequence[Settlement]) -> list[Any]:
        ops = list(settlements)
        ids = _settle_ids(ops)
        applying = asyncio.ensure_future(self._apply(ops, ids))
        # Replayed if its loop ends first, awaited or not (one started as asyncio.run shuts down has no one awaiting).
        self._background.add(applying, self._keeper(ops, ids), awaited=True)
        try:
            return await asyncio.shield(applying)
        except asyncio.CancelledError:
            # A settle its caller stopped waiting for (maybe not sent yet: waiting for a pooled connection) is still
            # made: its hold must not lapse unsettled with its spend uncounted.
            self._background.given_up(applying)
            raise

    def keep(self, settlements: Sequence[Settlement]) -> None:
        # Sent with the next call, on any loop (under new settle ids); a hold of the fallback's is settled there now,
        # as ``_apply`` does.
        self.fallback.keep([op._replace(hold_id=op.hold_id[len(_FALLBACK_ID):]) for op in settlements
                            if isinstance(op, Settle) and op.hold_id is not None and op.hold_id.startswith(_FALLBACK_ID)])
        self._keeper(settlements, _settle_ids(settlements))()

    def _keeper(self, ops: Sequence[Settlement], ids: list[str | None]) -> Callable[[], None]:
        """What queues ``ops``' settles for replay to Redis (its ``ids`` with them: one that landed applies once)."""
        def keep() -> None:
            for op, settle_id in zip(ops, ids, strict=True):
                if isinstance(op, Settle) and settle_id is not None:  # a hold of the fallback's is charged to Redis
                    fallback = op.hold_id is not None and op.hold_id.startswith(_FALLBACK_ID)
                    self._unsent.settle(op._replace(hold_id=None) if fallback else op, settle_id)

        return keep

    async def _apply(self, ops: list[Settlement], ids: list[str | None]) -> list[Any]:
        charged_here = set()
        for index, op in enumerate(ops):
            if isinstance(op, Settle) and op.hold_id is not None and op.hold_id.startswith(_FALLBACK_ID):
                # Held from memory during an outage: released (and charged) there; charged to Redis now or later.
                await self.fallback.apply((op._replace(hold_id=op.hold_id[len(_FALLBACK_ID):]),))
                ops[index] = op._replace(hold_id=None)
                charged_here.add(index)

        async def remote(script: Any, _: Any) -> list[Any]:
            return (await self._call(script, "apply", ops, ids))[0]

        async def local() -> list[Any]:
            # Charged here for this process's view meanwhile.
            kept = [i for i, op in enumerate(ops) if not (isinstance(op, Settle) and i in charged_here)]
            answers = await self.fallback.apply([ops[i] for i in kept])
            out: list[Any] = [None] * len(ops)
            for i, answer in zip(kept, answers, strict=True):
                out[i] = answer
            return out

        # Kept, replayed to Redis when it answers again (one may also have reached Redis before the failure: the
        # replay then counts nothing).
        return await self._run(op_name(ops, "settle"), remote, local, keep=self._keeper(ops, ids), owed=True)

    async def _replay(self, connection: Connection, *, wait: bool = True, closing: bool = False) -> None:
        """Send the settles and appends made while Redis was unreachable (oldest first, a batch a script run), so its
        spend and its lists are complete again. A call that finds a replay running waits for it if ``wait`` (an
        append: so that it lands after the writes made before it); others go on meanwhile."""
        if connection.replaying.locked() and not wait:
            return
        if not self._unsent and not connection.replaying.locked():
            return
        import redis.exceptions

        async with connection.replaying:
            if time.monotonic() < self._down_until and not closing:  # the replay this call waited for failed
                raise redis.exceptions.ConnectionError("the replay after an outage failed in another call")
            self._unsent.adopt()  # and what other processes on the journal, killed meanwhile, left in it
            while batch := self._unsent.take(REPLAY_BATCH):
                try:
                    await self._call(connection.script, "apply", [entry[0] for entry in batch],
                                     [entry[1] for entry in batch])
                except BaseException:
                    self._unsent.give_back(batch)  # sent again next time: the markers keep it from counting twice
                    raise
                self._unsent.sent(batch)

    def replays(self, key: str) -> ListReplay:
        return self._unsent.counts(key)

    def _replayed(self, key: str, fate: str, n: int) -> None:
        if self.on_replay is not None:
            self.on_replay(key, fate, n)

    async def usage(self, account: str) -> tuple[int, int]:
        async def remote(script: Any, _: Any) -> tuple[int, int]:
            return (await self._call(script, "read", [Usage(account)], [None]))[0][0]

        return await self._run("usage", remote, lambda: self.fallback.usage(account))

    async def breakers(self, names: Iterable[str]) -> dict[str, float]:
        names = list(names)
        if not names:
            return {}

        async def remote(script: Any, _: Any) -> dict[str, float]:
            found, _ = await self._call(script, "read", [Until(n) for n in names], [None] * len(names))
            return {n: left for n, left in zip(names, found, strict=True) if left is not None}

        return await self._run("breakers", remote, lambda: self.fallback.breakers(names))

    async def ping(self) -> str:
        import redis.exceptions

        try:
            await self._client().client.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            raise StateUnavailable(f"state store at {redacted(self.config.url)} {failure(exc)}") from exc
        return "PING answered"

    async def aclose(self) -> None:
        """Send writes still kept from an outage, then close this loop's pool (those of loops closed meanwhile are let
        go when the next loop makes its pool)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if mine := self._background.of_loop(loop):
            await asyncio.wait(mine, timeout=self.config.timeout_s)  # settles their callers gave up on
        self._background.rescue()  # and those that loops closed meanwhile cut off
        if self._unsent:
            import redis.exceptions

            try:  # the last writes of an outage go to Redis before the process lets go of it (once more, also within
                # retry_s of the last failure: they are lost otherwise)
                await self._replay(self._client(), closing=True)
            except (redis.exceptions.RedisError, OSError) as exc:
                # Lost with the process: the shared spend stays short of what this process settled meanwhile.
                missed = ", ".join(f"{account} {units}" for account, units in sorted(self._unsent.unsettled().items()))
                kept = "" if self._unsent.journal is None else \
                    f" until a router started with the journal {self._unsent.journal.path} sends them"
                _log.warning("%d write(s) made during a state store outage were not sent: %s; the shared accounts "
                             "miss this process's settles%s (units: nano-USD for a budget, requests or tokens for a "
                             "rate limit): %s", self._unsent.waiting(), type(exc).__name__, kept, missed or "none")
        if self._unsent.journal is not None:
            self._unsent.journal.close()  # what is left in it is another router's to take over
        await self._connections.close(loop)


def _settle_ids(ops: Sequence[Settlement]) -> list[str | None]:
    """A new settle id for each settle of ``ops`` (None for the rest)."""
    return [settle_id() if isinstance(op, Settle) else None for op in ops]
