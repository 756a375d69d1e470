"""The cost audit's side calls: judges (validators and shadow scorers) and shadows under a budget: where each is
charged (the request's budget key, its own span or the record's scoring cost) and that it never spends what the
budget cannot afford. See ``tests/cost_audit.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from genroute import Router, ValidationFailed
from genroute.testing import Fault

from .cost_audit import FLASH, answer, prompt_estimate, sinks, tokens, usage_cost
from .cost_audit import audit_config as _config
from .cost_audit import served_record_cost as _served_record_cost
from .redis_fixtures import redis_server, redis_session, state  # noqa: F401

# -- (g) judge and shadow calls under a budget ------------------------------------------------------------------


def _judged(server: Any, state: dict[str, Any], tmp_path: Any, budget_usd: float = 1.0) -> dict[str, Any]:
    inner = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["judge:judge"]}]}
    config = _config(server, state, tmp_path, inner, {"chat": 0.001, "judge": 0.0005})
    config["policy"]["budget_usd"] = budget_usd
    config["backends"]["judge"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    return config


def test_a_judge_call_is_charged_to_the_request_it_checks_everywhere(gemini_server, otel, state, tmp_path):
    # docs/configuration.md: the judge call has its own budget reservation, and its cost and tokens count in the rung
    # it checks.
    # Would catch: the judge's call missing from the result's cost (it is a call the request made), from the
    # budget's settle (a judge spending past the budget unseen), or counted twice (its span and its rung).
    served, verdict = tokens(900, 120), tokens(1100, 1)
    gemini_server.reply_json(answer("the answer", served))
    gemini_server.reply_json(answer("PASS", verdict, model="gemini-2.5-flash-lite"))

    with Router.from_config(_judged(gemini_server, state, tmp_path), **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    assert result.text == "the answer" and len(gemini_server.requests) == 2
    found.assert_all(usage_cost(FLASH, served) + usage_cost("gemini-2.5-flash-lite", verdict))


def test_a_judge_the_budget_cannot_afford_is_not_called_and_the_answer_it_would_check_is_still_charged(
        gemini_server, otel, state, tmp_path):
    # The answer costs $0.00057 and settles; the judge's $0.0005 hold does not fit in what is left of $0.00103.
    # Would catch: a judge spending past the budget (a second request on the wire), or the refused check losing
    # the billed answer's cost from the error, the spans or the ledger.
    served = tokens(900, 120)
    gemini_server.reply_json(answer("the answer", served))

    with Router.from_config(_judged(gemini_server, state, tmp_path, budget_usd=0.00103), **otel.providers) as router:
        with pytest.raises(ValidationFailed, match="budget") as caught:
            router.generate("a question", timeout_s=20)
        found = sinks(otel, router, caught.value)

    assert len(gemini_server.requests) == 1
    found.assert_all(usage_cost(FLASH, served))


def _shadowed(server: Any, state: dict[str, Any], tmp_path: Any, budget_usd: float) -> dict[str, Any]:
    inner = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["pro"]}
    config = _config(server, state, tmp_path, inner, {"chat": 0.001, "pro": 0.002})
    config["policy"]["budget_usd"] = budget_usd
    config["backends"]["pro"] = {**config["backends"]["chat"], "model": "gemini-2.5-pro"}
    return config


def _shadow_cost(otel: Any) -> float:
    return sum(float(s.attributes.get("gen_ai.usage.cost.amount", 0.0)) for s in otel.spans("genroute.shadow"))


def test_a_shadow_is_charged_to_the_budget_and_its_own_span_never_to_the_served_answer(
        gemini_server, otel, state, tmp_path):
    # docs/costs.md: a shadow's cost is on its `genroute.shadow` span and its budgets' settle, never in the served
    # answer's.
    # Would catch: the shadow's call added to the result or the root span (the request would look dearer than the
    # backend that served it), left out of the budget (shadows spending unseen), or its side of the outcome record
    # holding the served cost (or the other way round).
    served, shadow = tokens(900, 120), tokens(900, 80)
    gemini_server.reply_json(answer("positive", served))
    gemini_server.reply_json(answer("negative", shadow, model="gemini-2.5-pro"))

    with Router.from_config(_shadowed(gemini_server, state, tmp_path, 1.0), **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        router.drain()
        record = router.feedback(result, score=1.0)
        found = sinks(otel, router, result, record=record.outcomes["chat"].cost_usd)

    answered, shadowed = usage_cost(FLASH, served), usage_cost("gemini-2.5-pro", shadow)
    assert (found.ledger, found.metric) == (pytest.approx(answered + shadowed), pytest.approx(answered + shadowed))
    found.ledger = found.metric = answered
    found.assert_all(answered)
    assert _shadow_cost(otel) == pytest.approx(shadowed)
    assert record.outcomes["pro"].role == "shadow" and record.outcomes["pro"].cost_usd == pytest.approx(shadowed)


def test_a_shadow_the_budget_cannot_afford_is_skipped_and_costs_nothing(gemini_server, otel, state, tmp_path):
    # After the answer settles ($0.00057 of $0.002), the shadow's $0.002 hold does not fit: it never goes out.
    # Would catch: a shadow run past the budget (it is optional: it must not take what requests need).
    served = tokens(900, 120)
    gemini_server.reply_json(answer("positive", served))

    with Router.from_config(_shadowed(gemini_server, state, tmp_path, 0.002), **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        router.drain()
        found = sinks(otel, router, result, record=_served_record_cost(router, result))

    assert len(gemini_server.requests) == 1
    found.assert_all(usage_cost(FLASH, served))
    assert _shadow_cost(otel) == 0.0


def test_a_shadow_whose_call_timed_out_charges_its_estimate_to_the_budget_and_says_so_on_its_span(
        gemini_server, otel, state, tmp_path):
    # Would catch: a lost shadow call charged nothing (the provider ran it), or its span's cost, an estimate,
    # not marked as one (the root span and rung events mark theirs: `genroute.cost.estimated`).
    served = tokens(900, 120)
    gemini_server.reply_json(answer("positive", served))
    gemini_server.fault(Fault.delay(0))  # the served call answers at once
    gemini_server.fault(Fault.delay(6))  # the shadow's outlives its 2 s attempt
    config = _shadowed(gemini_server, state, tmp_path, 1.0)
    # 2 s: the served call (the router's first, its client still cold) must answer within it on a loaded machine.
    config["engines"]["gemini"].update(timeout_s=2.0, retry={"attempts": 1})

    with Router.from_config(config, **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        router.drain()
        found = sinks(otel, router, result)

    lost = prompt_estimate(gemini_server, 1, "gemini-2.5-pro")
    assert len(gemini_server.requests) == 2 and lost > 0
    assert (found.ledger, found.metric) == (pytest.approx(usage_cost(FLASH, served) + lost),) * 2
    found.ledger = found.metric = usage_cost(FLASH, served)
    found.assert_all(usage_cost(FLASH, served))
    (shadow,) = otel.spans("genroute.shadow")
    assert shadow.attributes["gen_ai.usage.cost.amount"] == pytest.approx(lost)
    assert shadow.attributes["genroute.cost.estimated"] is True


def test_a_shadows_scoring_judge_is_charged_to_the_budget_and_the_record_not_to_the_answer(
        gemini_server, otel, state, tmp_path):
    # `outcomes.scorer: judge:B` compares the shadow's answer with the served one: its call passes admission (the
    # request's budget key, as the shadow's does) and is kept on the record as metadata.scoring_cost_usd. Would
    # catch: the scoring call spending unseen by the budget, or landing in the served answer's cost or a side's.
    from genroute.outcomes import OutcomeStore

    served, shadow, verdict = tokens(900, 120), tokens(900, 80), tokens(700, 2)
    gemini_server.reply_json(answer("positive", served))
    gemini_server.reply_json(answer("negative", shadow, model="gemini-2.5-pro"))
    gemini_server.reply_json(answer("0", verdict, model="gemini-2.5-flash-lite"))
    config = _shadowed(gemini_server, state, tmp_path, 1.0)
    config["policy"]["costs"]["judge"] = 0.0005
    config["backends"]["judge"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    config["outcomes"]["scorer"] = "judge:judge"

    with Router.from_config(config, **otel.providers) as router:
        result = router.generate("a question", timeout_s=20)
        router.drain()
        found = sinks(otel, router, result)
    (record,) = OutcomeStore(tmp_path / "outcomes.db").records_sync()

    answered = usage_cost(FLASH, served)
    shadowed, scored = usage_cost("gemini-2.5-pro", shadow), usage_cost("gemini-2.5-flash-lite", verdict)
    assert len(gemini_server.requests) == 3
    assert (found.ledger, found.metric) == (pytest.approx(answered + shadowed + scored),) * 2
    found.ledger = found.metric = answered
    found.assert_all(answered)
    assert record.outcomes["chat"].cost_usd == pytest.approx(answered)
    assert record.outcomes["pro"].cost_usd == pytest.approx(shadowed) == _shadow_cost(otel)
    assert record.metadata["scoring_cost_usd"] == pytest.approx(scored)


def test_a_shadow_and_a_judge_are_charged_to_the_requests_own_budget_key(gemini_server, otel, state, tmp_path):
    # `per: tenant`: the judge that checks the answer and the shadow beside it spend the tenant's budget, none other.
    # Would catch: either charged to the global or an unkeyed ledger (a tenant's shadows spending someone else's).
    from .cost_audit import ledger_spent

    served, verdict, shadow = tokens(900, 120), tokens(1100, 1), tokens(900, 80)
    gemini_server.reply_json(answer("positive", served))
    gemini_server.reply_json(answer("PASS", verdict, model="gemini-2.5-flash-lite"))
    gemini_server.reply_json(answer("negative", shadow, model="gemini-2.5-pro"))
    config = _shadowed(gemini_server, state, tmp_path, 1.0)
    config["policy"].update(per="tenant")
    config["policy"]["costs"]["judge"] = 0.0005
    config["policy"]["inner"]["rungs"][0]["validators"] = ["judge:judge"]
    config["backends"]["judge"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}

    with Router.from_config(config, **otel.providers) as router:
        result = router.generate("a question", metadata={"tenant": "acme"}, timeout_s=20)
        router.drain()
        spent = {key: ledger_spent(router, key) for key in ("tenant:acme", "tenant:-", "*")}

    assert len(gemini_server.requests) == 3
    checked = usage_cost(FLASH, served) + usage_cost("gemini-2.5-flash-lite", verdict)
    assert result.cost_usd == pytest.approx(checked)
    want = checked + usage_cost("gemini-2.5-pro", shadow)
    assert spent == {"tenant:acme": pytest.approx(want, abs=1e-9), "tenant:-": 0.0, "*": 0.0}
