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
