"""Shared state across processes: one budget for four processes, admission overhead, a hanging backend.

    python benchmarks/shared_state.py budget   [--processes 4 --requests 200]   # redis vs memory state
    python benchmarks/shared_state.py overhead [--n 3000 --baseline DIR]         # µs per request, vs a bare span
    python benchmarks/shared_state.py breaker  [--seconds 10 --clients 20]       # req/s with/without breakers

Each starts its own ``redis-server`` (Debian's package; ``scripts/install.sh`` installs it) on a free port and
the loopback Gemini server in this process; workers are separate Python processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# A worker may run another checkout's code (``overhead --baseline``): that checkout comes first on the path.
if "GENROUTE_BENCH_CODE" in os.environ:
    sys.path.insert(0, os.environ["GENROUTE_BENCH_CODE"])

from genroute import BudgetExceeded, GenrouteError, Router  # noqa: E402
from genroute.testing import GeminiTestServer, Reply  # noqa: E402

IN, OUT = 0.30 / 1e6, 2.50 / 1e6  # gemini-2.5-flash list prices per token
MAX_COST = 1000 * IN + 500 * OUT  # the most one answer costs here (1,000 tokens in, at most 500 out)


# -- helpers --------------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port nothing listens on (now) on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A throwaway redis-server on a free loopback port (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (scripts/install.sh installs it)")
        self.port = free_port() if port is None else port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no"], stdout=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        sys.exit("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def workers(mode: str, configs: list[dict[str, Any]], *extra: str) -> list[dict[str, Any]]:
    """Run one worker process per config, start them together, return what each printed."""
    procs = [subprocess.Popen([sys.executable, __file__, "worker", mode, json.dumps(c), *extra], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for c in configs]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    return [json.loads(p.communicate(timeout=600)[0]) for p in procs]


def base_config(server: GeminiTestServer, state: dict[str, Any], *, timeout_s: float = 10.0,
                attempts: int = 2) -> dict[str, Any]:
    return {
        "engines": {"gemini": {"kind": "gemini", "base_url": server.base_url, "api_key": "bench-key",
                               "timeout_s": timeout_s,
                               "retry": {"attempts": attempts, "initial_backoff_s": 0.01, "max_backoff_s": 0.05,
                                         "jitter_s": 0.0}}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"},
                     "backup": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash-lite"}},
        "state": state,
    }


# -- 1. one budget, four processes ----------------------------------------------------------------------

async def budget_worker(config: dict[str, Any], n: int) -> dict[str, Any]:
    async with Router.from_config(config) as router:
        await router.state.usage("warm-up")  # connected before the start, as a running replica would be
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        tasks = [asyncio.create_task(router.agenerate(f"question {i}", timeout_s=30)) for i in range(n)]
        done, pending = await asyncio.wait(tasks, timeout=90)  # a request still running then is hung
        for task in pending:
            task.cancel()
        kinds: Counter[str] = Counter()
        settled = 0.0
        for task in done:
            error = task.exception()
            kinds["answered" if error is None else type(error).__name__] += 1
            settled += task.result().cost_usd if error is None else getattr(error, "cost_usd", 0.0)
        usage = await router.admission.budget().usage("*")
    return {"outcomes": dict(kinds), "hung": len(pending), "settled_usd": settled, "store": usage,
            "fallbacks": getattr(router.state, "fallbacks", 0)}


async def _final_usage(config: dict[str, Any]) -> dict[str, float]:
    async with Router.from_config(config) as router:
        return await router.admission.budget().usage("*")


def bench_budget(args: argparse.Namespace) -> None:
    from load import FaultyServer

    budget = 100 * MAX_COST
    rng = random.Random(0)
    lock = threading.Lock()

    def reply(_: Any) -> Reply:
        with lock:
            out = rng.randint(100, 500)
        return Reply(parts=({"text": "ok"},), usage=(1000, out))

    redis = RedisProcess()
    try:
        print(f"{args.processes} processes x {args.requests} concurrent requests, one global budget of "
              f"${budget:.4f} (100 x the most one answer costs), 5 % faults (load.py's mix; 'slow' = 6 s against a 5 s attempt timeout), one attempt per call")
        print(f"{'state':8} {'answered':>8} {'refused':>8} {'errors':>7} {'lost':>5} {'hung':>5} "
              f"{'settled $':>10} {'x budget':>8} {'server answers':>14}")
        for kind in ("redis", "memory"):
            with FaultyServer(rate=0.05, seed=1, attempt_timeout_s=5.0) as server:
                server.default_reply = reply
                # A 5 s command timeout: 200 requests in flight per process on 2 busy cores read replies late.
                state = {"kind": "redis", "url": redis.url, "prefix": f"bench{time.time_ns()}:", "timeout_s": 5} \
                    if kind == "redis" else {"kind": "memory"}
                config = base_config(server, state, timeout_s=5.0, attempts=1)
                # The hold is an upper bound on a rung's cost (one attempt; a timed-out one is charged its input).
                config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"},
                                    "per": "global", "budget_usd": budget, "costs": {"chat": MAX_COST}}
                results = workers("budget", [config] * args.processes, str(args.requests))
                answers = sum(1 for r in server.requests if r.action == "generateContent")
            outcomes: Counter[str] = Counter()
            for r in results:
                outcomes.update(r["outcomes"])
            answered, refused = outcomes.pop("answered", 0), outcomes.pop("BudgetExceeded", 0)
            errors = sum(outcomes.values())
            total = args.processes * args.requests
            lost = total - answered - refused - errors - sum(r["hung"] for r in results)
            settled = sum(r["settled_usd"] for r in results)
            print(f"{kind:8} {answered:8d} {refused:8d} {errors:7d} {lost:5d} {sum(r['hung'] for r in results):5d} "
                  f"{settled:10.4f} {settled / budget:8.2f} {answers:14d}")
            if kind == "redis":
                final = asyncio.run(_final_usage(config))
                print(f"{'':8} the shared store after the run: spent ${final['spent']:.4f}, "
                      f"held ${final['reserved']:.4f}; store calls answered from memory (Redis too slow): "
                      f"{sum(r['fallbacks'] for r in results)}")
            if outcomes:
                print(f"{'':8} errors: {dict(outcomes)}")
    finally:
        redis.stop()


# -- 2. admission overhead ------------------------------------------------------------------------------

async def _admission_us(router: Router, n: int) -> list[float]:
    from opentelemetry import trace

    from genroute.admission import Outcome
    from genroute.types import GenerateRequest

    admission, breakers = router.admission, router._breakers
    assert admission is not None and breakers is not None
    request = GenerateRequest(input="what is the capital of France?")
    decision = await router.adecide(request)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await breakers.health()  # the decision's breaker view (a store read at most every refresh_s)
        ticket = await admission.enter(request, decision, "chat", time.monotonic() + 30, trace.INVALID_SPAN)
        await admission.exit(ticket, Outcome(cost_usd=0.001, input_tokens=9))
        samples.append((time.perf_counter() - start) * 1e6)
    return samples


def overhead_config(server: GeminiTestServer, state: dict[str, Any]) -> dict[str, Any]:
    """A budget, one rate limit (rpm and tpm) and breakers: every gate an admission can pass."""
    config = base_config(server, state)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"},
                        "per": "global", "budget_usd": 1e9, "costs": {"chat": 0.01}}
    config["rate_limits"] = [{"engine": "gemini", "model": "gemini-2.5-flash", "rpm": 10**9, "tpm": 10**12}]
    config["breakers"] = {}
    return config


def overhead_worker(config: dict[str, Any]) -> None:
    """Measure admission in this process (with whatever genroute is first on the path): one line in, samples out."""
    loop = asyncio.new_event_loop()
    router = Router.from_config(config)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        print(json.dumps(loop.run_until_complete(_admission_us(router, int(line)))), flush=True)
    loop.run_until_complete(router.aclose())
    loop.close()


class OverheadWorker:
    """``overhead_worker`` in its own process, with the code of ``tree`` (a checkout of genroute)."""

    def __init__(self, tree: Path, config: dict[str, Any]) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree), "GENROUTE_BENCH_CODE": str(tree)}
        self.process = subprocess.Popen([sys.executable, __file__, "worker", "overhead", json.dumps(config)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None and self.process.stdout.readline().strip() == "ready"

    def samples(self, n: int) -> list[float]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{n}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.communicate("\n", timeout=60)


def bench_overhead(args: argparse.Namespace) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    tracer = provider.get_tracer("bench")
    attrs = {f"attr.{i}": i for i in range(10)}
    redis = RedisProcess()
    remote: dict[str, OverheadWorker] = {}
    try:
        with GeminiTestServer() as server:
            redis_state = {"kind": "redis", "url": redis.url}
            trees = {"": HERE.parent}
            if args.baseline:
                trees[f", baseline ({args.baseline_label or Path(args.baseline).name})"] = Path(args.baseline)
            for i, (label, tree) in enumerate(trees.items()):  # each in its own process; redis: own key prefix
                remote[f"memory{label}"] = OverheadWorker(tree, overhead_config(server, {"kind": "memory"}))
                remote[f"redis{label}"] = OverheadWorker(tree, overhead_config(server, {**redis_state,
                                                                                      "prefix": f"o{i}:"}))
            rounds: dict[str, list[float]] = {"bare OTel SDK span (10 attrs)": [], **{k: [] for k in remote}}
            for _ in range(args.rounds):  # interleaved rounds: load on the shared machine hits all alike
                for kind, worker in remote.items():
                    rounds[kind] += worker.samples(args.n // args.rounds)
                for _ in range(args.n // args.rounds):
                    start = time.perf_counter()
                    tracer.start_span("bare", attributes=attrs).end()
                    rounds["bare OTel SDK span (10 attrs)"].append((time.perf_counter() - start) * 1e6)
            print(f"admission per request (breaker view + budget hold/settle + rpm/tpm holds/settles), n={args.n}, "
                  f"load {os.getloadavg()[0]:.1f}")
            print(f"{'':56} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9}")
            for kind, samples in rounds.items():
                q = statistics.quantiles(samples, n=100)
                print(f"{kind:56} {statistics.median(samples):9.1f} {q[89]:9.1f} {q[98]:9.1f}")
    finally:
        for worker in remote.values():
            worker.stop()
        redis.stop()


# -- 3. a hanging backend -------------------------------------------------------------------------------

async def load_worker(config: dict[str, Any], seconds: float, clients: int) -> dict[str, Any]:
    """``clients`` loops sending requests for ``seconds``; successes per second and when chat was first skipped."""
    async with Router.from_config(config) as router:
        await router.state.usage("warm-up")  # connected before the start, as a running replica would be
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        ok = 0
        first_skip: float | None = None
        stop = time.monotonic() + seconds

        async def client() -> None:
            nonlocal ok, first_skip
            while time.monotonic() < stop:
                sent = time.time()
                try:
                    result = await router.agenerate("a question", timeout_s=10)
                except GenrouteError:
                    continue
                ok += 1
                if "breaker open" in result.decision.reason and (first_skip is None or sent < first_skip):
                    first_skip = sent

        await asyncio.gather(*(client() for _ in range(clients)))
    return {"ok": ok, "rps": ok / seconds, "first_skip": first_skip}


def bench_breaker(args: argparse.Namespace) -> None:
    import redis as redis_py

    hang = threading.Event()

    def reply(request: Any) -> Reply:
        if "lite" not in request.path:
            hang.wait(30)  # the chat model hangs (until the benchmark ends)
        return Reply(parts=({"text": "ok"},), usage=(100, 20))

    redis = RedisProcess()
    try:
        with GeminiTestServer() as server:
            server.default_reply = reply
            print(f"chat's model hangs; per-attempt timeout 1 s, one attempt; cascade chat -> backup; "
                  f"{args.clients} clients x {args.seconds:g} s")
            for label, breakers in (("no breaker", None), ("breaker", {"failures": 5, "cooldown_s": 60})):
                config = base_config(server, {"kind": "redis", "url": redis.url, "prefix": f"b{time.time_ns()}:"},
                                     timeout_s=1.0, attempts=1)
                config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}, {"backend": "backup"}]}
                if breakers is not None:
                    config["breakers"] = breakers
                (result,) = workers("load", [config], str(args.seconds), str(args.clients))
                print(f"  {label:11} {result['rps']:8.1f} successful req/s ({result['ok']} answers)")
            # Visibility: process A trips the breaker; B, sharing the store, only sends (it never fails itself).
            prefix = f"v{time.time_ns()}:"
            config = base_config(server, {"kind": "redis", "url": redis.url, "prefix": prefix}, timeout_s=1.0, attempts=1)
            config["breakers"] = {"failures": 5, "cooldown_s": 60}
            config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}, {"backend": "backup"}]}
            watcher = {**config, "policy": {"kind": "cascade", "rungs": [{"backend": "backup"}, {"backend": "chat"}]}}
            opened: list[float] = []
            client = redis_py.Redis.from_url(redis.url)

            def watch() -> None:  # when the breaker opened, by the store's own record (polled every 2 ms)
                while not opened:
                    if client.hget(f"{prefix}b:backend:chat", "until"):
                        opened.append(time.time())
                    time.sleep(0.002)

            threading.Thread(target=watch, daemon=True).start()
            results = workers("visibility", [config, watcher], str(args.seconds), str(args.clients))
            seen = results[1]["first_skip_chat"]
            if opened and seen:
                print(f"  another process saw the breaker open {1000 * (seen - opened[0]):.0f} ms after it opened "
                      f"(refresh_s 0.5; the watcher decides every 20 ms)")
    finally:
        hang.set()
        redis.stop()


async def visibility_worker(config: dict[str, Any], seconds: float, clients: int) -> dict[str, Any]:
    """A (chat first) fails on chat and opens the breaker; B (backup first) notes its first decision without chat."""
    watcher = config["policy"]["rungs"][0]["backend"] == "backup"
    if not watcher:
        return await load_worker(config, seconds, clients)
    async with Router.from_config(config) as router:
        await router.state.usage("warm-up")  # connected before the start, as a running replica would be
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        first: float | None = None
        stop = time.monotonic() + seconds
        while time.monotonic() < stop and first is None:
            sent = time.time()
            decision = await router._adecide(router._request("probe", {}))
            if any(r.backend == "chat" for r in decision.rungs):
                await asyncio.sleep(0.02)
                continue
            first = sent
    return {"first_skip_chat": first}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("budget")
    b.add_argument("--processes", type=int, default=4)
    b.add_argument("--requests", type=int, default=200)
    o = sub.add_parser("overhead")
    o.add_argument("--n", type=int, default=3000)
    o.add_argument("--rounds", type=int, default=5)
    o.add_argument("--baseline", help="a checkout of genroute to compare with, side by side (e.g. a `git worktree "
                   "add` of the commit before a change); its redis admission runs in its own process")
    o.add_argument("--baseline-label", help="the baseline's name in the table (default: its directory name)")
    h = sub.add_parser("breaker")
    h.add_argument("--seconds", type=float, default=10.0)
    h.add_argument("--clients", type=int, default=20)
    w = sub.add_parser("worker")
    w.add_argument("mode")
    w.add_argument("config")
    w.add_argument("extra", nargs="*")
    args = parser.parse_args()
    if args.what == "worker":
        config = json.loads(args.config)
        if args.mode == "overhead":
            overhead_worker(config)
            return
        if args.mode == "budget":
            coro = budget_worker(config, int(args.extra[0]))
        elif args.mode == "load":
            coro = load_worker(config, float(args.extra[0]), int(args.extra[1]))
        else:
            coro = visibility_worker(config, float(args.extra[0]), int(args.extra[1]))
        print(json.dumps(asyncio.run(coro)), flush=True)
        return
    {"budget": bench_budget, "overhead": bench_overhead, "breaker": bench_breaker}[args.what](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(HERE.parent))
    main()
