"""What an on-call engineer reads about one request from its trace: retries, the refusing validator, and the trace
of a request that failed (the real OTel SDK with an in-memory exporter, the loopback Gemini server)."""

from __future__ import annotations

from typing import Any

import pytest

from genroute import BackendUnavailable, BudgetExceeded, Router
from genroute.testing import Fault, GeminiTestServer

from .conftest import Otel, gemini_config
from .server_ports import free_port


def test_a_retried_call_says_on_its_span_which_attempt_failed_why_and_how_long_it_waited(
        gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.fault(Fault.status(503))
    gemini_server.fault(Fault.status(429, retry_after=0.02))
    gemini_server.reply_text("Paris.", usage=(12, 2))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        result = router.generate("Capital of France?")
    assert result.text == "Paris."
    (call,) = otel.spans("generate_content")
    retries = [dict(e.attributes) for e in call.events if e.name == "genroute.retry"]
    assert [(r["genroute.retry.attempt"], r["error.type"], r["http.response.status_code"]) for r in retries] == [
        (1, "BackendUnavailable", 503), (2, "BackendUnavailable", 429)]
    assert retries[1]["genroute.retry.retry_after_s"] == 0.02
    assert all(r["genroute.retry.wait_s"] >= 0 for r in retries)
    assert "genroute.retry.retry_after_s" not in retries[0]


def test_a_call_answered_at_once_has_no_retry_event(gemini_server: GeminiTestServer, otel: Otel) -> None:
    gemini_server.reply_text("Paris.")
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        router.generate("Capital of France?")
    (call,) = otel.spans("generate_content")
    assert [e.name for e in call.events] == []


def _root(otel: Otel) -> Any:
    (root,) = otel.spans("genroute.generate")
    return root


def test_a_failed_request_s_error_names_its_trace_as_a_result_does(gemini_server: GeminiTestServer,
                                                                    otel: Otel) -> None:
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["retry"]["attempts"] = 1
    gemini_server.fault(Fault.status(503))
    with Router.from_config(config, **otel.providers) as router:
        with pytest.raises(BackendUnavailable) as caught:
            router.generate("Capital of France?")
    assert caught.value.trace_id == format(_root(otel).context.trace_id, "032x")


def test_a_budget_refusal_names_its_trace(gemini_server: GeminiTestServer, otel: Otel) -> None:
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "budget_usd": 0.001, "costs": {"chat": 0.01},
                        "inner": {"kind": "static", "backend": "chat"}}
    with Router.from_config(config, **otel.providers) as router:
        with pytest.raises(BudgetExceeded) as caught:
            router.generate("Capital of France?", key="cust-1")
    root = _root(otel)
    assert root.attributes["error.type"] == "BudgetExceeded"
    assert caught.value.trace_id == format(root.context.trace_id, "032x")


def test_without_a_tracer_provider_a_failed_request_s_error_has_no_trace_id(gemini_server: GeminiTestServer) -> None:
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["retry"]["attempts"] = 1
    gemini_server.fault(Fault.status(503))
    with Router.from_config(config) as router:
        with pytest.raises(BackendUnavailable) as caught:
            router.generate("Capital of France?")
    assert caught.value.trace_id is None


def test_a_failed_stream_s_error_names_its_trace(gemini_server: GeminiTestServer, otel: Otel) -> None:
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["retry"]["attempts"] = 1
    gemini_server.fault(Fault.status(503))
    with Router.from_config(config, **otel.providers) as router:
        with pytest.raises(BackendUnavailable) as caught:
            list(router.stream("Capital of France?"))
    assert caught.value.trace_id == format(_root(otel).context.trace_id, "032x")


def test_a_rung_a_validator_refused_names_that_validator_on_its_event(gemini_server: GeminiTestServer,
                                                                      otel: Otel) -> None:
    config = gemini_config(gemini_server)
    config["backends"]["pro"] = {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "cascade", "rungs": [
        {"backend": "chat", "validators": ["nonempty", "regex:^(yes|no)$"]}, {"backend": "pro"}]}
    gemini_server.reply_text("maybe")
    gemini_server.reply_text("yes")
    with Router.from_config(config, **otel.providers) as router:
        result = router.generate("Is Paris in France?")
    assert result.backend == "pro"
    refused, served = [dict(e.attributes) for e in _root(otel).events if e.name == "genroute.rung"]
    assert refused["genroute.rung.outcome"] == "rejected_by_validator"
    assert refused["genroute.validator"] == "regex:^(yes|no)$"
    assert "genroute.validator" not in served


def test_a_judge_whose_own_call_failed_is_named_on_the_refused_rung_s_event(gemini_server: GeminiTestServer,
                                                                            otel: Otel) -> None:
    config = gemini_config(gemini_server)
    # The judge's engine answers nothing (a closed port): its call fails, so the answer cannot be checked.
    config["engines"]["down"] = {"kind": "gemini", "base_url": f"http://127.0.0.1:{free_port()}", "api_key": "k",
                                 "retry": {"attempts": 1}}
    config["backends"]["judge"] = {"kind": "prompt_template", "engine": "down", "model": "gemini-2.5-flash"}
    config["backends"]["pro"] = {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "cascade", "rungs": [
        {"backend": "chat", "validators": ["nonempty", "judge:judge"]}, {"backend": "pro"}]}
    gemini_server.reply_text("maybe")       # chat's answer
    gemini_server.reply_text("yes")         # the next rung's
    with Router.from_config(config, **otel.providers) as router:
        assert router.generate("Is Paris in France?").backend == "pro"
    refused = next(dict(e.attributes) for e in _root(otel).events if e.name == "genroute.rung")
    assert (refused["genroute.rung.outcome"], refused["genroute.validator"]) == ("rejected_by_validator", "judge:judge")
