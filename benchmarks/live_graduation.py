"""Throughput while the graduation API is in use: 16 threads of sync requests, with and without a thread that keeps
calling ``promote`` / ``rollback`` / ``refresh`` on the same router, side by side in one run.

    python benchmarks/live_graduation.py [--seconds 10] [--threads 16] [--rounds 2] [--records 2000]
                                         [--examples 2000] [--backend icl|chat] [--policy static|learned]
                                         [--refreshes 5]

The router is built as an application with live graduation would build it: two Gemini backends on the loopback
server (``genroute.testing``, in its own process), an ICL backend (``fixed`` selector) over an embedded Chroma
collection of ``--examples`` examples, the task wrapped in a ``challenger`` (``pro``, shadow, share 0.01) around a
``static`` policy sending it to ``--backend`` (``--policy learned``: a ``learned`` policy, default ``--backend``,
trained at the start on the records, which then carry inputs: 200 distinct texts), and an ``outcomes`` SQLite store
seeded with ``--records`` paired records (what ``refresh`` reads and rebuilds the policy from). The request threads call ``router.generate``
(the sync API: one loop thread serves them all); the control thread, in the "with control calls" runs, loops
``promote(task, "pro")``, ``rollback(task)``, ``refresh()`` back to back. Each round runs both cases for
``--seconds`` each; figures are requests per second (median of rounds), the control calls made per second, and
the slowest request seen (p99 and max, ms). Before the rounds, ``--refreshes`` refreshes with nothing new to read
are timed one by one after the warm-up (the example pool read by its requests), 2.5 s after the last write to the
examples (median wall and process CPU time, ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import loopback_server  # noqa: E402

TASK = "sentiment"


def _router(base_url: str, root: Path, records: int, examples_n: int, backend: str, policy: str) -> Any:
    from genroute import Router
    from genroute.knowledge.examples import aload_examples
    from genroute.outcomes.records import OutcomeRecord, Side
    from genroute.outcomes.stats import training_rows
    from genroute.outcomes.store import OutcomeStore
    from genroute.policies.learned import train

    path = root / "outcomes.db"
    store = OutcomeStore(path)
    learned = policy == "learned"
    store.upsert_many_sync([
        OutcomeRecord(id=f"r{i}", task=TASK, input=f"review {i % 200}" if learned else None,
                      output="positive" if learned else None, outcomes={"chat": Side(score=float(i % 3 != 0), cost_usd=1e-5,
                                                                           latency_s=0.01),
                                                       "pro": Side(score=float(i % 4 != 0), cost_usd=4e-5,
                                                                          latency_s=0.02)})
        for i in range(records)])
    examples = root / "examples.jsonl"
    examples.write_text("".join(json.dumps({"input": f"review {i}", "output": "positive", "metadata": {"task": TASK}})
                                + "\n" for i in range(examples_n)))
    engine = {"kind": "gemini", "api_key": "bench-key", "base_url": base_url}
    config = {
        "engines": {"g": engine},
        "knowledge": {"path": str(root / "chroma"), "embedder": {"kind": "local"}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash",
                              "tasks": [TASK]},
                     "pro": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-pro", "tasks": [TASK]},
                     "icl": {"kind": "icl", "engine": "g", "model": "gemini-2.5-flash", "collection": "examples",
                             "selector": "fixed",
                             "tasks": [TASK]}},
        "policy": {"kind": "challenger", "task": TASK, "backend": "pro", "mode": "shadow", "share": 0.01,
                   "policy": {"kind": "static", "backend": backend}},
        "outcomes": {"path": str(path), "scorer": "normalized_exact", "min_n": 20},
        "timeout_s": 60,
    }
    if learned:
        train(training_rows(store.records_sync()), root / "learned.npz", test_share=0.0)
        config["policy"]["policy"] = {"kind": "learned", "model_path": str(root / "learned.npz"), "default": backend}
    router = Router.from_config(config)
    router._portal.call(aload_examples(router.resources.knowledge, [examples], collection="examples"))
    router.refresh()  # the ICL backend counts its examples
    return router


def _run(router: Any, seconds: float, threads: int, control: bool) -> tuple[float, float, float, float]:
    """Requests/s, control calls/s, p99 and max request latency (ms) over ``seconds``."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    calls = [0]

    def requests(mine: list[float]) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            router.generate("hello", task=TASK)
            mine.append(time.perf_counter() - start)

    def controls() -> None:
        while not stop.is_set():
            router.promote(TASK, "pro")
            router.rollback(TASK)
            router.refresh()
            calls[0] += 3

    workers = [threading.Thread(target=requests, args=(mine,)) for mine in latencies]
    if control:
        workers.append(threading.Thread(target=controls))
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - start
    every = sorted(t for mine in latencies for t in mine)
    p99 = every[min(len(every) - 1, int(len(every) * 0.99))] * 1e3
    return len(every) / wall, calls[0] / wall, p99, every[-1] * 1e3


def _refresh_times(router: Any, n: int) -> tuple[float, float]:
    """Median wall and process CPU time (ms) of ``n`` refreshes in a row, nothing written meanwhile."""
    wall, cpu = [], []
    for _ in range(n):
        start, start_cpu = time.perf_counter(), time.process_time()
        router.refresh()
        wall.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--backend", choices=("icl", "chat"), default="icl")
    parser.add_argument("--policy", choices=("static", "learned"), default="static")
    parser.add_argument("--refreshes", type=int, default=5)
    args = parser.parse_args()
    with loopback_server() as url, tempfile.TemporaryDirectory() as tmp:
        router = _router(url, Path(tmp), args.records, args.examples, args.backend, args.policy)
        try:
            _run(router, 1.0, args.threads, control=True)  # warm-up: connections, imports, the first refresh
            if args.refreshes:
                router.drain()  # the warm-up's shadow records written
                time.sleep(2.5)  # the setup's writes settled: an embedded store's file is trusted after 2 s
                wall, cpu = _refresh_times(router, args.refreshes)
                print(f"one refresh with nothing new ({args.policy} policy, median of {args.refreshes}): "
                      f"{wall:.1f} ms wall, {cpu:.1f} ms CPU", flush=True)
            rounds: dict[bool, list[tuple[float, float, float, float]]] = {False: [], True: []}
            for n in range(args.rounds):
                for control in (False, True):
                    rounds[control].append(_run(router, args.seconds, args.threads, control))
                print(f"round {n + 1}: " + ", ".join(
                    f"{'with' if c else 'without'} control calls {r[-1][0]:.0f} req/s" for c, r in rounds.items()),
                    flush=True)
        finally:
            router.close()
    print(f"\n{args.threads} request threads to {args.backend}, {args.seconds:.0f} s per case, {args.rounds} rounds, "
          f"{args.records} outcome records, {args.examples} examples (medians of rounds):")
    for control, runs in rounds.items():
        name = "with promote/rollback/refresh" if control else "requests only"
        print(f"  {name:30} {statistics.median(r[0] for r in runs):7.0f} req/s   control calls "
              f"{statistics.median(r[1] for r in runs):6.1f}/s   p99 {statistics.median(r[2] for r in runs):7.1f} ms"
              f"   max {statistics.median(r[3] for r in runs):7.1f} ms")


if __name__ == "__main__":
    main()
