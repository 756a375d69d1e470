"""Reconcile what the wire billed with every place genroute reports spend, under unusual but real traffic.

    python benchmarks/cost_reconcile.py [--trials 20] [--shadows 40] [--no-redis]

The loopback Gemini server (genroute.testing) answers with scripted ``usageMetadata``; this script wraps the
server's writer so that it records, for every answer it wrote, the last usage it delivered (a stream cut after k
events: the k-th event's). That usage priced at the list prices below (written out here, not read from genroute's
table: tiers above 200k prompt tokens, cached input, thinking at the output rate, tool-use prompt tokens as input)
is the wire's bill. Each scenario prints it beside the result or error cost, the call spans, the root span, the
``genroute.cost`` metric and the budget ledger (process memory, or redis-server shared by two processes), plus
the shadow spans, outcome records and ``genroute bench`` rows where the scenario has them. ``close under load``
runs sync readers on threads while ``close()`` cuts them at a random moment and counts callers whose error (or
result) cost differs from their own root span's. Run it with ``PYTHONPATH=<older checkout>`` for a before figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
import genroute.testing.server as loopback  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from genroute import GenrouteError, Router  # noqa: E402
from genroute.testing import Fault, GeminiTestServer, Reply  # noqa: E402

#: USD per 1M tokens (Gemini Developer API list prices): input, output, cached input, and the tier above 200k.
PRICES: dict[str, tuple[float, float, float, tuple[float, float, float] | None]] = {
    "gemini-2.5-flash": (0.30, 2.50, 0.03, None),
    "gemini-2.5-flash-lite": (0.10, 0.40, 0.01, None),
    "gemini-2.5-pro": (1.25, 10.0, 0.125, (2.50, 15.0, 0.25)),
}
FLASH, LITE, PRO = "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.5-pro"


def price(model: str, usage: dict[str, int]) -> float:
    """What Gemini bills for one ``usageMetadata``."""
    inp, out, cached_rate, tier = PRICES[model]
    prompt = usage.get("promptTokenCount", 0) + usage.get("toolUsePromptTokenCount", 0)
    if tier is not None and prompt > 200_000:
        inp, out, cached_rate = tier
    cached = usage.get("cachedContentTokenCount", 0)
    output = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
    return ((prompt - cached) * inp + cached * cached_rate + output * out) / 1e6


class Wire:
    """What the server wrote: per answer, the model and the last usage delivered."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, dict[str, int]]] = []
        self._lock = threading.Lock()
        real = loopback.send

        def send(h: Any, response: Any, *, cut_after: int | None = None, stall: Any = None) -> None:
            model = h.path.split("?")[0].rsplit("/", 1)[-1].split(":")[0]
            usage = None
            if response.status == 200 and response.events is not None:
                for event in response.events[:cut_after]:
                    if isinstance(event, dict) and "usageMetadata" in event:
                        usage = event["usageMetadata"]
            elif response.status == 200 and cut_after is None and isinstance(response.body, dict):
                usage = response.body.get("usageMetadata")
            if usage is not None and model in PRICES:
                with self._lock:
                    self.rows.append((model, usage))
            real(h, response, cut_after=cut_after, stall=stall)

        loopback.send = send

    def bill(self) -> float:
        with self._lock:
            return sum(price(m, u) for m, u in self.rows)

    def clear(self) -> None:
        with self._lock:
            self.rows.clear()


WIRE = Wire()


def usage(prompt: int, output: int, **extra: int) -> dict[str, int]:
    found = {"promptTokenCount": prompt, "candidatesTokenCount": output, **extra}
    found["totalTokenCount"] = prompt + output + extra.get("thoughtsTokenCount", 0)
    return found


def body(model: str, used: dict[str, int], text: str = "ok", *, finish: bool = True,
         call: dict[str, Any] | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"functionCall": call} if call else
                                                                         {"text": text}]}, "index": 0}
    if finish:
        candidate["finishReason"] = "STOP"
    return {"candidates": [candidate], "usageMetadata": used, "modelVersion": model}


def chunks(model: str, prompt: int, outputs: list[int], **extra: int) -> list[dict[str, Any]]:
    return [body(model, usage(prompt, n, **extra), f"w{i} " * 3, finish=i == len(outputs) - 1)
            for i, n in enumerate(outputs)]


class Sinks:
    """In-memory OTel providers, and the sums each sink reports."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        tracer = TracerProvider()
        tracer.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.providers = {"tracer_provider": tracer, "meter_provider": MeterProvider(metric_readers=[self.reader])}

    def spans(self, name: str) -> float:
        return sum(float(s.attributes.get("gen_ai.usage.cost.amount", 0.0)) for s in self.exporter.get_finished_spans()
                   if s.name.split(" ")[0] == name)

    def metric(self) -> float:
        data = self.reader.get_metrics_data()
        return sum(p.value for rm in (data.resource_metrics if data else []) for sm in rm.scope_metrics
                   for m in sm.metrics if m.name == "genroute.cost" for p in m.data.data_points)


def config(server: GeminiTestServer, inner: dict[str, Any], **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = {
        "engines": {"gemini": {"kind": "gemini", "base_url": server.base_url, "api_key": "bench",
                               "retry": {"attempts": 3, "initial_backoff_s": 0.01, "max_backoff_s": 0.05,
                                         "jitter_s": 0.0}}},
        "backends": {name: {"kind": "prompt_template", "engine": "gemini", "model": model}
                     for name, model in (("chat", FLASH), ("pro", PRO), ("judge", LITE))},
        "policy": {"kind": "budget", "per": "global", "budget_usd": 100.0, "inner": inner,
                   "costs": {"chat": 0.001, "pro": 0.01, "judge": 0.0005}},
    }
    found.update(extra)
    return found


def ledger(router: Router) -> float:
    out: dict[str, float] = {}
    thread = threading.Thread(target=lambda: out.update(asyncio.run(router.admission.budget().usage("*"))))
    thread.start()
    thread.join()
    return out["spent"] + out["reserved"]


def show(label: str, wire: float, **sinks: float) -> None:
    same = all(abs(v - wire) <= 1e-9 + 1e-9 * wire for v in sinks.values())
    print(f"{label}: wire ${wire:.8f}; " + ", ".join(f"{k} ${v:.8f}" for k, v in sinks.items())
          + (" -> reconciles" if same else " -> DIFFERS"))


def one(label: str, script: Any, inner: dict[str, Any], *, stream: bool, tools: dict[str, Any] | None = None,
        backend: dict[str, Any] | None = None) -> None:
    """One request through a router on a fresh server that ``script`` primes; every sink against the wire."""
    WIRE.clear()
    sinks = Sinks()
    with GeminiTestServer() as server:
        script(server)
        built = config(server, inner)
        built["backends"]["pro"].update(backend or {})
        with Router.from_config(built, tools=tools, **sinks.providers) as router:
            try:
                if stream:
                    *_, last = router.stream("a question", timeout_s=30)
                    outcome: Any = last.result
                else:
                    outcome = router.generate("a question", timeout_s=30)
            except GenrouteError as exc:
                outcome = exc
            spent = ledger(router)
    show(label, WIRE.bill(), result=outcome.cost_usd, calls=sinks.spans("generate_content"),
         root=sinks.spans("genroute.generate"), metric=sinks.metric(), ledger=spent)


def tiered(server: GeminiTestServer, stream: bool) -> None:
    server.fault(Fault.status(429, retry_after=1))
    server.fault(Fault.status(500))
    extra = {"thoughtsTokenCount": 4000, "cachedContentTokenCount": 60_000}
    server.reply_json(chunks(PRO, 250_000, [300, 600, 900], **extra) if stream else
                      body(PRO, usage(250_000, 900, **extra)))


def tool_loop(server: GeminiTestServer) -> None:
    server.reply_json(body(PRO, usage(150_000, 20, thoughtsTokenCount=100), call={"name": "lookup", "args": {"x": 1}}))
    server.fault(Fault.status(503))
    server.reply_json(body(PRO, usage(199_000, 25, cachedContentTokenCount=150_000, toolUsePromptTokenCount=2000),
                           call={"name": "lookup", "args": {"x": 2}}))
    server.reply_json(body(PRO, usage(210_000, 60, thoughtsTokenCount=500, cachedContentTokenCount=199_000)))


def lookup(x: int) -> str:
    """Look ``x`` up."""
    return f"data for {x}"


def judged(server: GeminiTestServer) -> None:
    server.reply_json(body(FLASH, usage(900, 120)))
    server.fault(Fault.status(503))
    server.reply_json(body(LITE, usage(1100, 1), "PASS"))


def shadows(n: int) -> None:
    """``n`` concurrent requests, each with a shadow (at most 16 run at once: the rest are dropped)."""
    WIRE.clear()
    sinks = Sinks()
    with GeminiTestServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.default_reply = lambda req: Reply(raw=body(req.model.rsplit("/", 1)[-1], usage(900, 100)))
        built = config(server, {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["pro"]},
                       outcomes={"path": str(Path(tmp) / "outcomes.db")})

        async def run() -> tuple[float, float]:
            async with await Router.acreate(built, **sinks.providers) as router:
                results = await asyncio.gather(*(router.agenerate(f"question {i}", timeout_s=30) for i in range(n)))
                await router.adrain()
                return sum(r.cost_usd for r in results), ledger(router)
        served, spent = asyncio.run(run())
        from genroute.outcomes import OutcomeStore

        records = OutcomeStore(Path(tmp) / "outcomes.db").records_sync()
    recorded = sum(side.cost_usd for r in records for side in r.outcomes.values())
    ran = sum(1 for r in records if "pro" in r.outcomes)
    show(f"{n} requests with a shadow ({ran} ran, {n - ran} dropped at the cap)", WIRE.bill(),
         served_plus_shadow_spans=served + sinks.spans("genroute.shadow"), calls=sinks.spans("generate_content"),
         metric=sinks.metric(), ledger=spent)
    print(f"   outcome records: {len(records)}, their sides ${recorded:.8f} (the served side of the {n - ran} "
          "requests whose shadow was dropped has no record)")


def bench() -> None:
    """``genroute bench``: two backends and the policy, a judge scorer, streams, faults (429, 500, cut, error event)."""
    from genroute.cli import main

    WIRE.clear()
    with GeminiTestServer() as server, tempfile.TemporaryDirectory() as tmp:
        def reply(req: Any) -> Reply:
            model = req.model.rsplit("/", 1)[-1]
            if model == LITE:
                return Reply(raw=[body(LITE, usage(700, 1), "YES")] if req.stream else body(LITE, usage(700, 1), "YES"))
            events = chunks(model, 1000, [50, 90], thoughtsTokenCount=200)
            return Reply(raw=events if req.stream else events[-1])
        server.default_reply = reply
        for fault in (Fault.status(429, retry_after=1), Fault.status(500), Fault.cut_stream(after_chunks=1),
                      Fault.status(503, after_chunks=1)):
            server.fault(fault)
        data, cfg, out = Path(tmp) / "data.jsonl", Path(tmp) / "config.json", Path(tmp) / "out"
        data.write_text("".join(json.dumps({"input": f"question {i}", "output": "yes"}) + "\n" for i in range(12)))
        built = config(server, {"kind": "cascade", "rungs": [{"backend": "chat"}, {"backend": "pro"}]})
        built["policy"] = built["policy"]["inner"]  # @policy rows: the cascade itself
        cfg.write_text(json.dumps(built))
        main(["bench", str(data), "--config", str(cfg), "--backends", "chat,pro", "--policy", "--scorer",
              "judge:judge", "--out", str(out), "--no-compile", "--quiet", "--concurrency", "3"])
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    failed = sum(not r["ok"] for r in rows)
    show(f"genroute bench, {len(rows)} rows ({failed} failed)", WIRE.bill(),
         rows_cost_plus_judge=sum(r["cost_usd"] + r["judge_cost_usd"] for r in rows))


def close_under_load(trials: int) -> None:
    """Sync readers on 12 threads (streams and generates, servers stalling at random), ``close()`` at random."""
    differ = callers = unended = 0
    for seed in range(trials):
        rng = random.Random(seed)
        sinks = Sinks()
        with GeminiTestServer() as server:
            server.default_reply = lambda req: Reply(
                raw=chunks(FLASH, 1000, [30, 60, 90, 120, 150]) if req.stream else body(FLASH, usage(1000, 150)))
            for _ in range(12):
                server.fault(Fault.delay(rng.uniform(0.2, 3), after_chunks=rng.randint(0, 4)) if rng.random() < 0.6
                             else Fault.delay(rng.uniform(0, 3)))
            router = Router.from_config(config(server, {"kind": "static", "backend": "chat"}), **sinks.providers)
            said: dict[int, float] = {}

            def read(i: int) -> None:
                try:
                    if i % 2:
                        said[i] = router.generate(f"q{i}", task=f"t{i}", timeout_s=30).cost_usd
                        return
                    for chunk in router.stream(f"q{i}", task=f"t{i}", timeout_s=30):
                        time.sleep(rng.uniform(0, 0.05))
                    said[i] = chunk.result.cost_usd
                except GenrouteError as exc:
                    said[i] = exc.cost_usd
            threads = [threading.Thread(target=read, args=(i,)) for i in range(12)]
            for thread in threads:
                thread.start()
            time.sleep(rng.uniform(0.3, 2.0))
            router.close(drain_s=rng.choice([0.0, 0.2, 1.0]))
            for thread in threads:
                thread.join()
        roots = {s.attributes.get("genroute.task"): float(s.attributes.get("gen_ai.usage.cost.amount", 0.0))
                 for s in sinks.exporter.get_finished_spans() if s.name == "genroute.generate"}
        callers += len(said)
        unended += sum(f"t{i}" not in roots and cost > 0 for i, cost in said.items())
        differ += sum(f"t{i}" in roots and abs(roots[f"t{i}"] - cost) > 1e-12 for i, cost in said.items())
    print(f"close under load, {trials} trials: {differ} of {callers} callers' error/result cost differs from "
          f"their root span's ({unended} charged callers' root span had not ended when the close returned)")


def worker(url: str, seed: int, n: int) -> None:
    """One of two processes on one Redis budget: ``n`` concurrent streams, faults at random, holds below cost."""
    rng = random.Random(seed)
    with GeminiTestServer() as server:
        server.default_reply = lambda req: Reply(raw=chunks(FLASH, 2000, [200, 400, 600]))
        for _ in range(n):
            r = rng.random()
            if r < 0.55:
                server.fault([Fault.status(429), Fault.status(500), Fault.cut_stream(after_chunks=1),
                              Fault.status(503, after_chunks=2)][int(r / 0.1375)])
        built = config(server, {"kind": "static", "backend": "chat"}, state={"kind": "redis", "url": url})
        built["policy"].update(budget_usd=0.05, costs={"chat": 0.001, "pro": 0.01, "judge": 0.0005})

        async def run() -> float:
            async with await Router.acreate(built) as router:
                async def read(i: int) -> float:
                    try:
                        async for chunk in router.astream(f"q{seed}-{i}", timeout_s=30):
                            pass
                        return chunk.result.cost_usd
                    except GenrouteError as exc:
                        return exc.cost_usd
                return sum(await asyncio.gather(*(read(i) for i in range(n))))
        reported = asyncio.run(run())
    print(json.dumps({"wire": WIRE.bill(), "reported": reported}))


def redis_two_processes(n: int) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed: shared budget skipped")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory() as data:
        redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", data],
                                 stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            runs = [subprocess.Popen([sys.executable, __file__, "--worker", url, str(seed), str(n)],
                                     stdout=subprocess.PIPE, text=True, env=os.environ) for seed in (1, 2)]
            outs = [json.loads(run.communicate()[0].strip().splitlines()[-1]) for run in runs]
            with GeminiTestServer() as server:
                built = config(server, {"kind": "static", "backend": "chat"}, state={"kind": "redis", "url": url})
                built["policy"]["budget_usd"] = 0.05
                with Router.from_config(built) as router:
                    spent = ledger(router)
        finally:
            redis.terminate()
            redis.wait()
    show(f"2 processes x {n} concurrent streams, one Redis budget of $0.05 (holds below cost: it is overrun)",
         sum(o["wire"] for o in outs), reported=sum(o["reported"] for o in outs), redis_ledger=spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="close-under-load trials (12 callers each)")
    parser.add_argument("--shadows", type=int, default=40, help="concurrent requests with a shadow")
    parser.add_argument("--streams", type=int, default=30, help="streams per process on the shared budget")
    parser.add_argument("--no-redis", action="store_true", help="skip the two processes on redis-server")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), int(args.worker[2]))
        return
    for stream in (False, True):
        how = "stream" if stream else "generate"
        one(f"2.5 Pro above 200k, cached + thinking, after 429 (Retry-After) and 500, {how}",
            lambda s, stream=stream: tiered(s, stream), {"kind": "static", "backend": "pro"}, stream=stream)
    one("tool loop, 3 turns across the 200k tier (tool-use prompt, cached, thinking, a 503)", tool_loop,
        {"kind": "static", "backend": "pro"}, stream=False, tools={"lookup": lookup},
        backend={"kind": "function_calling", "tools": ["lookup"]})
    one("judge validator (a 503 on the judge, retried)", judged,
        {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["judge:judge"]}]}, stream=False)
    shadows(args.shadows)
    bench()
    if not args.no_redis:
        redis_two_processes(args.streams)
    close_under_load(args.trials)


if __name__ == "__main__":
    main()
