"""Shared state end to end: routers in separate processes share one budget through a real Redis; the store
going down fails open (memory, counted) or closed (typed error, nothing sent), and recovers after a restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from genroute import GenerateResult, Router, StateUnavailable
from genroute.testing import Reply

from .conftest import budget_usage, closes_everything, gemini_config
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401
from .tcp_proxy import tcp_proxy

ROOT = Path(__file__).resolve().parents[1]
USAGE = (1000, 500)
COST = 1000 * 0.30 / 1e6 + 500 * 2.50 / 1e6  # gemini-2.5-flash list prices
BUDGET = 30 * COST + COST / 2  # room for 30 answers, across all processes


def _config(server: Any, state: dict[str, Any]) -> dict[str, Any]:
    config = gemini_config(server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": BUDGET, "costs": {"chat": COST}, "window": "day"}
    config["state"] = state
    return config


def test_three_processes_share_one_budget_through_redis(gemini_server, redis_server: RedisServer) -> None:
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    # Generous timeouts: on a loaded machine a connect may take seconds, and a call that times out is answered
    # from the process's own memory (fail-open), which is not the sharing this test is about.
    config = _config(gemini_server, {"kind": "redis", "url": redis_server.url, "prefix": f"r{os.getpid()}:",
                                     "timeout_s": 20, "connect_timeout_s": 20})
    start_at = time.time() + 4
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-m", "tests.router_worker", json.dumps(config), "40", str(start_at)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out))
    assert all(set(r) <= {"answered", "BudgetExceeded", "cost_usd", "fallbacks"} for r in results), results  # 0 lost
    assert [r["fallbacks"] for r in results] == [0, 0, 0], results  # Redis answered every call
    assert sum(r.get("answered", 0) + r.get("BudgetExceeded", 0) for r in results) == 120
    assert sum(r.get("answered", 0) for r in results) == 30  # one budget for all: not 30 per process
    assert sum(r["cost_usd"] for r in results) <= BUDGET
    assert len([r for r in gemini_server.requests if r.action == "generateContent"]) == 30


def test_store_down_fail_open_answers_and_counts_it(gemini_server, redis_server: RedisServer, otel) -> None:
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    state = {"kind": "redis", "url": redis_server.url, "on_error": "open", "retry_s": 0.2, "timeout_s": 20,
             "connect_timeout_s": 20}  # bound a hang only: a stopped server refuses at once

    async def main() -> list[Any]:
        async with Router.from_config(_config(gemini_server, state), **otel.providers) as router:
            first = await router.agenerate("before")
            redis_server.stop()
            try:
                during = await router.agenerate("during")
            finally:
                redis_server.start()
            await asyncio.sleep(0.3)
            after = await router.agenerate("after")
            return [first, during, after, await router.admission.budget().usage("*")]

    first, during, after, usage = asyncio.run(main())
    assert all(isinstance(r, GenerateResult) for r in (first, during, after))
    # Redis again (emptied by its restart): "during"'s settle was replayed to it, then "after" was charged.
    assert usage == {"spent": pytest.approx(2 * COST), "reserved": 0.0}
    roots = sorted(otel.spans("genroute.generate"), key=lambda s: s.start_time)
    assert [r.attributes.get("genroute.state.fallback") for r in roots] == [None, True, None]
    fallbacks = otel.metrics()["genroute.state.fallbacks"]
    assert sum(p.value for p in fallbacks.data.data_points) == 2  # the hold and its settle


def test_store_down_fail_closed_sends_nothing(gemini_server, redis_server: RedisServer) -> None:
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    state = {"kind": "redis", "url": redis_server.url, "on_error": "closed", "retry_s": 0.2, "timeout_s": 20,
             "connect_timeout_s": 20}  # bound a hang only: a stopped server refuses at once

    async def main() -> Any:
        async with Router.from_config(_config(gemini_server, state)) as router:
            await router.agenerate("before")
            redis_server.stop()
            try:
                with pytest.raises(StateUnavailable):
                    await router.agenerate("during")
            finally:
                redis_server.start()
            await asyncio.sleep(0.3)
            return await router.agenerate("after")

    assert isinstance(asyncio.run(main()), GenerateResult)
    assert len([r for r in gemini_server.requests if r.action == "generateContent"]) == 2


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_an_error_reply_falls_back_without_replay(gemini_server, redis_server: RedisServer, otel,
                                                  on_error: str) -> None:
    import redis

    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    state = {"kind": "redis", "url": redis_server.url, "on_error": on_error, "retry_s": 0.2, "timeout_s": 20,
             "connect_timeout_s": 20}
    admin = redis.Redis.from_url(redis_server.url)

    async def main() -> list[Any]:
        async with Router.from_config(_config(gemini_server, state), **otel.providers) as router:
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)  # every write is refused: an OOM error reply, not an outage
            try:
                try:
                    during: Any = await router.agenerate("during")
                except StateUnavailable as exc:
                    during = exc
            finally:
                admin.config_set("maxmemory", 0)
            await asyncio.sleep(0.3)
            return [during, await router.agenerate("after"), await router.admission.budget().usage("*")]

    try:
        during, after, usage = asyncio.run(main())
    finally:
        admin.config_set("maxmemory", 0)
        admin.close()
    sent = len([r for r in gemini_server.requests if r.action == "generateContent"])
    if on_error == "closed":
        assert isinstance(during, StateUnavailable) and "OutOfMemoryError" in str(during) and sent == 1  # nothing sent
        assert usage == {"spent": pytest.approx(COST), "reserved": 0.0}
    else:
        assert isinstance(during, GenerateResult) and sent == 2
        roots = sorted(otel.spans("genroute.generate"), key=lambda s: s.start_time)
        assert [r.attributes.get("genroute.state.fallback") for r in roots] == [True, None]
        # The settle Redis refused was charged in memory only, never replayed (a replay would be refused again).
        assert usage == {"spent": pytest.approx(COST), "reserved": 0.0}
    assert isinstance(after, GenerateResult)


def test_a_hold_whose_admission_a_loop_per_call_cut_off_is_given_back_not_left_to_lapse(
        gemini_server, redis_server: RedisServer) -> None:
    # With a loop per call (asyncio.run per request, a Celery task's), a request still waiting for Redis to admit it
    # when its loop ends is cancelled there, and so is the store call that was to give back what Redis held for it:
    # the hold stayed reserved until its TTL, then was charged at its full estimate (a request that sent nothing was
    # billed COST). What such a call owes is now replayed to Redis by the next call, on whichever loop.
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    with tcp_proxy(redis_server.port) as proxy:
        config = _config(gemini_server, {"kind": "redis", "url": proxy.url, "prefix": f"c{time.monotonic_ns()}:",
                                         "timeout_s": 20, "connect_timeout_s": 20})
        config["timeout_s"] = 30  # the hold lives 32 s: it cannot lapse within the test
        with Router.from_config(config) as router:

            async def left_waiting() -> None:
                await router.agenerate("first")  # this loop's pool has its connection
                proxy.hold_replies()
                asyncio.ensure_future(router.agenerate("cut off"))
                for _ in range(3000):  # until its admission ran in Redis and the reply is held in the proxy (30 s)
                    if proxy.held:
                        break
                    await asyncio.sleep(0.01)
                assert proxy.held, "the admission never reached Redis"

            asyncio.run(left_waiting())  # returns with the request still waiting: asyncio.run cancels it
            proxy.release_replies()
            asyncio.run(router.agenerate("next"))  # a new loop: what the cut-off call owed is sent first
            usage = budget_usage(router)
    assert usage == {"spent": pytest.approx(2 * COST), "reserved": 0.0}  # the two answers, nothing held


def test_a_router_closed_during_an_outage_names_the_spend_the_shared_budget_misses(
        gemini_server, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    # Its settles made meanwhile cannot be replayed once it is gone: the shared spend stays short of them. The
    # warning said only how many writes were lost, not which accounts miss what.
    import logging

    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    state = {"kind": "redis", "url": redis_server.url, "on_error": "open", "retry_s": 0.2, "timeout_s": 20,
             "connect_timeout_s": 20, "prefix": "closed-in-outage:"}

    async def main() -> None:
        async with Router.from_config(_config(gemini_server, state)) as router:
            await router.agenerate("before")
            redis_server.stop()
            await router.agenerate("during")  # settled in this process's memory, kept for Redis
            await asyncio.sleep(0.3)  # past retry_s: closing asks Redis once more, in vain

    try:
        with caplog.at_level(logging.WARNING, logger="genroute"):
            asyncio.run(main())
    finally:
        redis_server.start()  # without persistence: it forgets "before" too (documented)
    (warning,) = [r.getMessage() for r in caplog.records if "were not sent" in r.getMessage()]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"budget:policy:*:{today} {round(COST * 1e9)}" in warning, warning
    assert "nano-USD for a budget" in warning


def test_a_loop_per_call_closes_its_redis_connections_before_it_closes(gemini_server, redis_server: RedisServer):
    """``asyncio.run`` per call: each loop's Redis pool is closed with its connections as that loop shuts down, not
    left open for the garbage collector (redis-py's "unclosed Connection" and asyncio's "unclosed transport"
    ResourceWarnings, one of each per connection)."""
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": 1.0, "costs": {"chat": 0.01}}
    config["state"] = {"kind": "redis", "url": redis_server.url, "prefix": f"loops{time.monotonic_ns()}:"}
    script = f"""
import asyncio, gc, json
from genroute import Router
router = Router.from_config(json.loads({json.dumps(json.dumps(config))}))
async def call():
    return (await router.agenerate("hi")).text
for _ in range(3):
    print(asyncio.run(call()))
    gc.collect()
router.close()
gc.collect()
"""
    assert closes_everything(script) == ["echo: hi"] * 3
