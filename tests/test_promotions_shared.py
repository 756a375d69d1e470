"""Promotions through a shared state store: ``router.promote`` in one replica reaches the others (processes with
connections of their own to a real ``redis-server``) without a restart, a rollback likewise, and a Redis outage
during a promotion leaves nothing half-applied."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genroute import ConfigError, Router, StateUnavailable, UsageError
from genroute.policies.challenger import ChallengerPolicy
from genroute.testing import GeminiTestServer

from .conftest import gemini_config
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401
from .test_outcome_outage import persistent_redis  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TASK = "sentiment"


def _config(server: GeminiTestServer, redis: RedisServer, *, prefix: str = "promo:", **state: Any) -> dict[str, Any]:
    config = gemini_config(server)
    config["backends"]["lite"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    config["state"] = {"kind": "redis", "url": redis.url, "prefix": prefix, "timeout_s": 20.0,
                       "connect_timeout_s": 20.0, "retry_s": 0.2, "promotions_every_s": 0.1, **state}
    return config


def _first(router: Router, task: str = TASK) -> str:
    return router.decide("hello", task=task).rungs[0].backend


@pytest.fixture
def replica(gemini_server: GeminiTestServer, redis_server: RedisServer) -> Iterator[subprocess.Popen[str]]:  # noqa: F811
    """A replica in another process, built from the same config (so reading the same Redis prefix)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.promotion_worker", json.dumps(_config(gemini_server, redis_server)), TASK],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        assert _ask(worker, None) == "ready"
        yield worker
    finally:
        if worker.poll() is None:
            _ask(worker, "quit", reply=False)
            try:
                worker.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.communicate()


def _ask(worker: subprocess.Popen[str], command: str | None, *, reply: bool = True) -> str:
    """Send ``command`` (a line) to ``worker`` and read the line it answers."""
    assert worker.stdin is not None and worker.stdout is not None
    if command is not None:
        worker.stdin.write(command + "\n")
        worker.stdin.flush()
    if not reply:
        return ""
    line = worker.stdout.readline().strip()
    if not line:
        _, err = worker.communicate(timeout=30)
        pytest.fail(f"the replica exited: {err[-3000:]}")
    return line


def _serves(worker: subprocess.Popen[str], backend: str, within_s: float = 60.0) -> bool:
    """Whether the replica answers with ``backend`` first before ``within_s`` (it reads promotions every 0.1 s)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if _ask(worker, "serve") == backend:
            return True
        time.sleep(0.05)
    return False


def test_a_promotion_and_its_rollback_reach_a_replica_in_another_process(
        gemini_server: GeminiTestServer, redis_server: RedisServer,  # noqa: F811
        replica: subprocess.Popen[str]) -> None:
    assert _ask(replica, "serve") == "chat"
    with Router.from_config(_config(gemini_server, redis_server)) as one:
        one.promote(TASK, "lite")
        assert _first(one) == "lite"
        # The replica applies it at its next refresh...
        assert _ask(replica, "refresh") == "lite"
        # ...and a replica started after it, as it is built (not the config's routing).
        with Router.from_config(_config(gemini_server, redis_server)) as late:
            assert _first(late) == "lite" and _first(late, "other") == "chat"
        # The rollback is a promotion of the incumbent: the replica's own reads (promotions_every_s) apply it.
        one.promote(TASK, "chat")
        assert _serves(replica, "chat")
        assert _first(one) == "chat"
    with Router.from_config(_config(gemini_server, redis_server)) as late:
        assert _first(late) == "chat"
        assert all(late.decide("x", task=TASK).shadow == () for _ in range(3))  # the challenger is out, not a shadow


def test_a_replica_without_the_promoted_backend_warns_once_and_serves_on(
        gemini_server: GeminiTestServer, redis_server: RedisServer,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    narrow = _config(gemini_server, redis_server)
    del narrow["backends"]["lite"]
    with Router.from_config(_config(gemini_server, redis_server)) as one, Router.from_config(narrow) as other:
        one.promote(TASK, "lite")
        with caplog.at_level(logging.WARNING, logger="genroute"):
            assert other.refresh() is False
            assert other.refresh() is False
            assert other.generate("hello", task=TASK).backend == "chat"
        skipped = [r for r in caplog.records if "not applied by this router" in r.getMessage()]
        assert len(skipped) == 1 and "'lite'" in skipped[0].getMessage()
        assert "no such backend" in skipped[0].getMessage()
        one.promote(TASK, "chat")  # a newer promotion it can apply is applied
        assert other.refresh() is True and _first(other) == "chat"


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_promotion_during_a_redis_outage_is_refused_and_changes_nothing(
        gemini_server: GeminiTestServer, persistent_redis: RedisServer, on_error: str) -> None:  # noqa: F811
    config = _config(gemini_server, persistent_redis, on_error=on_error)
    with Router.from_config(config) as one:
        one.promote(TASK, "lite")
        persistent_redis.stop()
        try:
            with pytest.raises(StateUnavailable) as exc:
                one.promote(TASK, "chat")
            assert "not recorded" in str(exc.value) and not exc.value.kept
            assert _first(one) == "lite"  # not applied here either
        finally:
            persistent_redis.start()
        time.sleep(0.3)  # past retry_s: the store is asked again
    with Router.from_config(config) as late:
        assert _first(late) == "lite"  # the refused rollback recorded nothing


def test_memory_state_keeps_a_promotion_in_its_process(gemini_server: GeminiTestServer) -> None:
    config = gemini_config(gemini_server)
    config["backends"]["lite"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    with Router.from_config(config) as one, Router.from_config(config) as two:
        one.promote(TASK, "lite")
        assert two.refresh() is False
        assert (_first(one), _first(two)) == ("lite", "chat")
        assert one.state.promotions_every_s is None and one._refresher is None


def test_promotions_every_s_is_checked(gemini_server: GeminiTestServer, redis_server: RedisServer) -> None:  # noqa: F811
    for bad in (0, -1, True, float("inf")):
        with pytest.raises(ConfigError) as exc:
            Router.from_config(_config(gemini_server, redis_server, promotions_every_s=bad))
        assert exc.value.field == "state.promotions_every_s"


def test_promotions_keep_one_hash_per_prefix(gemini_server: GeminiTestServer,
                                             redis_server: RedisServer) -> None:  # noqa: F811
    import redis

    with Router.from_config(_config(gemini_server, redis_server, prefix="a:")) as one, \
            Router.from_config(_config(gemini_server, redis_server, prefix="b:")) as other:
        for backend in ("lite", "chat", "lite", "chat"):
            one.promote(TASK, backend)
        one.promote("other", "lite")
        assert other.refresh() is False and _first(other) == "chat"  # another prefix: another fleet
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert [k.decode() for k in client.keys("a:*")] == ["a:promotions"]
        stored = {k.decode(): v.decode() for k, v in client.hgetall("a:promotions").items()}
    finally:
        client.close()
    assert set(stored) == {"epoch", "version", f"t:{TASK}", "t:other"} and stored["version"] == "5"
    assert json.loads(stored[f"t:{TASK}"])["backend"] == "chat" and json.loads(stored[f"t:{TASK}"])["version"] == 4


def test_a_promotion_adecide_makes_reaches_a_replica_built_from_the_unchanged_config(
        gemini_server: GeminiTestServer, redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    from genroute.graduation import adecide

    config = _config(gemini_server, redis_server)
    config["policy"] = {"kind": "challenger", "task": "t", "backend": "lite", "mode": "split", "share": 0.5,
                        "policy": {"kind": "static", "backend": "chat"}}
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy"}
    with Router.from_config(config) as router, Router.from_config(config) as replica:
        for i in range(40):
            result = router.generate(f"question {i}", task="t")
            router.feedback(result, label=result.text)  # every answer right
        report = router._portal.call(adecide(router, "t", challenger="lite", incumbent="chat", min_n=5, margin=0.5))
        assert report.promotion is not None and report.promotion.promote
        assert {replica.decide(f"q{i}", task="t").rungs[0].backend for i in range(20)} == {"chat", "lite"}  # split
        replica.refresh()
        assert {replica.decide(f"q{i}", task="t").rungs[0].backend for i in range(20)} == {"lite"}


def test_graduate_decide_records_the_promotion_for_running_replicas(
        gemini_server: GeminiTestServer, redis_server: RedisServer, tmp_path: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from genroute.cli import main as cli
    from genroute.outcomes import OutcomeStore

    from .test_graduation import lora_app, paired

    config, base = lora_app(gemini_server, tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["state"] = _config(gemini_server, redis_server)["state"]
    config.write_text(yaml.safe_dump(cfg))
    assert cli([*base, "--register-only", "--challenger", "lora"]) == 0
    running = yaml.safe_load(config.read_text())  # what the running replicas were started from
    store = OutcomeStore(tmp_path / "outcomes.db")
    for record in paired(300, set(range(60)), set(range(2, 64))):  # resolved, cheaper: promoted
        store.upsert_sync(record.model_copy(update={"metadata": {**record.metadata, "served": "chat"},
                                                    "outcomes": {"chat": record.outcomes["icl"],
                                                                 "lora": record.outcomes["lora"]}}))
    with Router.from_config(running) as replica:
        assert _first(replica, "t") == "chat"
        capsys.readouterr()
        assert cli([*base, "--decide", "--challenger", "lora"]) == 0
        assert "every router sharing its state store" in capsys.readouterr().out
        assert yaml.safe_load(config.read_text())["policy"]["promoted"] is True
        assert replica.refresh() is True and _first(replica, "t") == "lora"


def test_a_refresh_running_while_a_promotion_is_made_keeps_it(gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    """The refresh built its policy from the one before the promotion, and swapped it in after: the promotion was
    undone here (and, recorded as applied, never applied again from a shared store)."""
    import threading

    from genroute.policies.static import StaticConfig, StaticPolicy

    entered, release = threading.Event(), threading.Event()

    class SlowToRefresh(StaticPolicy):
        def refreshed(self, update: Any) -> StaticPolicy:
            entered.set()
            release.wait(30)
            return SlowToRefresh(self.config)

    config = gemini_config(gemini_server)
    config["backends"]["lite"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db")}
    with Router.from_config(config, policy=SlowToRefresh(StaticConfig(backend="chat"))) as router:
        refreshing = threading.Thread(target=router.refresh)
        refreshing.start()
        try:
            assert entered.wait(30)
            router.promote(TASK, "lite")
        finally:
            release.set()
            refreshing.join(60)
        assert _first(router) == "lite"
        assert isinstance(router.policy.inner, SlowToRefresh)  # type: ignore[attr-defined]  # refreshed under it


def test_a_promotion_after_redis_lost_its_data_is_applied(gemini_server: GeminiTestServer,
                                                          redis_server: RedisServer) -> None:  # noqa: F811
    """Versions count from 1 again in a hash Redis lost (a restart without persistence, a flush): a replica that had
    applied version 3 ignored the new version 1."""
    with Router.from_config(_config(gemini_server, redis_server)) as one, \
            Router.from_config(_config(gemini_server, redis_server)) as replica:
        for backend in ("lite", "chat", "lite"):
            one.promote(TASK, backend)
        assert replica.refresh() is True and _first(replica) == "lite"
        redis_server.flush()
        assert replica.refresh() is False and _first(replica) == "lite"  # forgetting is not a rollback
        one.promote(TASK, "chat")
        assert replica.refresh() is True and _first(replica) == "chat"


def test_a_store_down_for_long_is_warned_about_once_a_minute_not_at_each_read(
        gemini_server: GeminiTestServer, persistent_redis: RedisServer,  # noqa: F811
        caplog: pytest.LogCaptureFixture) -> None:
    config = _config(gemini_server, persistent_redis, on_error="closed")  # reads raise StateUnavailable
    with Router.from_config(config) as router:
        assert router.generate("hello", task=TASK).backend == "chat"  # starts its reads (no gates: no Redis needed)
        with caplog.at_level(logging.WARNING, logger="genroute"):
            persistent_redis.stop()
            try:
                def warned() -> list[logging.LogRecord]:
                    return [r for r in caplog.records if r.levelno >= logging.WARNING]

                deadline = time.monotonic() + 30
                while not warned() and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(1.0)  # ten more reads fail meanwhile
                # One warning for the outage, the store's (it said so a second time, as the reads' own, before).
                assert len(warned()) == 1, [r.getMessage() for r in warned()]
                assert "during promotions" in warned()[0].getMessage()
                assert "the promotions recorded there are not read" in warned()[0].getMessage()
                assert router.generate("hello", task=TASK).backend == "chat"  # requests go on
            finally:
                persistent_redis.start()


def test_fields_that_are_not_promotions_are_skipped_when_read() -> None:
    from genroute.state.promotions import Promotion, parse_promotions

    record = b'{"backend": "lite", "version": 2, "at_ms": 3, "epoch": "e"}'
    assert parse_promotions({b"version": b"2", b"epoch": b"e", b"t:a": record, b"t:b": b"5", b"t:c": b"[1]",
                             b"t:d": b"not json", b"t:e": b'{"backend": "x"}'}) == {"a": Promotion("lite", 2, 3, "e")}


def test_a_rollback_keeps_measuring_the_challenger_on_every_router(
        gemini_server: GeminiTestServer, redis_server: RedisServer) -> None:  # noqa: F811
    # Rolling back fleet-wide by promoting the incumbent also took the challenger out (neither first nor a shadow), so
    # no evidence came in any more. router.rollback(task) puts the task's challenger back in the mode it had (here a
    # shadow at 50 %) on every router sharing the store, the policy it wraps answering first.
    prefix = f"rb{time.monotonic_ns()}:"

    def config() -> dict[str, Any]:
        found = _config(gemini_server, redis_server, prefix=prefix)
        found["policy"] = {"kind": "challenger", "policy": {"kind": "static", "backend": "chat"}, "task": TASK,
                           "backend": "lite", "mode": "shadow", "share": 0.5}
        return found

    def challenger(router: Router) -> dict[str, Any]:
        assert isinstance(router.policy, ChallengerPolicy)
        return router.policy.config.model_dump(include={"backend", "mode", "share", "promoted"})

    with Router.from_config(config()) as one, Router.from_config(config()) as two:
        with pytest.raises(UsageError, match="nothing to roll back"):
            one.rollback(TASK)  # nothing promoted yet: refused, nothing recorded
        one.promote(TASK, "lite")
        two.refresh()
        assert _first(two) == "lite"
        one.rollback(TASK)
        two.refresh()
        for router in (one, two):
            decision = router.decide("hello", task=TASK)
            assert decision.rungs[0].backend == "chat" and decision.shadow == ("lite",)  # measured again
            assert challenger(router) == {"backend": "lite", "mode": "shadow", "share": 0.5, "promoted": False}
        with Router.from_config(config()) as late:  # built after it: as rolled back, not as promoted
            assert _first(late) == "chat" and challenger(late)["promoted"] is False


def test_a_router_built_in_code_applies_shared_promotions_beside_its_first_request(
        gemini_server: GeminiTestServer, redis_server: RedisServer) -> None:  # noqa: F811
    # A Router(...) built in code (not from_config / acreate, which read the promotions as they build) applied the
    # promotions recorded in the shared store only at its first scheduled read, state.promotions_every_s after its
    # first request (here an hour): it served as its code said meanwhile. Its first request now starts that read at
    # once, off the request path (that request still routes as the code says: no request reads Redis).
    config = _config(gemini_server, redis_server, prefix=f"code{time.monotonic_ns()}:", promotions_every_s=3600.0)
    with Router.from_config(config) as one:
        one.promote(TASK, "lite")
        assert isinstance(one.policy, ChallengerPolicy)
        in_code = Router(one.backends, one.policy.inner, resources=one.resources, state=config["state"])

        async def serve() -> str:
            await in_code.agenerate("hello", task=TASK)  # not held back for the read: routed as the code says
            for _ in range(600):  # the read is one round trip; bounded so that a regression fails, not hangs
                if (await in_code.adecide("hello", task=TASK)).rungs[0].backend == "lite":
                    break
                await asyncio.sleep(0.05)
            later = (await in_code.agenerate("hello", task=TASK)).backend
            await in_code.aclose()
            return later

        later = asyncio.run(serve())
    assert later == "lite"  # applied without waiting an hour


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_a_router_built_while_redis_is_down_warns_once_saying_what_to_do(
        gemini_server: GeminiTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, on_error: str) -> None:
    """Built while its Redis was stopped, a router with on_error closed logged two warnings for the one outage: the
    store's ("... unreachable ... start Redis") and the build's ("the promotions ... were not read ...")."""
    from .chroma_fixtures import free_port

    stopped = RedisServer(free_port(), tmp_path / "redis.log")
    stopped.start()
    stopped.stop()  # a real redis-server, stopped: its port refuses connections
    config = _config(gemini_server, stopped, on_error=on_error)
    config["state"].update(timeout_s=2.0, connect_timeout_s=2.0)
    with caplog.at_level(logging.WARNING, logger="genroute"):
        with Router.from_config(config) as router:
            assert _first(router) == "chat"  # routes as its config says
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1, warned
    assert "is unreachable" in warned[0] and "start Redis (or Valkey) at that address, or correct state.url" in warned[0]
    if on_error == "closed":
        assert "the promotions recorded there are not read" in warned[0]
