"""A Gemini 2.5 model thinks by default: its thought tokens (``thoughtsTokenCount``, apart from
``candidatesTokenCount``) bill at the output rate and count within ``maxOutputTokens``. Each place genroute counts
tokens or cost counts them, and an answer whose thinking used up the limit (``MAX_TOKENS``, no text) comes back as
any empty answer does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genroute import BudgetExceeded, Router
from genroute.bench.harness import bench

from .conftest import budget_usage, gemini_config
from .cost_audit import FLASH, answer, metric_cost, tokens, usage_cost


def test_a_thinking_answer_counts_its_thoughts_in_every_figure(gemini_server, otel, tmp_path):
    # Would catch: thoughts left out of a figure that counts output tokens or cost. Outcome records (and so an
    # outcome matrix priced by --prices) and the bench report's "out tok" counted the answer's 40 tokens alone
    # while their cost held 640 at the output rate.
    usage = tokens(1000, 40, thoughtsTokenCount=600)
    billed = usage_cost(FLASH, usage)
    assert billed == pytest.approx(1000 * 0.30e-6 + 640 * 2.50e-6)
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "inner": config["policy"], "per": "global", "budget_usd": 1.0,
                        "costs": {"chat": 0.01}}
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db")}
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"input": "How many r in strawberry?", "output": "Three."}) + "\n", "utf-8")

    with Router.from_config(config, **otel.providers) as router:
        gemini_server.reply_json(answer("Three.", usage))
        result = router.generate("How many r in strawberry?", timeout_s=20)
        spent = budget_usage(router)
        record = router.feedback(result, score=1.0)
        (call,), (root,) = otel.spans("generate_content"), otel.spans("genroute.generate")
        cost_metric, points = metric_cost(otel), otel.metrics()["gen_ai.client.token.usage"].data.data_points
        gemini_server.reply_json(answer("Three.", usage))
        report = bench(router, data, backends=["chat"], out_dir=tmp_path / "run", progress=False)

    assert result.text == "Three." and (result.usage.output_tokens, result.usage.thinking_tokens) == (40, 600)
    assert result.usage.billed_output_tokens == 640
    assert result.cost_usd == pytest.approx(billed)
    assert spent == {"spent": pytest.approx(billed, abs=1e-9), "reserved": 0.0}  # the budget settled it
    assert call.attributes["gen_ai.usage.output_tokens"] == 640
    assert call.attributes["gen_ai.usage.cost.amount"] == pytest.approx(billed)
    assert root.attributes["gen_ai.usage.cost.amount"] == pytest.approx(billed)
    assert cost_metric == pytest.approx(billed)
    assert {p.attributes["gen_ai.token.type"]: p.sum for p in points} == {"input": 1000, "output": 640}
    side = record.outcomes["chat"]
    assert (side.input_tokens, side.output_tokens, side.cost_usd) == (1000, 640, pytest.approx(billed))

    (row,) = report.outcomes
    assert (row.output_tokens, row.thinking_tokens, row.cost_usd) == (40, 600, pytest.approx(billed))
    (summary,) = report.summaries
    assert summary.output_tokens == 640 and summary.cost_per_request_usd == pytest.approx(billed)
    matrix = [json.loads(line) for line in (tmp_path / "run" / "outcomes.jsonl").read_text("utf-8").splitlines()]
    assert matrix[0]["outcomes"]["chat"]["output_tokens"] == 640


def _thought_only(thoughts: int) -> dict[str, Any]:
    """What Gemini 2.5 answers when thinking used up ``maxOutputTokens``: MAX_TOKENS, a candidate with no parts."""
    body = answer("", tokens(12, 0, thoughtsTokenCount=thoughts), finish="MAX_TOKENS")
    body["candidates"][0]["content"] = {"role": "model"}
    return body


def test_an_answer_whose_thinking_used_up_max_output_tokens_is_an_empty_answer_ending_in_max_tokens(
        gemini_server, tmp_path):
    # Pinned as docs/requests.md says it: no text, finish_reason max_tokens, the thoughts billed; a `nonempty`
    # validator moves a cascade on. The bench names it (its empty-answer note pointed at a base model's template).
    config = gemini_config(gemini_server, generation={"max_output_tokens": 64})
    config["backends"]["lite"] = {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite"}
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"input": "Prove it.", "output": "Done."}) + "\n", "utf-8")
    with Router.from_config(config) as router:
        gemini_server.reply_json(_thought_only(64))
        result = router.generate("Prove it.", timeout_s=20)
        gemini_server.reply_json([_thought_only(64)])
        *_, last = router.stream("Prove it.", timeout_s=20)
        gemini_server.reply_json(_thought_only(64))
        report = bench(router, data, backends=["chat"], out_dir=tmp_path / "run", progress=False)
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["nonempty"]},
                                                     {"backend": "lite"}]}
    with Router.from_config(config) as router:
        gemini_server.reply_json(_thought_only(64))
        gemini_server.reply_text("Done.")
        climbed = router.generate("Prove it.", timeout_s=20)
    for answered in (result, last.result):
        assert (answered.text, answered.finish_reason) == ("", "max_tokens")
        assert (answered.usage.output_tokens, answered.usage.thinking_tokens) == (0, 64)
        assert answered.cost_usd == pytest.approx(12 * 0.30e-6 + 64 * 2.50e-6)
    assert (climbed.text, climbed.backend) == ("Done.", "lite")
    assert [(r.backend, r.outcome, r.error) for r in climbed.decision.rungs_tried][0] == (
        "chat", "rejected_by_validator", "chat: empty answer")
    assert "- chat: 1 of 1 answers were empty (the model stopped before writing anything; 1 of them thought and " \
           "wrote nothing)" in report.empty_note
    assert "raise `max_output_tokens`, or cap thinking with `generation.thinking_config.thinking_budget`" \
           in report.empty_note


def test_a_request_raising_max_output_tokens_is_held_for_thoughts_and_answer_within_it(gemini_server):
    # Gemini counts thought tokens within maxOutputTokens, so the hold for a request that raises the backend's limit
    # (the tokens between the two at the output rate) covers an answer that spends all of it, mostly thinking: the
    # budget settles at most what it held, and refuses the next request naming that figure.
    # Would catch: a hold that adds a thinking_budget on top (holding more than can be spent) or that prices the
    # raise at less than the output rate (thoughts overrunning it).
    bound = 40 * 0.30e-6 + 100 * 2.50e-6  # the backend's estimate: 40 prompt tokens, its 100 output tokens
    held = bound + (1000 - 100) * 2.50e-6
    config = gemini_config(gemini_server, generation={"max_output_tokens": 100,
                                                      "thinking_config": {"thinking_budget": 2048}})
    config["policy"] = {"kind": "budget", "inner": config["policy"], "per": "global", "budget_usd": held * 1.5,
                        "costs": {"chat": bound}}
    usage = tokens(40, 10, thoughtsTokenCount=990)  # 1,000 output tokens: the request's limit, spent thinking
    with Router.from_config(config) as router:
        gemini_server.reply_json(answer("Yes.", usage, finish="MAX_TOKENS"))
        result = router.generate("Is it prime?", generation={"max_output_tokens": 1000}, timeout_s=20)
        spent = budget_usage(router)
        with pytest.raises(BudgetExceeded) as refused:
            router.generate("And this one?", generation={"max_output_tokens": 1000}, timeout_s=20)
    assert gemini_server.requests[0].body["generationConfig"]["maxOutputTokens"] == 1000
    assert result.cost_usd == pytest.approx(usage_cost(FLASH, usage)) == pytest.approx(held)
    assert spent == {"spent": pytest.approx(held, abs=1e-9), "reserved": 0.0}
    assert str(refused.value).endswith(f"request needs up to ${held:.6g}")
    assert len(gemini_server.requests) == 1


def test_the_loopback_server_reports_a_thinking_answers_thoughts_when_told(gemini_server):
    # genroute.testing took usage=(prompt, output) only: testing a thinking answer meant writing its raw body.
    from genroute import UsageError
    from genroute.testing import Reply
    from genroute.testing.replies import render_generate

    with Router.from_config(gemini_config(gemini_server)) as router:
        gemini_server.reply_text("Three of them.", usage=(10, 4, 300))
        result = router.generate("How many?", timeout_s=20)
        gemini_server.reply_text("Three of them.", usage=(10, 4, 300), chunks=3)
        *_, last = router.stream("How many?", timeout_s=20)
        gemini_server.reply_parts([], usage=(12, 0, 64), finish_reason="MAX_TOKENS")
        spent = router.generate("Prove it.", timeout_s=20)
    reply = Reply(parts=({"text": "Three of them."},), usage=(10, 4, 300), chunks=2)
    whole = {"promptTokenCount": 10, "candidatesTokenCount": 4, "thoughtsTokenCount": 300, "totalTokenCount": 314}
    assert render_generate(reply, {}, FLASH, "r", stream=False).body["usageMetadata"] == whole
    events = render_generate(reply, {}, FLASH, "r", stream=True).events or []
    assert [e["usageMetadata"]["thoughtsTokenCount"] for e in events] == [300, 300]  # thinking comes first
    assert events[-1]["usageMetadata"] == whole
    for answered in (result, last.result):
        assert answered.text == "Three of them."
        assert (answered.usage.output_tokens, answered.usage.thinking_tokens) == (4, 300)
        assert answered.cost_usd == pytest.approx(10 * 0.30e-6 + 304 * 2.50e-6)
    assert (spent.text, spent.finish_reason, spent.usage.thinking_tokens) == ("", "max_tokens", 64)
    with pytest.raises(UsageError) as refused:
        Reply(usage=(1, 2, 3, 4))
    assert refused.value.field == "usage"
