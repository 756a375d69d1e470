"""``genroute.explore`` on a request's root span: what an ``explore`` policy did with the request. The loopback Gemini
server and the real OTel SDK (InMemorySpanExporter)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from genroute.policies.split import bucket
from genroute.router.router import Router
from genroute.testing import GeminiTestServer

from .conftest import Otel, gemini_config


def _explore_router(server: GeminiTestServer, provider: TracerProvider, **explore: Any) -> Router:
    config = gemini_config(server)
    config["backends"]["other"] = {**config["backends"]["chat"]}
    config["policy"] = {"kind": "explore", "share": 1.0, "policy": {"kind": "static", "backend": "chat"}, **explore}
    return Router.from_config(config, tracer_provider=provider)


def _key_outside(share: float) -> str:
    return next(k for k in (f"user-{i}" for i in range(1000)) if bucket("", k) >= share)


@pytest.mark.parametrize(("explore", "key", "expected"), [
    ({"candidates": ["other"]}, "user-1", "explored"),  # the only candidate is not the nested policy's choice
    ({"candidates": ["chat"]}, "user-1", "exploited"),  # the draw kept the nested policy's choice
    ({"share": 0.01}, _key_outside(0.01), "outside_share"),  # no draw: not "exploring chose the same"
])
def test_the_root_span_says_what_the_explore_policy_did(
        gemini_server: GeminiTestServer, otel: Otel, explore: dict[str, Any], key: str, expected: str) -> None:
    # An explore policy recorded nothing when it did not explore: "exploration off for this request" and "the draw
    # chose what the nested policy chose" looked alike (the nested policy's reason, no attribute).
    with _explore_router(gemini_server, otel.tracer_provider, **explore) as r:
        decided = r.decide("hello", key=key)
        assert otel.spans() == []  # a preview makes no span
        result = r.generate("hello", key=key)
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["genroute.explore"] == expected == decided.explore
    assert root.attributes["genroute.backend"] == result.backend == ("other" if expected == "explored" else "chat")


def test_no_explore_attribute_without_an_explore_policy(gemini_server: GeminiTestServer, otel: Otel) -> None:
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as r:
        r.generate("hello")
        assert "_adecide" not in vars(r)  # the class's method: nothing added to a request that does not explore
    (root,) = otel.spans("genroute.generate")
    assert "genroute.explore" not in root.attributes


def test_a_nested_explore_policy_and_a_replaced_router_record_their_own(
        gemini_server: GeminiTestServer, otel: Otel) -> None:
    config = gemini_config(gemini_server)
    config["backends"]["other"] = {**config["backends"]["chat"]}
    config["policy"] = {"kind": "budget", "budget_usd": 10.0, "costs": {"chat": 0.001, "other": 0.001}, "inner": {
        "kind": "explore", "share": 1.0, "candidates": ["other"], "policy": {"kind": "static", "backend": "chat"}}}
    with Router.from_config(config, **otel.providers) as r:
        r.generate("hello", key="k")
        copy = r.replacing({"chat": r.backends["chat"]})
        copy.generate("hello", key="k")
        assert vars(copy)["_adecide"] is not vars(r)["_adecide"]  # it decides with its own backends and context
    roots = otel.spans("genroute.generate")
    assert [s.attributes["genroute.explore"] for s in roots] == ["explored", "explored"]


def test_a_no_op_tracer_leaves_the_callers_span_alone(gemini_server: GeminiTestServer, otel: Otel) -> None:
    # With genroute's tracer a no-op, the current span while the policy decides is the tracer's non-recording
    # stand-in over the caller's span: the caller's span is not written to.
    from opentelemetry.trace import NoOpTracerProvider

    caller = otel.tracer_provider.get_tracer("app")
    with _explore_router(gemini_server, NoOpTracerProvider(), candidates=["other"]) as r:
        with caller.start_as_current_span("handler"):
            assert r.generate("hello", key="user-1").backend == "other"
    (handler,) = otel.spans("handler")
    assert "genroute.explore" not in handler.attributes


def test_an_explore_router_dropped_unclosed_is_freed_at_once(gemini_server: GeminiTestServer) -> None:
    # Its wrapped decide refers to it weakly: a strong reference would keep an unclosed router (its loop thread,
    # connections and engines) alive until the next garbage collection.
    gc.disable()
    try:
        r = _explore_router(gemini_server, TracerProvider())
        r.generate("hello")
        ref = weakref.ref(r)
        del r
        assert ref() is None
    finally:
        gc.enable()


def test_a_policy_swapped_in_over_an_explore_policy_still_records(gemini_server: GeminiTestServer, otel: Otel) -> None:
    # add_challenger wraps the router's policy in a challenger (through _use_policy, as promotions and refreshes do).
    with _explore_router(gemini_server, otel.tracer_provider, candidates=["other"]) as r:
        r.add_challenger("third", r.backends["chat"], task="t", mode="split", share=0.5)
        assert r.policy.kind == "challenger"
        r.generate("hello", key="user-1")
    (root,) = otel.spans("genroute.generate")
    assert root.attributes["genroute.explore"] == "explored"
