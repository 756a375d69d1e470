"""Per-request decide + retrieve latency with a semantic policy in front of kNN ICL, the request embedded twice (each
part embeds it, as before) or once (the selection reuses the policy's vector, as a router now does), side by side.

Usage::

    python benchmarks/embed_once.py --requests 200 --rounds 3

The offline MiniLM embedder, an embedded Chroma store of 200 examples in a temp dir, the policy's own cache of
request embeddings off (``cache_size: 0``: every request is new to it). Both ways run interleaved, request by
request (alternating which goes first), so that load on the shared cores falls on both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute import Router
from genroute.knowledge import aload_examples
from genroute.policies.base import PolicyContext
from genroute.runtime.embeddings import RequestEmbeddings, remembering
from genroute.types import GenerateRequest

TOPICS = ("card delivery", "cash top up", "atm fee", "exchange rate", "pin reset", "refund", "transfer limit",
          "account closure", "lost phone", "statement")
ROUTES = {"icl": ["my card has not arrived", "what exchange rate do you use", "why was I charged a fee"],
          "chat": ["tell me a joke", "write a poem about the sea"]}


def config(root: Path) -> dict[str, Any]:
    flash = {"engine": "g", "model": "gemini-2.5-flash"}
    return {"engines": {"g": {"kind": "gemini", "api_key": "unused", "base_url": "http://127.0.0.1:9"}},
            "knowledge": {"path": str(root / "chroma")},
            "backends": {"icl": {"kind": "icl", "collection": "shots", "selector": "knn", "k": 4, **flash},
                         "chat": {"kind": "prompt_template", **flash}},
            "policy": {"kind": "semantic", "routes": ROUTES, "default": "chat", "cache_size": 0}}


async def one(policy: Any, examples: Any, text: str, *, once: bool) -> float:
    """Seconds to decide on ``text`` and select its examples, embedding it once or twice."""
    request = GenerateRequest(input=text)
    started = time.perf_counter()
    if once:
        with remembering(RequestEmbeddings()) as embeddings:
            policy.decide(request, PolicyContext(catalogue={}))
        await examples.select(text, strategy="knn", k=4, embeddings=embeddings)
    else:
        policy.decide(request, PolicyContext(catalogue={}))
        await examples.select(text, strategy="knn", k=4)
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shots = root / "shots.jsonl"
        shots.write_text("".join(json.dumps({"input": f"question {i} about {TOPICS[i % len(TOPICS)]}",
                                             "output": TOPICS[i % len(TOPICS)]}) + "\n" for i in range(200)))
        router = await Router.acreate(config(root))
        try:
            await aload_examples(router.resources.knowledge, [shots], collection="shots")
            policy, examples = router.policy, router.backends["icl"].examples  # type: ignore[attr-defined]
            for i in range(10):  # warm: the model, Chroma's index, the pool
                await one(policy, examples, f"warm {i}", once=bool(i % 2))
            print(f"{'round':>5} {'twice p50 ms':>13} {'once p50 ms':>12} {'twice p90 ms':>13} {'once p90 ms':>12} "
                  f"{'saved p50 ms':>13}")
            for r in range(args.rounds):
                twice: list[float] = []
                once: list[float] = []
                for i in range(args.requests):
                    text = f"round {r} request {i}: where is my {TOPICS[i % len(TOPICS)]}?"  # new to every cache
                    order = (True, False) if i % 2 else (False, True)
                    for shared in order:
                        (once if shared else twice).append(
                            await one(policy, examples, text + (" (b)" if shared else " (a)"), once=shared))
                p50 = (statistics.median(twice) * 1e3, statistics.median(once) * 1e3)
                p90 = (statistics.quantiles(twice, n=10)[-1] * 1e3, statistics.quantiles(once, n=10)[-1] * 1e3)
                print(f"{r:>5} {p50[0]:>13.2f} {p50[1]:>12.2f} {p90[0]:>13.2f} {p90[1]:>12.2f} "
                      f"{p50[0] - p50[1]:>13.2f}")
        finally:
            await router.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
