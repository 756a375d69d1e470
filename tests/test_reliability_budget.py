"""Budgets under concurrency, end to end: 500 concurrent requests never spend more than the USD budget.

The loopback server answers every request with the same usage, so each answer costs exactly
``COST`` at gemini-2.5-flash list prices; the budget policy reserves its estimate per request before it
runs and settles the actual cost after. Whatever the interleaving, the admitted requests fit the budget
when the estimate covers the cost; when it does not, the overspend is bounded by one wave of requests in
flight (the last tests).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from genroute import BudgetExceeded, GenerateResult, Router
from genroute.testing import Fault, Reply

from .conftest import budget_usage, gemini_config

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
            return await _burst(router), {"*": await router.admission.budget().usage("*")}

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
            assert (await router.admission.budget().usage("*"))["reserved"] > 0
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(o, asyncio.CancelledError | BudgetExceeded) for o in outcomes)
            return (await router.admission.budget().usage("*")), sum(isinstance(o, asyncio.CancelledError) for o in outcomes)

    ledger, cancelled = asyncio.run(asyncio.wait_for(main(), 120))
    assert ledger["reserved"] == 0.0  # nothing held by requests that will never finish
    # ...and each request cancelled on the wire is charged what the provider processed: its input, estimated
    # at four characters a token ("r12" is one token).
    assert ledger["spent"] == pytest.approx(cancelled * 1 * 0.30 / 1e6)


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
        ledger = budget_usage(router)
    answered = [o for o in outcomes if isinstance(o, GenerateResult)]
    assert len(answered) == 40 and sum(r.cost_usd for r in answered) <= BUDGET
    assert ledger["reserved"] == 0.0 and ledger["spent"] <= BUDGET


# -- real cost above the estimate ------------------------------------------------------------------------

def _stats_file(tmp_path: Any, mean: float) -> str:
    from genroute.policies.stats import BackendStats, BenchStats

    entry = BackendStats(n=50, quality=0.9, latency_p50_s=0.1, latency_p95_s=0.2, cost_per_request_usd=mean)
    free = entry.model_copy(update={"cost_per_request_usd": 0.0})   # every backend needs an estimate
    return str(BenchStats(tasks={"*": {"chat": entry, "cheap": free}}).save(tmp_path / "stats.json"))


def test_500_concurrent_requests_costing_twice_the_mean_stay_within_the_budget(gemini_server, tmp_path):
    """The stats file's mean says COST/2; every answer costs COST. The budget holds mean x cost_margin
    (2 by default) per request, which covers it: still 40 answers and never more than the budget."""
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)

    async def main() -> tuple[list[Any], Any]:
        config = _budget_config(gemini_server, costs={}, stats_path=_stats_file(tmp_path, COST / 2))
        async with Router.from_config(config) as router:
            return await _burst(router), (await router.admission.budget().usage("*"))

    outcomes, ledger = asyncio.run(main())
    answered = [o for o in outcomes if isinstance(o, GenerateResult)]
    assert len(answered) + sum(isinstance(o, BudgetExceeded) for o in outcomes) == REQUESTS
    assert len(answered) == 40 and sum(r.cost_usd for r in answered) <= BUDGET
    assert ledger["spent"] == pytest.approx(40 * COST) and ledger["reserved"] == 0.0


def test_overruns_beyond_the_hold_are_charged_and_bounded_by_one_wave_in_flight(gemini_server, tmp_path):
    """With cost_margin 1 the hold is the mean, COST/2, and every answer costs COST. The server holds every
    answer until all 500 requests were admitted or refused, so all admitted requests are in flight at once.

    Bound (see genroute.policies.budget): spend <= budget + the overruns of the requests in flight when the
    last one was admitted = BUDGET + 81 x (COST - COST/2). The actual costs are charged in full, so the
    ledger then shows the budget spent and the next request is refused: the overspend does not compound.
    """
    gate = threading.Event()

    def held_reply(req: Any) -> Reply:
        gate.wait(120)
        return Reply(parts=({"text": "ok"},), usage=USAGE)

    gemini_server.default_reply = held_reply
    hold = COST / 2

    async def main() -> tuple[list[Any], Any, BaseException | None]:
        config = _budget_config(gemini_server, costs={}, stats_path=_stats_file(tmp_path, hold), cost_margin=1.0)
        async with Router.from_config(config) as router:
            tasks = [asyncio.create_task(router.agenerate(f"request {i}", timeout_s=120)) for i in range(REQUESTS)]
            while sum(t.done() for t in tasks) + len(gemini_server.requests) < REQUESTS:
                await asyncio.sleep(0.02)
            gate.set()
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 240)
            try:
                await router.agenerate("one more", timeout_s=60)
                after = None
            except BudgetExceeded as exc:
                after = exc
            return outcomes, (await router.admission.budget().usage("*")), after

    try:
        outcomes, ledger, after = asyncio.run(main())
    finally:
        gate.set()
    answered = [o for o in outcomes if isinstance(o, GenerateResult)]
    assert len(answered) + sum(isinstance(o, BudgetExceeded) for o in outcomes) == REQUESTS
    in_flight = int(BUDGET / hold + 1e-9)  # every admitted request was in flight at the last admission
    assert len(answered) == in_flight == 81
    spent = sum(r.cost_usd for r in answered)
    assert spent == pytest.approx(in_flight * COST) and ledger["spent"] == pytest.approx(spent)
    assert BUDGET < spent <= BUDGET + in_flight * (COST - hold) + 1e-12
    assert isinstance(after, BudgetExceeded)  # spent > budget: nothing more is admitted


# -- reject mode over several rungs -----------------------------------------------------------------------

def test_every_rung_refused_by_the_budget_raises_budget_exceeded(gemini_server):
    gemini_server.default_reply = lambda req: Reply(parts=({"text": "ok"},), usage=USAGE)
    cascade = {"kind": "cascade", "rungs": [{"backend": "chat"}, {"backend": "cheap"}]}

    async def main(costs: dict[str, float]) -> Any:
        config = _budget_config(gemini_server, inner=cascade, budget_usd=COST / 2, costs=costs)
        async with Router.from_config(config) as router:
            try:
                return await router.agenerate("hi", timeout_s=60)
            except Exception as exc:  # noqa: BLE001 - the type is what is asserted
                return exc

    refused = asyncio.run(main({"chat": COST, "cheap": COST}))
    assert type(refused) is BudgetExceeded, repr(refused)  # not AllRungsFailed wrapping two refusals
    assert "budget '*'" in str(refused)
    assert not gemini_server.requests
    # When a later rung fits, the refusal of the first is just a rung that fell through.
    answered = asyncio.run(main({"chat": COST, "cheap": 0.0}))
    assert isinstance(answered, GenerateResult) and answered.backend == "cheap"
    assert [a.error_type for a in answered.decision.rungs_tried] == ["BudgetExceeded", None]
