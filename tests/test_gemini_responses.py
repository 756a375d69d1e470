"""What genroute makes of the answers a real Gemini API gives beyond plain text: blocked prompts, finish reasons.

Bodies go over the wire from the loopback server through the real google-genai client.
"""

from __future__ import annotations

import pytest

from genroute import Router, StreamInterrupted
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
