"""The router's one API over the real google-genai client on the loopback wire."""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

import pytest

from genroute import (
    AllRungsFailed, BackendRejected, Decision, GenerateRequest, Router, Rung, UsageError,
)
from genroute.policies.base import Policy, PolicyConfig
from genroute.testing import Fault

from .conftest import TEST_KEY, budget_usage, gemini_config


def test_generate_returns_text_usage_cost_and_decision(gemini_server, otel):
    gemini_server.reply_text("Paris.", usage=(1000, 500))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        result = router.generate("Capital of France?")
    assert result.text == "Paris."
    assert result.backend == "chat"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (1000, 500)
    assert result.cost_usd == pytest.approx(1000 * 0.30 / 1e6 + 500 * 2.50 / 1e6)
    assert result.decision.policy == "static"
    assert [a.outcome for a in result.decision.rungs_tried] == ["ok"]
    assert result.trace_id and len(result.trace_id) == 32
    assert gemini_server.requests[-1].path == "/v1/models/gemini-2.5-flash:generateContent"


def test_sync_and_async_agree(gemini_server, otel):
    config = gemini_config(gemini_server, system="Be terse.", template="Q: {{ input }}")
    gemini_server.reply_text("same", usage=(12, 3))
    gemini_server.reply_text("same", usage=(12, 3))
    with Router.from_config(config, **otel.providers) as router:
        sync = router.generate("hello", task="t")
    async def run():
        async with Router.from_config(config, **otel.providers) as router:
            return await router.agenerate(GenerateRequest(input="hello", task="t"))
    asynchronous = asyncio.run(run())
    fields = ("text", "backend", "model", "usage", "cost_usd", "finish_reason")
    assert {f: getattr(sync, f) for f in fields} == {f: getattr(asynchronous, f) for f in fields}
    first, second = gemini_server.requests[-2:]
    assert first.body == second.body
    assert first.body["contents"][0]["parts"][0]["text"] == "Q: hello"


def test_stream_and_astream_agree(gemini_server, otel):
    config = gemini_config(gemini_server)
    gemini_server.reply_text("one two three four", usage=(8, 4), chunks=3)
    gemini_server.reply_text("one two three four", usage=(8, 4), chunks=3)
    with Router.from_config(config, **otel.providers) as router:
        chunks = list(router.stream("count"))
    async def run():
        async with Router.from_config(config, **otel.providers) as router:
            return [c async for c in router.astream("count")]
    achunks = asyncio.run(run())
    for got in (chunks, achunks):
        texts = [c.text for c in got if not c.done]
        assert len(texts) >= 2 and "".join(texts) == "one two three four"
        final = got[-1]
        assert final.done and final.result.text == "one two three four"
        assert final.result.time_to_first_token_s is not None
        assert final.result.usage.output_tokens == 4
    assert gemini_server.requests[-1].stream


@pytest.mark.parametrize("how", ["closed", "dropped"])
def test_a_stream_the_caller_stops_reading_is_not_an_error(gemini_server, otel, how):
    """Stopping reading is the caller's choice, whether it closes the stream or lets go of it unclosed (the garbage
    collector closes it): the root span says so and keeps its status unset (OK), with the cost of what was received,
    and the event of the rung it cut says ``cancelled`` with no error either; the sync and async streams agree."""
    import gc

    config = gemini_config(gemini_server)
    for _ in range(2):
        gemini_server.reply_text("one two three four five six", usage=(8, 6), chunks=3)
    with Router.from_config(config, **otel.providers) as router:
        chunks = router.stream("count")
        next(chunks)
        if how == "closed":
            chunks.close()
        del chunks
        gc.collect()

    async def run():
        async with Router.from_config(config, **otel.providers) as router:
            chunks = router.astream("count")
            await anext(chunks)
            if how == "closed":
                await chunks.aclose()
            del chunks
            gc.collect()
            await asyncio.sleep(0.1)  # the loop closes what was collected

    asyncio.run(run())
    roots = otel.spans("genroute.generate")
    assert len(roots) == 2
    for root in roots:
        assert root.attributes["genroute.stream.closed_early"] is True
        assert "error.type" not in root.attributes
        assert root.status.status_code.name == "UNSET"
        assert root.attributes["gen_ai.usage.cost.amount"] > 0
        (rung,) = [e for e in root.events if e.name == "genroute.rung"]
        assert rung.attributes["genroute.rung.outcome"] == "cancelled" and "error.type" not in rung.attributes
    assert all(s.status.status_code.name == "UNSET" for s in otel.spans("generate_content"))


def test_a_stream_left_after_its_done_chunk_was_read_to_its_end(gemini_server, otel):
    """A caller that stops at the ``done`` chunk (``if chunk.done: break``) had the whole answer: its trace does not
    say it stopped reading early; the sync and async streams agree."""
    config = gemini_config(gemini_server)
    with Router.from_config(config, **otel.providers) as router:
        for chunk in router.stream("one two three"):
            if chunk.done:
                break

    async def run():
        async with Router.from_config(config, **otel.providers) as router:
            async with aclosing(router.astream("one two three")) as chunks:
                async for chunk in chunks:
                    if chunk.done:
                        break
    asyncio.run(run())
    roots = otel.spans("genroute.generate")
    assert len(roots) == 2
    for root in roots:
        assert "genroute.stream.closed_early" not in root.attributes
        assert "error.type" not in root.attributes and root.attributes["genroute.backend"] == "chat"


def _budgeted(server):
    """A one-backend config under a global budget (so that a hold left open shows in ``reserved``)."""
    config = gemini_config(server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": 1.0, "costs": {"chat": 0.01}}
    return config


def test_a_second_reader_of_a_stream_is_refused_and_the_first_reads_it_whole(gemini_server):
    """Two tasks asking one stream for its next chunk at once: the second gets a UsageError (it was a bare
    RuntimeError that ended the stream for both, its budget hold left open)."""
    gemini_server.reply_text("one two three", usage=(10, 3), chunks=3)
    config = _budgeted(gemini_server)

    async def run():
        async with Router.from_config(config) as router:
            stream = router.astream("count")
            first, second = await asyncio.gather(anext(stream), anext(stream), return_exceptions=True)
            rest = [chunk async for chunk in stream]
            return first, second, rest, await router.admission.budget().usage("*")

    first, second, rest, usage = asyncio.run(run())
    assert isinstance(second, UsageError) and "one task at a time" in str(second)
    assert first.text + "".join(c.text for c in rest) == "one two three" and rest[-1].done
    assert usage == {"spent": pytest.approx(rest[-1].result.cost_usd), "reserved": 0.0}


def test_a_stream_closed_from_another_task_mid_step_is_refused_and_goes_on(gemini_server):
    """``aclose`` while another task waits for the next chunk: UsageError (it was a bare RuntimeError that left the
    stream to end silently after that chunk, its budget hold open)."""
    from genroute.testing import Fault

    gemini_server.fault(Fault.delay(0.5, after_chunks=1))
    gemini_server.reply_text("one two three", usage=(10, 3), chunks=3)
    config = _budgeted(gemini_server)

    async def run():
        async with Router.from_config(config) as router:
            stream = router.astream("count")
            first = await anext(stream)
            reader = asyncio.ensure_future(anext(stream))
            for _ in range(100):  # until the reader waits for the stalled chunk
                if stream.stepping:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(UsageError, match="another task"):
                await stream.aclose()
            rest = [await reader] + [chunk async for chunk in stream]
            return first, rest, await router.admission.budget().usage("*")

    first, rest, usage = asyncio.run(run())
    assert first.text + "".join(c.text for c in rest) == "one two three" and rest[-1].done
    assert usage == {"spent": pytest.approx(rest[-1].result.cost_usd), "reserved": 0.0}


def test_a_stream_is_read_on_the_event_loop_it_started_on(gemini_server):
    """Read on, after the loop it started on ended (and closed it), a stream raises UsageError: it ended silently, as
    if complete, without its done chunk."""
    gemini_server.reply_text("one two three", usage=(10, 3), chunks=3)
    config = _budgeted(gemini_server)
    with Router.from_config(config) as router:
        stream = router.astream("count")

        async def first():
            return await anext(stream)

        async def rest():
            return [chunk async for chunk in stream]

        assert asyncio.run(first()).text
        with pytest.raises(UsageError, match="event loop it started on"):
            asyncio.run(rest())
        assert budget_usage(router)["reserved"] == 0.0  # the ended loop closed it: its hold is settled


def test_a_streamed_results_latency_leaves_out_the_time_its_reader_held_chunks(gemini_server):
    """A slow reader (a chat UI) made a fast answer look slow: latency_s (and the rung's, which outcome stats and a
    cost_aware policy's p95 read) counted the reader's own time between chunks."""
    gemini_server.reply_text("one two three", usage=(10, 3), chunks=3)

    async def run():
        async with Router.from_config(gemini_config(gemini_server)) as router:
            chunks, slept = [], 0.0
            started = time.perf_counter()
            async for chunk in router.astream("count"):
                chunks.append(chunk)
                if not chunk.done:
                    before = time.perf_counter()
                    await asyncio.sleep(0.2)
                    slept += time.perf_counter() - before
            return chunks[-1].result, time.perf_counter() - started, slept

    result, wall, slept = asyncio.run(run())
    assert result.latency_s <= wall - slept  # what the request took, without the reader's time
    assert result.decision.rungs_tried[0].latency_s <= wall - slept


def test_sync_api_refuses_to_run_inside_an_event_loop(gemini_server):
    async def inside():
        with pytest.raises(UsageError, match="agenerate"):
            router.generate("hi")
    router = Router.from_config(gemini_config(gemini_server))
    asyncio.run(inside())
    router.close()


def test_retry_on_429_then_success_makes_two_requests(gemini_server):
    gemini_server.fault(Fault.status(429, retry_after=0.01))
    gemini_server.reply_text("ok")
    with Router.from_config(gemini_config(gemini_server)) as router:
        result = router.generate("hi")
    assert result.text == "ok"
    assert len(gemini_server.requests) == 2


def test_400_is_rejected_at_once(gemini_server):
    gemini_server.fault(Fault.status(400))
    with Router.from_config(gemini_config(gemini_server)) as router, pytest.raises(BackendRejected):
        router.generate("hi")
    assert len(gemini_server.requests) == 1


def test_request_timeout_ends_the_request(gemini_server):
    from genroute import BackendError, DeadlineExceeded

    gemini_server.fault(Fault.delay(3), times=5)
    config = gemini_config(gemini_server)
    with Router.from_config(config) as router, pytest.raises(DeadlineExceeded) as err:
        router.generate("slow", timeout_s=0.3)
    assert not isinstance(err.value, BackendError)  # the caller's deadline, not a backend failure
    assert str(err.value) == "request deadline of 0.3s exceeded"


class _TwoRungs(Policy):
    kind = "two_rungs"
    Config = PolicyConfig

    def decide(self, request, context):
        return Decision(policy="two_rungs", reason="test", rungs=(
            Rung(backend="first", validators=("regex:^OK",), fall_through_on_rejected=True),
            Rung(backend="second"),
        ))


def _two_backends(server):
    config = gemini_config(server)
    chat = config["backends"].pop("chat")
    config["backends"] = {"first": chat, "second": {**chat, "model": "gemini-2.5-pro"}}
    config.pop("policy")
    return config


def test_validator_rejection_falls_through_and_both_rungs_are_recorded(gemini_server, otel):
    gemini_server.reply_text("not ok", usage=(100, 10))
    gemini_server.reply_text("OK from pro", usage=(100, 10))
    config = _two_backends(gemini_server)
    router = Router.from_config(config, policy=_TwoRungs(PolicyConfig(kind="two_rungs")), **otel.providers)
    with router:
        result = router.generate("hi")
    assert result.text == "OK from pro" and result.backend == "second"
    tried = result.decision.rungs_tried
    assert [(a.backend, a.outcome) for a in tried] == [("first", "rejected_by_validator"), ("second", "ok")]
    flash = 100 * 0.30 / 1e6 + 10 * 2.50 / 1e6
    pro = 100 * 1.25 / 1e6 + 10 * 10.0 / 1e6
    assert tried[0].cost_usd == pytest.approx(flash)
    assert result.cost_usd == pytest.approx(flash + pro)
    root = otel.spans("genroute.generate")[0]
    assert root.attributes["genroute.rungs_tried"] == 2
    assert list(root.attributes["genroute.rungs"]) == ["first", "second"]  # the ladder decided
    assert [e.attributes["genroute.backend"] for e in root.events] == ["first", "second"]


def test_every_rung_failing_raises_all_rungs_failed(gemini_server):
    gemini_server.fault(Fault.status(400), times=2)
    config = _two_backends(gemini_server)
    router = Router.from_config(config, policy=_TwoRungs(PolicyConfig(kind="two_rungs")))
    with router, pytest.raises(AllRungsFailed) as info:
        router.generate("hi")
    assert [a.backend for a in info.value.attempts] == ["first", "second"]


def test_explicit_backend_override(gemini_server):
    config = _two_backends(gemini_server)
    config["policy"] = {"kind": "static", "backend": "first"}
    with Router.from_config(config) as router:
        result = router.generate("hi", backend="second")
        assert result.backend == "second" and result.decision.policy == "override"
        with pytest.raises(UsageError) as info:
            router.generate("hi", backend="nope")
    assert info.value.field == "backend"


def test_api_key_never_reaches_spans_or_errors(gemini_server, otel):
    gemini_server.fault(Fault.status(400))
    router = Router.from_config(gemini_config(gemini_server), **otel.providers)
    with router, pytest.raises(BackendRejected) as info:
        router.generate("hi")
    assert TEST_KEY not in str(info.value) and TEST_KEY not in repr(router.resources.engines["gemini"])
    for span in otel.spans():
        assert TEST_KEY not in str(span.to_json())


class _PromotedWhileDeciding(Policy):
    """A blocking policy (it would embed the request) during whose decision the router's policy is swapped: the
    moment a promotion lands, right after this policy estimated what deciding costs."""

    kind = "promoted_while_deciding"
    Config = PolicyConfig
    blocking = True
    swap = None

    def deciding_cost(self, request):
        self.swap()
        return 0.0

    def decide(self, request, context):
        return Decision.single(self.kind, "first", "the policy the request began deciding with")


def test_a_policy_promoted_while_a_request_decides_applies_to_the_next_one(gemini_server):
    # The policy, its cost estimate and its admission are read once per request: a swap meanwhile cannot give one
    # request the estimate of one policy and the decision of another.
    config = {**_two_backends(gemini_server), "rate_limits": [{"engine": "gemini", "rpm": 1000}]}  # an admission
    policy = _PromotedWhileDeciding(PolicyConfig(kind="promoted_while_deciding"))
    successor = _TwoRungs(PolicyConfig(kind="two_rungs"))
    with Router.from_config(config, policy=policy) as router:
        policy.swap = lambda: router._use_policy(successor)
        gemini_server.reply_text("OK", times=2)
        first = router.generate("hi")
        assert (first.decision.policy, first.backend) == ("promoted_while_deciding", "first")
        assert router.generate("hi").decision.policy == "two_rungs"


@pytest.mark.parametrize("timeout_s", [True, False, "5", b"5"])
def test_a_timeout_that_is_a_flag_or_a_text_is_refused_by_name_before_sending(gemini_server, timeout_s):
    # Found by tests/test_fuzz_inputs.py: timeout_s=True ran the request with a 1 s deadline ("5": 5 s).
    with Router.from_config(gemini_config(gemini_server)) as router:
        for call in (lambda: router.generate("hi", timeout_s=timeout_s),
                     lambda: list(router.stream("hi", timeout_s=timeout_s))):
            with pytest.raises(UsageError) as caught:
                call()
            assert caught.value.field == "timeout_s" and str(caught.value).startswith("timeout_s")
    assert not gemini_server.requests


@pytest.mark.parametrize("timeout_s", [1.7976931348623157e308, 1e300, 1e20])
def test_a_timeout_too_far_to_come_is_no_hurry_not_a_crash(gemini_server, timeout_s):
    # Found by tests/test_fuzz_inputs.py: timeout_s=1.8e308 (finite, so valid) raised OverflowError from the
    # deadline timers (its slot key, when / resolution, was infinite); such a deadline is now none.
    with Router.from_config(gemini_config(gemini_server)) as router:
        assert router.generate("hi", timeout_s=timeout_s).text == "echo: hi"
        assert list(router.stream("hi", timeout_s=timeout_s))[-1].result.text == "echo: hi"
