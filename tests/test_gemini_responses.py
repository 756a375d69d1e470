"""What genroute makes of the answers a real Gemini API gives beyond plain text: blocked prompts, finish reasons.

Bodies go over the wire from the loopback server through the real google-genai client.
"""

from __future__ import annotations

import pytest

from genroute import BackendUnavailable, Router, StreamInterrupted
from genroute.runtime.billing import estimate_tokens
from genroute.testing import Fault, Reply

from .conftest import gemini_config

#: A prompt Gemini refused to answer: no candidate, only promptFeedback.blockReason (and the prompt's usage).
BLOCKED = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
           "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10}, "modelVersion": "gemini-2.5-flash"}


def test_a_blocked_prompt_says_why_in_its_finish_reason_and_span(gemini_server, otel):
    gemini_server.reply_json(BLOCKED)

    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        result = router.generate("something refused")

    assert result.text == "" and result.finish_reason == "prohibited_content"
    assert result.cost_usd == pytest.approx(10 * 0.30 / 1e6)  # the prompt is billed all the same
    (call,) = otel.spans("generate_content")
    assert tuple(call.attributes["gen_ai.response.finish_reasons"]) == ("prohibited_content",)


def test_a_blocked_streamed_prompt_says_why_in_its_finish_reason(gemini_server):
    gemini_server.reply(Reply(raw=[BLOCKED]))

    with Router.from_config(gemini_config(gemini_server)) as router:
        *_, last = router.stream("something refused")

    assert last.result is not None and last.result.finish_reason == "prohibited_content"


@pytest.mark.parametrize("code", [400, 503])
def test_a_stream_failing_after_output_keeps_the_providers_status(gemini_server, code):
    gemini_server.reply_text("one two three four five six", chunks=3)
    gemini_server.fault(Fault.status(code, after_chunks=1))

    with Router.from_config(gemini_config(gemini_server)) as router, pytest.raises(StreamInterrupted) as caught:
        for _ in router.stream("tell me"):
            pass

    assert caught.value.status == code and str(code) in str(caught.value)


def test_a_streams_finish_reason_is_on_its_span_when_the_last_chunk_reports_no_usage(gemini_server, otel):
    counted = {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12}
    first = {"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "Hello "}]}}],
             "usageMetadata": counted, "modelVersion": "gemini-2.5-flash"}
    last = {"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "world"}]},
                            "finishReason": "MAX_TOKENS"}], "modelVersion": "gemini-2.5-flash"}
    gemini_server.reply(Reply(raw=[first, last]))

    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        *_, chunk = router.stream("hello")

    assert chunk.result is not None and chunk.result.finish_reason == "max_tokens"
    (call,) = otel.spans("generate_content")
    assert tuple(call.attributes["gen_ai.response.finish_reasons"]) == ("max_tokens",)


@pytest.mark.parametrize("body", [{"candidates": [{"content": {"parts": "not a list"}}]},
                                  {"usageMetadata": {"promptTokenCount": "many"}}])
def test_an_answer_of_the_wrong_shape_is_a_malformed_body_retried_and_billed(gemini_server, body):
    gemini_server.reply_json(body, path=r".*:generateContent", times=3)

    with Router.from_config(gemini_config(gemini_server)) as router, pytest.raises(BackendUnavailable) as caught:
        router.generate("what is this?")

    assert str(caught.value).startswith("malformed response body: GenerateContentResponse.")
    assert len(gemini_server.requests) == 3  # retried, as a body that is not JSON is
    # Each attempt was answered, so processed: its input is billed, estimated.
    assert caught.value.cost_estimated
    assert caught.value.cost_usd == pytest.approx(3 * estimate_tokens("what is this?") * 0.30 / 1e6)


@pytest.mark.parametrize("body", [None, [], [1], {}, {"candidates": []}, {"usageMetadata": {"promptTokenCount": 3}}])
@pytest.mark.parametrize("kind", ["prompt_template", "function_calling"])
def test_a_200_body_that_is_not_an_answer_is_a_malformed_body_retried_and_billed(gemini_server, body, kind):
    # It was raised by the backend after the engine's retry loop had returned: a provider's hiccup that the next
    # attempt would have answered failed the request (or the rung) at once. Each attempt is billed what it reports,
    # the rest estimated, as for a body of the wrong shape.
    gemini_server.reply_json(body, path=r".*:generateContent", times=3)
    backend = {"kind": kind, "tools": ["add"]} if kind == "function_calling" else {}
    reported = isinstance(body, dict) and "usageMetadata" in body
    attempt = 3 if reported else estimate_tokens("what is this?")

    def add(a: int, b: int) -> int:
        return a + b

    with Router.from_config(gemini_config(gemini_server, **backend), tools={"add": add}) as router:
        with pytest.raises(BackendUnavailable) as caught:
            router.generate("what is this?")
        assert str(caught.value) == "malformed response body: an answer with neither candidates nor promptFeedback"
        assert caught.value.backend == "chat" and len(gemini_server.requests) == 3   # retried, like a 503
        assert caught.value.cost_estimated == (not reported)
        if kind == "prompt_template":
            assert caught.value.cost_usd == pytest.approx(3 * attempt * 0.30 / 1e6)
        gemini_server.reply_json(body, path=r".*:generateContent")
        result = router.generate("and now?")   # one hiccup, then an answer: the retry answers
        assert result.text == "echo: and now?" and len(gemini_server.requests) == 5
        if kind == "prompt_template":   # the lost attempt is on the request's cost
            assert result.cost_usd > router.generate("and now?").cost_usd


@pytest.mark.parametrize("events", [[None], [{}], [[]], [{}, {"usageMetadata": {"promptTokenCount": 3}}],
                                    [{"usageMetadata": {"promptTokenCount": 3}}, {}]])
def test_a_stream_that_sends_no_answer_is_retried_and_billed_as_a_whole_one_is(gemini_server, events):
    # A whole 200 answer that is not one is retried (7bcc34e); a stream of the same (its events null, {}, [] or
    # usage alone) ended in StreamInterrupted ('stream ended without a finish reason') at its first attempt, though
    # no text had reached the reader and the next attempt would likely have answered.
    gemini_server.reply_json(events, times=3)
    # Billed at the usage an event reports, wherever it comes (it was estimated when an empty event followed it).
    reported = any(isinstance(event, dict) and "usageMetadata" in event for event in events)
    attempt = 3 if reported else estimate_tokens("what is this?")

    with Router.from_config(gemini_config(gemini_server)) as router:
        with pytest.raises(BackendUnavailable) as caught:
            list(router.stream("what is this?"))
        assert str(caught.value) == "malformed response body: an answer with neither candidates nor promptFeedback"
        assert len(gemini_server.requests) == 3 and caught.value.cost_estimated == (not reported)
        assert caught.value.cost_usd == pytest.approx(3 * attempt * 0.30 / 1e6)
        gemini_server.reply_json(events)
        *_, last = router.stream("and now?")   # one hiccup, then an answer: the retry answers
        assert last.result is not None and last.result.text == "echo: and now?" and len(gemini_server.requests) == 5


def test_a_stream_chunk_with_only_usage_is_still_part_of_the_answer(gemini_server):
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 2, "totalTokenCount": 12}
    text = {"candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "Hello"}]},
                            "finishReason": "STOP"}], "modelVersion": "gemini-2.5-flash"}
    gemini_server.reply(Reply(raw=[text, {"usageMetadata": usage, "modelVersion": "gemini-2.5-flash"}]))

    with Router.from_config(gemini_config(gemini_server)) as router:
        *_, last = router.stream("hello")

    assert last.result is not None and last.result.text == "Hello" and last.result.usage.output_tokens == 2


def test_a_stream_that_never_answers_fails_with_an_error_that_is_not_its_own_cause(gemini_server):
    # Found by tests/test_fuzz_responses.py: the engine re-raised its own "no answer" error `from` itself, so its
    # __cause__ was itself and anything walking the chain (a log formatter, a breaker's cause test) looped forever.
    gemini_server.reply_json([{}], times=3)

    with Router.from_config(gemini_config(gemini_server)) as router, pytest.raises(BackendUnavailable) as caught:
        list(router.stream("what is this?"))

    seen, error = [], caught.value
    while error is not None:
        assert all(error is not e for e in seen), f"a cycle in the cause chain: {seen!r}"
        seen.append(error)
        error = error.__cause__


def test_each_stream_chunk_has_its_counts_checked_once(gemini_server):
    # The leading chunks (read before the first that answers, to bill a failed attempt) were checked for negative
    # counts when read and again when yielded: ~40 opcodes a stream for nothing.
    import asyncio
    import sys

    from genroute.engines.gemini_request import counted

    usage = {"promptTokenCount": 3, "totalTokenCount": 3}
    gemini_server.reply(Reply(raw=[
        {"usageMetadata": usage},  # usage only: a leading chunk that does not answer yet
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}], "usageMetadata": usage},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
         "usageMetadata": {**usage, "candidatesTokenCount": -2, "totalTokenCount": 1}},
    ]))
    checked: list[int] = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is counted.__code__:
            checked.append(id(frame.f_locals["response"]))

    async def read(router):
        return [chunk async for chunk in router.astream("hello")]

    with Router.from_config(gemini_config(gemini_server)) as router:
        sys.setprofile(profile)
        try:
            *_, last = asyncio.run(read(router))
        finally:
            sys.setprofile(None)

    assert len(checked) == 3 and len(set(checked)) == 3, checked  # every chunk checked, each once
    assert last.result.text == "Hello" and last.result.usage.output_tokens == estimate_tokens("Hello")
