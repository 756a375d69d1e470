"""Policies from config, run by the real router on the loopback Gemini wire."""

from __future__ import annotations

from typing import Any

import pytest

from genroute import Router
from genroute.errors import ConfigError

from .conftest import gemini_config


def two_backends(server: Any, policy: dict[str, Any]) -> dict[str, Any]:
    config = gemini_config(server)
    chat = config["backends"].pop("chat")
    config["backends"] = {"small": {**chat, "tasks": ["faq"]}, "big": {**chat, "model": "gemini-2.5-pro"}}
    config["policy"] = policy
    return config


def test_rules_from_config(gemini_server, otel):
    gemini_server.reply_text("gold answer")
    policy = {"kind": "rules", "rules": [{"name": "vip", "when": {"metadata": {"tier": "gold"}}, "backend": "big"}],
              "default": "small"}
    with Router.from_config(two_backends(gemini_server, policy), **otel.providers) as router:
        result = router.generate("hello", metadata={"tier": "gold"})
        assert router.decide("hello").rungs[0].backend == "small"
    assert result.backend == "big" and result.decision.policy == "rules"
    assert "vip matched" in result.decision.reason
    assert gemini_server.requests[-1].path.endswith("gemini-2.5-pro:generateContent")


def test_cascade_climbs_when_the_validator_rejects(gemini_server, otel):
    gemini_server.reply_text("not json")
    gemini_server.reply_text('{"ok": true}')
    policy = {"kind": "cascade", "rungs": [{"backend": "small", "validators": ["json"]}, {"backend": "big"}]}
    with Router.from_config(two_backends(gemini_server, policy), **otel.providers) as router:
        result = router.generate("give me json")
    assert result.backend == "big" and result.text == '{"ok": true}'
    assert [a.outcome for a in result.decision.rungs_tried] == ["rejected_by_validator", "ok"]


def test_a_request_that_names_its_backend_runs_it_alone_without_its_rungs_validators(gemini_server, otel):
    # Documented in docs/requests.md (Choosing the backend yourself): backend= skips the policy, validators too.
    gemini_server.reply_text("not json")
    policy = {"kind": "cascade", "rungs": [{"backend": "small", "validators": ["json"]}, {"backend": "big"}]}
    with Router.from_config(two_backends(gemini_server, policy), **otel.providers) as router:
        result = router.generate("give me json", backend="small")
    assert result.backend == "small" and result.text == "not json" and result.decision.policy == "override"
    assert [(a.backend, a.outcome) for a in result.decision.rungs_tried] == [("small", "ok")]


def test_ladder_uses_the_router_catalogue(gemini_server, otel):
    with Router.from_config(two_backends(gemini_server, {"kind": "ladder"}), **otel.providers) as router:
        decision = router.decide("where is my order?", task="faq")
    assert decision.rungs[0].backend == "small" and "prompt_template (small)" in decision.reason


def test_budget_downgrades_after_real_spend(gemini_server, otel):
    policy = {"kind": "budget", "inner": {"kind": "static", "backend": "big"}, "budget_usd": 0.015,
              "costs": {"big": 0.012, "small": 0.0}, "on_exhausted": "downgrade", "downgrade_to": "small"}
    gemini_server.reply_text("expensive", usage=(1000, 1000))  # gemini-2.5-pro prices: ~$0.011
    gemini_server.reply_text("cheap")
    with Router.from_config(two_backends(gemini_server, policy), **otel.providers) as router:
        first = router.generate("one", key="tenant-a")
        second = router.generate("two", key="tenant-a")
    assert first.backend == "big" and 0.0 < first.cost_usd <= 0.012
    assert second.backend == "small" and "downgraded to small" in second.decision.reason


def test_budget_downgrades_beside_circuit_breakers(gemini_server):
    # The breaker gate has a health view too: the budget views handed to the policy must be the budgets' alone
    # (every request failed with AttributeError: 'BreakerGate' object has no attribute 'field').
    policy = {"kind": "budget", "inner": {"kind": "static", "backend": "big"}, "budget_usd": 0.015,
              "costs": {"big": 0.012, "small": 0.0}, "on_exhausted": "downgrade", "downgrade_to": "small"}
    gemini_server.reply_text("expensive", usage=(1000, 1000))
    gemini_server.reply_text("cheap")
    config = {**two_backends(gemini_server, policy), "breakers": {"failures": 2}}
    with Router.from_config(config) as router:
        first = router.generate("one", key="tenant-a")
        second = router.generate("two", key="tenant-a")
    assert first.backend == "big"
    assert second.backend == "small" and "downgraded to small" in second.decision.reason


def test_unknown_backend_in_policy_fails_at_build(gemini_server):
    policy = {"kind": "cascade", "rungs": [{"backend": "small"}, {"backend": "ghost"}]}
    with pytest.raises(ConfigError) as err:
        Router.from_config(two_backends(gemini_server, policy))
    assert err.value.field == "policy.rungs.1.backend"


def test_budget_reject_raises_budget_exceeded(gemini_server, otel):
    from genroute.errors import BudgetExceeded

    policy = {"kind": "budget", "inner": {"kind": "static", "backend": "big"}, "budget_usd": 0.015,
              "per": "tenant", "costs": {"big": 0.012}}
    gemini_server.reply_text("first", usage=(1000, 1000))  # ~$0.011 spent: $0.004 left < $0.012 held
    with Router.from_config(two_backends(gemini_server, policy), **otel.providers) as router:
        router.generate("one", metadata={"tenant": "acme"}, key="u1")
        with pytest.raises(BudgetExceeded, match="tenant:acme"):
            router.generate("two", metadata={"tenant": "acme"}, key="u2")
        router_requests = len(gemini_server.requests)
    assert router_requests == 1  # the refused request never reached the wire


def test_policy_from_a_yaml_file(gemini_server, otel, tmp_path):
    import yaml

    config = two_backends(gemini_server, {
        "kind": "split", "salt": "exp-1",
        "arms": [{"name": "control", "weight": 50, "backend": "small"},
                 {"name": "ladder", "weight": 50, "policy": {"kind": "ladder", "cascade": True}}]})
    path = tmp_path / "genroute.yaml"
    path.write_text(yaml.safe_dump(config))
    with Router.from_config(path, **otel.providers) as router:
        arms = {router.decide("hi", key=f"user-{i}").reason.split(" (")[0] for i in range(40)}
    assert arms == {"split: arm control", "split: arm ladder"}
    path.write_text(path.read_text().replace("weight: 50", "weight: -1", 1))
    with pytest.raises(ConfigError) as err:
        Router.from_config(path)
    assert err.value.field == "policy.arms.0.weight"


def test_ladder_on_facts_from_a_real_icl_backend(gemini_server, otel, tmp_path):
    """The ICL facts come from a real IclBackend over embedded Chroma: per-task counts from the examples'
    ``metadata.task``, untagged examples counting for the backend's own ``tasks``."""
    import asyncio
    import json

    from genroute.knowledge.examples import aload_examples

    rows = [{"input": f"where is card {i}", "output": "card_arrival", "metadata": {"task": "bank"}} for i in range(9)]
    rows += [{"input": f"nice product {i}", "output": "positive", "metadata": {"task": "sentiment"}} for i in range(3)]
    rows += [{"input": f"awful product {i}", "output": "negative"} for i in range(6)]  # untagged
    path = tmp_path / "examples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = gemini_config(gemini_server)
    config["knowledge"] = {"path": str(tmp_path / "chroma")}
    icl = {"kind": "icl", "engine": "gemini", "model": "gemini-2.5-flash", "collection": "ladder-examples"}
    config["backends"].update({"few_shot": icl, "reviews": {**icl, "tasks": ["sentiment"]}})
    config["policy"] = {"kind": "ladder", "min_examples": 8}
    with Router.from_config(config, **otel.providers) as router:
        before = router.decide("where is card 42", task="bank")
        asyncio.run(aload_examples(router.resources.knowledge, [path], collection="ladder-examples"))
        router.refresh()
        facts = {name: router.catalogue[name].facts for name in ("few_shot", "reviews")}
        decisions = {task: router.decide("where is card 42", task=task)
                     for task in (None, "bank", "sentiment", "weather")}
        result = router.generate("where is card 42", task="bank")
    assert before.rungs[0].backend == "chat" and "'bank' has 0 labeled examples < 8" in before.reason
    assert facts["few_shot"]["example_count"] == 18
    assert facts["few_shot"]["example_counts"] == {"bank": 9, "sentiment": 3}
    assert facts["reviews"]["example_counts"] == {"bank": 9, "sentiment": 9}  # 3 tagged + 6 untagged
    routed = {task: d.rungs[0].backend for task, d in decisions.items()}
    assert routed == {None: "chat", "bank": "few_shot", "sentiment": "reviews", "weather": "chat"}
    assert "request has no task for few-shot examples" in decisions[None].reason
    assert "icl (few_shot): task 'bank' has 9 labeled examples >= 8" in decisions["bank"].reason
    assert "icl (reviews): task 'sentiment' has 9 labeled examples >= 8" in decisions["sentiment"].reason
    assert "task 'weather' has 0 labeled examples < 8" in decisions["weather"].reason
    assert result.backend == "few_shot"
    sent = [p["text"] for c in gemini_server.requests[-1].body["contents"] for p in c["parts"]]
    assert "card_arrival" in sent  # the examples were really shown


async def test_a_backend_added_while_refresh_reads_facts_stays_in_the_catalogue(gemini_server) -> None:
    # refresh reads every backend's facts off the loop; a challenger added on the loop meanwhile (graduation) was
    # dropped from the catalogue the read then swapped in, or broke the read ("dictionary changed size").
    import asyncio
    import threading

    from genroute.backends.prompt_template import PromptTemplateBackend

    entered, release = threading.Event(), threading.Event()

    class SlowFacts(PromptTemplateBackend):
        reads = 0

        def facts(self) -> dict[str, Any]:
            SlowFacts.reads += 1
            if SlowFacts.reads == 2:  # the refresh's read (the first is the build's)
                entered.set()
                release.wait(30)
            return super().facts()

    config = two_backends(gemini_server, {"kind": "static", "backend": "small"})
    async with await Router.acreate(config) as router:
        small = router.backends["small"]
        router.backends["small"] = slow = SlowFacts("small", small.config, small.resources)
        SlowFacts.reads = 1
        refreshing = asyncio.ensure_future(router.arefresh())
        assert await asyncio.to_thread(entered.wait, 30)
        router.add_challenger("extra", PromptTemplateBackend("extra", small.config, small.resources), task="t")
        release.set()
        await refreshing
        assert set(router.catalogue) == {"small", "big", "extra"}
        assert router.catalogue["small"].facts == slow.facts()


async def test_one_backend_failing_to_reload_costs_only_its_own_facts(gemini_server) -> None:
    # A backend whose reload raised during refresh skipped every backend's facts (and the policy's refresh): one
    # backend's store being down left the others' facts stale. Now the others refresh and the failure is raised.
    from genroute.backends.prompt_template import PromptTemplateBackend

    class Broken(PromptTemplateBackend):
        async def reload(self) -> None:
            raise OSError("its store is down")

    class Counting(PromptTemplateBackend):
        reads = 0

        def facts(self) -> dict[str, Any]:
            Counting.reads += 1
            return {**super().facts(), "reads": Counting.reads}

    config = two_backends(gemini_server, {"kind": "static", "backend": "small"})
    async with await Router.acreate(config) as router:
        small, big = router.backends["small"], router.backends["big"]
        router.backends["small"] = Broken("small", small.config, small.resources)
        router.backends["big"] = Counting("big", big.config, big.resources)
        before = router.catalogue["small"]
        with pytest.raises(OSError, match="its store is down") as raised:
            await router.arefresh()
        assert router.catalogue["big"].facts["reads"] == 1  # refreshed despite small's failure
        assert router.catalogue["small"] is before  # kept as it was
        assert any("['small']" in note for note in raised.value.__notes__)  # the failure names its backend
