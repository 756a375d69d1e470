"""The tuned-model backend: Vertex tuned endpoints and tuned models on the loopback server; local LoRA."""

from __future__ import annotations

from typing import Any

import pytest
from google.oauth2.credentials import Credentials

from genroute.runtime.pricing import DEFAULT_PRICES
from genroute.router.router import Router
from genroute.testing import GeminiTestServer
from genroute.testing.replies import field_of
from genroute.types import Usage

from .conftest import TEST_KEY, Otel

ENDPOINT = "projects/test-proj/locations/us-central1/endpoints/1234567890"


def vertex_router(server: GeminiTestServer, otel: Otel, model: str = ENDPOINT, **backend: Any) -> Router:
    config = {
        "engines": {"vertex": {"kind": "gemini", "base_url": server.base_url,
                               "vertex": {"project": "test-proj", "location": "us-central1"}}},
        "backends": {"tuned": {"kind": "tuned", "engine": "vertex", "model": model,
                               "base_model": "gemini-2.5-flash", **backend}},
    }
    credentials = Credentials(token="test")  # explicit: no metadata-server probe, no ADC lookup
    return Router.from_config(config, engine_options={"vertex": {"credentials": credentials}}, **otel.providers)


async def test_vertex_tuned_endpoint_gets_the_bare_input(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_text("positive", usage=(12, 1))
    async with vertex_router(gemini_server, otel) as router:
        result = await router.agenerate("I loved this film!")
    assert result.text == "positive" and result.backend == "tuned"
    (request,) = gemini_server.requests
    assert request.path == f"/v1beta1/{ENDPOINT}:generateContent"
    assert request.headers["authorization"] == "Bearer test"
    assert field_of(request.body, "contents") == [{"role": "user", "parts": [{"text": "I loved this film!"}]}]
    assert field_of(request.body, "systemInstruction") is None
    expected = DEFAULT_PRICES["gemini-2.5-flash"].cost(Usage(input_tokens=12, output_tokens=1))
    assert result.cost_usd == pytest.approx(expected) and expected > 0
    (span,) = otel.spans("generate_content")
    assert span.attributes["gen_ai.provider.name"] == "gcp.vertex_ai"
    assert span.attributes["gen_ai.request.model"] == ENDPOINT
    assert span.attributes["gen_ai.usage.cost.amount"] == pytest.approx(expected)
    assert otel.spans("genroute.generate")[0].attributes["genroute.backend"] == "tuned"


async def test_minimal_system_line_and_streaming(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_text("a short answer", usage=(8, 3), chunks=3)
    async with vertex_router(gemini_server, otel, system="Answer with one label.") as router:
        chunks = [chunk async for chunk in router.astream("text to label")]
    assert "".join(c.text for c in chunks if not c.done) == "a short answer"
    final = chunks[-1].result
    assert final is not None and final.cost_usd == pytest.approx(
        DEFAULT_PRICES["gemini-2.5-flash"].cost(Usage(input_tokens=8, output_tokens=3)))
    (request,) = gemini_server.requests
    assert request.path == f"/v1beta1/{ENDPOINT}:streamGenerateContent"
    assert field_of(request.body, "systemInstruction")["parts"] == [{"text": "Answer with one label."}]


async def test_tuned_model_resource(gemini_server: GeminiTestServer, otel: Otel) -> None:
    model = "projects/test-proj/locations/us-central1/models/987@1"
    async with vertex_router(gemini_server, otel, model=model) as router:
        result = await router.agenerate("hello")
    assert result.text == "echo: hello"
    assert gemini_server.requests[0].path == f"/v1beta1/{model}:generateContent"


async def test_developer_api_tuned_model(gemini_server: GeminiTestServer, otel: Otel, monkeypatch: Any) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    config = {
        "engines": {"gemini": {"kind": "gemini", "base_url": gemini_server.base_url}},
        "backends": {"tuned": {"kind": "tuned", "engine": "gemini", "model": "tunedModels/sentiment-abc",
                               "base_model": "gemini-2.0-flash"}},
    }
    gemini_server.reply_text("negative", usage=(5, 1))
    async with Router.from_config(config, **otel.providers) as router:
        result = await router.agenerate("meh")
    assert gemini_server.requests[0].path.endswith("/tunedModels/sentiment-abc:generateContent")
    assert result.cost_usd == pytest.approx(DEFAULT_PRICES["gemini-2.0-flash"].cost(Usage(input_tokens=5,
                                                                                           output_tokens=1)))


def test_unknown_base_model_price_is_a_config_error(gemini_server: GeminiTestServer, otel: Otel) -> None:
    from genroute.errors import ConfigError

    config = {
        "engines": {"vertex": {"kind": "gemini", "base_url": gemini_server.base_url,
                               "vertex": {"project": "test-proj", "location": "us-central1"}}},
        "backends": {"tuned": {"kind": "tuned", "engine": "vertex", "model": ENDPOINT, "base_model": "mystery-1"}},
    }
    with pytest.raises(ConfigError, match="mystery-1") as info:
        Router.from_config(config, **otel.providers)
    assert info.value.field == "backends.tuned.base_model"


@pytest.mark.parametrize("model", [ENDPOINT, "projects/test-proj/locations/us-central1/models/987@1"])
async def test_pricing_for_the_tuned_model_itself_wins(gemini_server: GeminiTestServer, otel: Otel,
                                                       model: str) -> None:
    # Priced under its full resource name, the tuned model needs no known base model.
    config = {
        "engines": {"vertex": {"kind": "gemini", "base_url": gemini_server.base_url,
                               "vertex": {"project": "test-proj", "location": "us-central1"}}},
        "backends": {"tuned": {"kind": "tuned", "engine": "vertex", "model": model, "base_model": "mystery-1"}},
        "pricing": {model: {"input": 4.0, "output": 8.0}},
    }
    gemini_server.reply_text("positive", usage=(1000, 10))
    options = {"vertex": {"credentials": Credentials(token="test")}}
    async with Router.from_config(config, engine_options=options, **otel.providers) as router:
        result = await router.agenerate("great")
    assert result.cost_usd == pytest.approx((1000 * 4.0 + 10 * 8.0) / 1e6)


async def test_developer_api_tuned_model_priced_by_name(gemini_server: GeminiTestServer, otel: Otel) -> None:
    config = {
        "engines": {"gemini": {"kind": "gemini", "base_url": gemini_server.base_url, "api_key": TEST_KEY}},
        "backends": {"tuned": {"kind": "tuned", "engine": "gemini", "model": "tunedModels/sentiment-abc",
                               "base_model": "gemini-2.0-flash"}},
        "pricing": {"tunedModels/sentiment-abc": {"input": 1.0, "output": 1.0}},
    }
    gemini_server.reply_text("negative", usage=(500, 500))
    async with Router.from_config(config, **otel.providers) as router:
        result = await router.agenerate("meh")
    assert result.cost_usd == pytest.approx(1000 / 1e6)
    (span,) = otel.spans("generate_content")
    assert span.attributes["gen_ai.usage.cost.amount"] == pytest.approx(1000 / 1e6)


def test_facts(gemini_server: GeminiTestServer, otel: Otel) -> None:
    with vertex_router(gemini_server, otel) as router:
        backend = router.backends["tuned"]
        assert backend.capabilities == frozenset({"tuned"})
        assert backend.facts() == {"model": ENDPOINT, "base_model": "gemini-2.5-flash"}


def test_local_lora_engine_must_render_the_training_template(tmp_path: Any, otel: Otel) -> None:
    from genroute.errors import ConfigError

    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"not loaded: config is checked before any model is")
    config = {
        "engines": {"lora": {"kind": "local", "lora_path": str(adapter)}},
        "backends": {"tuned": {"kind": "tuned", "engine": "lora", "model": "sentiment", "base_model": "gemma-3-270m"}},
    }
    with pytest.raises(ConfigError) as info:
        Router.from_config(config, **otel.providers)
    assert info.value.field == "engines.lora.prompt_format"


def test_local_prompt_is_the_training_prompt() -> None:
    # What the local engine renders for the tuned backend's request is what local LoRA training used.
    from google.genai import types

    from genroute.backends.base import user_content
    from genroute.engines.local_prompt import Defaults, prepare
    from genroute.tuning.local_lora import format_prompt

    prepared = prepare([user_content("I loved it")], types.GenerateContentConfig(), Defaults(prompt_format="gemma"))
    assert prepared.prompt == format_prompt("I loved it")


def test_a_local_tuned_backend_without_its_adapter_is_a_config_error(otel: Otel) -> None:
    # Without lora_path the engine serves the base model, which would pass for the tuned one (and be scored as it).
    from genroute.errors import ConfigError

    config = {
        "engines": {"local": {"kind": "local", "prompt_format": "gemma"}},
        "backends": {"tuned": {"kind": "tuned", "engine": "local", "model": "gemma-3-270m-sft",
                               "base_model": "gemma-3-270m"}},
    }
    with pytest.raises(ConfigError) as info:
        Router.from_config(config, **otel.providers)
    assert info.value.field == "engines.local.lora_path"


def test_a_local_tuned_backend_may_serve_a_tuned_models_own_gguf(otel: Otel, tmp_path: Any) -> None:
    # A tuned model merged into one GGUF (model_path) is no base model: it was refused as one, for want of lora_path.
    config = {
        "engines": {"local": {"kind": "local", "prompt_format": "gemma", "model_path": str(tmp_path / "sft.gguf")}},
        "backends": {"tuned": {"kind": "tuned", "engine": "local", "model": "gemma-3-270m-sft",
                               "base_model": "gemma-3-270m"}},
    }
    with Router.from_config(config, **otel.providers) as router:
        assert router.backends["tuned"].config.model == "gemma-3-270m-sft"


@pytest.mark.local
async def test_tuned_backend_on_the_local_engine(otel: Otel, tmp_path: Any) -> None:
    import numpy as np

    from genroute.tuning.gguf_adapter import write_lora_adapter

    pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")  # writes the adapter
    rng = np.random.default_rng(0)  # a small adapter on two layers' q_proj (Gemma 3 270M: 640 in, 1024 out)
    pairs = {f"model.layers.{layer}.self_attn.q_proj": (rng.normal(size=(4, 640)) * 0.01, np.zeros((1024, 4)))
             for layer in (0, 17)}
    adapter = write_lora_adapter(tmp_path / "adapter.gguf", pairs, alpha=4.0)
    config = {
        "engines": {"local": {"kind": "local", "prompt_format": "gemma", "max_output_tokens": 8,
                              "lora_path": str(adapter)}},
        "backends": {"tuned": {"kind": "tuned", "engine": "local", "model": "gemma-3-270m-sft",
                               "base_model": "gemma-3-270m"}},
    }
    async with Router.from_config(config, **otel.providers) as router:
        result = await router.agenerate("The capital of France is")
    assert result.backend == "tuned" and result.cost_usd == 0.0
    assert result.usage.input_tokens > 0 and result.usage.output_tokens > 0
    (span,) = otel.spans("generate_content")
    assert span.attributes["gen_ai.provider.name"] == "genroute.local"
    assert (span.attributes["gen_ai.usage.cost.amount"], span.attributes["gen_ai.usage.cost.currency"]) == (0.0, "USD")


@pytest.mark.parametrize(("vertex", "model"), [
    (False, ENDPOINT),                           # sent as /v1/models/projects/...:generateContent
    (True, "tunedModels/sentiment-abc"),         # sent as .../publishers/tunedModels/models/sentiment-abc
    (True, "endpoints/1234567890"),              # sent as .../publishers/endpoints/models/1234567890
])
def test_a_tuned_model_name_of_the_other_gemini_api_is_a_config_error(gemini_server: GeminiTestServer, otel: Otel,
                                                                       vertex: bool, model: str) -> None:
    from genroute.errors import ConfigError

    engine: dict[str, Any] = {"kind": "gemini", "base_url": gemini_server.base_url}
    engine.update({"vertex": {"project": "test-proj", "location": "us-central1"}} if vertex else {"api_key": TEST_KEY})
    config = {"engines": {"g": engine},
              "backends": {"tuned": {"kind": "tuned", "engine": "g", "model": model, "base_model": "gemini-2.5-flash"}}}
    options = {"g": {"credentials": Credentials(token="test")}} if vertex else None
    with pytest.raises(ConfigError, match="resource") as info:
        Router.from_config(config, engine_options=options, **otel.providers)
    assert info.value.field == "backends.tuned.model"
    assert gemini_server.requests == []


@pytest.mark.parametrize(("model", "needle"), [
    ("1234567890", "endpoint ID alone"),                              # sent as publishers/google/models/1234567890
    (ENDPOINT + "/", "not a Vertex AI model resource"),                # .../endpoints/1234567890/:generateContent
    ("projects/test-proj/locations/us-central1/endpoint/1234567890", "not a Vertex AI model"),
    ("projects/test-proj/locations/us-central1/tuningJobs/42", "tuning job"),
    (f" {ENDPOINT}", "not a model name"),
    (f"https://us-central1-aiplatform.googleapis.com/v1/{ENDPOINT}", "not a model name"),
])
def test_a_vertex_tuned_model_name_every_request_would_fail_on_is_a_config_error(
        gemini_server: GeminiTestServer, otel: Otel, model: str, needle: str) -> None:
    from genroute.errors import ConfigError

    with pytest.raises(ConfigError, match=needle) as info:
        vertex_router(gemini_server, otel, model=model)
    assert info.value.field == "backends.tuned.model"
    assert gemini_server.requests == []


@pytest.mark.parametrize(("location", "base_url"), [
    ("us-central1", None),
    (None, None),                                                # GOOGLE_CLOUD_LOCATION below
    ("global", "https://us-central1-aiplatform.googleapis.com"),  # the host is what serves it
])
def test_an_endpoint_of_another_location_than_the_regional_host_is_a_config_error(
        otel: Otel, monkeypatch: Any, location: str | None, base_url: str | None) -> None:
    # A regional host refuses another location's resource: "The provided location ID doesn't match the endpoint".
    from genroute.errors import ConfigError

    monkeypatch.setenv("GOOGLE_CLOUD_LOCATION", "us-central1")
    monkeypatch.delenv("GOOGLE_VERTEX_BASE_URL", raising=False)
    engine: dict[str, Any] = {"kind": "gemini", "vertex": {"project": "test-proj", "location": location}}
    if base_url is not None:
        engine["base_url"] = base_url
    config = {"engines": {"vertex": engine},
              "backends": {"tuned": {"kind": "tuned", "engine": "vertex", "base_model": "gemini-2.5-flash",
                                     "model": "projects/test-proj/locations/europe-west4/endpoints/1234567890"}}}
    with pytest.raises(ConfigError, match="location 'europe-west4'") as info:
        Router.from_config(config, engine_options={"vertex": {"credentials": Credentials(token="t")}},
                           **otel.providers)
    assert info.value.field == "backends.tuned.model" and "'us-central1'" in str(info.value)


@pytest.mark.parametrize(("model", "location"), [
    ("projects/123456789/locations/us-central1/endpoints/1234567890", "us-central1"),  # a project number
    # Through a gateway (this base_url), or the global host, any location's resource may be served.
    ("projects/test-proj/locations/europe-west4/endpoints/1234567890", "us-central1"),
    ("projects/test-proj/locations/europe-west4/endpoints/1234567890", "global"),
    ("projects/test-proj/locations/us-central1/publishers/google/models/gemini-2.5-flash", "us-central1"),
])
async def test_vertex_tuned_model_names_that_are_served(gemini_server: GeminiTestServer, otel: Otel, model: str,
                                                        location: str) -> None:
    config = {"engines": {"vertex": {"kind": "gemini", "base_url": gemini_server.base_url,
                                     "vertex": {"project": "test-proj", "location": location}}},
              "backends": {"tuned": {"kind": "tuned", "engine": "vertex", "model": model,
                                     "base_model": "gemini-2.5-flash"}}}
    async with Router.from_config(config, engine_options={"vertex": {"credentials": Credentials(token="t")}},
                                  **otel.providers) as router:
        result = await router.agenerate("great")
    assert result.text == "echo: great"
    assert gemini_server.requests[0].path == f"/v1beta1/{model}:generateContent"


async def test_an_endpoint_that_is_gone_says_so_where_the_decision_ends(gemini_server: GeminiTestServer,
                                                                        otel: Otel) -> None:
    from genroute.errors import AllRungsFailed, error_line
    from genroute.testing import Fault

    config = {
        "engines": {"vertex": {"kind": "gemini", "base_url": gemini_server.base_url,
                               "vertex": {"project": "test-proj", "location": "us-central1"}}},
        "backends": {"tuned": {"kind": "tuned", "engine": "vertex", "model": ENDPOINT, "base_model": "gemini-2.5-flash"},
                     "base": {"kind": "prompt_template", "engine": "vertex", "model": "gemini-2.5-flash"}},
        "policy": {"kind": "cascade", "rungs": [{"backend": "tuned"}, {"backend": "base"}]},
    }
    gemini_server.fault(Fault.status(404, message=f"Endpoint {ENDPOINT} not found."))
    options = {"vertex": {"credentials": Credentials(token="t")}}
    async with Router.from_config(config, engine_options=options, **otel.providers) as router:
        with pytest.raises(AllRungsFailed) as info:
            await router.agenerate("great")
    # A 404 is final (BackendRejected: the base rung is not tried), and the one line a CLI user gets says why.
    line = error_line(info.value, "genroute generate")
    assert f"tuned: BackendRejected: 404 NOT_FOUND: Endpoint {ENDPOINT} not found." in line
    assert "1 rung(s) not tried" in line and len(gemini_server.requests) == 1


async def test_a_vertex_tuned_endpoint_gets_a_requests_own_generation_settings(gemini_server: GeminiTestServer,
                                                                               otel: Otel) -> None:
    async with vertex_router(gemini_server, otel, generation={"temperature": 0.0, "max_output_tokens": 4}) as router:
        await router.agenerate("I loved this film!", generation={"max_output_tokens": 1, "seed": 7})
    (request,) = gemini_server.requests
    assert request.path == f"/v1beta1/{ENDPOINT}:generateContent"
    config = field_of(request.body, "generationConfig")
    assert (field_of(config, "temperature"), field_of(config, "maxOutputTokens"), field_of(config, "seed")) == (0.0, 1, 7)
    (span,) = otel.spans("generate_content")  # the span says what was sent
    assert span.attributes["gen_ai.request.max_tokens"] == 1 and span.attributes["gen_ai.request.seed"] == 7
