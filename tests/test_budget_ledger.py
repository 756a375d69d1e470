"""A budget's ledger in a real Redis keeps its name when the policy is wrapped (``genroute graduate`` writes a
``challenger`` around it), so replicas on the old and on the new config spend one budget; nested budgets keep
ledgers of their own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from genroute import Router, UsageError
from genroute.graduation.cli import write_challenger
from genroute.testing import Reply

from .conftest import gemini_config
from .redis_fixtures import RedisServer, redis_server, redis_session  # noqa: F401

COST = {"chat": 0.01, "pro": 0.02}
ARMS = ("policy.inner.arms.0.policy", "policy.inner.arms.1.policy")


def _budget(inner: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"kind": "budget", "inner": inner, "per": "global", "budget_usd": 10.0, "costs": COST, "window": "month",
            **extra}


def _config_file(tmp_path: Path, server: Any, redis: RedisServer, policy: dict[str, Any]) -> Path:
    config = gemini_config(server)
    config["backends"]["pro"] = {**config["backends"]["chat"], "model": "gemini-2.5-pro"}
    config["policy"] = policy
    config["state"] = {"kind": "redis", "url": redis.url, "prefix": f"ledger{os.getpid()}:", "on_error": "closed",
                       "timeout_s": 20, "connect_timeout_s": 20}
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def _usages(router: Router, names: tuple[str, ...]) -> list[float]:
    return [(await router.admission.budget(name).usage("*"))["spent"] for name in names]


async def test_wrapping_the_policy_in_a_challenger_keeps_each_budgets_spend(gemini_server, redis_server: RedisServer,
                                                                            tmp_path: Path) -> None:
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=(1000, 500))
    # A budget over a split whose two arms have budgets of their own: three ledgers.
    arms = [{"weight": 1, "policy": _budget({"kind": "static", "backend": b})} for b in ("chat", "pro")]
    path = _config_file(tmp_path, gemini_server, redis_server, _budget({"kind": "split", "arms": arms}))
    async with Router.from_config(path) as old:
        for i in range(12):
            await old.agenerate("hello", key=f"k{i}")
        total, *per_arm = before = await _usages(old, ("policy", *ARMS))
    assert all(spent > 0 for spent in per_arm) and total == pytest.approx(sum(per_arm))  # distinct ledgers

    write_challenger(path, task="other", backend="pro", mode="shadow", share=1.0)  # `genroute graduate` writes it
    assert yaml.safe_load(path.read_text())["policy"]["kind"] == "challenger"
    async with Router.from_config(path) as new:
        assert await _usages(new, ("policy", *ARMS)) == before  # the spend before the upgrade is still there
        # The config path finds a budget too (it now sits one level down).
        assert new.admission.budget("policy.policy.inner.arms.0.policy").ledger_name == ARMS[0]
        result = await new.agenerate("hello", key="k0")
        assert (await _usages(new, ("policy",)))[0] == pytest.approx(total + result.cost_usd)


async def test_budgets_that_name_one_ledger_share_it(gemini_server, redis_server: RedisServer, tmp_path: Path) -> None:
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=(1000, 500))
    top = _budget({"kind": "static", "backend": "chat"}, ledger="team-a")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    nested = {"kind": "split", "arms": [{"weight": 1, "policy": top}]}  # the same budget somewhere else
    async with Router.from_config(_config_file(tmp_path / "a", gemini_server, redis_server, top)) as one, \
            Router.from_config(_config_file(tmp_path / "b", gemini_server, redis_server, nested)) as two:
        first = await one.agenerate("hello")
        second = await two.agenerate("hello")
        assert one.admission.budget().ledger_name == "team-a"  # the default still finds the config's top budget
        assert (await two.admission.budget("team-a").usage("*"))["spent"] == \
            pytest.approx(first.cost_usd + second.cost_usd)


async def test_an_unknown_budget_is_a_usage_error_naming_it(gemini_server, redis_server: RedisServer,
                                                            tmp_path: Path) -> None:
    path = _config_file(tmp_path, gemini_server, redis_server, _budget({"kind": "static", "backend": "chat"}))
    async with Router.from_config(path) as router:
        with pytest.raises(UsageError) as caught:
            router.admission.budget("policy.inner")
    assert caught.value.field == "name" and "'policy.inner'" in str(caught.value)
