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


def test_replacing_swaps_backends_and_keeps_validators_and_telemetry(gemini_server, otel, tmp_path):
    import pytest

    from genroute import UsageError, ValidationFailed
    from genroute.backends.prompt_template import PromptTemplateBackend

    config = gemini_config(gemini_server, template="original: {{ input }}")
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["regex:^ok"]}]}
    gemini_server.reply_text("ok one")
    gemini_server.reply_text("ok two")
    gemini_server.reply_text("not ok")
    with Router.from_config(config, **otel.providers) as router:
        chat = router.backends["chat"]
        swapped = PromptTemplateBackend("chat", chat.config.model_copy(update={"template": "swapped: {{ input }}"}),
                                        chat.resources)
        copy = router.replacing({"chat": swapped})
        assert copy.generate("a").text == "ok one"
        assert router.generate("b").text == "ok two"
        with pytest.raises(ValidationFailed):  # the copy kept the cascade's validator
            copy.generate("c")
        with pytest.raises(UsageError) as err:
            router.replacing({"ghost": swapped})
        assert err.value.field == "backends"
    sent = [r.body["contents"][0]["parts"][0]["text"] for r in gemini_server.requests]
    assert sent == ["swapped: a", "original: b", "swapped: c"]
    assert len(otel.spans("genroute.generate")) == 3  # the copy reports to the router's providers
