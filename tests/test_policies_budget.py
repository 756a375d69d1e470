"""Budget policy and its admission gate: decisions are pure, reservations never let concurrent requests overspend."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from genroute.admission import Attempt, Outcome
from genroute.errors import BudgetExceeded, UsageError
from genroute.policies import build_policy
from genroute.policies.base import PolicyContext
from genroute.policies.budget import BudgetGate, BudgetPolicy, BudgetView
from genroute.policies.stats import BackendStats, BenchStats
from genroute.state.memory import MemoryStateStore
from genroute.types import GenerateRequest

CTX = PolicyContext(catalogue={})
BUDGET = {"kind": "budget", "inner": {"kind": "static", "backend": "big"}, "budget_usd": 1.0,
          "costs": {"big": 0.01, "small": 0.0}}


def _gate(policy: Any, **kwargs: Any) -> BudgetGate:
    (gate,) = policy.gates(MemoryStateStore())
    if kwargs:
        gate = BudgetGate(policy, gate.store, **kwargs)
    return gate


async def _enter(gate: Any, request: GenerateRequest, backend: str = "big") -> tuple[Attempt, Any]:
    attempt = Attempt(request, CTX_DECISION, backend, None, trace.INVALID_SPAN)
    return attempt, await gate.enter(attempt)


async def _spend(gate: Any, request: GenerateRequest, cost: float, backend: str = "big") -> None:
    attempt, token = await _enter(gate, request, backend)
    await gate.exit(attempt, token, Outcome(cost_usd=cost))


CTX_DECISION = build_policy(BUDGET).decide(GenerateRequest(input="x"), CTX)


async def test_asyncio_tasks_never_overspend() -> None:
    gate = _gate(build_policy(BUDGET))
    request = GenerateRequest(input="hi", key="bob")

    async def one(i: int) -> bool:
        try:
            attempt, token = await _enter(gate, request)
        except BudgetExceeded:
            return False
        await asyncio.sleep(random.Random(i).uniform(0, 0.002))  # the rung "runs"
        await gate.exit(attempt, token, Outcome(cost_usd=random.Random(i).uniform(0.0, 0.01)))
        return True

    results = await asyncio.gather(*(one(i) for i in range(500)))
    state = await gate.usage("key:bob")
    assert state["spent"] <= 1.0 and state["reserved"] == 0.0
    assert sum(results) >= 100  # every reservation of $0.01 fits until the $1 is held


async def test_threads_and_tasks_share_one_store() -> None:
    gate = _gate(build_policy({**BUDGET, "budget_usd": 0.5, "costs": {"big": 0.003}, "per": "global"}))
    request = GenerateRequest(input="hi")

    def burst(n: int) -> int:
        return sum(asyncio.run(_try(gate, request)) for _ in range(n))

    results = await asyncio.gather(*(asyncio.to_thread(burst, 50) for _ in range(5)),
                                   *(_try(gate, request) for _ in range(250)))
    assert sum(results) == 166  # floor(0.5 / 0.003)
    assert (await gate.usage("*"))["spent"] <= 0.5


async def _try(gate: Any, request: GenerateRequest) -> int:
    try:
        attempt, token = await _enter(gate, request)
    except BudgetExceeded:
        return 0
    await asyncio.sleep(0)
    await gate.exit(attempt, token, Outcome(cost_usd=0.003))
    return 1


async def test_failed_rung_releases_its_reservation() -> None:
    gate = _gate(build_policy({**BUDGET, "costs": {"big": 0.6}}))
    request = GenerateRequest(input="x", key="k")
    attempt, token = await _enter(gate, request)
    with pytest.raises(BudgetExceeded, match="key:k"):
        await _enter(gate, request)
    await gate.exit(attempt, token, Outcome(cost_usd=0.0, sent=False))
    assert await gate.usage("key:k") == {"spent": 0.0, "reserved": 0.0}
    await _enter(gate, request)


async def test_window_rolls_over_and_a_late_settle_charges_the_current_window() -> None:
    now = [1000.0]
    policy = build_policy({**BUDGET, "window_s": 60, "costs": {"big": 0.4}})
    gate = _gate(policy, clock=lambda: now[0])
    request = GenerateRequest(input="x", key="k")
    attempt, token = await _enter(gate, request)
    now[0] += 60  # the request outlives its window
    await gate.exit(attempt, token, Outcome(cost_usd=0.7))
    assert await gate.usage("key:k") == {"spent": 0.7, "reserved": 0.0}
    with pytest.raises(BudgetExceeded):
        await _enter(gate, request)
    now[0] += 60
    assert await gate.usage("key:k") == {"spent": 0.0, "reserved": 0.0}


@pytest.mark.parametrize(("window", "now", "expected", "left_s"), [
    ("day", 1733356800.0 + 3600, "2024-12-05", 23 * 3600),  # 2024-12-05 01:00 UTC
    ("month", 1733356800.0, "2024-12", 27 * 86400),  # 2024-12-05 00:00 UTC; December has 31 days
    ("month", 1709164800.0, "2024-02", 86400),  # 2024-02-29 00:00 UTC (a leap year)
    (None, 125.0, "2", 55.0),  # window_s 60
])
def test_windows(window: str | None, now: float, expected: str, left_s: float) -> None:
    policy: Any = build_policy({**BUDGET, "window": window, "window_s": 60})
    assert policy.window(now) == (expected, pytest.approx(left_s))


@pytest.mark.parametrize(("per", "request_", "key"), [
    ("key", GenerateRequest(input="x", key="k1"), "key:k1"),
    ("key", GenerateRequest(input="x"), "key:-"),
    ("tenant", GenerateRequest(input="x", key="k1", metadata={"tenant": "acme"}), "tenant:acme"),
    ("global", GenerateRequest(input="x", key="k1"), "*"),
])
def test_budget_keys(per: str, request_: GenerateRequest, key: str) -> None:
    policy = build_policy({**BUDGET, "per": per})
    decision = policy.decide(request_, CTX)
    assert decision.budget_key == key and decision.policy == "budget"


async def test_reject_mode_raises_budget_exceeded() -> None:
    policy = build_policy({**BUDGET, "limits": {"poor": 0.015}})
    gate = _gate(policy)
    request = GenerateRequest(input="x", key="poor")
    assert [r.backend for r in policy.decide(request, CTX).rungs] == ["big"]
    await _spend(gate, request, 0.01)
    with pytest.raises(BudgetExceeded, match="key:poor"):
        await _enter(gate, request)


# Decisions are pure functions of (request, context): the budget state comes in the context, read by the
# executor, and the same inputs give the same decision however often they are asked.
DOWNGRADE = {**BUDGET, "on_exhausted": "downgrade", "downgrade_to": "small", "budget_usd": 0.02}


@pytest.mark.parametrize(("left", "rungs", "reason"), [
    (None, ["big", "small"], "$0.02 per"),  # no state read: the inner decision, cheap rung last
    (0.02, ["big", "small"], "$0.02 of $0.02 left"),
    (0.005, ["small"], "downgraded to small"),
    (-0.01, ["small"], "$0 left"),
])
def test_downgrade_decisions_are_a_table_of_request_and_context(left: float | None, rungs: list[str],
                                                               reason: str) -> None:
    policy = build_policy(DOWNGRADE)
    assert policy.reads_state
    request = GenerateRequest(input="x", key="k")
    context = CTX if left is None else PolicyContext(catalogue={}, budgets={
        "policy": BudgetView("key:k", left, 0.02)})
    decisions = {policy.decide(request, context) for _ in range(3)}
    (decision,) = decisions
    assert [r.backend for r in decision.rungs] == rungs and reason in decision.reason


async def test_downgrade_view_comes_from_the_gate() -> None:
    policy: Any = build_policy(DOWNGRADE)
    gate = _gate(policy)
    request = GenerateRequest(input="x", key="k")
    await _spend(gate, request, 0.015)
    view = await gate.view(request)
    assert view == BudgetView("key:k", pytest.approx(0.005), 0.02)
    later = policy.decide(request, PolicyContext(catalogue={}, budgets={"policy": view}))
    assert [r.backend for r in later.rungs] == ["small"] and "$0.005 left" in later.reason
    await _spend(gate, request, 0.0, backend="small")  # the cheap rung still fits


async def test_estimates_from_stats(tmp_path: Path) -> None:
    stats = BenchStats(tasks={"bank": {"big": BackendStats(n=10, quality=0.9, latency_p50_s=0.1,
                                                            latency_p95_s=0.2, cost_per_request_usd=0.25)}})
    path = stats.save(tmp_path / "stats.json")
    policy: Any = build_policy({"kind": "budget", "inner": {"kind": "static", "backend": "big"},
                                "budget_usd": 1.0, "stats_path": str(path)})
    assert isinstance(policy, BudgetPolicy)
    # A mean is not an upper bound: the hold is the mean times cost_margin (2 by default).
    assert policy.estimate("big", "bank") == 0.5 and policy.estimate("big", "other-task") == 0.5
    gate = _gate(policy)
    request = GenerateRequest(input="x", task="bank", key="k")
    for _ in range(3):  # $0.5 held each time; $0.25 spent each time
        await _spend(gate, request, 0.25)
    with pytest.raises(BudgetExceeded):  # $0.75 spent + $0.5 held > $1
        await _enter(gate, request)


@pytest.mark.parametrize(("extra", "margin", "expected"), [
    ({}, 1.0, 0.25),
    ({}, 3.0, 0.75),
    ({"cost_p95_usd": 0.4}, 3.0, 0.4),
    ({"cost_p95_usd": 0.4, "cost_max_usd": 0.9}, 3.0, 0.9),
])
def test_stats_cost_bound(tmp_path: Path, extra: dict[str, float], margin: float, expected: float) -> None:
    entry = BackendStats(n=10, quality=0.9, latency_p50_s=0.1, latency_p95_s=0.2, cost_per_request_usd=0.25,
                         **extra)
    path = BenchStats(tasks={"bank": {"big": entry}}).save(tmp_path / "stats.json")
    policy: Any = build_policy({"kind": "budget", "inner": {"kind": "static", "backend": "big"},
                                "budget_usd": 1.0, "stats_path": str(path), "cost_margin": margin})
    assert policy.estimate("big", "bank") == pytest.approx(expected)
    assert BenchStats.load(path).cost("big", "bank") == 0.25  # the mean itself is still there


def test_stats_cost_max_below_p95_is_rejected() -> None:
    with pytest.raises(UsageError, match="cost_max_usd"):
        BackendStats(n=1, quality=1.0, latency_p50_s=0.1, latency_p95_s=0.1, cost_per_request_usd=0.1,
                     cost_p95_usd=0.3, cost_max_usd=0.2)


async def test_overruns_are_charged_and_bounded_by_the_requests_in_flight() -> None:
    """Every request costs 3x what it reserved, 500 tasks. The actual cost is charged, so the overspend is
    bounded by the overruns of the requests in flight when the last one was admitted, and once the spend
    passes the budget nothing more is admitted (the overspend does not compound)."""
    gate = _gate(build_policy({**BUDGET, "per": "global"}))
    hold, actual, limit = 0.01, 0.03, 1.0
    request = GenerateRequest(input="x")
    in_flight: set[int] = set()
    at_last_admission: set[int] = set()
    admitted: list[int] = []

    async def one(i: int) -> None:
        try:
            attempt, token = await _enter(gate, request)
        except BudgetExceeded:
            return
        admitted.append(i)
        in_flight.add(i)
        at_last_admission.clear()
        at_last_admission.update(in_flight)
        await asyncio.sleep(random.Random(i).uniform(0, 0.002))  # the rung "runs"; others reserve meanwhile
        await gate.exit(attempt, token, Outcome(cost_usd=actual))
        in_flight.discard(i)

    await asyncio.gather(*(one(i) for i in range(500)))
    spent = (await gate.usage("*"))["spent"]
    assert spent == pytest.approx(len(admitted) * actual)  # charged in full, not capped at the hold
    assert spent <= limit + len(at_last_admission) * (actual - hold) + 1e-9
    assert spent > limit  # the overrun really happened: this is the case the bound is about
    with pytest.raises(BudgetExceeded):
        await _enter(gate, request)


async def test_split_arms_delegate_to_their_budget() -> None:
    split = build_policy({"kind": "split", "arms": [
        {"name": "metered", "weight": 1, "policy": {**BUDGET, "budget_usd": 0.02}}]})
    request = GenerateRequest(input="x", key="k")
    decision = split.decide(request, CTX)
    assert decision.budget_key == "key:k"
    (gate,) = split.gates(MemoryStateStore())
    await _spend(gate, request, 0.01)
    await _spend(gate, request, 0.01)
    with pytest.raises(BudgetExceeded):
        await _enter(gate, request)


def test_policies_keep_no_state_and_have_no_reserve() -> None:
    policy = build_policy(BUDGET)
    assert not hasattr(policy, "reserve") and not hasattr(policy, "settle") and not hasattr(policy, "ledger")


@pytest.mark.parametrize(("change", "field"), [
    ({"costs": {"big": -1.0}}, "policy.costs.big"),  # a negative cost turned the budget off
    ({"costs": {"big": float("nan")}}, "policy.costs.big"),
    ({"budget_usd": float("inf")}, "policy.budget_usd"),  # built, then every request raised OverflowError
    ({"limits": {"acme": -2.0}}, "policy.limits.acme"),
    ({"max_cost_per_request": float("inf")}, "policy.max_cost_per_request"),
    ({"cost_margin": float("inf")}, "policy.cost_margin"),  # built, then every request raised OverflowError
    ({"window_s": 1e-300}, "policy.window_s"),  # so did this: now / window_s overflowed
    ({"window_s": 0.5}, "policy.window_s"),
    # Finite but past what nano-USD units hold: built, then a request they priced raised OverflowError.
    ({"budget_usd": 1e308}, "policy.budget_usd"),
    ({"costs": {"big": 1e308}}, "policy.costs.big"),
    ({"limits": {"acme": 1e300}}, "policy.limits.acme"),
    ({"max_cost_per_request": 1e308}, "policy.max_cost_per_request"),
    ({"cost_margin": 1e308}, "policy.cost_margin"),
])
def test_budget_amounts_must_be_finite_and_not_negative(change: dict[str, Any], field: str) -> None:
    from genroute.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        build_policy({**BUDGET, **change}, field="policy")
    assert err.value.field == field


def test_a_stats_file_without_a_backend_is_refused_when_the_router_is_built(gemini_server, tmp_path: Path) -> None:
    """A stats file written before a backend was added: every request that reached that backend failed with
    "no cost estimate"; now building the router names the stats file and the backend, and says what to add."""
    from genroute import ConfigError, Router

    from .conftest import gemini_config

    entry = BackendStats(n=5, quality=0.9, latency_p50_s=0.1, latency_p95_s=0.2, cost_per_request_usd=0.001)
    path = BenchStats(tasks={"*": {"chat": entry}}).save(tmp_path / "stats.json")
    config = gemini_config(gemini_server)
    config["backends"]["pro"] = {**config["backends"]["chat"], "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "budget", "budget_usd": 1.0, "stats_path": str(path),
                        "inner": {"kind": "cascade", "rungs": [{"backend": "pro"}, {"backend": "chat"}]}}
    with pytest.raises(ConfigError) as exc:
        Router.from_config(config)
    assert exc.value.field == "policy.stats_path" and "'pro'" in exc.value.message and "costs" in exc.value.message
    config["policy"]["costs"] = {"pro": 0.01}   # given: pro is held at its cost, chat at its stats bound
    gemini_server.reply_text("ok")
    with Router.from_config(config) as router:
        assert router.generate("hi").backend == "pro"


def test_adding_a_challenger_the_budget_cannot_price_leaves_the_router_as_it_was(gemini_server,
                                                                                tmp_path: Path) -> None:
    from genroute import ConfigError, Router
    from genroute.backends.prompt_template import PromptTemplateBackend, PromptTemplateConfig

    from .conftest import gemini_config

    entry = BackendStats(n=5, quality=0.9, latency_p50_s=0.1, latency_p95_s=0.2, cost_per_request_usd=0.001)
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "budget_usd": 1.0, "inner": {"kind": "static", "backend": "chat"},
                        "stats_path": str(BenchStats(tasks={"*": {"chat": entry}}).save(tmp_path / "stats.json"))}
    with Router.from_config(config) as router:
        lite = PromptTemplateBackend(
            "lite", PromptTemplateConfig(kind="prompt_template", engine="gemini", model="gemini-2.5-flash-lite"),
            router.resources)
        with pytest.raises(ConfigError) as exc:
            router.add_challenger("lite", lite, task="t")
        assert exc.value.field == "policy.stats_path" and "'lite'" in exc.value.message
        assert list(router.backends) == ["chat"] and "lite" not in router.catalogue
        assert router.decide("x", task="t").shadow == ()


@pytest.mark.parametrize(("per", "fields", "name"), [
    ("tenant", {"metadata": {"tenant": "acme"}}, "acme"),
    ("key", {"key": "bob"}, "bob"),
])
def test_usage_reads_a_tenants_or_keys_spend_by_its_own_name(gemini_server, per, fields, name) -> None:
    """``usage("acme")`` read an account no request is charged to (they go to ``tenant:acme``): always $0."""
    from genroute import Router

    from .conftest import budget_usage, gemini_config

    config = gemini_config(gemini_server)
    config["policy"] = {**BUDGET, "inner": {"kind": "static", "backend": "chat"}, "costs": {"chat": 0.01},
                        "per": per}
    with Router.from_config(config) as router:
        result = router.generate("hello", **fields)
        by_name = budget_usage(router, name)
        by_account = budget_usage(router, f"{per}:{name}")
        other = budget_usage(router, "someone-else")
    assert by_name == by_account == {"spent": pytest.approx(result.cost_usd), "reserved": 0.0}
    assert result.cost_usd > 0 and other == {"spent": 0.0, "reserved": 0.0}
