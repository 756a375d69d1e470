"""Budgets under concurrency, end to end: 500 concurrent requests never spend more than the USD budget.

The loopback server answers every request with the same usage, so each answer costs exactly
``COST`` at gemini-2.5-flash list prices; the budget policy reserves that much per request before it
runs and settles the actual cost after. Whatever the interleaving, the admitted requests fit the budget.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from genroute import BudgetExceeded, GenerateResult, Router
from genroute.testing import Fault, Reply

from .conftest import gemini_config

REQUESTS = 500
USAGE = (1000, 500)
COST = 1000 * 0.30 / 1e6 + 500 * 2.50 / 1e6  # gemini-2.5-flash: $0.30 in, $2.50 out per 1M tokens
BUDGET = 40 * COST + COST / 2  # room for 40 answers and a half: the half must not buy a 41st


def _budget_config(server: Any, **budget: Any) -> dict[str, Any]:
    config = gemini_config(server)
    config["backends"]["cheap"] = {**config["backends"]["chat"], "model": "free-model"}
    config["pricing"] = {"free-model": {"input": 0.0, "output": 0.0}}
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": BUDGET, "costs": {"chat": COST, "cheap": 0.0}, **budget}
    return config


async def _burst(router: Router) -> list[GenerateResult | BaseException]:
    async def one(i: int) -> GenerateResult:
        return await router.agenerate(f"request {i}", timeout_s=60)

    return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(REQUESTS)), return_exceptions=True), 240)


def test_500_concurrent_requests_never_spend_more_than_the_budget(gemini_server):
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)

    async def main() -> tuple[list[Any], Any]:
        async with Router.from_config(_budget_config(gemini_server)) as router:
            return await _burst(router), router.policy.ledger.snapshot()

    outcomes, ledger = asyncio.run(main())
    answered = [o for o in outcomes if isinstance(o, GenerateResult)]
    refused = [o for o in outcomes if isinstance(o, BudgetExceeded)]
    assert len(answered) + len(refused) == REQUESTS, {repr(o) for o in outcomes}
    spent = sum(r.cost_usd for r in answered)
    assert spent <= BUDGET
    assert len(answered) == 40  # every reservation that fits is admitted: the budget is used, not wasted
    assert ledger["*"]["spent"] == pytest.approx(spent) and ledger["*"]["reserved"] == 0.0
    generate_calls = [r for r in gemini_server.requests if r.action == "generateContent"]
    assert len(generate_calls) == 40  # a refused request never reaches the model


def test_500_concurrent_requests_downgrade_once_the_budget_is_spent(gemini_server):
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)

    async def main() -> list[Any]:
        config = _budget_config(gemini_server, on_exhausted="downgrade", downgrade_to="cheap")
        async with Router.from_config(config) as router:
            return await _burst(router)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, GenerateResult) for o in outcomes), {repr(o) for o in outcomes}
    by_backend = {"chat": 0, "cheap": 0}
    for result in outcomes:
        by_backend[result.backend] += 1
    assert by_backend["chat"] == 40 and by_backend["cheap"] == REQUESTS - 40
    assert sum(r.cost_usd for r in outcomes) <= BUDGET


def test_cancelled_requests_release_their_reservations(gemini_server):
    gemini_server.fault(Fault.delay(30), times=50)

    async def main() -> dict[str, Any]:
        async with Router.from_config(_budget_config(gemini_server)) as router:
            tasks = [asyncio.create_task(router.agenerate(f"r{i}", timeout_s=60)) for i in range(50)]
            while len(gemini_server.requests) < 40:  # most are on the wire, holding their reservations
                await asyncio.sleep(0.02)
            assert router.policy.ledger.snapshot()["*"]["reserved"] > 0
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(o, asyncio.CancelledError | BudgetExceeded) for o in outcomes)
            return router.policy.ledger.snapshot()["*"]

    ledger = asyncio.run(asyncio.wait_for(main(), 120))
    assert ledger == {"spent": 0.0, "reserved": 0.0}  # nothing held by requests that will never finish


def test_500_sync_calls_from_50_threads_never_spend_more_than_the_budget(gemini_server):
    from concurrent.futures import ThreadPoolExecutor

    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)

    def one(router: Router, i: int) -> GenerateResult | BaseException:
        try:
            return router.generate(f"request {i}", timeout_s=60)
        except BudgetExceeded as exc:
            return exc

    with Router.from_config(_budget_config(gemini_server)) as router, ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(lambda i: one(router, i), range(REQUESTS), timeout=240))
        ledger = router.policy.ledger.snapshot()["*"]
    answered = [o for o in outcomes if isinstance(o, GenerateResult)]
    assert len(answered) == 40 and sum(r.cost_usd for r in answered) <= BUDGET
    assert ledger["reserved"] == 0.0 and ledger["spent"] <= BUDGET
