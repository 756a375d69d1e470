"""Budget policy: the reservation ledger never lets concurrent requests overspend."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from genroute.errors import BudgetExceeded
from genroute.policies import build_policy
from genroute.policies.base import PolicyContext
from genroute.policies.budget import BudgetLedger, BudgetPolicy
from genroute.policies.stats import BackendStats, BenchStats
from genroute.types import GenerateRequest

CTX = PolicyContext(catalogue={})
BUDGET = {"kind": "budget", "inner": {"kind": "static", "backend": "big"}, "budget_usd": 1.0,
          "costs": {"big": 0.01, "small": 0.0}}


def test_threads_never_overspend() -> None:
    policy = build_policy(BUDGET)
    request = GenerateRequest(input="hi", key="alice")
    decision = policy.decide(request, CTX)
    admitted: list[int] = []
    barrier = threading.Barrier(50)

    def one(i: int) -> None:
        if i < 50:
            barrier.wait()  # the first 50 start together to maximise contention
        try:
            token = policy.reserve(request, decision, "big")
        except BudgetExceeded:
            return
        admitted.append(i)
        policy.settle(token, random.Random(i).uniform(0.0, 0.01))  # actual cost within the estimate

    threads = [threading.Thread(target=one, args=(i,)) for i in range(500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = policy.ledger.snapshot()["key:alice"]
    assert state["spent"] <= 1.0 and state["reserved"] == 0.0
    assert len(admitted) >= 100  # every reservation of $0.01 fits until the $1 is held


async def test_asyncio_tasks_never_overspend() -> None:
    policy = build_policy(BUDGET)
    request = GenerateRequest(input="hi", key="bob")
    decision = policy.decide(request, CTX)

    async def one(i: int) -> bool:
        try:
            token = policy.reserve(request, decision, "big")
        except BudgetExceeded:
            return False
        await asyncio.sleep(random.Random(i).uniform(0, 0.002))  # the rung "runs"
        policy.settle(token, 0.01)
        return True

    results = await asyncio.gather(*(one(i) for i in range(500)))
    state = policy.ledger.snapshot()["key:bob"]
    assert sum(results) == 100 and state["spent"] == pytest.approx(1.0) and state["spent"] <= 1.0 + 1e-9


async def test_threads_and_tasks_share_one_ledger() -> None:
    ledger = BudgetLedger(window_s=3600)

    def burst(n: int) -> int:
        ok = 0
        for _ in range(n):
            try:
                held = ledger.reserve("t", 0.003, 0.5)
            except BudgetExceeded:
                continue
            ledger.settle(held, 0.003)
            ok += 1
        return ok

    async def task() -> int:
        try:
            held = ledger.reserve("t", 0.003, 0.5)
        except BudgetExceeded:
            return 0
        await asyncio.sleep(0)
        ledger.settle(held, 0.003)
        return 1

    thread_counts = [asyncio.to_thread(burst, 50) for _ in range(5)]
    results = await asyncio.gather(*thread_counts, *(task() for _ in range(250)))
    assert sum(results) == 166  # floor(0.5 / 0.003)
    assert ledger.snapshot()["t"]["spent"] <= 0.5


def test_failed_rung_releases_its_reservation() -> None:
    ledger = BudgetLedger(window_s=60)
    held = ledger.reserve("k", 0.6, 1.0)
    with pytest.raises(BudgetExceeded):
        ledger.reserve("k", 0.6, 1.0)
    ledger.settle(held, 0.0)
    ledger.settle(held, 5.0)  # settling twice is ignored
    assert ledger.remaining("k", 1.0) == 1.0
    ledger.reserve("k", 0.6, 1.0)


def test_window_rolls_over() -> None:
    now = [1000.0]
    ledger = BudgetLedger(window_s=60, clock=lambda: now[0])
    ledger.settle(ledger.reserve("k", 1.0, 1.0), 1.0)
    with pytest.raises(BudgetExceeded):
        ledger.reserve("k", 0.1, 1.0)
    now[0] += 60
    assert ledger.remaining("k", 1.0) == 1.0


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


def test_reject_mode_raises_budget_exceeded() -> None:
    policy = build_policy({**BUDGET, "limits": {"poor": 0.015}})
    request = GenerateRequest(input="x", key="poor")
    decision = policy.decide(request, CTX)
    assert [r.backend for r in decision.rungs] == ["big"]
    policy.settle(policy.reserve(request, decision, "big"), 0.01)
    with pytest.raises(BudgetExceeded, match="key:poor"):
        policy.reserve(request, decision, "big")


def test_downgrade_mode() -> None:
    policy = build_policy({**BUDGET, "on_exhausted": "downgrade", "downgrade_to": "small", "budget_usd": 0.02})
    request = GenerateRequest(input="x", key="k")
    first = policy.decide(request, CTX)
    # With room left the inner decision stands, with the cheap rung kept as the last resort.
    assert [r.backend for r in first.rungs] == ["big", "small"]
    policy.settle(policy.reserve(request, first, "big"), 0.015)
    later = policy.decide(request, CTX)
    assert [r.backend for r in later.rungs] == ["small"]
    assert "downgraded to small" in later.reason and "$0.005 left" in later.reason
    policy.settle(policy.reserve(request, later, "small"), 0.0)  # the cheap rung still fits


def test_estimates_from_stats(tmp_path: Path) -> None:
    stats = BenchStats(tasks={"bank": {"big": BackendStats(n=10, quality=0.9, latency_p50_s=0.1,
                                                            latency_p95_s=0.2, cost_per_request_usd=0.25)}})
    path = stats.save(tmp_path / "stats.json")
    policy: Any = build_policy({"kind": "budget", "inner": {"kind": "static", "backend": "big"},
                                "budget_usd": 1.0, "stats_path": str(path)})
    assert isinstance(policy, BudgetPolicy)
    # A mean is not an upper bound: the hold is the mean times cost_margin (2 by default).
    assert policy.estimate("big", "bank") == 0.5 and policy.estimate("big", "other-task") == 0.5
    request = GenerateRequest(input="x", task="bank", key="k")
    decision = policy.decide(request, CTX)
    for _ in range(3):  # $0.5 held each time; $0.25 spent each time
        policy.settle(policy.reserve(request, decision, "big"), 0.25)
    with pytest.raises(BudgetExceeded):  # $0.75 spent + $0.5 held > $1
        policy.reserve(request, decision, "big")


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
    with pytest.raises(ValueError, match="cost_max_usd"):
        BackendStats(n=1, quality=1.0, latency_p50_s=0.1, latency_p95_s=0.1, cost_per_request_usd=0.1,
                     cost_p95_usd=0.3, cost_max_usd=0.2)


def test_overruns_are_charged_and_bounded_by_the_requests_in_flight() -> None:
    """Every request costs 3x what it reserved, 64 threads at once. The actual cost is charged, so the
    overspend is bounded by the overruns of the requests in flight when the last one was admitted, and
    once the spend passes the budget nothing more is admitted (the overspend does not compound)."""
    ledger = BudgetLedger(window_s=3600)
    hold, actual, limit = 0.01, 0.03, 1.0
    book = threading.Lock()  # keeps the test's own record of who is in flight consistent with the ledger
    in_flight: set[int] = set()
    at_last_admission: set[int] = set()
    admitted: list[int] = []
    barrier = threading.Barrier(64)

    def one(i: int) -> None:
        if i < 64:
            barrier.wait()
        with book:
            try:
                held = ledger.reserve("k", hold, limit)
            except BudgetExceeded:
                return
            admitted.append(i)
            in_flight.add(i)
            at_last_admission.clear()
            at_last_admission.update(in_flight)
        time.sleep(random.Random(i).uniform(0, 0.002))  # the rung "runs"; others reserve meanwhile
        with book:
            ledger.settle(held, actual)
            in_flight.discard(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spent = ledger.snapshot()["k"]["spent"]
    assert spent == pytest.approx(len(admitted) * actual)  # charged in full, not capped at the hold
    assert spent <= limit + len(at_last_admission) * (actual - hold) + 1e-9
    assert spent > limit  # the overrun really happened: this is the case the bound is about
    with pytest.raises(BudgetExceeded):
        ledger.reserve("k", hold, limit)


def test_settling_in_a_later_window_charges_the_cost_there() -> None:
    now = [1000.0]
    ledger = BudgetLedger(window_s=60, clock=lambda: now[0])
    held = ledger.reserve("k", 0.4, 1.0)
    now[0] += 60  # the request outlives its window
    ledger.settle(held, 0.7)
    assert ledger.snapshot()["k"] == {"spent": 0.7, "reserved": 0.0}
    with pytest.raises(BudgetExceeded):
        ledger.reserve("k", 0.4, 1.0)


def test_split_arms_delegate_reserve_to_their_budget() -> None:
    split = build_policy({"kind": "split", "arms": [
        {"name": "metered", "weight": 1, "policy": {**BUDGET, "budget_usd": 0.02}}]})
    request = GenerateRequest(input="x", key="k")
    decision = split.decide(request, CTX)
    assert decision.budget_key == "key:k"
    split.settle(split.reserve(request, decision, "big"), 0.01)
    split.settle(split.reserve(request, decision, "big"), 0.01)
    with pytest.raises(BudgetExceeded):
        split.reserve(request, decision, "big")
