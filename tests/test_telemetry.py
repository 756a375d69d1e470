"""Spans, metrics and cost on the real OTel SDK with in-memory exporters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genroute import Router
from genroute.runtime.pricing import ModelPrice, Pricing, PriceTier
from genroute.runtime.telemetry import DURATION_BUCKETS, TOKEN_BUCKETS
from genroute.testing import Fault
from genroute.types import Usage

from .conftest import gemini_config


def test_root_and_inference_spans_follow_genai_semconv(gemini_server, otel):
    gemini_server.reply_text("hi there", usage=(20, 5))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        result = router.generate("hello", task="greet")
    root = otel.spans("genroute.generate")[0]
    call = otel.spans("generate_content")[0]
    assert call.name == "generate_content gemini-2.5-flash"
    assert call.parent.span_id == root.context.span_id
    assert format(root.context.trace_id, "032x") == result.trace_id
    a = call.attributes
    assert a["gen_ai.operation.name"] == "generate_content"
    assert a["gen_ai.provider.name"] == "gcp.gemini"
    assert a["gen_ai.request.model"] == "gemini-2.5-flash"
    assert a["gen_ai.usage.input_tokens"] == 20 and a["gen_ai.usage.output_tokens"] == 5
    assert a["gen_ai.usage.cache_read.input_tokens"] == 0
    assert list(a["gen_ai.response.finish_reasons"]) == ["stop"]
    assert a["gen_ai.usage.cost.currency"] == "USD"
    r = root.attributes
    assert r["genroute.policy"] == "static" and r["genroute.backend"] == "chat"
    assert r["genroute.reason"] and r["genroute.rungs_tried"] == 1 and r["genroute.task"] == "greet"
    # Nothing the contract does not name and the inference span does not already say (one rung is the backend).
    assert "genroute.rungs" not in r and "gen_ai.response.model" not in r
    assert r["gen_ai.usage.cost.amount"] == pytest.approx(result.cost_usd) and result.cost_usd > 0


def test_metrics_use_recommended_buckets(gemini_server, otel):
    gemini_server.reply_text("x", usage=(30, 7))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        router.generate("hello")
    metrics = otel.metrics()
    duration = metrics["gen_ai.client.operation.duration"].data.data_points[0]
    assert list(duration.explicit_bounds) == DURATION_BUCKETS
    assert duration.attributes["gen_ai.operation.name"] == "generate_content"
    tokens = {p.attributes["gen_ai.token.type"]: p for p in metrics["gen_ai.client.token.usage"].data.data_points}
    assert list(tokens["input"].explicit_bounds) == TOKEN_BUCKETS
    assert tokens["input"].sum == 30 and tokens["output"].sum == 7


def test_errors_are_typed_on_spans(gemini_server, otel):
    gemini_server.fault(Fault.status(400))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        with pytest.raises(Exception):
            router.generate("hello")
    assert otel.spans("generate_content")[0].attributes["error.type"] == "BackendRejected"
    assert otel.spans("genroute.generate")[0].attributes["error.type"] == "BackendRejected"


@pytest.mark.parametrize("capture", [False, True])
def test_content_is_captured_only_when_opted_in(gemini_server, otel, capture):
    gemini_server.reply_text("the secret answer")
    config = gemini_config(gemini_server)
    config["telemetry"] = {"capture_content": capture}
    with Router.from_config(config, **otel.providers) as router:
        router.generate("the secret question")
    dumped = " ".join(s.to_json() for s in otel.spans())
    assert ("the secret question" in dumped) is capture
    assert ("the secret answer" in dumped) is capture


def test_content_capture_env_var(gemini_server, otel, monkeypatch):
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    gemini_server.reply_text("envcaptured")
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        router.generate("q")
    assert "envcaptured" in " ".join(s.to_json() for s in otel.spans())


@pytest.mark.parametrize(("model", "usage", "expected"), [
    ("gemini-2.5-flash", Usage(input_tokens=1_000_000, output_tokens=1_000_000), 0.30 + 2.50),
    ("gemini-2.5-flash", Usage(input_tokens=1_000_000, cached_input_tokens=400_000), 0.6 * 0.30 + 0.4 * 0.03),
    ("gemini-2.5-flash", Usage(output_tokens=100, thinking_tokens=900), 1000 * 2.50 / 1e6),
    ("models/gemini-2.5-pro", Usage(input_tokens=100_000, output_tokens=10_000), 0.1 * 1.25 + 0.01 * 10),
    ("gemini-2.5-pro", Usage(input_tokens=300_000, output_tokens=10_000), 0.3 * 2.50 + 0.01 * 15),
    ("gemini-2.5-flash-lite-preview-09-2025", Usage(input_tokens=1_000_000), 0.10),
    (None, Usage(input_tokens=10**6, output_tokens=10**6), 0.0),
])
def test_cost_arithmetic(model, usage, expected):
    assert Pricing().cost(model, usage) == pytest.approx(expected)


def test_pricing_overrides_and_tiers():
    pricing = Pricing({"my-model": ModelPrice(input=1.0, output=2.0, cached_input=0.5,
                                              tiers=(PriceTier(above_input_tokens=10, input=3.0, output=4.0),))})
    assert pricing.cost("my-model", Usage(input_tokens=10, output_tokens=1)) == pytest.approx((10 + 2) / 1e6)
    assert pricing.cost("my-model", Usage(input_tokens=11, output_tokens=1)) == pytest.approx((33 + 4) / 1e6)


@pytest.mark.parametrize(("model", "priced_as"), [
    ("gemini-2.5-flash-001", "gemini-2.5-flash"),
    ("gemini-2.5-flash-preview-05-20", "gemini-2.5-flash"),
    ("gemini-2.5-flash-latest", "gemini-2.5-flash"),
    ("models/gemini-2.0-flash-exp-1206", "gemini-2.0-flash"),
    ("publishers/google/models/gemini-2.5-pro", "gemini-2.5-pro"),
    ("gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
    # A variant is another model with other prices, not a version of the one its name starts with.
    ("gemini-2.5-flash-image", None),
    ("gemini-2.5-flash-preview-tts", None),
    ("gemini-2.5-flashy", None),
    ("projects/p/locations/l/endpoints/123", None),
])
def test_price_lookup_accepts_versions_not_variants(model, priced_as):
    pricing = Pricing()
    expected = None if priced_as is None else pricing.lookup(priced_as)
    assert pricing.lookup(model) == expected
    assert priced_as is None or expected is not None


@pytest.mark.parametrize("model", [
    "projects/p/locations/l/endpoints/123",
    "tunedModels/sentiment-abc",
    "projects/p/locations/l/publishers/google/models/gemini-2.5-flash",
])
def test_price_overrides_are_found_under_the_full_name(model):
    own = ModelPrice(input=7.0, output=9.0)
    pricing = Pricing({model: own})
    assert pricing.lookup(model) == own and pricing.overrides(model)
    assert pricing.cost(model, Usage(input_tokens=1_000_000)) == pytest.approx(7.0)
    # The full name does not leak to other models sharing its last segment.
    assert pricing.lookup(model.rsplit("/", 1)[-1]) != own


def test_routers_built_in_code_check_prices_too(gemini_server):
    from genroute import ConfigError
    from genroute.backends.prompt_template import PromptTemplateBackend, PromptTemplateConfig
    from genroute.engines.gemini import GeminiEngine
    from genroute.runtime.resources import Resources

    engine = GeminiEngine("g", {"base_url": gemini_server.base_url, "api_key": "test"})
    config = PromptTemplateConfig(engine="g", model="acme-llm-9")
    resources = Resources({"g": engine})
    with pytest.raises(ConfigError) as info:
        Router({"chat": PromptTemplateBackend("chat", config, resources)}, resources=resources)
    assert info.value.field == "backends.chat.model" and "acme-llm-9" in str(info.value)
    assert gemini_server.requests == []

    priced = Resources({"g": engine}, pricing=Pricing({"acme-llm-9": ModelPrice(input=1.0, output=2.0)}))
    gemini_server.reply_text("hi", usage=(1_000_000, 0))
    with Router({"chat": PromptTemplateBackend("chat", config, priced)}, resources=priced) as router:
        assert router.generate("hello").cost_usd == pytest.approx(1.0)


def test_embedding_and_retrieval_spans_join_the_request_trace(gemini_server, otel, tmp_path):
    import asyncio

    from genroute.knowledge.ingest import aingest

    doc = tmp_path / "kettle.md"
    doc.write_text("# Kettle\n\nThe Nimbus Kettle has a warranty of 3 years.\n")
    config = gemini_config(gemini_server)
    config["knowledge"] = {"path": str(tmp_path / "chroma")}
    config["backends"]["chat"] = {"kind": "rag", "engine": "gemini", "model": "gemini-2.5-flash",
                                  "collection": "kettle", "k": 1}
    with Router.from_config(config, **otel.providers) as router:
        asyncio.run(aingest(router.resources.knowledge, [str(doc)], collection="kettle"))
        otel.exporter.clear()
        gemini_server.reply_text("3 years [1]")
        result = router.generate("How long is the warranty?")
    root = otel.spans("genroute.generate")[0]
    embedding = otel.spans("embeddings")[0]
    retrieval = otel.spans("retrieval")[0]
    assert embedding.context.trace_id == root.context.trace_id == retrieval.context.trace_id
    assert embedding.attributes["gen_ai.operation.name"] == "embeddings"
    assert result.citations


def test_streams_record_time_to_first_token(gemini_server, otel):
    gemini_server.fault(Fault.delay(0.3))
    gemini_server.reply_text("one two three", usage=(6, 3), chunks=3)
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        chunks = list(router.stream("count"))
    result = chunks[-1].result
    assert 0.3 <= result.time_to_first_token_s <= result.latency_s
    root = otel.spans("genroute.generate")[0].attributes
    call = otel.spans("generate_content")[0].attributes
    assert root["genroute.time_to_first_token_s"] == pytest.approx(result.time_to_first_token_s)
    assert 0.3 <= call["gen_ai.response.time_to_first_chunk"] <= root["genroute.time_to_first_token_s"]
    assert call["genroute.stream"] is True


@pytest.mark.parametrize("genroute_traces", [True, False])
def test_what_runs_inside_a_request_sees_its_span_or_the_callers_trace(gemini_server, otel, genroute_traces):
    """With a tracer provider, genroute's root span is current inside the request (here in a validator); with
    none, the caller's trace goes on inside it (what genroute starts there is the API's no-op span of it)."""
    import asyncio

    from opentelemetry import trace

    seen: list[Any] = []

    async def record(request: Any, output: Any) -> None:
        seen.append(trace.get_current_span())

    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["record"]}]}
    provider = otel.tracer_provider if genroute_traces else trace.NoOpTracerProvider()
    caller = otel.tracer_provider.get_tracer("app")

    async def main() -> Any:
        async with Router.from_config(config, validators={"record": record}, tracer_provider=provider) as router:
            with caller.start_as_current_span("app.request") as span:
                await router.agenerate("hi")
                assert trace.get_current_span() is span
        return span

    span = asyncio.run(main())
    if genroute_traces:
        assert seen[0].name == "genroute.generate" and seen[0].parent.span_id == span.get_span_context().span_id
    else:
        assert seen[0].get_span_context() == span.get_span_context() and not seen[0].is_recording()


_GLOBAL_METER_LATER = """
import sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from genroute import Router
from genroute.testing import GeminiTestServer

with GeminiTestServer() as server:
    config = {"engines": {"g": {"kind": "gemini", "api_key": "k", "base_url": server.base_url}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}}}
    with Router.from_config(config) as router:  # no meter provider: the API's stand-in for the global one
        assert not router.telemetry.metered  # nothing reads the points yet: none are built
        router.generate("before")
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        assert router.telemetry.metered
        router.generate("after")
    found = {m.name: m for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
             for m in sm.metrics}
    assert found["gen_ai.client.operation.duration"].data.data_points[0].count == 1, found
    tokens = found["gen_ai.client.token.usage"].data.data_points
    assert sorted(p.attributes["gen_ai.token.type"] for p in tokens) == ["input", "output"]
    assert found["genroute.cost"].data.data_points[0].value > 0
print("ok")
"""


def test_metrics_reach_a_global_meter_provider_set_after_the_router_was_built():
    # Points are skipped while nothing reads them; a global provider set later gets every call from then on
    # (a process of its own: the global meter provider can be set once per process).
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _GLOBAL_METER_LATER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


_ROUTERS_BUILT_AND_CLOSED = """
import gc
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from genroute import Router
from genroute.testing import GeminiTestServer


def stand_ins():  # the API's stand-ins for a global meter and its instruments, alive in the process
    gc.collect()
    return sum(type(o).__name__ in {"_ProxyMeter", "_ProxyCounter", "_ProxyHistogram"} for o in gc.get_objects())


with GeminiTestServer() as server:
    config = {"engines": {"g": {"kind": "gemini", "api_key": "k", "base_url": server.base_url}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}}}
    Router.from_config(config).close()
    one = stand_ins()
    for _ in range(20):  # a router per tenant or per job, built and closed, no meter provider set
        Router.from_config(config).close()
    assert stand_ins() == one == 11, (one, stand_ins())  # one meter, 10 instruments: not 11 more a router
    kept = Router.from_config(config)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    with Router.from_config(config) as later:  # built after: on the real provider's meter
        later.generate("one")
        kept.generate("two")
    kept.close()
points = [p for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics for m in sm.metrics
          if m.name == "gen_ai.client.operation.duration" for p in m.data.data_points]
assert sum(p.count for p in points) == 2, points
print("ok")
"""


def test_routers_built_and_closed_leave_nothing_with_the_global_meter_stand_in():
    # Until the application sets a global meter provider, the OTel API keeps every meter and instrument asked of
    # it (to forward them later): a router each made its own, so each router ever built stayed there for good.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _ROUTERS_BUILT_AND_CLOSED], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_no_op_meter_provider_reads_nothing(gemini_server):
    from opentelemetry.metrics import NoOpMeterProvider

    with Router.from_config(gemini_config(gemini_server), meter_provider=NoOpMeterProvider()) as router:
        assert not router.telemetry.metered
        assert router.generate("hello").cost_usd > 0  # cost is still summed: only the metric points are skipped


def test_every_attribute_of_a_streamed_root_span_is_in_the_docs_root_span_list(gemini_server, otel):
    """The root span's attribute list (README, now docs/telemetry.md) left out `genroute.time_to_first_token_s` (and
    the local model's `genroute.cloud_equivalent.cost.amount`), which a stream's root span carries."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "telemetry.md").read_text(encoding="utf-8")
    section = page.split("**The root span**", 1)[1].split("**Child spans**", 1)[0]
    gemini_server.reply_text("one two", usage=(4, 2), chunks=2)
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        list(router.stream("count", task="t"))
    root = otel.spans("genroute.generate")[0].attributes
    assert "genroute.time_to_first_token_s" in root
    assert [key for key in root if f"`{key}`" not in section] == []
    assert "`genroute.cloud_equivalent.cost.amount`" in section



def test_every_shadow_attribute_genroute_sets_is_named_in_the_telemetry_page():
    """telemetry.md's shadow paragraph (and its root span list) left out `genroute.shadow.reused_embedding_s` on the
    shadow's span and `genroute.shadow.refused` on the request's root span: an on-call engineer reading one found no
    word of it."""
    import re

    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "telemetry.md").read_text(encoding="utf-8")
    source = "".join(path.read_text(encoding="utf-8") for path in (root / "genroute").rglob("*.py"))
    names = sorted(set(re.findall(r'"(genroute\.shadows?\.[a-z_]+)"', source)))
    assert "genroute.shadow.agreement" in names and "genroute.shadow.chars" in names  # the scan finds them
    assert [name for name in names if f"`{name}`" not in page] == []
