"""Cost of every call: what failed, timed-out, cancelled, cut and abandoned calls are charged, against the wire.

    python benchmarks/cost_probe.py [--n 20]

Each probe runs the real google-genai client against the loopback Gemini server (genroute.testing) through a
router whose policy is a global budget (gemini-2.5-flash list prices), and prints per probe: how many calls,
what the provider would bill by the server's own record (the input tokens of every request it received for
calls that lost their answer; the usage the last chunk delivered reported for streams), what genroute charged
(the budget ledger's settled spend, and the cost the results/errors report), and what the budget admitted.
Stream events are scripted raw with ``usageMetadata`` on every chunk, as Gemini sends them, so the probe runs
unchanged against older genroute versions (``PYTHONPATH=<old checkout>``) to show the figures before a fix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
from typing import Any


import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute import BudgetExceeded, GenrouteError, Router  # noqa: E402
from genroute.testing import Fault, GeminiTestServer  # noqa: E402
from genroute.testing.replies import prompt_tokens  # noqa: E402

IN, OUT, CACHED = 0.30 / 1e6, 2.50 / 1e6, 0.03 / 1e6  # gemini-2.5-flash, USD per token
ANSWER = 1000 * IN + 500 * OUT  # one answer of 1,000 input / 500 output tokens


def events(chunks: int = 3) -> list[dict[str, Any]]:
    """A streamed answer of 1,000/500 tokens in ``chunks`` events, each with the usage so far."""
    out = []
    for i in range(1, chunks + 1):
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": f"part {i} " * 20}]}, "index": 0}
        if i == chunks:
            candidate["finishReason"] = "STOP"
        usage = {"promptTokenCount": 1000, "candidatesTokenCount": round(500 * i / chunks),
                 "totalTokenCount": 1000 + round(500 * i / chunks)}
        out.append({"candidates": [candidate], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"})
    return out


def config(server: GeminiTestServer, budget_usd: float, **engine: Any) -> dict[str, Any]:
    """One gemini-2.5-flash backend under a global budget that holds one answer per request."""
    return {
        "engines": {"gemini": {"kind": "gemini", "base_url": server.base_url, "api_key": "bench-key",
                               "retry": {"attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.05,
                                         "jitter_s": 0.0}, **engine}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
        "policy": {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                   "budget_usd": budget_usd, "costs": {"chat": ANSWER}},
    }


async def budget_usage(router: Router) -> dict[str, float]:
    """Spent and held USD of the global budget (the admission gate's; a router's own ledger before it)."""
    admission = getattr(router, "admission", None)
    if admission is not None:
        return await admission.budget().usage("*")
    return router.policy.ledger.snapshot()["*"]


def wire_input_cost(server: GeminiTestServer) -> float:
    """The input cost of every generate/stream request the server received (its own token count)."""
    return sum(prompt_tokens(r.body) * IN for r in server.requests if r.action and "enerate" in r.action)


def reported(outcomes: list[Any]) -> float:
    """The cost the results and errors report (0 where a version reports none)."""
    return sum(getattr(o, "cost_usd", 0.0) or 0.0 for o in outcomes)


async def abandoned(n: int, use_aclosing: bool) -> dict[str, Any]:
    """``n`` astream calls that stop after the first chunk, under a budget for three answers."""
    with GeminiTestServer() as server:
        for _ in range(n):
            server.reply_json(events())
        admitted = refused = 0
        async with Router.from_config(config(server, 3 * ANSWER)) as router:
            for i in range(n):
                try:
                    if use_aclosing:
                        async with contextlib.aclosing(router.astream(f"question {i}")) as chunks:
                            async for _ in chunks:
                                break
                    else:
                        async for _ in router.astream(f"question {i}"):
                            break
                        gc.collect()
                        await asyncio.sleep(0.05)  # the loop's finalizer closes the abandoned generator
                    admitted += 1
                except BudgetExceeded:
                    refused += 1
            ledger = await budget_usage(router)
        bill = admitted * (1000 * IN + round(500 / 3) * OUT)
        return {"calls": n, "admitted": admitted, "refused": refused, "wire_bill": bill,
                "ledger_spent": ledger["spent"], "reserved": ledger["reserved"], "budget": 3 * ANSWER}


async def timed_out(n: int) -> dict[str, Any]:
    """``n`` requests whose three attempts each outlive the attempt timeout (the server finishes them)."""
    with GeminiTestServer() as server:
        server.fault(Fault.delay(3), times=3 * n)
        async with Router.from_config(config(server, 1000 * ANSWER, timeout_s=0.5)) as router:
            outcomes = await asyncio.gather(*(router.agenerate(f"a question that takes long, number {i}",
                                                               timeout_s=30) for i in range(n)),
                                            return_exceptions=True)
            ledger = await budget_usage(router)
        return {"calls": n, "processed": len(server.requests), "wire_bill": wire_input_cost(server),
                "ledger_spent": ledger["spent"], "reported": reported(outcomes), "reserved": ledger["reserved"],
                "errors": sum(isinstance(o, GenrouteError) for o in outcomes)}


async def cancelled(n: int) -> dict[str, Any]:
    """``n`` requests cancelled by their caller while the server works on them."""
    with GeminiTestServer() as server:
        server.fault(Fault.delay(5), times=n)
        async with Router.from_config(config(server, 1000 * ANSWER)) as router:
            tasks = [asyncio.create_task(router.agenerate(f"cancel me {i}")) for i in range(n)]
            while len(server.requests) < n:
                await asyncio.sleep(0.01)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            ledger = await budget_usage(router)
        return {"calls": n, "processed": len(server.requests), "wire_bill": wire_input_cost(server),
                "ledger_spent": ledger["spent"], "reserved": ledger["reserved"]}


async def cut(n: int, fault: Fault, delivered: int) -> dict[str, Any]:
    """``n`` streams cut (or failing) after ``delivered`` chunks."""
    with GeminiTestServer() as server:
        for _ in range(n):
            server.reply_json(events())
            server.fault(fault)
        outcomes: list[Any] = []
        async with Router.from_config(config(server, 1000 * ANSWER)) as router:
            for i in range(n):
                try:
                    async with contextlib.aclosing(router.astream(f"story {i}")) as chunks:
                        async for _ in chunks:
                            pass
                except GenrouteError as exc:
                    outcomes.append(exc)
            ledger = await budget_usage(router)
        bill = n * (1000 * IN + round(500 * delivered / 3) * OUT)
        return {"calls": n, "errors": len(outcomes), "wire_bill": bill, "ledger_spent": ledger["spent"],
                "reported": reported(outcomes), "reserved": ledger["reserved"]}


async def implicit_cache(n: int) -> dict[str, Any]:
    """``n`` answers whose usage reports an implicit cache hit of 4,096 of 5,000 prompt tokens."""
    body = {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP",
                            "index": 0}],
            "usageMetadata": {"promptTokenCount": 5000, "candidatesTokenCount": 100,
                              "cachedContentTokenCount": 4096, "totalTokenCount": 5100}}
    with GeminiTestServer() as server:
        server.reply_json(body, times=n)
        async with Router.from_config(config(server, 1000 * ANSWER)) as router:
            results = [await router.agenerate(f"shared prefix, question {i}") for i in range(n)]
            ledger = await budget_usage(router)
        bill = n * (904 * IN + 4096 * CACHED + 100 * OUT)
        return {"calls": n, "wire_bill": bill, "ledger_spent": ledger["spent"], "reported": reported(results)}


async def main(n: int) -> None:
    probes = [
        ("astream stopped after 1 chunk (aclosing), budget for 3 answers", abandoned(30, True)),
        ("astream stopped after 1 chunk (no aclosing), budget for 3 answers", abandoned(30, False)),
        (f"{n // 4} requests, every attempt times out (3 attempts each)", timed_out(max(1, n // 4))),
        (f"{n} requests cancelled on the wire", cancelled(n)),
        (f"{n} streams cut after 1 of 3 chunks", cut(n, Fault.cut_stream(after_chunks=1), 1)),
        (f"{n} streams failing (500 event) after 2 of 3 chunks", cut(n, Fault.status(500, after_chunks=2), 2)),
        (f"{n} answers with an implicit cache hit", implicit_cache(n)),
    ]
    for label, probe in probes:
        figures = await probe
        print(f"{label}:")
        print("   " + ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="calls per probe (the budget probes use 30)")
    args = parser.parse_args()
    asyncio.run(main(args.n))
