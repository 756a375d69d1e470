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
