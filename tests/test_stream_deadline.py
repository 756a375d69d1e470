"""A stream's request deadline on the loopback wire: it bounds every step of the stream (validators, a backend's own
work, engine calls), and never the time the reader spends between chunks."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Any

import pytest

from genroute import DeadlineExceeded, GenrouteError, Router, StreamInterrupted
from genroute.backends.prompt_template import PromptTemplateBackend

from .conftest import budget_usage, gemini_config

FLASH = (0.30, 2.50)
#: Longer than any deadline below: only the deadline ends what waits this long.
SLOW_S = 20.0


def cost(price: tuple[float, float], usage: tuple[int, int]) -> float:
    return usage[0] * price[0] / 1e6 + usage[1] * price[1] / 1e6


async def slow_check(request: Any, output: Any) -> str | None:
    await asyncio.sleep(SLOW_S)
    return None


class SlowBeforeCalling(PromptTemplateBackend):
    """A backend whose own work before the engine call (a retrieval, say) takes too long."""

    async def stream(self, request, ctx):
        await asyncio.sleep(SLOW_S)
        async for item in super().stream(request, ctx):
            yield item


class SlowAfterFirstChunk(PromptTemplateBackend):
    """A backend that stalls on its own after its first chunk was sent."""

    async def stream(self, request, ctx):
        sent = False
        async with aclosing(super().stream(request, ctx)) as items:  # cut: the engine's stream is charged now
            async for item in items:
                if sent:
                    await asyncio.sleep(SLOW_S)
                sent = sent or isinstance(item, str)
                yield item


def config(server, rungs):
    """Backends ``chat`` (flash), ``pro`` and ``judge`` under a budget over a cascade of ``rungs``."""
    cfg = gemini_config(server)
    chat = cfg["backends"]["chat"]
    cfg["backends"].update(pro={**chat, "model": "gemini-2.5-pro"}, judge={**chat, "model": "gemini-2.5-flash-lite"})
    cfg["policy"] = {"kind": "budget", "inner": {"kind": "cascade", "rungs": rungs}, "per": "global",
                     "budget_usd": 1.0, "costs": {"chat": 0.01, "pro": 0.01, "judge": 0.01}}
    return cfg


def streamed(router: Router, mode: str, pause_s: float = 0.0, **fields: Any) -> tuple[list[Any], GenrouteError | None]:
    """The chunks ``router`` streamed (by ``stream`` or ``astream``, the reader pausing ``pause_s`` after each) and the
    error that ended the stream, if any."""
    chunks: list[Any] = []
    try:
        if mode == "stream":
            for chunk in router.stream("hi", **fields):
                chunks.append(chunk)
                time.sleep(pause_s)
        else:
            async def read() -> None:
                async for chunk in router.astream("hi", **fields):
                    chunks.append(chunk)
                    await asyncio.sleep(pause_s)

            router._portal.call(read(), timeout_s=60)  # the router's own loop, as the sync API uses
    except GenrouteError as exc:
        return chunks, exc
    return chunks, None


def with_backend(router: Router, name: str, kind: type[PromptTemplateBackend]) -> Router:
    backend = router.backends[name]
    return router.replacing({name: kind(name, backend.config, router.resources)})


MODES = ["stream", "astream"]


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_validator_on_a_buffered_rung_ends_the_stream_with_deadline_exceeded(gemini_server, otel, mode):
    gemini_server.reply_text("buffered answer", usage=(1000, 100), chunks=2)
    rungs = [{"backend": "chat", "validators": ["slow"]}, {"backend": "pro"}]
    with Router.from_config(config(gemini_server, rungs), validators={"slow": slow_check}, timeout_s=0.5,
                            **otel.providers) as router:
        chunks, error = streamed(router, mode)

    assert chunks == [] and isinstance(error, DeadlineExceeded), repr(error)
    assert str(error) == "request deadline of 0.5s exceeded" and error.backend == "chat"
    assert error.cost_usd == pytest.approx(cost(FLASH, (1000, 100)))
    assert budget_usage(router) == {"spent": pytest.approx(error.cost_usd), "reserved": 0}
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["error.type"] == "DeadlineExceeded"
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(error.cost_usd)
    assert len(gemini_server.requests) == 1  # the deadline is not fallen through


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_validator_on_the_live_rung_is_cut_as_stream_interrupted(gemini_server, mode):
    gemini_server.reply_text("live answer", usage=(1000, 100), chunks=2)
    rungs = [{"backend": "chat", "validators": ["slow"]}]
    with Router.from_config(config(gemini_server, rungs), validators={"slow": slow_check}, timeout_s=0.5) as router:
        chunks, error = streamed(router, mode)

    assert "".join(c.text for c in chunks) == "live answer"
    assert isinstance(error, StreamInterrupted) and "after output was sent" in str(error), repr(error)
    assert error.backend == "chat" and error.cost_usd == pytest.approx(cost(FLASH, (1000, 100)))
    assert budget_usage(router) == {"spent": pytest.approx(error.cost_usd), "reserved": 0}


@pytest.mark.parametrize("mode", MODES)
def test_a_backends_slow_step_before_the_first_chunk_ends_the_stream_with_deadline_exceeded(gemini_server, otel,
                                                                                            mode):
    base = Router.from_config(config(gemini_server, [{"backend": "chat"}]), timeout_s=0.5, **otel.providers)
    with base:
        chunks, error = streamed(with_backend(base, "chat", SlowBeforeCalling), mode)

    assert chunks == [] and isinstance(error, DeadlineExceeded), repr(error)
    assert error.cost_usd == 0 and not gemini_server.requests
    assert budget_usage(base)["reserved"] == 0
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["error.type"] == "DeadlineExceeded"


@pytest.mark.parametrize("mode", MODES)
def test_a_backends_slow_step_after_output_was_sent_is_stream_interrupted_with_its_cost(gemini_server, mode):
    gemini_server.reply_text("first second third", usage=(1000, 100), chunks=3)
    base = Router.from_config(config(gemini_server, [{"backend": "chat"}]), timeout_s=0.5)
    with base:
        chunks, error = streamed(with_backend(base, "chat", SlowAfterFirstChunk), mode)

    assert [c.text for c in chunks] == ["first "]
    assert isinstance(error, StreamInterrupted) and "deadline" in str(error), repr(error)
    assert error.cost_usd > 0 and error.cost_estimated  # the input and the text received, estimated
    assert budget_usage(base) == {"spent": pytest.approx(error.cost_usd), "reserved": 0}


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_slower_than_the_deadline_is_not_cut_while_each_step_is_quick(gemini_server, mode):
    """The deadline bounds the time spent producing the stream; the reader's own time between chunks is its own
    (README: a stream's deadline). The judge that checks the answer after the last chunk still has its time."""
    gemini_server.reply_text("one two three", usage=(1000, 100), chunks=3)
    gemini_server.reply_text("PASS", usage=(100, 1))
    rungs = [{"backend": "chat", "validators": ["judge:judge"]}]
    with Router.from_config(config(gemini_server, rungs), timeout_s=1.0) as router:
        chunks, error = streamed(router, mode, pause_s=0.6)

    assert error is None
    texts = [c.text for c in chunks if not c.done]
    assert len(texts) == 3 and "".join(texts) == chunks[-1].result.text == "one two three"
    assert [a.outcome for a in chunks[-1].result.decision.rungs_tried] == ["ok"]


@pytest.mark.parametrize("mode", MODES)
def test_a_wire_stream_stalled_past_the_deadline_is_cut_by_it_with_what_was_received(gemini_server, mode):
    """The server stalls mid-stream: the request's deadline (which bounds every step, so the engine sets no timer of
    its own for it) cuts the stream long before the stall ends; the caller has what was sent and what it cost."""
    from genroute.testing import Fault

    gemini_server.fault(Fault.delay(SLOW_S, after_chunks=1))
    gemini_server.reply_text("first second third", usage=(1000, 100), chunks=3)
    with Router.from_config(config(gemini_server, [{"backend": "chat"}]), timeout_s=0.5) as router:
        started = time.monotonic()
        chunks, error = streamed(router, mode)
        took = time.monotonic() - started

    assert [c.text for c in chunks] == ["first "]
    assert isinstance(error, StreamInterrupted) and "deadline of 0.5s" in str(error), repr(error)
    assert error.cost_usd > 0 and error.cost_estimated
    assert budget_usage(router) == {"spent": pytest.approx(error.cost_usd), "reserved": 0}
    assert took < SLOW_S / 2  # a hang check, not a timing


@pytest.mark.parametrize("mode", MODES)
def test_an_engine_attempt_bound_shorter_than_the_deadline_still_cuts_a_stalled_stream(gemini_server, mode):
    """The engine's own per-attempt ``timeout_s`` (shorter than the request's deadline) keeps its timer on each step."""
    from genroute.testing import Fault

    gemini_server.fault(Fault.delay(SLOW_S, after_chunks=1))
    gemini_server.reply_text("first second third", usage=(1000, 100), chunks=3)
    cfg = config(gemini_server, [{"backend": "chat"}])
    cfg["engines"]["gemini"]["timeout_s"] = 0.5
    with Router.from_config(cfg, timeout_s=SLOW_S * 2) as router:
        started = time.monotonic()
        chunks, error = streamed(router, mode)
        took = time.monotonic() - started

    assert [c.text for c in chunks] == ["first "]
    assert isinstance(error, StreamInterrupted) and "deadline" not in str(error), repr(error)
    assert error.cost_usd > 0
    assert took < SLOW_S / 2  # a hang check, not a timing
