"""Genroute's own work for one streamed answer: bytecode instructions (opcodes) in genroute's files, counted exactly.

    python benchmarks/stream_opcodes.py [--chunks 20] [--n 5] [--top 15]   # ~5 s

``sys.settrace`` (``f_trace_opcodes``) counts the opcodes run in genroute's own files while ``router.astream``
streams one answer of ``--chunks`` chunks from the loopback Gemini server (a ``prompt_template`` backend, router
``timeout_s: 60``, so every step is bounded by the request's deadline), after a warm-up; averaged over ``--n``
streams. Prints the total a stream, a chunk, and the functions that run the most. Opcodes are exact: load cannot
move them (``own_opcodes.py`` does the same for ``agenerate``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from pathlib import Path
from typing import Any


import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from genroute import Router  # noqa: E402
from genroute.testing import GeminiTestServer  # noqa: E402

_PACKAGE = str(Path(__file__).resolve().parent.parent / "genroute")


async def count(chunks: int, n: int) -> collections.Counter[tuple[str, str]]:
    """Opcodes by (file, function) of genroute's own code over ``n`` streams of ``chunks`` chunks."""
    with GeminiTestServer() as server:
        config = {"engines": {"g": {"kind": "gemini", "base_url": server.base_url, "api_key": "k" * 39}},
                  "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}},
                  "policy": {"kind": "static", "backend": "chat"}, "timeout_s": 60}
        text = " ".join(["word"] * (2 * chunks))
        counts: collections.Counter[tuple[str, str]] = collections.Counter()

        def trace(frame: Any, event: str, arg: Any) -> Any:
            frame.f_trace_opcodes = True
            if event == "opcode" and frame.f_code.co_filename.startswith(_PACKAGE):
                counts[(frame.f_code.co_filename[len(_PACKAGE) + 1:], frame.f_code.co_name)] += 1
            return trace

        async with Router.from_config(config) as router:
            for run in range(n + 2):  # two warm-ups: first-call setup (clients, caches) is not per stream
                server.reply_text(text, chunks=chunks)
                if run >= 2:
                    sys._getframe().f_trace_opcodes = True  # else CPython 3.12 sends no opcode events (gh-114480)
                    sys.settrace(trace)
                try:
                    got = [c async for c in router.astream("hi")]
                finally:
                    sys.settrace(None)
                assert len(got) == chunks + 1, len(got)
        return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    counts = asyncio.run(count(args.chunks, args.n))
    total = sum(counts.values()) / args.n
    print(f"genroute's own opcodes a stream of {args.chunks} chunks: {total:,.0f} ({total / args.chunks:,.0f} a chunk)")
    for (file, function), ops in counts.most_common(args.top):
        print(f"  {ops / args.n:8.0f}  {file}:{function}")


if __name__ == "__main__":
    main()
