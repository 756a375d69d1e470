"""At most one probe of a resource in flight: a health check made while an earlier check's probe of the same Chroma
collection still hangs waits for that probe's answer (bounded by its own ``timeout_s``) instead of starting another
thread, whatever event loop each check runs on."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.testing import GeminiTestServer

from .chroma_fixtures import ChromaServer, chroma_server  # noqa: F401
from .tcp_proxy import TcpProxy
from .test_health_exit import icl_behind_proxy


@pytest.fixture
def hung(gemini_server: GeminiTestServer, chroma_server: ChromaServer,  # noqa: F811
         tmp_path: Path) -> Iterator[tuple[dict[str, Any], TcpProxy]]:
    """A router config with an ICL backend reading a real ``chroma run`` behind a proxy that can hold its replies
    (Chroma accepts, and its answers never come)."""
    config, proxy = icl_behind_proxy(gemini_server, chroma_server, tmp_path, "one-probe", timeout_s=60)
    try:
        yield config, proxy
    finally:
        proxy.close()


def probes() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "genroute-probe"]


def threads() -> int:
    """``threading.active_count()``, but for the loopback Gemini server's threads (it runs in this process) answering
    the engine's probe, each ending a moment after its reply."""
    return threading.active_count() - sum("process_request_thread" in t.name for t in threading.enumerate())


def test_checks_each_on_a_loop_of_their_own_share_the_hung_probe_instead_of_a_thread_each(
        hung: tuple[dict[str, Any], TcpProxy]) -> None:
    """Each check ran on a new event loop (``asyncio.run(router.ahealth())`` per request: a sync web app's async
    view); the router shares a probe between checks on one loop only, and each check's probe started a daemon thread
    that stayed hung until Chroma's HTTP timeout (knowledge.timeout_s): a /healthz hit every second piled up one
    thread a second. The count now waits for the one still running."""
    config, proxy = hung
    with Router.from_config(config) as router:
        assert router.health(timeout_s=30).ready  # a connection open: the probe's request goes on it
        before = threads()
        proxy.hold_replies()
        try:
            checks = [asyncio.run(router.ahealth(timeout_s=0.1)) for _ in range(20)]
            extra, held, running = threads() - before, proxy.held, probes()
        finally:
            proxy.release_replies()
        again = router.health(timeout_s=30)
    assert extra <= 1, (extra, running)
    assert running == ["genroute-probe"] and held == 1
    assert all(not h.ready and [d.name for d in h.dependencies if not d.ok] == ["backends.icl"] for h in checks)
    assert again.ready, again


async def test_direct_probes_of_a_hung_collection_share_one_thread(hung: tuple[dict[str, Any], TcpProxy]) -> None:
    """``backend.probe()`` called by an app's own check (the Backend API): each call started a daemon thread."""
    config, proxy = hung
    async with await Router.acreate(config) as router:
        backend = router.backends["icl"]
        assert "holds 4 examples" in await backend.probe()
        before = threads()
        proxy.hold_replies()
        try:
            for _ in range(20):
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(backend.probe(), 0.05)
            extra, running = threads() - before, probes()
        finally:
            proxy.release_replies()
        answered = await backend.probe()
    assert extra <= 1 and running == ["genroute-probe"], (extra, running)
    assert "holds 4 examples" in answered
