"""One router used from sync code, then from several event loops: the HTTP client follows each loop."""

from __future__ import annotations

import asyncio
import threading

from genroute import Router

from .conftest import gemini_config


def test_one_router_serves_its_portal_and_other_loops(gemini_server, otel):
    for _ in range(6):
        gemini_server.reply_text("ok", usage=(2, 1))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        assert router.generate("sync first").text == "ok"          # the router's own loop thread

        async def two() -> list[str]:
            first = await router.agenerate("app loop")
            chunks = [c async for c in router.astream("app loop stream")]
            return [first.text, chunks[-1].result.text]

        assert asyncio.run(two()) == ["ok", "ok"]                    # a second loop, in this thread
        assert asyncio.run(two())[0] == "ok"                         # a third loop: the second one is closed

        other: list[str] = []
        thread = threading.Thread(target=lambda: other.append(asyncio.run(router.agenerate("thread")).text))
        thread.start()
        thread.join(30)
        assert other == ["ok"]                                       # a loop on another thread
    assert len(gemini_server.requests) == 6
