"""The cost audit: for each way a request can be billed, the total the loopback server billed on the wire appears,
once, in every place genroute reports cost (call spans, root span, result and its rungs, the budget ledger in
process memory and in redis-server, the ``genroute.cost`` metric, the outcome record). See ``tests/cost_audit.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from genroute import BackendUnavailable, Router
from genroute.testing import Fault

from .conftest import gemini_config
from .cost_audit import answer, budget_policy, prompt_estimate, sinks, tokens, usage_cost
from .redis_fixtures import redis_server, redis_session, state  # noqa: F401

FLASH = "gemini-2.5-flash"


def _config(server: Any, state: dict[str, Any], tmp_path: Any, inner: dict[str, Any] | None = None,
            costs: dict[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    config = gemini_config(server)
    config["policy"] = budget_policy(inner or {"kind": "static", "backend": "chat"}, costs or {"chat": 0.001})
    config["state"] = state
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db")}
    config.update(extra)
    return config


def _served_record_cost(router: Router, result: Any) -> float:
    """The outcome record's figure for the request: its served side plus what deciding cost."""
    record = router.feedback(result, score=1.0)
    side = record.outcomes[result.backend]
    return side.cost_usd + float(record.metadata.get("routing_cost_usd", 0.0))


# -- (a) retries ------------------------------------------------------------------------------------------------


def test_a_retried_truncated_200_counts_its_estimated_input_once_everywhere(gemini_server, otel, state, tmp_path):
    # Would catch: a 200 whose body was cut (the provider ran and bills the call) charged 0, or charged in the
    # spans and not in the budget, or twice (once by the attempt, once by the retry loop).
    usage = tokens(1000, 200)
    gemini_server.fault(Fault.malformed_json())
    gemini_server.reply_json(answer("fine", usage))

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        record = _served_record_cost(router, result)
        found = sinks(otel, router, result, record=record)

    assert len(gemini_server.requests) == 2
    billed = prompt_estimate(gemini_server, 0) + usage_cost(FLASH, usage)
    found.assert_all(billed)
    assert result.cost_estimated
    (call,) = otel.spans("generate_content")
    assert call.attributes["genroute.cost.estimated"] is True


def test_a_retried_503_costs_nothing_and_the_answer_after_it_its_usage(gemini_server, otel, state, tmp_path):
    # Would catch: an error the provider answered (no usage: Gemini does not bill it) charged an estimate.
    usage = tokens(1000, 200)
    gemini_server.fault(Fault.status(503), times=2)
    gemini_server.reply_json(answer("fine", usage))

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    assert len(gemini_server.requests) == 3
    found.assert_all(usage_cost(FLASH, usage))
    assert not result.cost_estimated


@pytest.mark.parametrize("fault", [Fault.status(503, after_chunks=1), Fault.cut_stream(after_chunks=1)],
                         ids=["error-event", "cut"])
def test_a_stream_whose_usage_came_before_it_failed_is_charged_that_usage_and_then_retried(
        gemini_server, otel, state, tmp_path, fault):
    # A stream sends usage, then fails (an error event, or a cut) before any text: nothing reached the reader, so
    # the attempt is retried; the usage the provider reported for it is what it billed, and counts. Would catch:
    # an error event after usage charged 0 (it was, as a 503 answer is: the provider's error answers are free), a
    # cut charged the prompt's 4-characters-a-token estimate instead of the count the provider sent.
    first = tokens(1000, 0)
    usage = tokens(1000, 200)
    gemini_server.reply_json([{"usageMetadata": first, "modelVersion": FLASH}, answer("never", usage)])
    gemini_server.fault(fault)
    gemini_server.reply_json([answer("fine", usage)])

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        text = "".join(chunk.text for chunk in router.stream("a question", timeout_s=20))
        found = sinks(otel, router, None)

    assert text == "fine" and len(gemini_server.requests) == 2
    found.assert_all(usage_cost(FLASH, first) + usage_cost(FLASH, usage))


def test_retries_that_all_fail_after_the_provider_took_them_put_the_sum_on_the_error(
        gemini_server, otel, state, tmp_path):
    # Would catch: a request that failed (no result) leaving its billed attempts out of the ledger or the metric.
    for _ in range(3):
        gemini_server.fault(Fault.malformed_json())

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        with pytest.raises(BackendUnavailable) as caught:
            router.generate("a question", timeout_s=20)
        found = sinks(otel, router, caught.value)

    billed = sum(prompt_estimate(gemini_server, i) for i in range(3))
    found.assert_all(billed)
    assert caught.value.cost_estimated


# -- (b) fallback after a validator rejected a billed answer ----------------------------------------------------


def test_a_rung_billed_then_rejected_by_its_validator_counts_with_the_rung_that_answered(
        gemini_server, otel, state, tmp_path):
    # Would catch: the rejected rung's usage dropped (it was billed), or counted in the root and not in the
    # ledger, or the served side of the outcome record leaving it out.
    rejected, served = tokens(800, 50), tokens(900, 120)
    gemini_server.reply_json(answer("not json", rejected))
    gemini_server.reply_json(answer('{"ok": true}', served, model="gemini-2.5-flash-lite"))
    inner = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["json"]}, {"backend": "lite"}]}
    config = _config(gemini_server, state, tmp_path, inner, {"chat": 0.001, "lite": 0.001})
    config["backends"]["lite"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}

    with Router.from_config(config, **otel.providers) as router:
        result = router.generate("answer in JSON", timeout_s=20)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    assert result.backend == "lite"
    first, second = result.decision.rungs_tried
    assert first.outcome == "rejected_by_validator" and first.cost_usd == pytest.approx(usage_cost(FLASH, rejected))
    assert second.cost_usd == pytest.approx(usage_cost("gemini-2.5-flash-lite", served))
    found.assert_all(usage_cost(FLASH, rejected) + usage_cost("gemini-2.5-flash-lite", served))


# -- (f) thinking and cached-content tokens ---------------------------------------------------------------------


def test_thinking_and_cached_tokens_are_priced_at_their_rates_everywhere(gemini_server, otel, state, tmp_path):
    # Would catch: thoughts left unpriced (Gemini bills them as output, apart from candidatesTokenCount), cached
    # tokens priced at the full input rate (or subtracted twice), or a sink reading the tokens another way.
    usage = tokens(5000, 100, thoughtsTokenCount=700, cachedContentTokenCount=4096)
    gemini_server.reply_json(answer("ok", usage))

    with Router.from_config(_config(gemini_server, state, tmp_path), **otel.providers) as router:
        result = router.generate("a long shared prefix, then a question", timeout_s=20)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    billed = (5000 - 4096) * 0.30e-6 + 4096 * 0.03e-6 + (100 + 700) * 2.50e-6
    assert usage_cost(FLASH, usage) == pytest.approx(billed)
    found.assert_all(billed)
    assert result.usage.thinking_tokens == 700 and result.usage.cached_input_tokens == 4096
