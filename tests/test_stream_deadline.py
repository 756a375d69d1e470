"""A stream's request deadline on the loopback wire: it bounds every step of the stream (validators, a backend's own
work, engine calls), and never the time the reader spends between chunks.

Each case needs some work done before its deadline (an engine call, a first chunk) and a slow step that only the
deadline ends. On a loaded machine the work may not be done by a short deadline, and such a run tells nothing: it
is run again with the next of ``DEADLINES_S`` (``judged``). A run that could tell is judged, and so is the run
with the last deadline, whatever happened in it: a broken deadline fails at every length.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import pytest

from genroute import DeadlineExceeded, GenrouteError, Router, StreamInterrupted
from genroute.backends.prompt_template import PromptTemplateBackend
from genroute.testing import GeminiTestServer

from .conftest import Otel, budget_usage, gemini_config

FLASH = (0.30, 2.50)
#: Deadlines tried in turn, the next only when a run with one could not tell (see the module's docstring).
DEADLINES_S = (0.5, 2.0, 6.0)
#: Longer than any deadline: only the deadline ends what waits this long.
SLOW_S = 30.0


def cost(price: tuple[float, float], usage: tuple[int, int]) -> float:
    return usage[0] * price[0] / 1e6 + usage[1] * price[1] / 1e6


def slow_check(reached: threading.Event) -> Callable[[Any, Any], Any]:
    """A validator that takes too long (``reached`` set when it starts: the answer it checks is in)."""

    async def check(request: Any, output: Any) -> str | None:
        reached.set()
        await asyncio.sleep(SLOW_S)
        return None

    return check


class SlowBeforeCalling(PromptTemplateBackend):
    """A backend whose own work before the engine call (a retrieval, say) takes too long."""

    reached = False

    async def stream(self, request, ctx):
        self.reached = True
        await asyncio.sleep(SLOW_S)
        async for item in super().stream(request, ctx):
            yield item


class SlowAfterFirstChunk(PromptTemplateBackend):
    """A backend that stalls on its own after its first chunk was sent."""

    reached = False

    async def stream(self, request, ctx):
        sent = False
        async with aclosing(super().stream(request, ctx)) as items:  # cut: the engine's stream is charged now
            async for item in items:
                if sent:
                    self.reached = True
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


@dataclass
class Run:
    """One run of a case: what the reader got, how it ended, and whether the run could tell (see ``judged``)."""

    server: GeminiTestServer
    timeout_s: float
    chunks: list[Any] = field(default_factory=list)
    error: GenrouteError | None = None
    told: bool = False
    router: Router | None = None
    otel: Otel = field(default_factory=Otel)
    took_s: float = 0.0  # from the call until the stream ended
    read_s: float = 0.0  # of which the reader's own pauses


def judged(case: Callable[[Run], None]) -> Run:
    """``case(run)`` with each of ``DEADLINES_S`` (a fresh loopback server each time) until a run could tell; that
    run, or the last one."""
    for timeout_s in DEADLINES_S:
        with GeminiTestServer() as server:
            run = Run(server, timeout_s)
            case(run)
        if run.told:
            break
    return run


def stream(run: Run, router: Router, mode: str, pause_s: float = 0.0, **fields: Any) -> None:
    """Read ``router``'s stream (by ``stream`` or ``astream``, the reader pausing ``pause_s`` after each chunk) into
    ``run``: its chunks, and the error that ended it, if any."""
    run.router = router
    started = time.monotonic()

    def pause() -> None:
        paused = time.monotonic()
        time.sleep(pause_s)
        run.read_s += time.monotonic() - paused

    try:
        if mode == "stream":
            for chunk in router.stream("hi", **fields):
                run.chunks.append(chunk)
                pause()
        else:
            async def read() -> None:
                async for chunk in router.astream("hi", **fields):
                    run.chunks.append(chunk)
                    paused = time.monotonic()
                    await asyncio.sleep(pause_s)
                    run.read_s += time.monotonic() - paused

            router._portal.call(read(), timeout_s=60)  # the router's own loop, as the sync API uses
    except GenrouteError as exc:
        run.error = exc
    run.took_s = time.monotonic() - started


def with_backend(router: Router, name: str, kind: type[PromptTemplateBackend]) -> Router:
    backend = router.backends[name]
    return router.replacing({name: kind(name, backend.config, router.resources)})


MODES = ["stream", "astream"]


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_validator_on_a_buffered_rung_ends_the_stream_with_deadline_exceeded(mode):
    def case(run: Run) -> None:
        run.server.reply_text("buffered answer", usage=(1000, 100), chunks=2)
        rungs = [{"backend": "chat", "validators": ["slow"]}, {"backend": "pro"}]
        reached = threading.Event()
        with Router.from_config(config(run.server, rungs), validators={"slow": slow_check(reached)},
                                timeout_s=run.timeout_s, **run.otel.providers) as router:
            stream(run, router, mode)
        run.told = reached.is_set()  # the answer was in before the deadline

    run = judged(case)
    chunks, error = run.chunks, run.error
    assert chunks == [] and isinstance(error, DeadlineExceeded), repr(error)
    assert str(error) == f"request deadline of {run.timeout_s}s exceeded" and error.backend == "chat"
    assert error.cost_usd == pytest.approx(cost(FLASH, (1000, 100)))
    assert budget_usage(run.router) == {"spent": pytest.approx(error.cost_usd), "reserved": 0}
    (root,) = run.otel.spans("genroute.generate")
    assert root.attributes["error.type"] == "DeadlineExceeded"
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(error.cost_usd)
    assert len(run.server.requests) == 1  # the deadline is not fallen through


@pytest.mark.parametrize("mode", MODES)
def test_a_slow_validator_on_the_live_rung_is_cut_as_stream_interrupted(mode):
    def case(run: Run) -> None:
        run.server.reply_text("live answer", usage=(1000, 100), chunks=2)
        rungs = [{"backend": "chat", "validators": ["slow"]}]
        reached = threading.Event()
        with Router.from_config(config(run.server, rungs), validators={"slow": slow_check(reached)},
                                timeout_s=run.timeout_s) as router:
            stream(run, router, mode)
        run.told = reached.is_set()  # the whole answer was sent before the deadline

    run = judged(case)
    chunks, error = run.chunks, run.error
    assert "".join(c.text for c in chunks) == "live answer"
    assert isinstance(error, StreamInterrupted) and "after output was sent" in str(error), repr(error)
    assert error.backend == "chat" and error.cost_usd == pytest.approx(cost(FLASH, (1000, 100)))
    assert budget_usage(run.router) == {"spent": pytest.approx(error.cost_usd), "reserved": 0}


def slow_backend(kind: type[SlowBeforeCalling | SlowAfterFirstChunk], mode: str) -> Callable[[Run], None]:
    """A case: backend ``chat`` replaced by ``kind``; a run tells once the backend reached its slow step."""
    def case(run: Run) -> None:
        run.server.reply_text("first second third", usage=(1000, 100), chunks=3)
        base = Router.from_config(config(run.server, [{"backend": "chat"}]), timeout_s=run.timeout_s,
                                  **run.otel.providers)
        with base:
            router = with_backend(base, "chat", kind)
            stream(run, router, mode)
        run.router = base
        run.told = router.backends["chat"].reached

    return case


@pytest.mark.parametrize("mode", MODES)
def test_a_backends_slow_step_before_the_first_chunk_ends_the_stream_with_deadline_exceeded(mode):
    run = judged(slow_backend(SlowBeforeCalling, mode))  # told: the request got as far as its backend
    chunks, error = run.chunks, run.error
    assert chunks == [] and isinstance(error, DeadlineExceeded), repr(error)
    assert error.cost_usd == 0 and not run.server.requests
    assert budget_usage(run.router)["reserved"] == 0
    (root,) = run.otel.spans("genroute.generate")
    assert root.attributes["error.type"] == "DeadlineExceeded"


@pytest.mark.parametrize("mode", MODES)
def test_a_backends_slow_step_after_output_was_sent_is_stream_interrupted_with_its_cost(mode):
    run = judged(slow_backend(SlowAfterFirstChunk, mode))  # told: the first chunk was sent before the deadline
    chunks, error = run.chunks, run.error
    assert [c.text for c in chunks] == ["first "]
    assert isinstance(error, StreamInterrupted) and "deadline" in str(error), repr(error)
    assert error.cost_usd > 0 and error.cost_estimated  # the input and the text received, estimated
    assert budget_usage(run.router) == {"spent": pytest.approx(error.cost_usd), "reserved": 0}


@pytest.mark.parametrize("mode", MODES)
def test_a_reader_slower_than_the_deadline_is_not_cut_while_each_step_is_quick(mode):
    """The deadline bounds the time spent producing the stream; the reader's own time between chunks is its own
    (docs/requests.md: a stream's deadline). The judge that checks the answer after the last chunk still has its
    time."""
    def case(run: Run) -> None:
        run.server.reply_text("one two three", usage=(1000, 100), chunks=3)
        run.server.reply_text("PASS", usage=(100, 1))
        rungs = [{"backend": "chat", "validators": ["judge:judge"]}]
        with Router.from_config(config(run.server, rungs), timeout_s=2 * run.timeout_s) as router:
            # Three pauses, each longer than half the deadline: the reader alone holds the stream past it.
            stream(run, router, mode, pause_s=1.2 * run.timeout_s)
        # Whether producing the stream (all but the reader's pauses) took less than the deadline.
        run.told = run.took_s - run.read_s < 2 * run.timeout_s

    run = judged(case)
    chunks, error = run.chunks, run.error
    assert error is None, repr(error)
    texts = [c.text for c in chunks if not c.done]
    assert len(texts) == 3 and "".join(texts) == chunks[-1].result.text == "one two three"
    assert [a.outcome for a in chunks[-1].result.decision.rungs_tried] == ["ok"]


def stalled(mode: str, engine_bound: bool) -> Run:
    """A stream the server stalls after its first chunk, cut by the request's deadline or (``engine_bound``) by the
    engine's own per-attempt ``timeout_s`` under a far longer request deadline."""
    from genroute.testing import Fault

    def case(run: Run) -> None:
        run.server.fault(Fault.delay(SLOW_S, after_chunks=1))
        run.server.reply_text("first second third", usage=(1000, 100), chunks=3)
        cfg = config(run.server, [{"backend": "chat"}])
        if engine_bound:
            cfg["engines"]["gemini"]["timeout_s"] = run.timeout_s
        with Router.from_config(cfg, timeout_s=SLOW_S * 2 if engine_bound else run.timeout_s) as router:
            stream(run, router, mode)
        run.told = bool(run.chunks)  # the first chunk came before the deadline (or the attempt's bound)

    run = judged(case)
    assert [c.text for c in run.chunks] == ["first "]
    assert isinstance(run.error, StreamInterrupted), repr(run.error)
    assert run.error.cost_usd > 0
    assert run.took_s < SLOW_S / 2  # a hang check, not a timing
    return run


@pytest.mark.parametrize("mode", MODES)
def test_a_wire_stream_stalled_past_the_deadline_is_cut_by_it_with_what_was_received(mode):
    """The server stalls mid-stream: the request's deadline (which bounds every step, so the engine sets no timer of
    its own for it) cuts the stream long before the stall ends; the caller has what was sent and what it cost."""
    run = stalled(mode, engine_bound=False)
    assert f"deadline of {run.timeout_s}s" in str(run.error) and run.error.cost_estimated
    assert budget_usage(run.router) == {"spent": pytest.approx(run.error.cost_usd), "reserved": 0}


@pytest.mark.parametrize("mode", MODES)
def test_an_engine_attempt_bound_shorter_than_the_deadline_still_cuts_a_stalled_stream(mode):
    """The engine's own per-attempt ``timeout_s`` (shorter than the request's deadline) keeps its timer on each step."""
    run = stalled(mode, engine_bound=True)
    assert "deadline" not in str(run.error), repr(run.error)
