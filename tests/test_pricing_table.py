"""The built-in price table's figures, and what genroute says about the prices it does not know."""

from __future__ import annotations

import pytest

from genroute.errors import ConfigError
from genroute.router.router import Router
from genroute.testing import GeminiTestServer

from .conftest import Otel, gemini_config


def test_gemini_3_1_pro_preview_is_priced_at_its_published_rates_on_both_sides_of_200k(
        gemini_server: GeminiTestServer, otel: Otel) -> None:
    # $2.00 / $12.00 per 1M tokens up to 200k prompt tokens, $4.00 / $18.00 above (the pricing page).
    gemini_server.reply_text("short", usage=(1_000, 100))
    gemini_server.reply_text("long", usage=(250_000, 100))
    with Router.from_config(gemini_config(gemini_server, model="gemini-3.1-pro-preview"), **otel.providers) as router:
        short, long = router.generate("a"), router.generate("b")
    assert short.cost_usd == pytest.approx((1_000 * 2.00 + 100 * 12.00) / 1e6)
    assert long.cost_usd == pytest.approx((250_000 * 4.00 + 100 * 18.00) / 1e6)
    calls = [s for s in otel.exporter.get_finished_spans() if s.name.startswith("generate_content")]
    assert sorted(s.attributes["gen_ai.usage.cost.amount"] for s in calls) == pytest.approx(
        sorted([short.cost_usd, long.cost_usd]))


def test_gemini_3_1_pro_preview_bills_cached_tokens_at_its_cached_rate_and_above_200k_never_below_input(
        gemini_server: GeminiTestServer) -> None:
    gemini_server.reply_json({"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]},
                                              "finishReason": "STOP"}],
                              "usageMetadata": {"promptTokenCount": 10_000, "cachedContentTokenCount": 8_000,
                                                "candidatesTokenCount": 10}})
    with Router.from_config(gemini_config(gemini_server, model="gemini-3.1-pro-preview")) as router:
        result = router.generate("a")
    assert result.cost_usd == pytest.approx((2_000 * 2.00 + 8_000 * 0.20 + 10 * 12.00) / 1e6)
