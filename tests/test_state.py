"""State stores: the same atomic operations in process memory and in a real Redis, shared across processes.

Nothing here fakes Redis: the ``redis`` cases run against a ``redis-server`` the fixture starts, and the
sharing claims are checked with real subprocesses (one killed with SIGKILL while it holds).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from typing import Any

import pytest

from genroute.errors import ConfigError, StateUnavailable
from genroute.state import ListRead, RedisStateConfig, StateStore, build_state
from genroute.state.memory import MemoryStateStore
from genroute.state.ops import Checked, Close, Fail, Held, Hold, Open, Probe, Release, Settle
from genroute.state.redis_script import settle_id
from genroute.state.redis_store import RedisStateStore

from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401
from .state_worker import run_together, spawn
from .tcp_proxy import tcp_proxy

def _redis(server: RedisServer, **config: Any) -> RedisStateStore:
    return RedisStateStore(RedisStateConfig(kind="redis", url=server.url, prefix=f"t{os.getpid()}:", **config))


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> StateStore:
    if request.param == "memory":
        return MemoryStateStore()
    return _redis(request.getfixturevalue("redis_server"), on_error="closed")


# -- accounts ---------------------------------------------------------------------------------------------

async def test_concurrent_holds_never_exceed_the_limit(store: StateStore) -> None:
    async def one(i: int) -> bool:
        hold_id, _ = await store.hold("acct", 3, 500, ttl_s=60, keep_s=600)
        if hold_id is None:
            return False
        await asyncio.sleep((i % 7) / 1000)
        await store.settle("acct", hold_id, 3, keep_s=600)
        return True

    admitted = sum(await asyncio.gather(*(one(i) for i in range(400))))
    assert admitted == 500 // 3  # every hold that fits is admitted, and not one more
    assert await store.usage("acct") == (admitted * 3, 0)
    await store.aclose()


async def test_settle_charges_the_actual_amount_to_the_charged_account(store: StateStore) -> None:
    hold_id, left = await store.hold("w1", 40, 100, ttl_s=60, keep_s=600)
    assert hold_id is not None and left == 60
    assert (await store.hold("w1", 61, 100, ttl_s=60, keep_s=600))[0] is None
    await store.settle("w1", hold_id, 75, charge="w2", keep_s=600)  # settled in the next window, above its hold
    assert await store.usage("w1") == (0, 0)
    assert await store.usage("w2") == (75, 0)
    await store.settle("w1", hold_id, 0, keep_s=600)  # a second settle of the same hold holds nothing
    assert await store.usage("w1") == (0, 0)
    await store.aclose()


async def test_holds_lapse_after_their_ttl_into_spend(store: StateStore) -> None:
    # A hold counts until its TTL ends: a second hold made within it is refused. On a loaded machine the second
    # call may come after a short TTL, when the refusal cannot be told: then again, on a fresh account, with twice
    # the TTL.
    ttl_s = 0.2
    for account in ("ttl1", "ttl2", "ttl3", "ttl4", "ttl5", "ttl6"):
        started = time.monotonic()
        assert (await store.hold(account, 90, 100, ttl_s=ttl_s, keep_s=600))[0] is not None
        held = time.monotonic()  # the hold's TTL began no later than this
        second = (await store.hold(account, 20, 100, ttl_s=60, keep_s=600))[0]
        if time.monotonic() - started < ttl_s:  # the first hold was surely alive when the second was asked
            break
        ttl_s *= 2
    assert second is None
    await asyncio.sleep(held + ttl_s - time.monotonic() + 0.05)  # its TTL has passed: no longer held, but spent
    assert await store.usage(account) == (90, 0)
    assert (await store.hold(account, 10, 100, ttl_s=60, keep_s=600))[0] is not None
    await store.aclose()


class _CountedPasses(dict[str, Any]):
    """The memory store's accounts, counting the passes made over all of them (its sweeps)."""

    passes = 0

    def items(self) -> Any:
        self.passes += 1
        return super().items()


async def test_memory_accounts_are_swept_rarely_and_only_the_ended_windows_dropped() -> None:
    now = [0.0]
    store = MemoryStateStore(clock=lambda: now[0])
    store._accounts = accounts = _CountedPasses()
    for i in range(10_000):  # a budget key each (a tenant, a user), all in their window: none can be dropped
        await store.hold(f"budget:old{i}", 1, 10, ttl_s=60, keep_s=600)
    assert len(accounts) == 10_000
    assert accounts.passes <= 3  # was a pass over every account for each new one past 4,096: 5,904
    now[0] = 1000.0  # every window above has ended
    for i in range(10_000):
        await store.hold(f"budget:new{i}", 1, 10, ttl_s=60, keep_s=600)
    assert set(accounts) == {f"budget:new{i}" for i in range(10_000)}
    assert accounts.passes <= 5
    await store.aclose()


async def test_lists_append_and_read(store: StateStore) -> None:
    for value in (b"a", b"b", b"12|c"):  # a value may look like the stored stamp: it comes back as written
        await store.append("log", value)
    assert (await store.items("log"))[:2] == (0, [b"a", b"b", b"12|c"])
    assert (await store.items("log", 1))[:2] == (1, [b"b", b"12|c"])
    assert (await store.items("log", 1, limit=1))[:2] == (1, [b"b"])
    assert (await store.items("log", 3))[:2] == (3, [])
    assert await store.items("none") == ListRead(0, [], "")  # no list: no epoch yet
    epoch = (await store.items("log")).epoch
    await store.append("log", b"d", max_items=2)
    assert epoch and (await store.items("log")).epoch == epoch  # the same list while it exists, trimmed or not
    await store.aclose()


async def test_a_capped_list_keeps_positions_absolute(store: StateStore) -> None:
    for i in range(10):
        await store.append("log", b"%d" % i, max_items=4)
    assert (await store.items("log"))[:2] == (6, [b"6", b"7", b"8", b"9"])  # 0-5 trimmed: the reader skips
    assert (await store.items("log", 8))[:2] == (8, [b"8", b"9"])
    assert (await store.items("log", 10))[:2] == (10, [])
    # An offset past the end: the list was emptied (a server restart without persistence) -> from its head.
    assert (await store.items("log", 50))[:2] == (6, [b"6", b"7", b"8", b"9"])
    await store.append("log", b"10")  # no bound on this append: nothing trimmed
    assert (await store.items("log", 6, limit=2))[:2] == (6, [b"6", b"7"])
    assert (await store.items("log")).start == 6 and len((await store.items("log")).items) == 5
    await store.aclose()


async def test_a_list_drops_items_older_than_its_max_age(store: StateStore) -> None:
    await store.append("log", b"old-1")
    await store.append("log", b"old-2")
    await asyncio.sleep(0.3)
    await store.append("log", b"new", max_age_s=0.2)  # drops both old items, atomically with the append
    assert (await store.items("log"))[:2] == (2, [b"new"])
    await asyncio.sleep(0.3)
    await store.append("log", b"newer", max_age_s=5, max_items=10)
    assert (await store.items("log", 2))[:2] == (2, [b"new", b"newer"])
    await store.aclose()


async def test_list_items_written_before_stamps_are_read_and_age_out(redis_server: RedisServer) -> None:
    import redis.asyncio

    store = _redis(redis_server)
    raw = redis.asyncio.Redis.from_url(redis_server.url)
    await raw.rpush(f"{store.prefix}l:log", b'{"old": 1}')  # as the store wrote items before this change
    await store.append("log", b"new")
    assert (await store.items("log"))[:2] == (0, [b'{"old": 1}', b"new"])
    await store.append("log", b"newer", max_age_s=3600)  # an unstamped item counts as old
    assert (await store.items("log"))[:2] == (1, [b"new", b"newer"])
    epoch = (await store.items("log")).epoch
    redis_server.flush()  # as a restart without persistence leaves it: the next list is another incarnation
    assert await store.items("log") == ListRead(0, [], "")
    await asyncio.sleep(0.002)
    await store.append("log", b"first")
    assert (await store.items("log")).epoch not in ("", epoch)
    await raw.aclose()
    await store.aclose()


# -- breakers ---------------------------------------------------------------------------------------------

async def test_breaker_opens_after_threshold_then_one_probe_then_closes(store: StateStore) -> None:
    # Open long enough for the two calls made while it is open to come within it on a loaded machine.
    open_s = 2.0
    assert not await store.breaker_fail("b", threshold=3, window_s=10, open_s=open_s)
    assert not await store.breaker_fail("b", threshold=3, window_s=10, open_s=open_s)
    assert await store.breakers(["b"]) == {}  # failures alone do not open it
    assert await store.breaker_fail("b", threshold=3, window_s=10, open_s=open_s)
    (left,) = (await store.breakers(["b", "other"])).values()
    assert 0 < left <= open_s
    assert not await store.breaker_probe("b", 5)  # open: no probe yet
    await asyncio.sleep(open_s + 0.05)
    assert (await store.breakers(["b"]))["b"] <= 0  # half-open
    assert await store.breaker_probe("b", 5)
    assert not await store.breaker_probe("b", 5)  # only one probe at a time
    assert await store.breaker_close("b")
    assert await store.breakers(["b"]) == {}
    assert await store.breaker_probe("b", 5)  # closed: everything passes
    await store.aclose()


async def test_a_released_probe_lets_another_attempt_probe(store: StateStore) -> None:
    assert await store.breaker_open("b", 0.05)
    await asyncio.sleep(0.1)  # half-open
    assert await store.breaker_probe("b", 60)
    assert not await store.breaker_probe("b", 60)  # its one probe is in flight
    assert await store.apply([Release("b")]) == [False]  # that probe's caller went away
    assert (await store.breakers(["b"]))["b"] <= 0  # still half-open, not closed
    assert await store.breaker_probe("b", 60)  # the next attempt probes
    assert await store.apply([Release("unknown")]) == [False]
    await store.aclose()


async def test_breaker_open_for_a_given_time(store: StateStore) -> None:
    assert await store.breaker_open("r", 30)
    assert not await store.breaker_open("r", 1)  # already open; never shortened
    assert 29 < (await store.breakers(["r"]))["r"] <= 30
    await store.aclose()


# -- one call per admission: all or none -------------------------------------------------------------------

async def test_admit_takes_every_claim_or_none(store: StateStore) -> None:
    assert await store.breaker_open("half", 0.05)
    await asyncio.sleep(0.1)  # half-open: the next admission is its probe
    claims = [Probe("half", 5), Hold("a", 40, 100, ttl_s=60, keep_s=600), Hold("b", 30, 20, ttl_s=60, keep_s=600)]
    results, refused = await store.admit(claims)
    assert refused == 2 and results[1].passed and results[2] == Held(None, 20)
    assert results[0] == Checked(True, probing=True)
    # Nothing was held: not the first hold, not the probe (another attempt may claim it).
    assert await store.usage("a") == (0, 0)
    assert await store.breaker_probe("half", 5)
    results, refused = await store.admit([Probe("half", 5), Hold("a", 40, 100, ttl_s=60, keep_s=600)])
    assert refused == 0 and results == [Checked(False, False, 0.0)]  # its probe is in flight
    assert await store.usage("a") == (0, 0)
    await store.aclose()


async def test_admit_reports_an_open_breaker_and_apply_settles_all_at_once(store: StateStore) -> None:
    await store.breaker_open("b", 30)
    results, refused = await store.admit([Hold("a", 1, 10, ttl_s=60, keep_s=600), Probe("b", 5)])
    assert refused == 1 and not results[1].passed and 29 < results[1].open_s <= 30
    results, refused = await store.admit([Hold("a", 4, 10, ttl_s=60, keep_s=600), Probe("closed", 5),
                                          Hold("r", 1, 1, ttl_s=60, keep_s=600)])
    assert refused is None and results[1] == Checked(True) and results[2].left == 0
    answers = await store.apply([Settle("a", results[0].hold_id, 7, keep_s=600),
                                 Settle("r", results[2].hold_id, 1, charge="r2", keep_s=600),
                                 Fail("f", 1, 10, 30), Open("b", 1), Close("b")])
    assert answers == [None, None, True, False, True]
    assert await store.usage("a") == (7, 0) and await store.usage("r") == (0, 0) and await store.usage("r2") == (1, 0)
    assert set(await store.breakers(["b", "f"])) == {"f"}
    await store.aclose()


# -- callers that give up (real Redis only: a memory store answers without waiting) ---------------------------

async def _until(check: Any) -> bool:
    """Whether ``await check()`` comes true within 10 s (polled)."""
    for _ in range(200):
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_an_admission_its_caller_gives_up_on_holds_nothing_once_redis_answers(redis_server: RedisServer) -> None:
    direct = _redis(redis_server)
    assert await direct.breaker_open("half", 0.05)
    await asyncio.sleep(0.1)  # half-open: the admission below is its probe
    with tcp_proxy(redis_server.port) as proxy:
        store = RedisStateStore(RedisStateConfig(kind="redis", url=proxy.url, prefix=direct.prefix, timeout_s=30))
        await store.usage("given up")  # connected
        proxy.hold_replies()  # Redis runs the admission's script; its answer waits on the way back
        admitting = asyncio.ensure_future(store.admit([Hold("given up", 40, 100, ttl_s=60, keep_s=600),
                                                       Probe("half", 60)]))
        await _until(lambda: _usage_is(direct, "given up", (0, 40)))  # Redis took the hold
        admitting.cancel()  # the request is cancelled while its admission's answer is on the way
        with pytest.raises(asyncio.CancelledError):
            await admitting
        proxy.release_replies()
        assert await _until(lambda: _usage_is(direct, "given up", (0, 0)))  # not held until its TTL
        assert await direct.breaker_probe("half", 60)  # nor its probe
        await store.aclose()
    await direct.aclose()


async def test_a_settle_its_caller_gives_up_on_is_still_made(redis_server: RedisServer) -> None:
    import redis.asyncio

    store = _redis(redis_server, max_connections=1, timeout_s=30)  # the pause below is no outage
    raw = redis.asyncio.Redis.from_url(redis_server.url)
    hold_id, _ = await store.hold("settled", 40, 100, ttl_s=60, keep_s=600)
    # Paused far longer than the two short sleeps below take on a loaded machine: the settle is surely still waiting
    # for the connection when it is cancelled (had the pause ended, it could be done, and nothing cancelled).
    await raw.execute_command("CLIENT", "PAUSE", 3000, "ALL")
    busy = asyncio.ensure_future(store.usage("other"))  # holds the one pooled connection until the pause ends
    await asyncio.sleep(0.05)
    settling = asyncio.ensure_future(store.apply([Settle("settled", hold_id, 75, keep_s=600)]))
    await asyncio.sleep(0.05)
    settling.cancel()  # not sent yet: it waits for the connection
    with pytest.raises(asyncio.CancelledError):
        await settling
    await busy
    # Read through another store: a call on this one would send a settle it only kept for replay (a settle cancelled
    # with its caller): made without any further call, as a settle of its own.
    direct = _redis(redis_server)
    assert await _until(lambda: _usage_is(direct, "settled", (75, 0)))  # spent, and the hold released
    await direct.aclose()
    await raw.aclose()
    await store.aclose()


# Its coroutine, cut off with its loop, is closed when it is kept: the collector would print "Exception ignored".
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_settle_started_as_its_loop_shuts_down_is_replayed_not_lost(redis_server: RedisServer) -> None:
    """``asyncio.run``'s shutdown cancels the tasks left, then closes the loop: a settle a cancelled request's cleanup
    started then (from a callback: nothing awaits it), still waiting for a pooled connection when the loop closed,
    was never sent, its hold left to lapse at its full amount. Its writes are kept and the next call sends them."""
    import redis.asyncio

    store = _redis(redis_server, max_connections=1, timeout_s=30)  # the pause below is no outage
    raw = redis.asyncio.Redis.from_url(redis_server.url)

    async def main() -> None:
        hold_id, _ = await store.hold("shut", 40, 100, ttl_s=60, keep_s=600)
        await raw.execute_command("CLIENT", "PAUSE", 2000, "ALL")
        await raw.aclose()
        asyncio.ensure_future(store.usage("other"))  # holds the one pooled connection while Redis is paused
        await asyncio.sleep(0.05)

        async def request() -> None:  # a request cancelled by the shutdown; its cleanup settles without awaiting
            try:
                await asyncio.Event().wait()
            finally:
                settle = [Settle("shut", hold_id, 75, keep_s=600)]
                asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(store.apply(settle)))

        asyncio.ensure_future(request())
        await asyncio.sleep(0)

    asyncio.run(main())  # returns with the settle still waiting for the connection: its loop is closed under it
    assert asyncio.run(store.usage("shut")) == (75, 0)  # the next call, on another loop, sent it first
    asyncio.run(store.aclose())
    gc.collect()  # the closed loop's pending tasks say so now, in this test, not in a later one's logs


async def _usage_is(store: StateStore, account: str, expected: tuple[int, int]) -> bool:
    return await store.usage(account) == expected


async def test_a_lapsed_hold_is_charged_at_its_amount_and_a_late_settle_replaces_that_charge(store: StateStore) -> None:
    # A hold nobody settled (its process was killed after the provider took the request) counts as spent at its
    # amount once it lapses, so the budget stays counted; a settle that still comes replaces that charge by its own.
    hold_id, _ = await store.hold("lapse1", 40, 100, ttl_s=0.1, keep_s=600)
    assert hold_id is not None
    await asyncio.sleep(0.3)  # past its TTL, on any clock
    assert await store.usage("lapse1") == (40, 0)
    assert (await store.hold("lapse1", 61, 100, ttl_s=60, keep_s=600))[0] is None  # 60 left, not 100
    await store.settle("lapse1", hold_id, 25, charge="lapse2", keep_s=600)  # late, in the next window
    assert await store.usage("lapse1") == (0, 0)
    assert await store.usage("lapse2") == (25, 0)
    other, _ = await store.hold("lapse3", 30, 100, ttl_s=0.1, keep_s=600)
    await asyncio.sleep(0.3)
    await store.settle("lapse3", other, 70, keep_s=600)  # late and above its estimate: the settle's amount counts
    assert await store.usage("lapse3") == (70, 0)
    await store.aclose()


# -- across processes (real Redis only) -------------------------------------------------------------------

def test_four_processes_share_one_limit(redis_server: RedisServer) -> None:
    prefix = f"mp{os.getpid()}:"
    counts = [int(out) for out in run_together([spawn("burst", redis_server.url, prefix, 150, 7, 1000)
                                                for _ in range(4)])]
    assert sum(counts) == 1000 // 7  # 600 attempts in 4 processes; exactly what fits was admitted
    store = _redis(redis_server)
    store.prefix = prefix
    assert asyncio.run(store.usage("shared")) == (142 * 7, 0)


def test_a_hold_of_a_killed_process_is_charged_when_it_lapses(redis_server: RedisServer) -> None:
    prefix = f"kill{os.getpid()}:"
    holder = spawn("hold", redis_server.url, prefix, 90, 100, 1.0)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
    store = _redis(redis_server)
    store.prefix = prefix

    async def check() -> tuple[Any, ...]:
        refused = await store.hold("shared", 20, 100, ttl_s=60, keep_s=600)
        await asyncio.sleep(1.1)
        return refused, await store.hold("shared", 20, 100, ttl_s=60, keep_s=600), await store.usage("shared")

    refused, after, usage = asyncio.run(check())
    # The dead process's 90 were held, then charged when the hold lapsed: its attempt may have been billed.
    assert refused[0] is None and after == Held(None, 10) and usage == (90, 0)


# -- the store down ---------------------------------------------------------------------------------------

async def test_store_down_fail_open_uses_memory_then_recovers(redis_server: RedisServer,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # Timeouts that bound a hang only: a stopped server refuses at once; a slow reply must not look like an outage.
    store = _redis(redis_server, on_error="open", retry_s=0.2, timeout_s=20, connect_timeout_s=20)
    seen: list[str] = []
    store.on_fallback = seen.append
    held, _ = await store.hold("acct", 10, 100, ttl_s=60, keep_s=600)
    redis_server.stop()
    try:
        down, _ = await store.hold("acct", 10, 100, ttl_s=60, keep_s=600)
        assert down is not None and store.degraded and seen == ["hold"]
        await store.settle("acct", down, 10, keep_s=600)  # released in memory, where it was held
        await store.settle("acct", held, 10, keep_s=600)  # held in Redis: charged in memory meanwhile
        assert store.fallbacks == 3
        assert await store.usage("acct") == (20, 0)  # this process's view during the outage
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1  # logged once per interval, not once per call
        assert "127.0.0.1" in warnings[0].getMessage()
    finally:
        redis_server.start()  # an empty server: no persistence
    await asyncio.sleep(0.25)
    # Redis again (emptied by the restart), same client: the settles made meanwhile were replayed to it.
    assert await store.usage("acct") == (20, 0)
    assert not store.degraded and not store._unsent
    await store.aclose()


async def test_store_down_fail_closed_raises(redis_server: RedisServer) -> None:
    store = _redis(redis_server, on_error="closed", retry_s=0.2, timeout_s=20, connect_timeout_s=20)
    await store.usage("acct")
    redis_server.stop()
    try:
        with pytest.raises(StateUnavailable, match="unreachable"):
            await store.hold("acct", 10, 100, ttl_s=60, keep_s=600)
        with pytest.raises(StateUnavailable):  # within retry_s: refused without trying again
            await store.usage("acct")
    finally:
        redis_server.start()
    await asyncio.sleep(0.25)
    assert (await store.hold("acct", 10, 100, ttl_s=60, keep_s=600))[0] is not None
    await store.aclose()


# -- config -----------------------------------------------------------------------------------------------

def test_state_config_errors_name_the_field() -> None:
    assert isinstance(build_state(None), MemoryStateStore)
    assert isinstance(build_state({"kind": "memory"}), MemoryStateStore)
    with pytest.raises(ConfigError, match="state.url"):
        build_state({"kind": "redis", "url": "http://x"})
    with pytest.raises(ConfigError, match="state.on_error"):
        build_state({"kind": "redis", "on_error": "maybe"})
    with pytest.raises(ConfigError, match="state"):
        build_state({"kind": "etcd"})


@pytest.mark.parametrize("url", ["redis://:s3cretpw@127.0.0.1:notaport/0", "redis://:s3cretpw@127.0.0.1:99999/0",
                                 "redis://:s3cretpw@127.0.0.1:6379/0?db=x",
                                 "redis://:s3cretpw@127.0.0.1:6379/0?nosuch=1",  # each failed at the first call
                                 # each was read as another database (0, 12), silently
                                 "redis://:s3cretpw@127.0.0.1:6379/abc", "rediss://:s3cretpw@127.0.0.1:6379/1/2"])
def test_a_url_redis_cannot_use_is_a_config_error_at_build(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_state({"kind": "redis", "url": url})
    assert caught.value.field == "state.url" and "s3cretpw" not in str(caught.value)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379", "redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/3",
                                 "rediss://127.0.0.1:6379/3/", "unix:///tmp/redis.sock?db=2"])
def test_a_url_naming_its_database_by_number_or_not_at_all_is_taken(url: str) -> None:
    assert isinstance(build_state({"kind": "redis", "url": url}), RedisStateStore)


def test_a_password_in_the_url_never_reaches_an_error(redis_server: RedisServer) -> None:
    store = RedisStateStore(RedisStateConfig(kind="redis", url="redis://:hunter2@127.0.0.1:1/0", on_error="closed",
                                             timeout_s=0.2, connect_timeout_s=0.2))
    with pytest.raises(StateUnavailable) as caught:
        asyncio.run(store.usage("x"))
    assert "hunter2" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)


def test_a_loop_per_call_leaves_no_connection_behind(redis_server: RedisServer) -> None:
    # An application calling asyncio.run per request: each loop made a pool that held its loop (so the weak key
    # never let go) and its open connection, one more file descriptor per call, for good.
    import gc
    import warnings

    store = _redis(redis_server, on_error="closed")

    async def one() -> None:
        await store.hold("loops", 1, 1000, ttl_s=60, keep_s=600)

    def open_fds() -> int:
        with warnings.catch_warnings():  # the dropped pools' sockets close unclosed, as the SDK's sessions do
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        return len(os.listdir("/proc/self/fd"))

    asyncio.run(one())
    before = open_fds()
    for _ in range(20):
        asyncio.run(one())
    assert open_fds() <= before + 1  # was 20 more: a connection per loop
    assert asyncio.run(store.usage("loops")) == (0, 21)
    asyncio.run(store.aclose())


async def test_a_replayed_settle_counts_once(redis_server: RedisServer) -> None:
    store = _redis(redis_server)
    hold_id, _ = await store.hold("once", 10, 100, ttl_s=60, keep_s=600)
    script = store._client().script
    settle = Settle("once", hold_id, 10, keep_s=600)
    first, other = settle_id(), settle_id()
    await store._call(script, "apply", [settle], [first])
    await store._call(script, "apply", [settle], [first])  # e.g. it timed out on the way back and was replayed
    assert await store.usage("once") == (10, 0)
    await store._call(script, "apply", [settle._replace(hold_id=None), settle], [other, first])  # maybe in its second
    assert await store.usage("once") == (20, 0)  # another settle counts, and the first still does not
    await store.aclose()


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_a_write_redis_refuses_is_not_replayed(redis_server: RedisServer, on_error: str) -> None:
    import redis.asyncio

    store = _redis(redis_server, on_error=on_error, retry_s=60, timeout_s=20, connect_timeout_s=20)
    raw = redis.asyncio.Redis.from_url(redis_server.url)
    # Keys of another type under the prefix where a list and a spend account should be: WRONGTYPE error replies.
    await raw.set(f"{store.prefix}l:poisoned", "a string")
    await raw.set(f"{store.prefix}a:poisoned", "a string")
    try:
        if on_error == "open":
            await store.append("poisoned", b"refused")  # answered from memory
            await store.apply([Settle("acct", None, 7, "poisoned", keep_s=600)])
            assert store.fallbacks == 2 and (await store.items("poisoned")).items == [b"refused"]
        else:
            with pytest.raises(StateUnavailable, match="WRONGTYPE"):
                await store.append("poisoned", b"refused")
        assert not store._unsent and store.replays("poisoned").waiting == 0  # kept for no replay
        await raw.delete(f"{store.prefix}l:poisoned", f"{store.prefix}a:poisoned")
        # Not an outage: the next call (within retry_s) asks Redis, and sends only its own write.
        await store.append("poisoned", b"after")
        assert [v.split(b"|", 1)[1] for v in await raw.lrange(f"{store.prefix}l:poisoned", 0, -1)] == [b"after"]
        assert await store.usage("poisoned") == (0, 0) and not store.degraded
        assert store.replays("poisoned") == (0, 0, 0)
    finally:
        await raw.aclose()
        await store.aclose()


async def test_a_pinned_value_is_the_first_one_given(store: StateStore) -> None:
    assert await store.pin("sequence", "matched") == "matched"
    assert await store.pin("sequence", "union") == "matched"  # never replaced
    assert await store.pin("other", "union") == "union"
    await store.aclose()
