"""Cost of every call: failed, timed-out, cancelled, cut and abandoned calls cost what the provider bills.

Every test runs the real google-genai client against the loopback server; usage arrives on the wire as
Gemini sends it (each stream chunk carries the usage so far), and budgets settle at the cost genroute
reports.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from genroute import BackendUnavailable, BudgetExceeded, DeadlineExceeded, Router, StreamInterrupted
from genroute.testing import Fault, Reply

from .conftest import gemini_config

USAGE = (1000, 500)
IN_PRICE, OUT_PRICE = 0.30 / 1e6, 2.50 / 1e6  # gemini-2.5-flash list prices per token
ANSWER = USAGE[0] * IN_PRICE + USAGE[1] * OUT_PRICE
TEXT = " ".join(f"word{i:02d}" for i in range(30))  # three chunks of ten equal words


def _output_so_far(chunks: int) -> int:
    """Output tokens the ``chunks``-th event of TEXT reports: the server's share by characters sent."""
    from genroute.testing.replies import split_text

    sent = sum(len(p) for p in split_text(TEXT, 3)[:chunks])
    return round(USAGE[1] * sent / len(TEXT))


def _budget_config(server: Any, answers: float = 3) -> dict[str, Any]:
    config = gemini_config(server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": answers * ANSWER, "costs": {"chat": ANSWER}}
    return config


def test_thirty_abandoned_streams_spend_the_budget_and_are_then_refused(gemini_server):
    # The probe of issue 17: a budget for three answers admitted thirty streams stopped after one chunk,
    # and the ledger said `spent 0.0` although the chunks received carried usageMetadata.
    gemini_server.default_reply = lambda req: Reply(parts=({"text": TEXT},), usage=USAGE, chunks=3)

    async def main() -> tuple[list[Any], dict[str, float]]:
        outcomes: list[Any] = []
        async with Router.from_config(_budget_config(gemini_server)) as router:
            for i in range(30):
                try:
                    async with contextlib.aclosing(router.astream(f"question {i}")) as chunks:
                        async for chunk in chunks:
                            outcomes.append(chunk.text)
                            break
                except BudgetExceeded as exc:
                    outcomes.append(exc)
            return outcomes, (await router.admission.budget().usage("*"))

    outcomes, ledger = asyncio.run(main())
    admitted = [o for o in outcomes if isinstance(o, str)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    first_chunk = USAGE[0] * IN_PRICE + _output_so_far(1) * OUT_PRICE  # usage so far: input + a third
    assert ledger["reserved"] == 0.0
    assert ledger["spent"] == pytest.approx(len(admitted) * first_chunk, rel=0.05)
    assert len(refused) > 0 and len(admitted) < 30
    assert ledger["spent"] <= 3 * ANSWER + ANSWER  # at most one request's overrun past the budget


def _router(server: Any, otel: Any | None = None, *, attempt_s: float | None = None, **extra: Any) -> Router:
    config = gemini_config(server)
    if attempt_s is not None:
        config["engines"]["gemini"]["timeout_s"] = attempt_s
    config.update(extra)
    return Router.from_config(config, **(otel.providers if otel is not None else {}))


def _input_cost(server: Any, index: int = -1) -> float:
    """The input cost of the ``index``-th request the server received, at its own token count."""
    from genroute.testing.replies import prompt_tokens

    return prompt_tokens(server.requests[index].body) * IN_PRICE


def test_attempts_that_time_out_are_charged_their_input_and_the_error_says_what_the_call_cost(gemini_server, otel):
    gemini_server.fault(Fault.delay(4), times=3)  # every attempt outlives its 1 s: the server still works on it

    with _router(gemini_server, otel, attempt_s=1.0) as router, pytest.raises(BackendUnavailable) as caught:
        router.generate("how long is a piece of string? " * 10, timeout_s=20)

    assert len(gemini_server.requests) == 3
    each = _input_cost(gemini_server)
    assert each > 0
    error = caught.value
    assert error.cost_usd == pytest.approx(3 * each) and error.cost_estimated
    assert error.usage.input_tokens == 3 * round(each / IN_PRICE) and error.usage.output_tokens == 0
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(3 * each)
    assert root.attributes["genroute.cost.estimated"] is True
    (rung,) = [e for e in root.events if e.name == "genroute.rung"]
    assert rung.attributes["gen_ai.usage.cost.amount"] == pytest.approx(3 * each)
    (call,) = otel.spans("generate_content")
    assert call.attributes["gen_ai.usage.cost.amount"] == pytest.approx(3 * each)
    (point,) = otel.metrics()["genroute.cost"].data.data_points
    assert point.value == pytest.approx(3 * each) and point.attributes["genroute.cost.estimated"] is True


def test_a_timed_out_attempt_is_charged_on_top_of_the_answer_that_followed(gemini_server):
    gemini_server.fault(Fault.delay(4))
    gemini_server.reply_text("fine", usage=USAGE)

    with _router(gemini_server, attempt_s=1.0) as router:
        result = router.generate("a question", timeout_s=20)

    assert result.text == "fine"
    assert result.cost_usd == pytest.approx(ANSWER + _input_cost(gemini_server, 0))
    assert result.cost_estimated
    assert result.usage.input_tokens == USAGE[0] + round(_input_cost(gemini_server, 0) / IN_PRICE)


def test_the_request_deadline_error_carries_the_cost_of_the_attempt_it_cut(gemini_server, otel):
    gemini_server.fault(Fault.delay(5))

    # 2 s, not less: on a loaded machine a fresh client may need a second to get the request onto the wire,
    # and a request the server never received is (rightly) not charged.
    with _router(gemini_server, otel) as router, pytest.raises(DeadlineExceeded, match="deadline") as caught:
        router.generate("a question that takes too long", timeout_s=2)

    assert caught.value.cost_usd == pytest.approx(_input_cost(gemini_server)) and caught.value.cost_estimated
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(_input_cost(gemini_server))


def test_a_stream_ended_by_the_deadline_before_its_first_chunk_raises_deadline_exceeded_with_its_cost(
        gemini_server, otel):
    gemini_server.fault(Fault.delay(5))

    with _router(gemini_server, otel) as router, pytest.raises(DeadlineExceeded, match="deadline") as caught:
        list(router.stream("a question that takes too long", timeout_s=2))

    assert caught.value.cost_usd == pytest.approx(_input_cost(gemini_server)) and caught.value.cost_estimated


def test_a_cancelled_call_is_charged_its_input_on_the_root_span_and_the_budget(gemini_server, otel):
    gemini_server.fault(Fault.delay(5))

    async def main() -> dict[str, float]:
        async with Router.from_config(_budget_config(gemini_server), **otel.providers) as router:
            task = asyncio.create_task(router.agenerate("please wait for this"))
            while not gemini_server.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return (await router.admission.budget().usage("*"))

    ledger = asyncio.run(main())
    cost = _input_cost(gemini_server)
    assert ledger == {"spent": pytest.approx(cost), "reserved": 0.0}
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(cost)
    (rung,) = [e for e in root.events if e.name == "genroute.rung"]
    assert rung.attributes["genroute.rung.outcome"] == "cancelled"


@pytest.mark.parametrize("fault, chunks_received", [
    (Fault.cut_stream(after_chunks=1), 1),
    (Fault.status(500, after_chunks=2), 2),
])
def test_a_stream_cut_or_failing_midway_costs_the_usage_received_so_far(gemini_server, otel, fault, chunks_received):
    gemini_server.reply_text(TEXT, usage=USAGE, chunks=3)
    gemini_server.fault(fault)
    received: list[str] = []

    with _router(gemini_server, otel) as router, pytest.raises(StreamInterrupted) as caught:
        for chunk in router.stream("tell me a long story", timeout_s=20):
            received.append(chunk.text)

    assert len(received) == chunks_received
    output = _output_so_far(chunks_received)
    expected = USAGE[0] * IN_PRICE + output * OUT_PRICE
    assert caught.value.cost_usd == pytest.approx(expected) and caught.value.cost_estimated
    assert caught.value.usage.output_tokens == output
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(expected)


def test_a_stream_without_usage_on_its_chunks_is_charged_the_input_and_the_text_received_estimated(gemini_server):
    events = [{"candidates": [{"content": {"role": "model", "parts": [{"text": "x" * 40}]}, "index": 0}]},
              {"candidates": [{"content": {"role": "model", "parts": [{"text": "y" * 40}]}, "index": 0}]}]
    gemini_server.reply_json(events)
    gemini_server.fault(Fault.cut_stream(after_chunks=1))

    with _router(gemini_server) as router, pytest.raises(StreamInterrupted) as caught:
        for _ in router.stream("tell me", timeout_s=20):
            pass

    assert caught.value.usage.output_tokens == 10  # 40 characters received
    assert caught.value.cost_usd == pytest.approx(_input_cost(gemini_server) + 10 * OUT_PRICE)


def test_an_abandoned_astream_without_aclosing_settles_the_budget_once_it_is_collected(gemini_server):
    gemini_server.default_reply = lambda req: Reply(parts=({"text": TEXT},), usage=USAGE, chunks=3)

    async def main() -> dict[str, float]:
        async with Router.from_config(_budget_config(gemini_server)) as router:
            async for _ in router.astream("question"):
                break  # no aclosing: the generator is finalized by the event loop's hook
            for _ in range(50):
                if (await router.admission.budget().usage("*"))["reserved"] == 0.0:
                    break
                await asyncio.sleep(0.01)
            return (await router.admission.budget().usage("*"))

    ledger = asyncio.run(main())
    first_chunk = USAGE[0] * IN_PRICE + _output_so_far(1) * OUT_PRICE
    assert ledger == {"spent": pytest.approx(first_chunk), "reserved": 0.0}


def test_failed_rungs_count_in_the_summed_cost_of_the_answer(gemini_server, otel):
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["timeout_s"] = 1.0
    config["engines"]["gemini"]["retry"]["attempts"] = 1
    config["backends"]["backup"] = dict(config["backends"]["chat"])
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}, {"backend": "backup"}]}
    gemini_server.fault(Fault.delay(4))
    gemini_server.reply_text("backup answer", usage=USAGE)

    with Router.from_config(config, **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)

    lost = _input_cost(gemini_server, 0)
    first, second = result.decision.rungs_tried
    assert first.outcome == "error" and first.cost_usd == pytest.approx(lost) and first.cost_estimated
    assert second.cost_usd == pytest.approx(ANSWER) and not second.cost_estimated
    assert result.cost_usd == pytest.approx(lost + ANSWER) and result.cost_estimated
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(lost + ANSWER)


def test_implicit_cache_hits_are_priced_as_cached_input(gemini_server, otel):
    # Gemini reports implicit cache hits (no cachedContent in the request) as cachedContentTokenCount.
    usage = {"promptTokenCount": 5000, "candidatesTokenCount": 100, "cachedContentTokenCount": 4096,
             "totalTokenCount": 5100}
    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP",
                            "index": 0}], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"}
    gemini_server.reply_json(body)

    with _router(gemini_server, otel) as router:
        result = router.generate("a long shared prefix, then a question")

    assert "cachedContent" not in gemini_server.requests[0].body
    assert result.usage.cached_input_tokens == 4096 and not result.cost_estimated
    cached_price = 0.03 / 1e6  # gemini-2.5-flash cached input
    assert result.cost_usd == pytest.approx((5000 - 4096) * IN_PRICE + 4096 * cached_price + 100 * OUT_PRICE)
    (call,) = otel.spans("generate_content")
    assert call.attributes["gen_ai.usage.cache_read.input_tokens"] == 4096


def test_an_abandoned_stream_puts_its_cost_on_the_root_span_and_its_rung_event(gemini_server, otel):
    gemini_server.reply_text(TEXT, usage=USAGE, chunks=3)

    async def main() -> None:
        async with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
            async with contextlib.aclosing(router.astream("question")) as chunks:
                async for _ in chunks:
                    break

    asyncio.run(main())
    first_chunk = USAGE[0] * IN_PRICE + _output_so_far(1) * OUT_PRICE
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(first_chunk)
    assert root.attributes["genroute.cost.estimated"] is True
    (rung,) = [e for e in root.events if e.name == "genroute.rung"]
    assert rung.attributes["genroute.rung.outcome"] == "cancelled"
    assert rung.attributes["gen_ai.usage.cost.amount"] == pytest.approx(first_chunk)
    (call,) = otel.spans("generate_content")
    # What a cut stream is billed is not known: its cost is an estimate, and no token count is reported.
    assert call.attributes["genroute.cost.estimated"] is True
    assert "gen_ai.usage.output_tokens" not in call.attributes


def test_a_validated_rung_whose_reader_stops_early_puts_its_cost_on_the_root_span(gemini_server, otel):
    """A rung with validators ahead of another is buffered, then its validated text is sent: a reader that stops
    there stopped a request that cost the whole answer, which the trace says as the budget does."""
    gemini_server.reply_text(TEXT, usage=USAGE, chunks=3)
    config = _budget_config(gemini_server)
    config["backends"]["lite"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    config["policy"]["inner"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["nonempty"]},
                                                              {"backend": "lite"}]}
    config["policy"]["costs"]["lite"] = ANSWER

    async def main() -> dict[str, float]:
        async with Router.from_config(config, **otel.providers) as router:
            async with contextlib.aclosing(router.astream("question")) as chunks:
                async for _ in chunks:
                    break
            return await router.admission.budget().usage("*")

    assert asyncio.run(main()) == {"spent": pytest.approx(ANSWER), "reserved": 0.0}
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["genroute.stream.closed_early"] is True
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(ANSWER)
    assert root.attributes["genroute.rungs_tried"] == 1
    (rung,) = [e for e in root.events if e.name == "genroute.rung"]
    assert rung.attributes["genroute.backend"] == "chat" and rung.attributes["genroute.rung.outcome"] == "cancelled"


def test_a_sync_stream_left_after_one_chunk_settles_the_budget(gemini_server):
    gemini_server.default_reply = lambda req: Reply(parts=({"text": TEXT},), usage=USAGE, chunks=3)

    with Router.from_config(_budget_config(gemini_server)) as router:
        stream = router.stream("question")
        next(stream)
        stream.close()
    ledger = asyncio.run(router.admission.budget().usage("*"))  # the memory store outlives the router's loop

    first_chunk = USAGE[0] * IN_PRICE + _output_so_far(1) * OUT_PRICE
    assert ledger == {"spent": pytest.approx(first_chunk), "reserved": 0.0}


def test_what_counts_as_processed_by_the_provider():
    import json

    import httpx
    from google.genai import errors as genai_errors

    from genroute.runtime.billing import processed

    request = httpx.Request("POST", "http://127.0.0.1/")
    billed = [TimeoutError(), asyncio.CancelledError(), httpx.ReadTimeout("slow", request=request),
              httpx.ReadError("reset", request=request), httpx.RemoteProtocolError("cut", request=request),
              json.JSONDecodeError("bad", "{", 1), ConnectionResetError()]
    free = [genai_errors.ServerError(503, {"error": {"code": 503, "message": "busy"}}),
            genai_errors.ClientError(429, {"error": {"code": 429, "message": "quota"}}),
            httpx.ConnectError("refused", request=request), httpx.ConnectTimeout("no route", request=request),
            ConnectionRefusedError(), ValueError("the SDK refused an argument"), BackendUnavailable("ours")]
    assert [processed(e) for e in billed] == [True] * len(billed)
    assert [processed(e) for e in free] == [False] * len(free)


def test_input_estimate_counts_contents_system_and_tools():
    from google.genai import types

    from genroute.runtime.billing import estimate_input

    contents = [types.Content(role="user", parts=[types.Part(text="x" * 40)])]
    assert estimate_input(contents) == 10
    config = types.GenerateContentConfig(system_instruction="y" * 40)
    assert estimate_input(contents, config) == 20
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather", description="d" * 100)])
    assert estimate_input(contents, types.GenerateContentConfig(tools=[tool])) > 10 + 25


def test_errors_the_provider_answered_and_refused_connections_cost_nothing(gemini_server):
    import socket

    gemini_server.fault(Fault.status(503), times=3)
    with _router(gemini_server) as router, pytest.raises(BackendUnavailable) as caught:
        router.generate("a question", timeout_s=20)
    assert len(gemini_server.requests) == 3 and caught.value.cost_usd == 0.0 and not caught.value.cost_estimated

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["base_url"] = f"http://127.0.0.1:{port}"
    with Router.from_config(config) as router, pytest.raises(BackendUnavailable) as caught:
        router.generate("a question", timeout_s=20)
    assert caught.value.cost_usd == 0.0


def test_a_connection_reset_after_the_request_was_read_is_charged_its_input(gemini_server):
    # The server read the request before it reset the connection: it may have processed it, so it counts.
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["retry"]["attempts"] = 1
    gemini_server.fault(Fault.reset())
    with Router.from_config(config) as router, pytest.raises(BackendUnavailable) as caught:
        router.generate("a question", timeout_s=20)
    assert caught.value.cost_usd == pytest.approx(_input_cost(gemini_server)) and caught.value.cost_estimated


def test_lost_attempts_are_priced_each_at_its_own_prompt_size_tier(gemini_server):
    # Three timed-out attempts of ~60 tokens each: their sum crosses a 100-token tier, none of them does.
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["timeout_s"] = 1.0
    config["pricing"] = {"gemini-2.5-flash": {"input": 1.0, "output": 1.0, "tiers": [
        {"above_input_tokens": 100, "input": 1000.0, "output": 1000.0}]}}
    gemini_server.fault(Fault.delay(4), times=3)

    with Router.from_config(config) as router, pytest.raises(BackendUnavailable) as caught:
        router.generate("x" * 240, timeout_s=20)

    tokens = round(_input_cost(gemini_server) / IN_PRICE)
    assert tokens <= 100 < 3 * tokens
    assert caught.value.cost_usd == pytest.approx(3 * tokens * 1.0 / 1e6)
