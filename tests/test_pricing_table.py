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


def test_a_tier_prices_audio_at_its_own_rate_above_its_threshold() -> None:
    from genroute.runtime.pricing import Pricing
    from genroute.types import Usage

    pricing = Pricing({"tiered": {"input": 1.0, "output": 0.0, "audio_input": 3.0, "cached_audio_input": 0.3,
                                  "tiers": [{"above_input_tokens": 1000, "input": 2.0, "output": 0.0,
                                             "audio_input": 6.0, "cached_audio_input": 0.6}]}})
    assert pricing.cost("tiered", Usage(input_tokens=1000, audio_input_tokens=400)) == \
        pytest.approx((600 * 1.0 + 400 * 3.0) / 1e6)
    # Above 1,000 input tokens: the tier's audio rate, not the base one beside the tier's text rate.
    assert pricing.cost("tiered", Usage(input_tokens=2000, audio_input_tokens=400)) == \
        pytest.approx((1600 * 2.0 + 400 * 6.0) / 1e6)
    assert pricing.cost("tiered", Usage(input_tokens=2000, cached_input_tokens=400, audio_input_tokens=400,
                                        cached_audio_input_tokens=400)) == pytest.approx((1600 * 2.0 + 400 * 0.6) / 1e6)


@pytest.mark.parametrize("rate", ["audio_input", "cached_audio_input"])
def test_a_tier_without_the_audio_rate_its_model_prices_apart_is_refused_naming_it(
        gemini_server: GeminiTestServer, rate: str) -> None:
    config = gemini_config(gemini_server)
    config["pricing"] = {"gemini-2.5-flash": {"input": 0.3, "output": 2.5, "audio_input": 1.0, "cached_audio_input": 0.1,
                                              "tiers": [{"above_input_tokens": 200_000, "input": 0.6, "output": 5.0,
                                                         "audio_input": 2.0, "cached_audio_input": 0.2}]}}
    del config["pricing"]["gemini-2.5-flash"]["tiers"][0][rate]
    with pytest.raises(ConfigError, match=f"give this tier its own {rate}") as caught:
        Router.from_config(config)
    assert caught.value.field == "pricing.gemini-2.5-flash"
    assert "tiers.0" in str(caught.value) and gemini_server.requests == []


@pytest.mark.parametrize("model", ["gemini-2.5-flash-preview-tts", "gemini-2.5-pro-preview-tts",
                                   "gemini-2.5-flash-native-audio-preview-09-2025"])
def test_a_model_that_answers_in_audio_is_refused_until_its_audio_rate_is_given_never_priced_as_its_text_model(
        gemini_server: GeminiTestServer, model: str) -> None:
    from genroute.runtime.pricing import Pricing
    from genroute.types import Usage

    assert Pricing().lookup(model) is None  # not gemini-2.5-flash's text rates
    with pytest.raises(ConfigError, match="answers in audio: give its audio output rate as `audio_output`") as caught:
        Router.from_config(gemini_config(gemini_server, model=model))
    assert caught.value.field == "backends.chat.model" and gemini_server.requests == []
    priced = Pricing({model: {"input": 0.5, "output": 10.0}})
    assert priced.cost(model, Usage(input_tokens=100, output_tokens=3200)) == pytest.approx((50 + 32_000) / 1e6)


def test_a_backend_asking_at_run_time_for_a_model_with_no_price_is_refused_before_anything_is_sent(
        gemini_server: GeminiTestServer, otel: Otel) -> None:
    # A backend may choose its model per request, past the build's check of the models configs name: such a call
    # was sent, billed by the provider and counted at $0 everywhere (spans, result, budget).
    from typing import ClassVar

    from genroute.backends.base import BackendConfig, Prepared, SingleCallBackend
    from genroute.backends.prompt_template import PromptTemplateConfig

    class PerRequestModel(SingleCallBackend):
        kind: ClassVar[str] = "per_request_model"
        Config: ClassVar[type[BackendConfig]] = PromptTemplateConfig

        async def prepare(self, request, ctx):  # type: ignore[no-untyped-def]
            return Prepared(model=request.metadata.get("model", self.config.model), contents=request.input, config=None)

    gemini_server.reply_text("x", usage=(1000, 100))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as built:
        router = built.replacing({"chat": PerRequestModel("chat", built.backends["chat"].config, built.resources)})
        with pytest.raises(ConfigError, match="no price known for model 'gemini-9-ultra'") as caught:
            router.generate("hi", metadata={"model": "gemini-9-ultra"})
        assert caught.value.field == "pricing" and gemini_server.requests == []
        assert otel.spans("generate_content") == []
        # Streams too; a model the table prices is sent and charged as ever.
        with pytest.raises(ConfigError, match="gemini-9-ultra"):
            list(router.stream("hi", metadata={"model": "gemini-9-ultra"}))
        assert router.generate("hi").cost_usd == pytest.approx((1000 * 0.30 + 100 * 2.50) / 1e6)
    assert [r.model for r in gemini_server.requests] == ["models/gemini-2.5-flash"]


def test_a_backend_swapped_in_by_replacing_whose_model_has_no_price_is_refused_as_one_built_would_be(
        gemini_server: GeminiTestServer) -> None:
    # Router.replacing checked a swapped-in backend's engine limits but not its price: a model the table does not
    # know was taken, and the copy's calls counted $0 where building a router with it is a ConfigError.
    from genroute.backends.prompt_template import PromptTemplateBackend

    with Router.from_config(gemini_config(gemini_server)) as built:
        config = built.backends["chat"].config.model_copy(update={"model": "gemini-9-ultra"})
        with pytest.raises(ConfigError, match="gemini-9-ultra"):
            built.replacing({"chat": PromptTemplateBackend("chat", config, built.resources)})
        assert built.replacing({"chat": built.backends["chat"]}).backends["chat"] is built.backends["chat"]
    assert gemini_server.requests == []
