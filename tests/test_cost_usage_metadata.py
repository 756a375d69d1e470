"""Cost and usage from what a real Gemini response reports in ``usageMetadata``, field by field.

The loopback server sends each body as the API would (through the real google-genai client), so every count
arrives on the wire as Gemini spells it.
"""

from __future__ import annotations

from typing import Any

import pytest

from genroute import Router
from genroute.testing import Reply

from .conftest import gemini_config

IN_PRICE, OUT_PRICE = 0.30 / 1e6, 2.50 / 1e6  # gemini-2.5-flash list prices per token


def _body(usage: dict[str, int] | None, text: str | None = "ok", finish: str | None = "STOP") -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if text is not None:
        candidate["content"] = {"role": "model", "parts": [{"text": text}]}
    if finish is not None:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash"}
    if usage is not None:
        body["usageMetadata"] = usage
    return body


#: A grounded answer as Gemini reports it: the tool-use prompt (what Google Search read) is counted apart from
#: the prompt, and the total is the sum of the four.
GROUNDED = {"promptTokenCount": 151, "candidatesTokenCount": 1089, "toolUsePromptTokenCount": 18329,
            "thoughtsTokenCount": 1120, "totalTokenCount": 20689}
GROUNDED_COST = (151 + 18329) * IN_PRICE + (1089 + 1120) * OUT_PRICE


def test_tool_use_prompt_tokens_are_billed_as_input(gemini_server, otel):
    gemini_server.reply_json(_body(GROUNDED))

    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        result = router.generate("what happened today?")

    assert result.usage.input_tokens == 151 + 18329 and not result.cost_estimated
    assert result.cost_usd == pytest.approx(GROUNDED_COST)
    (call,) = otel.spans("generate_content")
    assert call.attributes["gen_ai.usage.input_tokens"] == 151 + 18329


def test_a_streams_tool_use_prompt_tokens_are_billed_as_input(gemini_server):
    first = {"promptTokenCount": 151, "candidatesTokenCount": 5, "toolUsePromptTokenCount": 18329,
             "totalTokenCount": 18485}
    gemini_server.reply(Reply(raw=[_body(first, "Today ", finish=None), _body(GROUNDED, "it rained.")]))

    with Router.from_config(gemini_config(gemini_server)) as router:
        *_, last = router.stream("what happened today?")

    assert last.result is not None and last.result.cost_usd == pytest.approx(GROUNDED_COST)
    assert last.result.usage.input_tokens == 151 + 18329


TEXT = "The answer came back in words that nobody counted."  # 51 characters: 13 tokens at four a token


def test_text_without_an_output_count_is_charged_an_estimate(gemini_server):
    # Gemini leaves zero counts out: text with no candidatesTokenCount was not counted, it was not free.
    gemini_server.reply_json(_body({"promptTokenCount": 10, "totalTokenCount": 10}, TEXT))

    with Router.from_config(gemini_config(gemini_server)) as router:
        result = router.generate("hello")

    assert result.usage.input_tokens == 10 and result.usage.output_tokens == 13 and result.cost_estimated
    assert result.cost_usd == pytest.approx(10 * IN_PRICE + 13 * OUT_PRICE)


def test_an_answer_stopped_for_safety_with_no_text_costs_its_prompt_as_reported(gemini_server):
    gemini_server.reply_json(_body({"promptTokenCount": 10, "totalTokenCount": 10}, None, "SAFETY"))

    with Router.from_config(gemini_config(gemini_server)) as router:
        result = router.generate("hello")

    assert result.finish_reason == "safety" and result.usage.output_tokens == 0 and not result.cost_estimated
    assert result.cost_usd == pytest.approx(10 * IN_PRICE)


def test_a_stream_whose_chunks_count_only_the_prompt_is_charged_its_text_estimated(gemini_server):
    half = len(TEXT) // 2
    prompt_only = {"promptTokenCount": 10, "totalTokenCount": 10}
    gemini_server.reply(Reply(raw=[_body(prompt_only, TEXT[:half], finish=None), _body(prompt_only, TEXT[half:])]))

    with Router.from_config(gemini_config(gemini_server)) as router:
        *_, last = router.stream("hello")

    result = last.result
    assert result is not None and result.text == TEXT and result.cost_estimated
    assert result.usage.input_tokens == 10 and result.usage.output_tokens == 13


def test_a_complete_stream_without_a_prompt_count_says_its_cost_is_estimated(gemini_server):
    gemini_server.reply(Reply(raw=[_body({"candidatesTokenCount": 13, "totalTokenCount": 13}, TEXT)]))

    with Router.from_config(gemini_config(gemini_server)) as router:
        *_, last = router.stream("hello")

    result = last.result
    assert result is not None and result.usage.input_tokens > 0 and result.usage.output_tokens == 13
    assert result.cost_estimated


def test_an_output_count_given_as_zero_stands(gemini_server):
    gemini_server.reply_json(_body({"promptTokenCount": 10, "candidatesTokenCount": 0, "totalTokenCount": 10}, TEXT))

    with Router.from_config(gemini_config(gemini_server)) as router:
        result = router.generate("hello")

    assert result.usage.output_tokens == 0 and not result.cost_estimated
    assert result.cost_usd == pytest.approx(10 * IN_PRICE)


@pytest.mark.parametrize("mode", ["generate", "stream"])
@pytest.mark.parametrize(("usage", "estimated"), [
    ({"promptTokenCount": 0, "candidatesTokenCount": 3, "totalTokenCount": 3}, False),  # given as 0: it stands
    ({"candidatesTokenCount": 3, "toolUsePromptTokenCount": 50, "totalTokenCount": 53}, True),  # left out
], ids=["prompt_given_as_0", "prompt_left_out_beside_tool_use"])
def test_generate_and_stream_read_a_prompt_count_alike(gemini_server, mode, usage, estimated):
    """One rule on both paths: only a prompt count the response leaves out is estimated (and said to be), also
    beside a tool-use count; one given as 0 stands."""
    prompt = "x" * 400
    with Router.from_config(gemini_config(gemini_server)) as router:
        if mode == "generate":
            gemini_server.reply_json(_body(usage, TEXT))
            result = router.generate(prompt)
        else:
            gemini_server.reply(Reply(raw=[_body(usage, TEXT)]))
            *_, last = router.stream(prompt)
            result = last.result
    tool_use = usage.get("toolUsePromptTokenCount", 0)
    assert result.cost_estimated is estimated and result.usage.output_tokens == 3
    assert (result.usage.input_tokens > tool_use) if estimated else (result.usage.input_tokens == 0)


@pytest.mark.parametrize("mode", ["generate", "stream"])
def test_a_negative_count_is_read_as_one_left_out_not_as_a_refund(gemini_server, otel, mode):
    # Found by tests/test_fuzz_responses.py: {"promptTokenCount": -1} made usage.input_tokens -1 and lowered the
    # bill (and OTel's counters refused the negative amounts); a count below zero is now estimated as a missing one.
    usage = {"promptTokenCount": -400, "candidatesTokenCount": -5, "thoughtsTokenCount": 2, "totalTokenCount": -1}
    gemini_server.reply(Reply(raw=_body(usage, TEXT) if mode == "generate" else [_body(usage, TEXT)]))

    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        result = router.generate("hello") if mode == "generate" else list(router.stream("hello"))[-1].result

    assert result is not None and result.cost_estimated
    assert result.usage.input_tokens == 2 and result.usage.output_tokens == 0 and result.usage.thinking_tokens == 2
    assert result.cost_usd == pytest.approx(2 * IN_PRICE + 2 * OUT_PRICE)
    (root,) = [s for s in otel.spans() if s.parent is None]
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(result.cost_usd)


@pytest.mark.parametrize("usage", [
    {"promptTokenCount": 12, "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 10**15}]},
    {"promptTokenCount": 12, "cachedContentTokenCount": 10**6, "candidatesTokenCount": 1},
], ids=["audio", "cached"])
def test_a_part_of_the_prompt_counted_larger_than_the_prompt_is_held_to_it(gemini_server, usage):
    # Found by tests/test_fuzz_responses.py: an attempt reporting more audio (or cached) tokens than prompt tokens
    # put them all in the request's usage, so its summed usage priced every later call's input as audio (or cached)
    # and the cost figures read from it disagreed with the cost charged.
    from genroute.runtime.pricing import Pricing

    gemini_server.reply_json({"usageMetadata": usage})  # no answer: retried, and the retry answers
    with Router.from_config(gemini_config(gemini_server)) as router:
        result = router.generate("hello there, how are you today?")

    assert result.usage.audio_input_tokens <= result.usage.input_tokens
    assert result.usage.cached_input_tokens <= result.usage.input_tokens
    assert result.cost_usd == pytest.approx(Pricing().cost("gemini-2.5-flash", result.usage))
