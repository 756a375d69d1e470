"""Where genroute's own per-request work is: bytecode instructions (opcodes) each function runs, counted exactly.

    python benchmarks/own_opcodes.py [--n 20] [--top 30] [--by function|file] [--no-tracer]   # ~10 s

Opcodes are a proxy for ``overhead_instructions.py``'s CPU instructions (about 110 instructions an opcode for
genroute's code) that needs no valgrind and takes seconds, so it shows which function a change should look at.
``sys.settrace`` (``f_trace_opcodes``) counts every opcode of ``--n`` requests, after a warm-up, for
``router.agenerate`` on the loopback Gemini server (OTel SDK tracer, spans discarded; ``--no-tracer``: the API's
no-op one) and for google-genai's async call plus the telemetry contract's spans made directly (``mandated`` of
``overhead_instructions.py``). Printed: the opcodes a request of each, genroute's own files' total, and the
functions (or files) where the routed request runs more opcodes than the direct one, largest first.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import raw_sdk  # noqa: E402
from overhead_instructions import discarding_provider, mandated  # noqa: E402


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
    return name if by == "file" else f"{name}:{code.co_name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--by", choices=("function", "file"), default="function")
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
        }
        for call in calls.values():
            for _ in range(10):
                call()
        for mode, call in calls.items():
            table = counts[mode] = collections.Counter()

            def trace(frame: Any, event: str, arg: Any, table: collections.Counter[str] = table) -> Any:
                frame.f_trace_opcodes = True
                if event == "opcode":
                    where = _where(frame.f_code, args.by)
                    if where is not None:
                        table[where] += 1
                return trace

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
          f"in genroute's own files {own / args.n:,.0f}")
    diff = {k: (routed[k] - direct[k]) / args.n for k in set(routed) | set(direct)}
    for key, value in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
        if value:
            print(f"{value:9.1f}  {key}")


if __name__ == "__main__":
    main()
