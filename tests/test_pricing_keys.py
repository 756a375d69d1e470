"""A ``pricing`` key that prices no model the router uses is named at build; a tuned endpoint priced by its
``endpoints/<id>`` name bills at that price."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from google.oauth2.credentials import Credentials

from genroute.errors import ConfigError
from genroute.router.router import Router
from genroute.runtime.pricing import DEFAULT_PRICES, Pricing
from genroute.testing import GeminiTestServer

from .conftest import Otel, gemini_config

PRICE = {"input": 4.0, "output": 8.0}
ENDPOINT = "projects/test-proj/locations/us-central1/endpoints/1234567890"


def built_warnings(server: GeminiTestServer, caplog: pytest.LogCaptureFixture, pricing: dict[str, Any]) -> str:
    config = {**gemini_config(server), "pricing": pricing}
    with caplog.at_level(logging.WARNING, logger="genroute"):
        Router.from_config(config).close()
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("genroute"))


def test_a_misspelt_pricing_key_is_named_with_the_nearest_model(gemini_server: GeminiTestServer,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # The key was ignored without a word: gemini-2.5-flash stayed at the built-in rate and budgets under-counted.
    logged = built_warnings(gemini_server, caplog, {"gemini-2.5-flsh": PRICE})
    assert "pricing.gemini-2.5-flsh prices no model this router uses (did you mean 'gemini-2.5-flash'?)" in logged


def test_a_misspelt_model_name_is_refused_with_the_nearest_priced_one(gemini_server: GeminiTestServer) -> None:
    # A newcomer's typo in a backend's model read "no price known ...; add it under `pricing`", sending them to
    # price a model that does not exist rather than to fix the name.
    config = gemini_config(gemini_server)
    config["backends"]["chat"]["model"] = "gemini-2.5-flsh"
    with pytest.raises(ConfigError, match=r"no price known for model 'gemini-2.5-flsh'; did you mean "
                                          r"'gemini-2.5-flash'\? Else add it under `pricing`") as caught:
        Router.from_config(config)
    assert caught.value.field == "backends.chat.model"
    config["backends"]["chat"]["model"] = "my-own-model"  # nothing near: only the way to price it
    with pytest.raises(ConfigError, match=r"no price known for model 'my-own-model'; add it under `pricing`"):
        Router.from_config(config)


@pytest.mark.parametrize("key", ["gemini-2.5-flash", "gemini-2.5-pro", "gemini-2.5-flash-001"])
def test_a_key_for_a_used_or_a_built_in_model_is_not_named(gemini_server: GeminiTestServer,
                                                           caplog: pytest.LogCaptureFixture, key: str) -> None:
    # A shared config prices models other routers use: a built-in name is no typo.
    assert "pricing." not in built_warnings(gemini_server, caplog, {key: PRICE})


def test_unused_lists_only_keys_that_price_nothing_known() -> None:
    pricing = Pricing({"gemini-2.5-flash": PRICE, "my-model": PRICE, "endpoints/42": PRICE, "zzzz": PRICE})
    models = ["gemini-2.5-flash", "projects/p/locations/l/endpoints/42", "my-modell"]
    assert pricing.unused(models) == {"my-model": "my-modell", "zzzz": None}
    assert "gemini-2.5-pro" in DEFAULT_PRICES and pricing.unused([]).keys() == {"my-model", "endpoints/42", "zzzz"}


async def test_a_tuned_endpoint_priced_by_its_endpoint_name(gemini_server: GeminiTestServer, otel: Otel,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    # `endpoints/<id>` matched neither the full resource name nor the id alone: the endpoint billed at its base
    # model's rate, and the key was ignored without a word.
    config = {
        "engines": {"vertex": {"kind": "gemini", "base_url": gemini_server.base_url,
                               "vertex": {"project": "test-proj", "location": "us-central1"}}},
        "backends": {"tuned": {"kind": "tuned", "engine": "vertex", "model": ENDPOINT,
                               "base_model": "gemini-2.5-flash"}},
        "pricing": {"endpoints/1234567890": PRICE},
    }
    gemini_server.reply_text("positive", usage=(1000, 10))
    options = {"vertex": {"credentials": Credentials(token="test")}}
    with caplog.at_level(logging.WARNING, logger="genroute"):
        async with Router.from_config(config, engine_options=options, **otel.providers) as router:
            result = await router.agenerate("great")
    assert result.cost_usd == pytest.approx((1000 * 4.0 + 10 * 8.0) / 1e6)
    assert not [r for r in caplog.records if "pricing." in r.getMessage()]
