"""Where genroute's own per-request work is: bytecode instructions (opcodes) each function runs, counted exactly.

    python benchmarks/own_opcodes.py [--n 20] [--top 30] [--by function|file|part] [--no-tracer]   # ~10 s

Opcodes are a proxy for ``overhead_instructions.py``'s CPU instructions (about 110 instructions an opcode for
genroute's code) that needs no valgrind and takes seconds, so it shows which function a change should look at.
``sys.settrace`` (``f_trace_opcodes``) counts every opcode of ``--n`` requests, after a warm-up, for
``router.agenerate`` on the loopback Gemini server (OTel SDK tracer, spans discarded; ``--no-tracer``: the API's
no-op one) and for google-genai's async call plus the telemetry contract's spans made directly (``mandated`` of
``overhead_instructions.py``). Printed: the opcodes a request of each, genroute's own files' total, what ``Floor``
(``overhead_instructions.py``: the same request as one straight-line coroutine doing what the router does for it)
runs beyond the direct call and the contract, and the functions (or files) where the routed request runs more
opcodes than the direct one, largest first.
``--by part`` sums them by what the router does for a request (``PARTS``: parsing it, the root span and the
decision, the deadline, the in-flight registry, ...), so that what each of those costs, and what a target would
leave for the rest, can be read off one run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import fnmatch
import sys
from pathlib import Path
from typing import Any

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)

sys.path.insert(0, str(Path(__file__).resolve().parent))

import raw_sdk  # noqa: E402
from opentelemetry.trace import NoOpTracer  # noqa: E402
from overhead_instructions import Floor, discarding_provider, mandated  # noqa: E402


#: What the router does for a request, and the functions (``fnmatch`` patterns of ``file:function``) doing it;
#: the first part that matches a function takes it.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("request: parse, validate", ("genroute/router/router.py:_request", "genroute/router/scope.py:parse_request",
                                  "<genroute.construct.builder GenerateRequest>:*")),
    ("in-flight registry (close ends requests)", ("genroute/router/inflight.py:*",)),
    ("deadline (router timeout_s)", ("genroute/runtime/deadlines.py:*",)),
    ("asyncio.current_task (in-flight, deadline)", ("asyncio/tasks.py:current_task",)),
    ("root span, decision", ("genroute/router/scope.py:*", "genroute/router/router.py:_root_span",
                             "genroute/router/router.py:_adecide", "genroute/router/router.py:_decide",
                             "genroute/runtime/telemetry.py:__init__", "genroute/runtime/telemetry.py:__enter__",
                             "genroute/runtime/telemetry.py:__exit__", "genroute/runtime/telemetry.py:attach",
                             "genroute/policies/*", "genroute/admission/*")),
    ("rung loop, attempt (agenerate drains it)", (
        "genroute/router/router.py:agenerate", "genroute/router/executor.py:run",
        "genroute/router/executor.py:_context", "genroute/router/attempt.py:*", "genroute/runtime/context.py:__init__",
        "_weakrefset.py:*", "asyncio/base_events.py:_asyncgen_firstiter_hook")),
    ("backend: prompt, output", ("genroute/backends/*", "<genroute.construct.one_store_init *>:*")),
    ("engine: retry, timeout, errors, client", ("genroute/engines/*",)),
    ("call span, usage, cost", ("genroute/runtime/*", "<genroute.construct.builder Usage>:*", "genroute/types.py:*")),
    ("ledger, result", ("genroute/router/ledger.py:*", "genroute/router/executor.py:_served",
                        "<genroute.construct.builder *>:*")),
    ("OTel SDK beyond the contract's spans", ("opentelemetry/*",)),
)


def _part(key: str) -> str:
    for part, patterns in PARTS:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            return part
    return "other (SDK, aiohttp, event loop)"


def _where(code: Any, by: str) -> str | None:
    """A short name of ``code``'s file (or file and function); ``None`` for this script's own frames."""
    name = code.co_filename
    if name == __file__:
        return None
    if "/genroute/" in name and "site-packages" not in name:
        name = "genroute/" + name.rsplit("/genroute/", 1)[1]
    elif "site-packages/" in name:
        name = name.split("site-packages/", 1)[1]
    elif "/lib/python3" in name:
        name = name.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return name if by == "file" else f"{name}:{code.co_name}"  # "part": summed by function afterwards


def _comparable(result: Any) -> dict[str, Any]:
    """A ``GenerateResult`` without what differs between any two requests (times, trace ids)."""
    data = result.model_dump(exclude={"latency_s", "trace_id"})
    for attempt in data["decision"]["rungs_tried"]:
        attempt.pop("latency_s")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--by", choices=("function", "file", "part"), default="function")
    parser.add_argument("--no-tracer", action="store_true")
    args = parser.parse_args()

    from genroute import Router
    from genroute.testing import GeminiTestServer

    provider = discarding_provider()
    tracer = provider.get_tracer("bench")
    counts: dict[str, collections.Counter[str]] = {}
    with GeminiTestServer() as server:
        config = {"engines": {"g": {"kind": "gemini", "api_key": "bench-key", "base_url": server.base_url}},
                  "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}},
                  "timeout_s": 60}
        router = Router.from_config(config, tracer_provider=None if args.no_tracer else provider)
        loop = asyncio.new_event_loop()
        client, session = raw_sdk.client(server.base_url, loop=loop)  # on the kind of session the engine uses
        calls = {
            "direct": lambda: loop.run_until_complete(
                client.aio.models.generate_content(model="gemini-2.5-flash", contents="hello")),
            "mandated": lambda: None if args.no_tracer else mandated(tracer),
            "routed": lambda: loop.run_until_complete(router.agenerate("hello")),
            "floor": lambda floor=Floor(client, NoOpTracer() if args.no_tracer else tracer, loop):
                loop.run_until_complete(floor("hello")),
        }
        for call in calls.values():
            for _ in range(10):
                call()
        floor_result, routed_result = calls["floor"](), calls["routed"]()
        if _comparable(floor_result) != _comparable(routed_result):  # the floor must do the router's whole job
            raise SystemExit(f"the floor's result differs from the router's:\n{floor_result}\n{routed_result}")
        for mode, call in calls.items():
            table = counts[mode] = collections.Counter()

            def trace(frame: Any, event: str, arg: Any, table: collections.Counter[str] = table) -> Any:
                frame.f_trace_opcodes = True
                if event == "opcode":
                    where = _where(frame.f_code, args.by)
                    if where is not None:
                        table[where] += 1
                return trace

            sys._getframe().f_trace_opcodes = True  # else CPython 3.12 sends no opcode events (gh-114480)
            sys.settrace(trace)
            try:
                for _ in range(args.n):
                    call()
            finally:
                sys.settrace(None)
        loop.run_until_complete(router.aclose())
        loop.run_until_complete(client.aio.aclose())
        loop.run_until_complete(session.close())
        loop.close()
    direct = counts["direct"] + counts["mandated"]
    routed = counts["routed"]
    own = sum(v for k, v in routed.items() if k.startswith(("genroute/", "<genroute", "<string>")))
    print(f"opcodes a request: direct {sum(counts['direct'].values()) / args.n:,.0f}, telemetry contract "
          f"{sum(counts['mandated'].values()) / args.n:,.0f}, routed {sum(routed.values()) / args.n:,.0f}; "
          f"routed beyond both {(sum(routed.values()) - sum(direct.values())) / args.n:,.0f}; "
          f"in genroute's own files {own / args.n:,.0f}; the floor of its features (Floor) beyond both "
          f"{(sum(counts['floor'].values()) - sum(direct.values())) / args.n:,.0f}")
    diff = {k: (routed[k] - direct[k]) / args.n for k in set(routed) | set(direct)}
    if args.by == "part":
        parts: collections.Counter[str] = collections.Counter()
        for key, value in diff.items():
            parts[_part(key)] += value
        diff = dict(parts)
    for key, value in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
        if value:
            print(f"{value:9.1f}  {key}")


if __name__ == "__main__":
    main()
