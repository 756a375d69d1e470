"""Shared state with real processes and a real ``redis-server``: a replica killed with SIGKILL while it holds a
reservation, Redis killed and restarted under traffic from three replicas, replicas configured with different
limits for one ledger, and one rate limit across four replicas."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genroute import BudgetExceeded, GenerateResult, Router
from genroute.state.ops import Hold
from genroute.testing import Fault, Reply

from .conftest import budget_usage, gemini_config
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401
from .test_outcome_outage import persistent_redis, shared_log  # noqa: F401
from .test_outcomes import FLASH, PRO, SHADOWED, cost

ROOT = Path(__file__).resolve().parents[1]
USAGE = (100, 5)
#: Redis timeouts that only bound a hang: a killed server refuses at once; a slow reply must not be an outage.
TIMEOUT_S = 20.0
RETRY_S = 0.2


def _worker(module: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _line(worker: subprocess.Popen[str]) -> str:
    assert worker.stdout is not None
    line = worker.stdout.readline().strip()
    if not line:
        _, err = worker.communicate(timeout=30)
        pytest.fail(f"worker exited: {err[-3000:]}")
    return line


def _say(worker: subprocess.Popen[str], text: str = "go") -> None:
    assert worker.stdin is not None
    worker.stdin.write(text + "\n")
    worker.stdin.flush()


def _finish(workers: list[subprocess.Popen[str]], timeout: float = 120) -> list[dict[str, Any]]:
    """Start each worker's last phase; what each printed last (each must exit 0)."""
    for w in workers:
        _say(w)
    results = []
    for w in workers:
        out, err = w.communicate(timeout=timeout)
        assert w.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@contextlib.contextmanager
def _running(workers: list[subprocess.Popen[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    """``workers``, killed on the way out if still running (a failed test leaves none behind)."""
    try:
        yield workers
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.communicate()


def _shadowed_budget(server: Any, tmp_path: Path, url: str, prefix: str, **state: Any) -> dict[str, Any]:
    config = gemini_config(server)
    config["backends"]["pro"] = {**config["backends"]["chat"], "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "budget", "inner": SHADOWED, "per": "global", "budget_usd": 100.0,
                        "costs": {"chat": 0.01, "pro": 0.01}, "window": "day"}
    config["outcomes"] = {"path": str(tmp_path / f"outcomes-{len(list(tmp_path.iterdir()))}.db")}
    config["state"] = {"kind": "redis", "url": url, "prefix": prefix, "retry_s": RETRY_S, "timeout_s": TIMEOUT_S,
                       "connect_timeout_s": TIMEOUT_S, **state}
    return config


def test_a_replica_killed_while_it_holds_has_its_hold_charged_at_its_estimate_when_it_lapses(
        gemini_server, redis_server: RedisServer) -> None:  # noqa: F811
    # What docs/shared-state.md promises: a hold lapses 2 s after its request's deadline and is then charged at its
    # estimate, so the attempt of a process killed after the provider took it still counts against the shared budget.
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    one = cost(FLASH, USAGE)
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": 1.5 * one, "costs": {"chat": one}, "window": "day"}  # room for one at a time
    config["state"] = {"kind": "redis", "url": redis_server.url, "prefix": "killed:", "timeout_s": TIMEOUT_S,
                       "connect_timeout_s": TIMEOUT_S}
    gemini_server.fault(Fault.delay(30.0))  # the provider takes the request and is slow to answer
    # Request deadline 20 s: its hold lives 22 s, time enough to see it held on a loaded machine.
    with _running([_worker("tests.router_phases_worker", json.dumps(config), "1", "20")]) as (worker,):
        assert _line(worker) == "ready"
        _say(worker)
        deadline = time.monotonic() + 60
        while not gemini_server.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gemini_server.requests  # sent: admitted, its hold taken
        worker.send_signal(signal.SIGKILL)
        worker.communicate(timeout=30)
    with Router.from_config(config) as router:
        assert budget_usage(router) == {"spent": 0.0, "reserved": pytest.approx(one)}
        with pytest.raises(BudgetExceeded):  # the dead replica's hold still counts...
            router.generate("while it holds")
        deadline = time.monotonic() + 60
        while budget_usage(router)["reserved"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert budget_usage(router) == {"spent": pytest.approx(one), "reserved": 0.0}  # ...and is charged
        with pytest.raises(BudgetExceeded):  # half an estimate left: the dead replica's spend is counted
            router.generate("after it lapsed")
    assert len([r for r in gemini_server.requests if r.action == "generateContent"]) == 1


def test_redis_killed_and_restarted_under_three_replicas_loses_and_doubles_nothing(
        gemini_server, tmp_path: Path, persistent_redis: RedisServer) -> None:  # noqa: F811
    # Two replicas fail open, one closed. Redis is killed (SIGKILL) while 12 requests are in flight (admitted in
    # Redis, to be settled while it is down), stays down for a phase, and restarts from its append-only file. Its
    # spend must then be exactly what the provider was sent, nothing held, and the shared outcome log must hold
    # each record once (the closed replica's settles and outcome writes made while Redis was down are kept and
    # replayed too).
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "positive"},), usage=USAGE)
    modes = ["open", "open", "closed"]
    with _running([_worker("tests.router_phases_worker",
                           json.dumps(_shadowed_budget(gemini_server, tmp_path, persistent_redis.url, "restart:",
                                                       on_error=mode)), "5,4,3,5") for mode in modes]) as workers:
        assert [_line(w) for w in workers] == ["ready"] * 3
        for w in workers:
            _say(w)
        assert [_line(w) for w in workers] == ["done"] * 3
        # The provider answers each served request of phase two 3 s late; Redis dies once all 12 are in flight.
        before = len(gemini_server.requests)
        gemini_server.fault(Fault.delay(3.0), times=12)
        for w in workers:
            _say(w)
        deadline = time.monotonic() + 60
        while len(gemini_server.requests) < before + 12 and time.monotonic() < deadline:
            time.sleep(0.01)
        persistent_redis.stop(kill=True)
        try:
            assert [_line(w) for w in workers] == ["done"] * 3
            for w in workers:  # phase three: Redis is down
                _say(w)
            assert [_line(w) for w in workers] == ["done"] * 3
        finally:
            persistent_redis.start()
        time.sleep(RETRY_S + 0.1)
        results = _finish(workers)
    open_one, open_two, closed = results
    assert open_one["errors"] == open_two["errors"] == {} and closed["errors"] == {"StateUnavailable": 3}
    assert [len(ids) for r in results for ids in r["ids"]] == [5, 4, 3, 5] * 2 + [5, 4, 0, 5]
    assert open_one["fallbacks"] > 0 and open_two["fallbacks"] > 0
    sent = Counter(r.model for r in gemini_server.requests if r.action == "generateContent")
    assert sent["models/gemini-2.5-flash"] == 17 * 2 + 14  # nothing sent by the closed replica while Redis was down
    config = _shadowed_budget(gemini_server, tmp_path, persistent_redis.url, "restart:")
    with Router.from_config(config) as reader:
        usage = budget_usage(reader)
    spent = sent["models/gemini-2.5-flash"] * cost(FLASH, USAGE) + sent["models/gemini-2.5-pro"] * cost(PRO, USAGE)
    assert usage == {"spent": pytest.approx(spent), "reserved": 0.0}
    log, records = shared_log(persistent_redis, "restart:")
    written = Counter(i for i, _ in log)
    # Every record once (none lost, none replayed twice); the closed replica's records of phase two are written
    # while Redis is down: kept and replayed where their shadow ran, none where the outage refused the shadow.
    assert {written[i] for r in results[:2] for ids in r["ids"] for i in ids} == {1}
    assert {written[i] for ids in closed["ids"][::3] for i in ids} == {1}
    assert {written[i] for i in closed["ids"][1]} <= {0, 1}
    assert {r["metadata"]["id"] for r in records} == set(written)


def test_replicas_with_different_budgets_for_one_ledger_each_keep_their_own_and_report_it(
        gemini_server, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    # A rollout that changes budget_usd: the old replica (3 answers' worth) and the new one (6) share the ledger's
    # spend, each admits up to its own budget over it, and each reports the other's (it was silent).
    import logging

    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    one = cost(FLASH, USAGE)

    def config(budget: float) -> dict[str, Any]:
        cfg = gemini_config(gemini_server)
        cfg["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                         "budget_usd": budget, "costs": {"chat": one}, "window": "day"}
        cfg["state"] = {"kind": "redis", "url": redis_server.url, "prefix": "rollout:", "timeout_s": TIMEOUT_S,
                        "connect_timeout_s": TIMEOUT_S}
        return cfg

    with _running([_worker("tests.router_phases_worker", json.dumps(config(3 * one)), "5,2")]) as (old,):
        assert _line(old) == "ready"
        _say(old)
        assert _line(old) == "done"  # three answered, the old budget full
        with caplog.at_level(logging.WARNING, logger="genroute.state"), Router.from_config(config(6 * one)) as new:
            answers = [new.generate(f"new {i}") for i in range(3)]  # room for three more under the new budget
            with pytest.raises(BudgetExceeded):
                new.generate("past the new budget")
            assert new.state.limit_mismatches >= 1
        (result,) = _finish([old])
    assert [len(ids) for ids in result["ids"]] == [3, 0] and result["errors"] == {"BudgetExceeded": 4}
    assert result["limit_mismatches"] >= 1  # the old replica saw the new budget too
    assert all(isinstance(a, GenerateResult) for a in answers)
    (warning,) = [r.getMessage() for r in caplog.records if "limit" in r.getMessage()]
    assert f"limit of {round(6 * one * 1e9)} here and of {round(3 * one * 1e9)} by another router" in warning


def test_one_rate_limit_holds_across_four_replicas(gemini_server, redis_server: RedisServer) -> None:  # noqa: F811
    # 20 requests per 1 s window, four replicas each sending 25 at once and waiting for room: every window's count in
    # Redis stays within the limit, and the windows together count every request the provider was sent.
    import redis

    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    config = gemini_config(gemini_server)
    config["rate_limits"] = [{"engine": "gemini", "model": "gemini-2.5-flash", "rpm": 20, "window_s": 1}]
    config["state"] = {"kind": "redis", "url": redis_server.url, "prefix": "rl:", "timeout_s": TIMEOUT_S,
                       "connect_timeout_s": TIMEOUT_S}
    with _running([_worker("tests.router_phases_worker", json.dumps(config), "25") for _ in range(4)]) as workers:
        assert [_line(w) for w in workers] == ["ready"] * 4
        results = _finish(workers, timeout=180)
    assert [(len(r["ids"][0]), r["errors"], r["fallbacks"]) for r in results] == [(25, {}, 0)] * 4
    client = redis.Redis.from_url(redis_server.url)
    windows = {key: int(client.hget(key, "spent") or 0) for key in client.scan_iter("rl:a:ratelimit:*:rpm")}
    assert len(windows) >= 5 and max(windows.values()) == 20, windows  # 100 requests need five windows at least
    assert sum(windows.values()) == 100 == len([r for r in gemini_server.requests if r.action == "generateContent"])


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_a_hold_against_another_limit_than_the_last_one_is_reported(kind: str, request: pytest.FixtureRequest
                                                                          ) -> None:
    from genroute.state import RedisStateConfig, StateStore
    from genroute.state.memory import MemoryStateStore
    from genroute.state.redis_store import RedisStateStore

    store: StateStore = MemoryStateStore()
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        store = RedisStateStore(RedisStateConfig(kind="redis", url=server.url, prefix="lim:", on_error="closed"))
    await store.admit([Hold("acct", 4, 10, 60, 600)])
    assert store.limit_mismatches == 0
    results, _ = await store.admit([Hold("acct", 4, 20, 60, 600)])  # another router's limit: reported
    assert results[0].passed and store.limit_mismatches == 1
    _, refused = await store.admit([Hold("acct", 1, 10, 60, 600), Hold("other", 1, 1, 60, 600)])
    assert refused is None and store.limit_mismatches == 2
    results, _ = await store.admit([Hold("acct", 4, 10, 60, 600)])  # refused (9 held), the same limit: not
    assert not results[0].passed and store.limit_mismatches == 2
    await store.aclose()


async def test_a_store_closed_soon_after_an_outage_still_sends_what_it_owes(redis_server: RedisServer  # noqa: F811
                                                                          ) -> None:
    # A replica shut down within retry_s of its last failed call (Redis back meanwhile) dropped the settles and
    # outcome writes it kept from the outage, without a word.
    from genroute.state import RedisStateConfig
    from genroute.state.redis_store import RedisStateStore

    def store() -> RedisStateStore:
        return RedisStateStore(RedisStateConfig(kind="redis", url=redis_server.url, prefix="close:", retry_s=3600,
                                                timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S))

    leaving = store()
    hold_id, _ = await leaving.hold("acct", 5, 100, ttl_s=600, keep_s=600)
    redis_server.stop()
    try:
        await leaving.settle("acct", hold_id, 3, keep_s=600)
        await leaving.append("log", b"during")
    finally:
        redis_server.start()  # emptied (no persistence): only the replay can bring them back
    await leaving.aclose()
    reader = store()
    assert await reader.usage("acct") == (3, 0)
    assert (await reader.items("log")).items == [b"during"]
    await reader.aclose()


async def test_settle_markers_live_an_hour_not_as_long_as_their_budget_in_one_hash_a_second(
        redis_server: RedisServer) -> None:  # noqa: F811
    # Every settle leaves a marker (so a replay counts once). It was a key of its own that lived as long as the
    # account, a month for a monthly budget; then a key of its own for an hour: ~360k keys at 100 settles a second.
    # The markers of one second's settles now share one hash, which lives an hour after its last marker.
    import redis

    from genroute.state import RedisStateConfig
    from genroute.state.redis_store import RedisStateStore

    store = RedisStateStore(RedisStateConfig(kind="redis", url=redis_server.url, prefix="mark:"))
    started = int(time.time())
    for _ in range(200):
        hold_id, _ = await store.hold("month", 1, 1000, ttl_s=60, keep_s=31 * 86400)
        await store.settle("month", hold_id, 1, keep_s=31 * 86400)
    seconds = int(time.time()) - started + 1  # the seconds the settles' ids were made in
    assert await store.usage("month") == (200, 0)
    await store.aclose()
    client = redis.Redis.from_url(redis_server.url)
    markers = list(client.scan_iter("mark:s*"))
    assert len(markers) <= seconds < 200  # was 200: a key per settle
    assert sum(client.hlen(m) for m in markers) == 200  # one marker per settle
    assert all(0 < client.pttl(m) <= 3_600_000 for m in markers)  # an hour
    assert client.pttl("mark:a:month") > 30 * 86400 * 1000  # the account itself lives its window out