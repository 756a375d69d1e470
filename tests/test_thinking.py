"""A Gemini 2.5 model thinks by default: its thought tokens (``thoughtsTokenCount``, apart from
``candidatesTokenCount``) bill at the output rate and count within ``maxOutputTokens``. Each place genroute counts
tokens or cost counts them, and an answer whose thinking used up the limit (``MAX_TOKENS``, no text) comes back as
any empty answer does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genroute import Router
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
