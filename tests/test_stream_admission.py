"""Streams through admission on the loopback wire: budget holds and circuit breakers see a stream as it really ended,
whatever its reader did (read slowly, stopped early) and however the provider ended it (mid-way)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import Any, TypeVar

import pytest

import genroute.admission
from genroute import BackendUnavailable, BudgetExceeded, CircuitOpen, DeadlineExceeded, Router, StreamInterrupted
from genroute.testing import Fault, Reply

from .conftest import gemini_config
from .redis_fixtures import redis_server, redis_session, state  # noqa: F401

#: What the loopback server bills each answer below, and a budget estimate above it.
USAGE = (1000, 100)
ESTIMATE = 0.01
#: Longer than any test: only a cancellation ends what waits this long.
SLOW_S = 30.0

T = TypeVar("T")


def _budget_config(server: Any, budget_usd: float) -> dict[str, Any]:
    config = gemini_config(server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": budget_usd, "costs": {"chat": ESTIMATE}}
    return config


#: The stream's deadlines, tried in turn. The reader holds a chunk past its stream's first deadline, so the stream
#: must bring its first chunk, and its rest, within that deadline: a loaded machine may not within a short one,
#: which says nothing of what a case checks; a case is judged on its first run that was not cut by its deadline.
DEADLINES_S = (0.3, 2.0, 8.0)


def _in_time(run: Callable[[float], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(run(timeout_s))`` for the first of ``DEADLINES_S`` that did not end it (the last, whatever)."""
    for timeout_s in DEADLINES_S[:-1]:
        try:
            return asyncio.run(run(timeout_s))
        except DeadlineExceeded:
            continue
    return asyncio.run(run(DEADLINES_S[-1]))


def test_a_slow_readers_stream_keeps_its_budget_hold_past_the_first_deadline(gemini_server, monkeypatch) -> None:
    """The reader's time moves a stream's deadline on (docs/shared-state.md), so its hold must not lapse at the first
    deadline: the budget has room for one answer, and a second request is refused while the first is still being read."""
    monkeypatch.setattr(genroute.admission, "HOLD_MARGIN_S", 0.0)  # a deadline-bound hold lapses at the deadline

    async def main(timeout_s: float) -> tuple[Any, dict[str, float], BaseException | None, dict[str, float]]:
        gemini_server.reply_text("one two three", usage=USAGE, chunks=3)
        async with Router.from_config(_budget_config(gemini_server, 1.5 * ESTIMATE)) as router:
            async with aclosing(router.astream("hi", timeout_s=timeout_s)) as stream:
                await anext(stream)
                await asyncio.sleep(2 * timeout_s)  # the reader holds its first chunk past the deadline it started with
                held = await router.admission.budget().usage("*")
                try:
                    await router.agenerate("another", timeout_s=5)
                    refused = None
                except BudgetExceeded as exc:
                    refused = exc
                rest = [chunk async for chunk in stream]
            return rest[-1].result, held, refused, await router.admission.budget().usage("*")

    result, held, refused, usage = _in_time(main)
    # The stream still holds its estimate (a lapsed hold would count as spent at its estimate instead).
    assert held == {"spent": 0.0, "reserved": pytest.approx(ESTIMATE)}
    assert isinstance(refused, BudgetExceeded)
    assert result.text == "one two three"
    assert usage == {"spent": pytest.approx(result.cost_usd), "reserved": 0.0}


def _breaker_config(server: Any, **breakers: Any) -> dict[str, Any]:
    config = gemini_config(server)
    config["engines"]["gemini"]["retry"]["attempts"] = 1  # one request, one failure: the breaker counts
    config["breakers"] = {"failures": 1, "cooldown_s": 30, **breakers}
    return config


def test_a_slow_reader_that_stops_past_the_first_deadline_is_no_breaker_failure(gemini_server) -> None:
    """The deadline moved on while the reader held its chunk, so the attempt it ended was not cut by the deadline.

    The reader, past the deadline the stream started with, waits for the next chunk (which the provider holds back)
    and its caller cancels it: neither an answer nor a failure, unless judged against that first deadline. (A reader
    that closes the stream at a chunk is counted answered whatever the deadline: see the probe cases below.)"""

    async def main(timeout_s: float) -> tuple[str, int]:
        gemini_server.reply_text("one two three", usage=USAGE, chunks=3)
        gemini_server.fault(Fault.delay(SLOW_S, after_chunks=1))
        async with Router.from_config(_breaker_config(gemini_server)) as router:
            async with aclosing(router.astream("hi", timeout_s=timeout_s)) as stream:
                await anext(stream)
                await asyncio.sleep(2 * timeout_s)  # past the deadline the stream started with, which moves on
                reading = asyncio.ensure_future(anext(stream))
                await asyncio.sleep(0.05)  # the reader waits for the chunk the provider holds back
                reading.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await reading
            gemini_server.clear()
            backend = (await router.agenerate("next")).backend  # CircuitOpen if the cancelled attempt counted
        return backend, len(gemini_server.requests)

    assert _in_time(main) == ("chat", 1)


@pytest.mark.parametrize("fault", [Fault.status(503, after_chunks=1), Fault.cut_stream(1)], ids=["503", "cut"])
def test_a_provider_failure_in_the_middle_of_a_stream_counts_for_the_breaker(gemini_server, fault) -> None:
    """A 5xx or a cut connection after the first chunk is as unhealthy as one before it (docs/shared-state.md:
    breakers)."""
    gemini_server.fault(fault, times=2)

    interrupted, refused = asyncio.run(_streams_then_one(_breaker_config(gemini_server, failures=2), 2))
    assert len(interrupted) == 2 and all("after output was sent" in str(e) for e in interrupted)
    assert isinstance(refused, CircuitOpen)  # two failures within the window opened it
    assert len(gemini_server.requests) == 2  # nothing was sent past the open breaker


def test_a_429_with_retry_after_in_the_middle_of_a_stream_opens_the_breaker_for_that_long(gemini_server) -> None:
    """As one before the first chunk does (docs/shared-state.md: breakers), whatever ``failures`` says."""
    gemini_server.fault(Fault.status(429, retry_after=90, after_chunks=1))

    async def main() -> tuple[StreamInterrupted, dict[str, float]]:
        async with Router.from_config(_breaker_config(gemini_server, failures=5)) as router:
            with pytest.raises(StreamInterrupted) as info:
                await _read(router.astream("one two three"))
            return info.value, await router._breakers.health()

    interrupted, health = asyncio.run(main())
    assert interrupted.status == 429
    assert 85 < health["chat"] <= 90


def test_a_stream_the_provider_ends_without_a_finish_reason_counts_for_the_breaker(gemini_server) -> None:
    """A connection closed cleanly mid-answer is no complete answer (StreamInterrupted), nor a healthy one."""
    partial = {"candidates": [{"content": {"role": "model", "parts": [{"text": "half an"}]}, "index": 0}],
               "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12}}
    gemini_server.reply(Reply(raw=[partial]))

    (cut,), refused = asyncio.run(_streams_then_one(_breaker_config(gemini_server), 1))
    assert "without a finish reason" in str(cut)
    assert isinstance(refused, CircuitOpen)


async def _streams_then_one(config: dict[str, Any], streams: int) -> tuple[list[StreamInterrupted],
                                                                          CircuitOpen | None]:
    """Read ``streams`` streams (each interrupted), then ask once more: the interruptions, and the CircuitOpen that
    refused the last request (None: it was answered)."""
    async with Router.from_config(config) as router:
        interrupted = []
        for _ in range(streams):
            with pytest.raises(StreamInterrupted) as info:
                await _read(router.astream("one two three"))
            interrupted.append(info.value)
        try:
            await router.agenerate("next")
        except CircuitOpen as exc:
            return interrupted, exc
        return interrupted, None


async def _half_open(router: Router, server: Any) -> None:
    """Open ``router``'s breaker on chat with one 503, and wait out its cool-down: the next attempt is its probe."""
    server.fault(Fault.status(503))
    with pytest.raises(BackendUnavailable):
        await router.agenerate("fails")
    await asyncio.sleep(0.4)


def test_a_probe_stream_its_reader_stops_early_closes_the_breaker(gemini_server, otel, state) -> None:
    """Chunks were arriving: the backend answered the probe, as a complete stream would have."""
    config = {**_breaker_config(gemini_server, cooldown_s=0.3), "state": state}

    async def main() -> str:
        async with Router.from_config(config, **otel.providers) as router:
            await _half_open(router, gemini_server)
            async with aclosing(router.astream("one two three")) as stream:
                await anext(stream)
            return (await router.agenerate("next")).backend  # CircuitOpen while the probe is held

    assert asyncio.run(main()) == "chat"
    states = [e.attributes["genroute.breaker.state"] for s in otel.spans("genroute.generate") for e in s.events
              if e.name == "genroute.breaker" and e.attributes["genroute.breaker"] == "backend:chat"]
    assert states == ["open", "closed"]


def test_a_probe_its_caller_cancels_lets_the_next_attempt_probe(gemini_server, state) -> None:
    """Neither an answer nor a failure: the breaker stays half-open, and the next attempt is its probe (it waited
    for the cancelled probe's hold to lapse: a minute without a deadline)."""
    config = {**_breaker_config(gemini_server, cooldown_s=0.3), "state": state}

    async def main() -> tuple[str, str]:
        async with Router.from_config(config) as router:
            await _half_open(router, gemini_server)
            for cancelled in (router.agenerate("probe"), _read(router.astream("probe"))):
                gemini_server.fault(Fault.delay(SLOW_S))
                task = asyncio.ensure_future(cancelled)
                await _sent(gemini_server, "probe")
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                gemini_server.clear()
            first = (await router.agenerate("next")).backend
            return first, (await router.agenerate("and the next")).backend

    assert asyncio.run(main()) == ("chat", "chat")


async def _sent(server: Any, text: str) -> None:
    """Wait (up to 10 s) until ``server`` has received a request carrying ``text``."""
    for _ in range(1000):
        if any(text in str(r.body) for r in server.requests):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no request with {text!r} was sent")


async def _read(stream: Any) -> None:
    async for _chunk in stream:
        pass
