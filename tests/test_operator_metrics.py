"""The counters an operator alerts on, read with the real OTel SDK's ``InMemoryMetricReader``: outcome writes lost
(``genroute.outcomes.write_errors``), shadow runs dropped (``genroute.shadows.dropped``), scheduled refreshes that
failed (``genroute.refresh.failures``) and Chroma calls the store did not answer (``genroute.knowledge.unavailable``).
They were counters on objects and lines in the logs only: nothing a metrics backend could alert on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from genroute import Router
from genroute.knowledge import aload_examples
from genroute.testing import GeminiTestServer

from .chroma_fixtures import ChromaServer, Knowledge, chroma_server  # noqa: F401
from .conftest import Otel, gemini_config
from .read_only_files import small_disk  # noqa: F401
from .tcp_proxy import TcpProxy
from .test_executor import drop_two_shadows
from .test_icl import EXAMPLES, write_examples


def points(otel: Otel, name: str) -> list[tuple[dict[str, Any], float]]:
    metric = otel.metrics().get(name)
    return [] if metric is None else [(dict(p.attributes), p.value) for p in metric.data.data_points]


def test_shadow_runs_dropped_are_counted_as_a_metric(gemini_server: GeminiTestServer, otel: Otel):
    router = drop_two_shadows(gemini_server, otel)
    assert points(otel, "genroute.shadows.dropped") == [({}, 2)] == [({}, router._executor.shadows_dropped)]


def test_outcome_writes_lost_on_a_full_disk_are_counted_as_a_metric(gemini_server: GeminiTestServer, otel: Otel,
                                                                    small_disk: Any):
    disk, fill = small_disk
    cfg = gemini_config(gemini_server)
    cfg["backends"]["pro"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-pro"}
    cfg["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["pro"]}
    cfg["outcomes"] = {"path": str(disk / "outcomes.db"), "scorer": "label_accuracy"}
    with Router.from_config(cfg, **otel.providers) as router:
        router.generate("one", task="t")
        router.drain()
        router._executor.outcomes.store.close()  # the next write opens the file again, on a full disk
        fill()
        for text in ("two", "three"):
            router.generate(text, task="t")
            router.drain()
        lost = router._executor.outcomes.write_errors
        (disk / "filler").unlink()
    assert lost == 2
    assert points(otel, "genroute.outcomes.write_errors") == [({"genroute.outcomes.store": "sqlite"}, 2)]


async def test_a_failed_scheduled_refresh_is_counted_and_shown_by_health_until_one_succeeds(
        gemini_server: GeminiTestServer, otel: Otel, chroma_server: ChromaServer, tmp_path: Path):
    proxy = TcpProxy(chroma_server.port)
    knowledge = Knowledge("server", {"host": "127.0.0.1", "port": chroma_server.port})
    collection = knowledge.name("refresh")
    await aload_examples(knowledge.store(), [write_examples(tmp_path / "ex.jsonl", EXAMPLES[:4])],
                         collection=collection)
    cfg = gemini_config(gemini_server)
    cfg["knowledge"] = {"host": "127.0.0.1", "port": proxy.port, "timeout_s": 2}
    cfg["backends"]["icl"] = {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash",
                              "collection": collection}
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "refresh_every_s": 0.2}

    async def until(check: Any) -> None:
        deadline = time.monotonic() + 30
        while not check():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)

    try:
        async with await Router.acreate(cfg, **otel.providers) as router:
            assert (await router.ahealth()).refresh.ok  # none ran yet
            await router.agenerate("hello")  # starts the refresher
            await until(lambda: router._refresh_record.at is not None)
            assert (await router.ahealth()).refresh.ok
            proxy.partition()  # the Chroma server is unreachable: the ICL backend's reload fails
            await until(lambda: router._refresh_record.error is not None)
            down = await router.ahealth(timeout_s=1)
            proxy.heal()
            await until(lambda: router._refresh_record.error is None)
            up = await router.ahealth()
    finally:
        proxy.close()
    assert not down.refresh.ok and down.refresh.error.startswith("BackendUnavailable: ")
    assert not down.ready and [d.name for d in down.dependencies if not d.ok] == ["backends.icl"]
    assert up.refresh.ok and up.ready
    failures = points(otel, "genroute.refresh.failures")
    assert failures and {tuple(sorted(a.items())) for a, _ in failures} == {
        (("error.type", "BackendUnavailable"), ("genroute.refresh", "refresh"))}
    unavailable = points(otel, "genroute.knowledge.unavailable")
    assert [a for a, _ in unavailable] == [{"genroute.knowledge.place": "server"}]
    assert unavailable[0][1] >= 2  # each failed reload, and the health probe


async def test_a_refresh_failing_for_long_warns_once_a_minute_counts_each_failure_and_logs_its_recovery_once(
        gemini_server: GeminiTestServer, otel: Otel, tmp_path: Path, caplog: Any):
    """A scheduled refresh that failed warned at every interval: a 5 s refresh through a 10 min outage logged 120
    warnings. It warns once a minute now (the count since in the next warning), the counter counts each failure,
    and the first refresh that succeeds again says so once, at INFO (it was a WARNING: an alert on warnings went off
    for the good news). Here 15 refreshes fail (a backend whose reload fails:
    its store is down), 0.1 s apart: one warning."""
    import logging

    failed: list[int] = []
    down = [True]
    cfg = gemini_config(gemini_server)
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "refresh_every_s": 0.1}

    with caplog.at_level(logging.INFO, logger="genroute"):
        async with await Router.acreate(cfg, **otel.providers) as router:
            flaky_reloads(router, down, failed)
            await router.agenerate("start the schedule")
            await until(lambda: len(failed) >= 15)
            down[0] = False  # on the refresher's loop: the refresh now running, if any, has not reloaded yet
            n = len(failed)
            await until(lambda: router._refresh_record.at is not None and router._refresh_record.error is None)
            await asyncio.sleep(0.5)  # a few more refreshes that succeed: they log nothing
    said = [r for r in caplog.records if "scheduled refresh" in r.getMessage()]
    messages = [r.getMessage() for r in said]
    assert len(messages) == 2, messages
    assert [r.levelname for r in said] == ["WARNING", "INFO"]  # the recovery is good news, not a warning
    assert messages[0].startswith("scheduled refresh failed: OSError: its store is down") and "once a minute" in \
        messages[0]
    assert messages[1] == f"scheduled refresh succeeded again, after {n} failed"
    assert [v for _, v in points(otel, "genroute.refresh.failures")] == [n]


def flaky_reloads(router: Router, down: list[bool], failed: list[int]) -> None:
    """The router's backend ``chat`` fails to reload (its store is down: a failed refresh) while ``down[0]``, each
    failure counted in ``failed``."""
    from genroute.backends.prompt_template import PromptTemplateBackend

    class Flaky(PromptTemplateBackend):
        async def reload(self) -> None:
            if down[0]:
                failed.append(1)
                raise OSError("its store is down")

    chat = router.backends["chat"]
    router.backends["chat"] = Flaky("chat", chat.config, chat.resources)


async def until(check: Any) -> None:
    deadline = time.monotonic() + 60
    while not check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


def test_a_refresh_failing_again_after_its_recovery_was_logged_counts_only_the_failures_since(
        gemini_server: GeminiTestServer, tmp_path: Path, caplog: Any):
    """The failures a refresh's recovery message counted ('succeeded again, after 5 failed') were counted again in
    the next outage's first warning, a minute later or more: 'scheduled refresh failed: ... (...; 5 failed since the
    last such warning)' for its first failure. The recovery message resets the count. The loop's clock is moved a
    minute on between the outages (no waiting)."""
    import logging

    skew = [0.0]

    class Later(asyncio.SelectorEventLoop):
        def time(self) -> float:
            return super().time() + skew[0]

    failed: list[int] = []
    down = [True]
    cfg = gemini_config(gemini_server)
    cfg["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "refresh_every_s": 0.1}

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if "scheduled refresh" in r.getMessage()]

    async def outages() -> None:
        async with await Router.acreate(cfg) as router:
            flaky_reloads(router, down, failed)
            await router.agenerate("start the schedule")
            await until(lambda: len(failed) >= 5)
            down[0] = False
            await until(lambda: len(messages()) == 2)  # the recovery
            skew[0] += 61.0  # a minute later: the next failure's warning is due
            down[0] = True
            await until(lambda: len(messages()) == 3)

    with caplog.at_level(logging.INFO, logger="genroute"), asyncio.Runner(loop_factory=Later) as runner:
        runner.run(outages())
    first, recovered, again = messages()
    assert first.startswith("scheduled refresh failed: OSError: its store is down")
    assert recovered.startswith("scheduled refresh succeeded again, after ")
    assert again.startswith("scheduled refresh failed: OSError: its store is down") and "since" not in again, again
