"""Function calling under stress: hung sync tools, sibling failures and the loop's total deadline."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from genroute.errors import DeadlineExceeded, StreamInterrupted, ToolLoopExceeded
from genroute.router.router import Router
from genroute.testing import Fault, GeminiTestServer

from .conftest import Otel, gemini_config


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event hung tools wait on; set at teardown so their threads end and the test process can exit."""
    event = threading.Event()
    yield event
    event.set()


def two_backend_router(server: GeminiTestServer, otel: Otel, tools: dict[str, Any], **chat: Any) -> Router:
    """``chat`` may call ``hang``; ``other`` may call ``ping``; both are function-calling backends."""
    config = gemini_config(server, kind="function_calling", tools=["hang"], **chat)
    config["backends"]["other"] = {"kind": "function_calling", "engine": "gemini", "model": "gemini-2.5-flash",
                                   "tools": ["ping"]}
    return Router.from_config(config, tools=tools, **otel.providers)


async def test_hung_sync_tools_do_not_starve_other_work(gemini_server: GeminiTestServer, otel: Otel,
                                                        release: threading.Event) -> None:
    # More hung calls than the event loop's default pool has threads: on that pool they would block
    # every later to_thread call (Chroma, embeddings, blocking policies) until they returned.
    default_pool_size = min(32, (os.cpu_count() or 1) + 4)
    hung = default_pool_size + 1
    started = threading.Semaphore(0)

    def hang(n: int) -> int:
        """Never returns while the test runs."""
        started.release()
        release.wait()
        return n

    def ping() -> str:
        """Answers at once."""
        return f"pong from {threading.current_thread().name}"

    gemini_server.reply_parts([{"functionCall": {"name": "hang", "args": {"n": i}}} for i in range(hung)])
    gemini_server.reply_text("the tools hung")
    async with two_backend_router(gemini_server, otel, {"hang": hang, "ping": ping}, max_parallel=hung,
                                  tool_timeout_s=0.2) as router:
        result = await router.agenerate("go")
        assert [c.outcome for c in result.tool_calls] == ["timeout"] * hung
        for _ in range(hung):  # every hung call holds a thread now
            assert started.acquire(timeout=10)

        # An unrelated blocking call on the default pool still runs...
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), 10) == "free"
        # ...and so do another backend's sync tools, on that backend's own threads.
        gemini_server.reply_function_call("ping", {})
        gemini_server.reply_text("pinged")
        other = await asyncio.wait_for(router.agenerate("ping", backend="other"), 10)
    assert other.text == "pinged"
    (call,) = other.tool_calls
    assert call.outcome == "ok" and call.result.startswith("pong from genroute-tool-other")


async def test_an_unexpected_failure_cancels_the_sibling_calls(gemini_server: GeminiTestServer,
                                                                otel: Otel) -> None:
    class Abort(BaseException):
        """Not an Exception: tools' ordinary failures are answered to the model, this one is not."""

    finished: list[str] = []

    async def explode() -> str:
        """Aborts."""
        await asyncio.sleep(0.05)
        raise Abort("stop everything")

    async def slow() -> str:
        """Would take long."""
        await asyncio.sleep(30)
        finished.append("slow")
        return "late"

    gemini_server.reply_parts([{"functionCall": {"name": "explode", "args": {}}},
                               {"functionCall": {"name": "slow", "args": {}}}])
    config = gemini_config(gemini_server, kind="function_calling", tools=["explode", "slow"], tool_timeout_s=60)
    async with Router.from_config(config, tools={"explode": explode, "slow": slow}, **otel.providers) as router:
        with pytest.raises(Abort):
            await asyncio.wait_for(router.agenerate("go"), 10)
    assert finished == []
    slow_span = [s for s in otel.spans("execute_tool") if s.attributes["gen_ai.tool.name"] == "slow"][0]
    assert slow_span.attributes["error.type"] == "cancelled"
    assert not slow_span.status.is_ok


async def test_request_timeout_ends_with_the_calls_made(gemini_server: GeminiTestServer, otel: Otel) -> None:
    async def slow(seconds: float) -> str:
        """Takes its time."""
        await asyncio.sleep(seconds)
        return "late"

    gemini_server.reply_function_call("slow", {"seconds": 60}, call_id="s1")
    config = gemini_config(gemini_server, kind="function_calling", tools=["slow"], tool_timeout_s=60)
    async with Router.from_config(config, tools={"slow": slow}, **otel.providers) as router:
        with pytest.raises(ToolLoopExceeded, match="deadline") as info:
            await router.agenerate("hurry", timeout_s=2)
    (call,) = info.value.tool_calls
    assert (call.name, call.call_id, call.outcome) == ("slow", "s1", "timeout")
    assert info.value.backend == "chat"
    assert len(gemini_server.requests) == 1  # the loop stopped instead of asking the model again
    (span,) = otel.spans("execute_tool")
    assert span.attributes["error.type"] == "timeout"
    root = otel.spans("genroute.generate")[0]
    assert root.attributes["error.type"] == "ToolLoopExceeded"


async def test_deadline_while_waiting_for_the_model(gemini_server: GeminiTestServer, otel: Otel) -> None:
    def lookup(key: str) -> str:
        """Looks a key up, and makes the model's next answer slow."""
        gemini_server.fault(Fault.delay(30))
        return key.upper()

    gemini_server.reply_function_call("lookup", {"key": "a"})
    config = gemini_config(gemini_server, kind="function_calling", tools=["lookup"])
    async with Router.from_config(config, tools={"lookup": lookup}, **otel.providers) as router:
        with pytest.raises(ToolLoopExceeded, match="waiting for the model") as info:
            await router.agenerate("look a up", timeout_s=2)
    (call,) = info.value.tool_calls
    assert (call.name, call.outcome, call.result) == ("lookup", "ok", "A")
    assert len(gemini_server.requests) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
async def test_deadline_s_bounds_the_loop_without_a_request_timeout(gemini_server: GeminiTestServer, otel: Otel,
                                                                    stream: bool) -> None:
    async def slow() -> str:
        """Takes its time."""
        await asyncio.sleep(60)
        return "late"

    gemini_server.reply_function_call("slow", {})
    config = gemini_config(gemini_server, kind="function_calling", tools=["slow"], tool_timeout_s=60,
                           deadline_s=3)
    async with Router.from_config(config, tools={"slow": slow}, **otel.providers) as router:
        with pytest.raises(ToolLoopExceeded, match="deadline") as info:
            if stream:
                async for _ in router.astream("hurry"):
                    pass
            else:
                await asyncio.wait_for(router.agenerate("hurry"), 30)
    assert [c.outcome for c in info.value.tool_calls] == ["timeout"]


def test_deadline_s_must_be_positive(gemini_server: GeminiTestServer, otel: Otel) -> None:
    from genroute.errors import ConfigError

    config = gemini_config(gemini_server, kind="function_calling", tools=["t"], deadline_s=0)
    with pytest.raises(ConfigError) as info:
        Router.from_config(config, tools={"t": lambda: None}, **otel.providers)
    assert info.value.field == "backends.chat.deadline_s"


async def test_a_call_whose_turn_comes_after_the_deadline_is_not_run(gemini_server: GeminiTestServer,
                                                                     otel: Otel) -> None:
    # max_parallel 1: the calls after a hung one get their turn only once it timed out, at the loop's deadline. Started
    # then, the sync tool ran to its end on a free thread and the async one up to its first await (both side
    # effects happened), while each was reported as not finished "within 0 s".
    acted: list[str] = []

    async def hang() -> str:
        """Hangs."""
        await asyncio.sleep(60)
        return "late"

    async def notify(who: str) -> str:
        """Notifies someone (a side effect, before any await)."""
        acted.append(f"notify {who}")
        await asyncio.sleep(0)
        return "sent"

    def charge(amount: int) -> str:
        """Charges a card (a side effect)."""
        acted.append(f"charge {amount}")
        return "charged"

    tools = {"hang": hang, "notify": notify, "charge": charge}
    # The model's answer must come within the loop's deadline for the calls to be made at all: on a loaded machine it
    # may not within 0.5 s (the loop then ends waiting for the model, no call made), and the case runs again, longer.
    for deadline_s in (0.5, 3.0, 15.0):
        gemini_server.clear()
        gemini_server.reply_parts([{"functionCall": {"name": "hang", "args": {}}},
                                   {"functionCall": {"name": "notify", "args": {"who": "bob"}}},
                                   {"functionCall": {"name": "charge", "args": {"amount": 5}}}])
        config = gemini_config(gemini_server, kind="function_calling", tools=list(tools), max_parallel=1,
                               deadline_s=deadline_s)
        async with Router.from_config(config, tools=tools, **otel.providers) as router:
            with pytest.raises(ToolLoopExceeded) as info:
                await router.agenerate("pay and tell bob")
            await asyncio.sleep(0.2)  # a sync tool started anyway would have run by now
        if info.value.tool_calls:
            break
    hung, *late = info.value.tool_calls
    assert hung.outcome == "timeout" and "did not finish" in (hung.error or "")
    assert [(c.name, c.outcome) for c in late] == [("notify", "timeout"), ("charge", "timeout")]
    assert all("was not run" in (c.error or "") for c in late)
    assert acted == []


#: The deadlines the slow-reader case is run with, in turn: the loop's own work (two model calls and the tool) must
#: take well under the deadline, which on a loaded machine it may not within 1 s, and then the case says nothing.
SLOW_READER_DEADLINES_S = (1.0, 4.0, 15.0)


@pytest.mark.parametrize("loop_deadline", [False, True], ids=["request-deadline", "loop-deadline"])
async def test_a_slow_stream_reader_is_not_cut_by_the_tool_loops_deadline(gemini_server: GeminiTestServer,
                                                                         otel: Otel, loop_deadline: bool) -> None:
    # The time a reader holds a chunk moves a stream's deadline on (docs/configuration.md); the tool loop kept its own
    # deadline fixed from its start, so a reader that held the first turn's text past it got StreamInterrupted ("deadline reached
    # after 1 tool step(s)") where a plain stream went on. That error is also what a run whose own work outlasted the
    # deadline gets: it is judged only when the work took under half the deadline (or at the last deadline).
    looked: list[str] = []

    def look(q: str) -> str:
        """Looks it up."""
        looked.append(q)
        return "found"

    async def run(deadline: float) -> tuple[list[Any], BaseException | None, float, int]:
        gemini_server.clear()
        gemini_server.reply_parts([{"text": "Let me check. "}, {"functionCall": {"name": "look", "args": {"q": "x"}}}],
                                  chunks=2)
        gemini_server.reply_text("It is found.", chunks=2)
        config = gemini_config(gemini_server, kind="function_calling", tools=["look"],
                               deadline_s=deadline if loop_deadline else None)
        config["timeout_s"] = deadline
        looked.clear()
        chunks: list[Any] = []
        sent = len(gemini_server.requests)
        started, held = time.monotonic(), 0.0
        try:
            async with Router.from_config(config, tools={"look": look}, **otel.providers) as router:
                async for chunk in router.astream("find x"):
                    chunks.append(chunk)
                    if len(chunks) == 1:
                        await asyncio.sleep(1.5 * deadline)  # the reader holds the first chunk past both deadlines
                        held = 1.5 * deadline
        except (StreamInterrupted, DeadlineExceeded) as exc:  # the deadline cut the stream, or its first turn
            return chunks, exc, time.monotonic() - started - held, len(gemini_server.requests) - sent
        return chunks, None, time.monotonic() - started - held, len(gemini_server.requests) - sent

    for deadline in SLOW_READER_DEADLINES_S:
        chunks, error, work_s, sent = await run(deadline)
        if error is None or work_s < deadline / 2:
            break
    if error is not None:
        raise error
    assert "".join(c.text for c in chunks if not c.done) == "Let me check. \n\nIt is found."
    assert looked == ["x"] and sent == 2
    assert [(c.name, c.outcome) for c in chunks[-1].result.tool_calls] == [("look", "ok")]


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
async def test_a_tool_still_running_at_the_deadline_is_named_and_a_sync_one_logged(
        gemini_server: GeminiTestServer, otel: Otel, release: threading.Event, caplog: pytest.LogCaptureFixture,
        sync: bool) -> None:
    # A sync tool outlives the request in its thread (Python cannot stop one): the request still fails at its
    # deadline, its error names the tool, and a warning says the tool is still running; an async one is cancelled.
    started, finished = threading.Event(), threading.Event()

    def lookup_sync(city: str) -> str:
        """Looks a city up, slowly."""
        started.set()
        release.wait()
        finished.set()
        return "found"

    async def lookup_async(city: str) -> str:
        """Looks a city up, slowly."""
        started.set()
        await asyncio.sleep(60)
        finished.set()
        return "found"

    gemini_server.reply_function_call("lookup", {"city": "Paris"})
    config = gemini_config(gemini_server, kind="function_calling", tools=["lookup"], tool_timeout_s=60)
    tool = lookup_sync if sync else lookup_async
    async with Router.from_config(config, tools={"lookup": tool}, **otel.providers) as router:
        with pytest.raises(ToolLoopExceeded, match="while tool.s. lookup ran") as info, \
                caplog.at_level("WARNING", logger="genroute"):
            await asyncio.wait_for(router.agenerate("where?", timeout_s=2), 30)  # not waiting for the thread
    assert [(c.name, c.outcome) for c in info.value.tool_calls] == [("lookup", "timeout")]
    assert started.is_set() and not finished.is_set()
    warned = [r.getMessage() for r in caplog.records if r.name == "genroute.backends.function_calling"]
    if sync:
        (warning,) = warned
        assert "tool lookup of backend chat" in warning and "still running" in warning
        release.set()
        assert finished.wait(10)  # it ran to its end, its result unused
    else:
        assert warned == []


async def test_a_request_runs_at_most_max_tool_calls_however_many_the_model_asks_for(gemini_server: GeminiTestServer,
                                                                                      otel: Otel) -> None:
    # A model (or a document it read) asking for 2,000 calls in one turn had all 2,000 run: max_steps bounds turns,
    # not the calls in one, and every call of a tool with side effects is a side effect.
    ran: list[int] = []

    def send(n: int) -> str:
        """Sends message n (a side effect)."""
        ran.append(n)
        return "sent"

    gemini_server.reply_parts([{"functionCall": {"name": "send", "args": {"n": i}}} for i in range(3)])
    gemini_server.reply_parts([{"functionCall": {"name": "send", "args": {"n": 3 + i}}} for i in range(200)])
    gemini_server.reply_text("done")
    config = gemini_config(gemini_server, kind="function_calling", tools=["send"], max_tool_calls=5)
    async with Router.from_config(config, tools={"send": send}, **otel.providers) as router:
        result = await router.agenerate("go")
    assert result.text == "done"
    assert sorted(ran) == [0, 1, 2, 3, 4]
    outcomes = [c.outcome for c in result.tool_calls]
    assert outcomes == ["ok"] * 5 + ["not_allowed"] * 198
    assert "at most 5 tool calls (max_tool_calls)" in (result.tool_calls[-1].error or "")
    refused = [s for s in otel.spans() if s.attributes.get("error.type") == "tool_call_limit"]
    assert len(refused) == 198
    # What the model was told about a refused call
    told = json.dumps(gemini_server.requests[-1].body)
    assert "was not run: a request runs at most 5 tool calls" in told


async def test_the_default_bound_on_tool_calls_is_32(gemini_server: GeminiTestServer, otel: Otel) -> None:
    ran: list[int] = []

    def send(n: int) -> str:
        """Sends message n."""
        ran.append(n)
        return "sent"

    gemini_server.reply_parts([{"functionCall": {"name": "send", "args": {"n": i}}} for i in range(100)])
    gemini_server.reply_text("done")
    async with Router.from_config(gemini_config(gemini_server, kind="function_calling", tools=["send"]),
                                  tools={"send": send}, **otel.providers) as router:
        result = await router.agenerate("go")
    assert len(ran) == 32 and len(result.tool_calls) == 100
