"""``router.health()`` and ``genroute health`` against real dependencies: a password-protected ``redis-server``, a
``chroma run`` server, a SQLite outcome store and the loopback Gemini server, each behind a TCP proxy that can refuse
connections (a dependency stopped) or hold its replies (a dependency that accepts and never answers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from genroute import Health, Router, UsageError
from genroute.cli import main
from genroute.knowledge import aload_examples
from genroute.testing import GeminiTestServer

from .chroma_fixtures import ChromaServer, Knowledge, chroma_server  # noqa: F401
from .read_only_files import file_size_limit, small_disk  # noqa: F401
from .conftest import TEST_KEY, gemini_config
from .redis_fixtures import RedisServer
from .server_ports import free_port
from .tcp_proxy import TcpProxy
from .test_icl import EXAMPLES, write_examples

PASSWORD = "health-redis-pass-7f3a9c"  # noqa: S105 - a test server's
NETWORKED = ["state", "backends.icl", "engines.gemini"]
ALL = {"state", "outcomes", "backends.icl", "engines.gemini"}


@dataclass
class Deps:
    """A router config whose every dependency is real and behind a proxy of its own, by the name health gives it."""

    config: dict[str, Any]
    proxies: dict[str, TcpProxy]
    outcomes: Path


@pytest.fixture
def redis_locked(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis.log", options=("--requirepass", PASSWORD))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def deps(gemini_server: GeminiTestServer, chroma_server: ChromaServer, redis_locked: RedisServer,
         tmp_path: Path) -> Iterator[Deps]:
    proxies = {"state": TcpProxy(redis_locked.port), "backends.icl": TcpProxy(chroma_server.port),
               "engines.gemini": TcpProxy(int(gemini_server.base_url.rsplit(":", 1)[1]))}
    knowledge = Knowledge("server", {"host": "127.0.0.1", "port": chroma_server.port})
    collection = knowledge.name("health")
    import asyncio

    asyncio.run(aload_examples(knowledge.store(), [write_examples(tmp_path / "ex.jsonl", EXAMPLES[:4])],
                               collection=collection))
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["base_url"] = f"http://127.0.0.1:{proxies['engines.gemini'].port}"
    config["knowledge"] = {"host": "127.0.0.1", "port": proxies["backends.icl"].port, "timeout_s": 5}
    config["backends"]["icl"] = {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash",
                                 "collection": collection}
    config["state"] = {"kind": "redis", "url": f"redis://:{PASSWORD}@127.0.0.1:{proxies['state'].port}/0",
                       "prefix": "health:"}
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "store": "sqlite"}
    try:
        yield Deps(config, proxies, tmp_path / "outcomes.db")
    finally:
        for proxy in proxies.values():
            proxy.close()


def failing(health: Health) -> dict[str, str | None]:
    return {d.name: d.error for d in health.dependencies if not d.ok}


def no_secret(text: str) -> None:
    assert TEST_KEY not in text and PASSWORD not in text


def test_a_router_with_every_dependency_up_is_ready_and_says_what_each_probe_checked(deps: Deps,
                                                                                    gemini_server: GeminiTestServer):
    with Router.from_config(deps.config) as router:
        calls = len(gemini_server.requests)
        health = router.health()
    assert health.ready, health
    assert {d.name: d.kind for d in health.dependencies} == {
        "state": "state", "outcomes": "outcomes", "backends.icl": "knowledge", "engines.gemini": "engine"}
    details = {d.name: d.detail for d in health.dependencies}
    assert details["state"] == "PING answered"
    assert details["backends.icl"].endswith("holds 4 examples")
    assert details["outcomes"] == "outcomes.db: write lock taken"
    assert details["engines.gemini"] == "countTokens for gemini-2.5-flash answered"
    # The one model call: a countTokens (free), no generate.
    assert [r.action for r in gemini_server.requests[calls:]] == ["countTokens"]
    assert all(d.latency_ms >= 0 for d in health.dependencies) and health.refresh is None
    no_secret(health.model_dump_json())


@pytest.mark.parametrize("name", NETWORKED)
async def test_a_dependency_stopped_makes_the_router_not_ready_naming_it_and_ready_again_once_back(deps: Deps,
                                                                                                  name: str):
    async with await Router.acreate(deps.config) as router:
        assert (await router.ahealth()).ready
        deps.proxies[name].partition()  # connections refused, open ones cut
        down = await router.ahealth(timeout_s=3)
        deps.proxies[name].heal()
        again = await router.ahealth()
    assert not down.ready
    assert list(failing(down)) == [name]
    assert failing(down)[name]
    no_secret(down.model_dump_json())
    assert again.ready, again


@pytest.mark.parametrize("name", NETWORKED)
async def test_a_dependency_that_never_answers_is_reported_at_the_timeout(deps: Deps, name: str):
    # A hung dependency (it accepts the connection, its replies never come) must not hang the check.
    async with await Router.acreate(deps.config) as router:
        assert (await router.ahealth()).ready  # connections open: the probe's request goes to a live connection
        deps.proxies[name].hold_replies()
        try:
            health = await router.ahealth(timeout_s=0.5)
        finally:
            deps.proxies[name].release_replies()
    assert not health.ready
    assert failing(health) == {name: "no answer in 0.5 s"}
    (hung,) = [d for d in health.dependencies if d.name == name]
    assert hung.latency_ms >= 500


def test_an_outcome_store_another_process_holds_locked_is_not_ready(deps: Deps):
    with Router.from_config(deps.config) as router, contextlib.closing(
            sqlite3.connect(deps.outcomes, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")  # a writer that holds the file's write lock past the probe's timeout
        try:
            health = router.health(timeout_s=0.5)
        finally:
            other.execute("ROLLBACK")
        assert router.health().ready
    assert not health.ready
    assert list(failing(health)) == ["outcomes"]
    assert failing(health)["outcomes"] in {"OperationalError: database is locked", "no answer in 0.5 s"}


def test_a_rejected_api_key_is_not_ready_and_never_shown(deps: Deps, gemini_server: GeminiTestServer):
    gemini_server.api_key = "another-key-entirely"
    with Router.from_config(deps.config) as router:
        health = router.health()
    assert list(failing(health)) == ["engines.gemini"]
    assert "BackendRejected" in failing(health)["engines.gemini"]
    no_secret(health.model_dump_json())


def test_a_closed_router_is_not_ready_and_a_bad_timeout_is_refused(deps: Deps):
    router = Router.from_config(deps.config)
    with pytest.raises(UsageError) as raised:
        router.health(timeout_s=0)
    assert raised.value.field == "timeout_s"
    router.close()
    health = router.health()
    assert not health.ready and failing(health) == {"router": "the router is closed"}


def test_genroute_health_prints_a_line_per_dependency_and_exits_by_readiness(deps: Deps, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(deps.config))
    assert main(["health", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "ready"
    assert sorted(line.split()[1] for line in out.splitlines()[:-1]) == sorted(ALL)
    assert all(line.split()[0] == "ok" for line in out.splitlines()[:-1])

    deps.proxies["state"].partition()
    assert main(["health", "--config", str(path), "--json", "--timeout", "1"]) == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["ready"] is False
    assert [d["name"] for d in result["dependencies"] if not d["ok"]] == ["state"]
    no_secret(captured.out + captured.err)
    assert main(["health", "--config", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[-1] == "not ready"
    (line,) = [line for line in captured.out.splitlines() if line.split()[1] == "state"]
    assert line.startswith("FAIL")
    no_secret(captured.out + captured.err)


@pytest.mark.local
def test_the_local_engine_is_ready_once_a_model_instance_is_loaded_and_a_file_gone_is_not(tmp_path: Path):
    config = {"engines": {"local": {"kind": "local", "n_threads": 1, "max_output_tokens": 2}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m"}}}
    with Router.from_config(config) as router:
        first, second = router.health(timeout_s=60), router.health()  # the first loads it (~1 s, more on busy cores)
        assert router.generate("Hello").backend == "chat"
    assert first.ready and [d.detail for d in first.dependencies] == ["model loaded by this check"]
    assert second.ready and [d.detail for d in second.dependencies] == ["model loaded"]
    config["engines"]["local"]["model_path"] = str(tmp_path / "gone.gguf")
    with Router.from_config(config) as router:
        health = router.health(timeout_s=60)
    assert failing(health) == {"engines.local": f"ConfigError: engines.local.model_path: no model file at "
                                                f"{tmp_path / 'gone.gguf'}"}


async def test_a_rag_backend_is_probed_by_counting_its_collection_in_an_embedded_store(
        gemini_server: GeminiTestServer, tmp_path: Path):
    from .conftest import Otel
    from .test_rag import ingest_docs, router as rag_router

    knowledge = Knowledge("embedded", {"path": str(tmp_path / "chroma")})
    collection = knowledge.name("docs")
    await ingest_docs(knowledge, tmp_path, collection)
    async with rag_router(gemini_server, Otel(), knowledge, collection=collection) as router:
        health = await router.ahealth()
    async with rag_router(gemini_server, Otel(), knowledge, collection="not-there") as router:
        missing = await router.ahealth()
    (rag,) = [d for d in health.dependencies if d.name == "backends.rag"]
    assert health.ready and rag.kind == "knowledge" and rag.detail.startswith(f"collection {collection!r} holds ")
    assert not missing.ready and list(failing(missing)) == ["backends.rag"]
    assert "unknown collection 'not-there'" in failing(missing)["backends.rag"]


def test_a_router_whose_loop_is_held_is_not_ready_within_the_timeout_instead_of_hanging_the_check():
    # A sync router's checks run on its loop thread: a backend that held that loop (blocking work on it) held every
    # readiness check too, each a thread of the readiness server waiting for as long as the loop was held.
    import threading

    from genroute.backends.base import Backend, BackendConfig, BackendOutput
    from genroute.runtime.resources import Resources
    from genroute_plugin_example.engine import EchoEngine, EchoEngineConfig

    held, release = threading.Event(), threading.Event()

    class Holding(Backend):
        kind = "holding"
        Config = BackendConfig

        async def run(self, request: Any, ctx: Any) -> BackendOutput:
            held.set()
            release.wait(60)  # blocking work on the loop
            return BackendOutput(text="answered", model="echo-1")

    resources = Resources({"e": EchoEngine("e", EchoEngineConfig())})
    backend = Holding("h", BackendConfig(kind="holding", engine="e", model="echo-1"), resources)
    with Router({"h": backend}, resources=resources) as router:
        served = threading.Thread(target=router.generate, args=("hello",))
        served.start()
        try:
            assert held.wait(30)
            checked: list[Health] = []
            check = threading.Thread(target=lambda: checked.append(router.health(timeout_s=0.2)))
            check.start()
            check.join(30)  # released at 60 s without the bound
            assert checked, "health() waited for the held loop"
        finally:
            release.set()
            served.join(60)
            check.join(60)
        assert router.health().ready
    assert not checked[0].ready
    assert failing(checked[0]) == {"router": "the router's event loop did not run the check within 2.2 s"}


async def test_checks_of_a_hung_dependency_share_one_probe_instead_of_piling_one_up_each(deps: Deps):
    """A probe that timed out went on (its thread cannot be stopped) and the next check started another: checked every
    second, a Chroma server that accepts and never answers (knowledge.timeout_s 30 s) had ~30 count requests in
    flight, each holding a thread of the loop's default executor. The checks now wait for the one probe running; the
    proxy counts the requests whose reply it holds."""
    deps.config["knowledge"]["timeout_s"] = 60
    async with await Router.acreate(deps.config) as router:
        assert (await router.ahealth()).ready  # connections open: the probe's request goes to a live connection
        proxy = deps.proxies["backends.icl"]
        proxy.hold_replies()
        try:
            checks = [await router.ahealth(timeout_s=0.2) for _ in range(5)]
            held = proxy.held
        finally:
            proxy.release_replies()
        again = await router.ahealth(timeout_s=30)
    assert held == 1
    errors = [failing(h) for h in checks]
    assert errors[0] == {"backends.icl": "no answer in 0.2 s"}
    assert all(list(e) == ["backends.icl"] and "by an earlier check, still waits" in e["backends.icl"]
               for e in errors[1:]), errors
    assert again.ready, again


def test_an_outcome_store_on_a_full_disk_is_not_ready_while_another_connection_holds_it_open(
        gemini_server: GeminiTestServer, small_disk: Any):  # noqa: F811
    """The probe took the file's write lock and gave it back, writing nothing: on a full disk, while another
    connection kept the file open (its -wal and -shm files there: another replica, or the router's own writer while
    writes come), the lock was taken and the store reported ready while every commit failed ("database or disk is
    full"). Without such a connection the lock itself fails on a full disk (the -shm file cannot be made)."""
    disk, fill = small_disk
    config = gemini_config(gemini_server)
    config["outcomes"] = {"path": str(disk / "outcomes.db"), "store": "sqlite"}
    with Router.from_config(config) as router, contextlib.closing(
            sqlite3.connect(disk / "outcomes.db", isolation_level=None)) as other:
        other.execute("SELECT COUNT(*) FROM outcomes").fetchone()  # the file open elsewhere
        assert router.health().ready
        fill()
        try:
            with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
                other.execute("INSERT INTO outcomes (id, created_at, updated_at, record) VALUES ('x', 0, 0, '{}')")
            full = router.health()
        finally:
            (disk / "filler").unlink()
        again = router.health()
    assert not full.ready and list(failing(full)) == ["outcomes"]
    assert failing(full)["outcomes"].startswith(f"OutcomeStoreError: the disk holding the outcome store "
                                                f"'{disk / 'outcomes.db'}' has ")
    assert again.ready, again


def test_an_outcome_store_past_the_file_size_limit_is_not_ready_and_its_writes_say_why(
        gemini_server: GeminiTestServer, tmp_path: Path):
    """A full disk failed the probe (its free space) and every write said "database or disk is full"; a file size
    limit (RLIMIT_FSIZE: EFBIG, as a disk quota's EDQUOT) fails the same commits, which SQLite calls "disk I/O error",
    while the disk has room: the store was reported ready, and feedback's error read like a failing device."""
    from genroute import OutcomeStoreError

    config = gemini_config(gemini_server)
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "store": "sqlite", "capture": True}
    with Router.from_config(config) as router:
        first = router.generate("one", task="t")
        router.feedback(first, label="one")
        assert router.health().ready
        second = router.generate("two " * 20_000, task="t")  # a record longer than the room the limit leaves
        largest = max(p.stat().st_size for p in tmp_path.glob("outcomes.db*"))
        with file_size_limit(largest):
            with pytest.raises(OutcomeStoreError) as raised:
                router.feedback(second, label="two")
            limited = router.health()
        again = router.health()
        router.feedback(second, label="two")  # room again
    assert "RLIMIT_FSIZE" in str(raised.value) and "OSError: [Errno 27]" in str(raised.value)
    assert isinstance(raised.value.__cause__.__context__, sqlite3.OperationalError)  # SQLite's "disk I/O error"
    assert not limited.ready and list(failing(limited)) == ["outcomes"]
    assert "RLIMIT_FSIZE" in failing(limited)["outcomes"] and "(File too large)" in failing(limited)["outcomes"]
    assert again.ready, again


def test_an_outcome_store_over_a_disk_quota_is_not_ready(gemini_server: GeminiTestServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    """A quota (EDQUOT) leaves the disk's free space as it is: the probe saw room, and the store was ready while
    every commit failed. There is no quota to be had on this kernel (no CONFIG_QUOTA): the probe's allocation, the
    lowest call it makes, is refused as a quota refuses it."""
    import errno
    import os

    def over_quota(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    config = gemini_config(gemini_server)
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "store": "sqlite"}
    with Router.from_config(config) as router:
        assert router.health().ready
        monkeypatch.setattr(os, "posix_fallocate", over_quota)
        over = router.health()
        monkeypatch.undo()
        again = router.health()
    assert not over.ready and list(failing(over)) == ["outcomes"]
    assert failing(over)["outcomes"].startswith(f"OutcomeStoreError: 65536 bytes could not be allocated beside the "
                                                f"outcome store '{tmp_path / 'outcomes.db'}' (Disk quota exceeded)")
    assert again.ready, again


def test_a_probe_left_on_a_loop_that_no_longer_runs_does_not_keep_the_next_checks_unready(deps: Deps):
    """A check on a loop of the caller's (``loop.run_until_complete(router.ahealth())``) left its probe of a hung
    dependency on that loop; the loop stopped, not closed, so the probe never ran again: every later check on the
    router's own loop (``health()``) reported 'its probe begun ... by a check on another event loop, has not answered
    yet', long after the dependency answered again. A probe whose loop no longer runs is not waited for: the check
    starts its own."""
    deps.config["knowledge"]["timeout_s"] = 60
    with Router.from_config(deps.config) as router:
        assert router.health().ready  # connections open: the probe's request goes to a live connection
        proxy = deps.proxies["backends.icl"]
        mine = asyncio.new_event_loop()
        try:
            proxy.hold_replies()
            try:
                hung = mine.run_until_complete(router.ahealth(timeout_s=0.2))
            finally:
                proxy.release_replies()
            again = router.health(timeout_s=30)  # `mine` is stopped with the probe pending on it
        finally:
            mine.close()
    assert "backends.icl" in failing(hung)
    assert again.ready, again
