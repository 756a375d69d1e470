"""Instructions one ``call_with_retry`` costs around an attempt that succeeds on the first try (valgrind, so load
cannot move the figure).

    python benchmarks/retry_instructions.py [--n 5000]

The retry layer sits on every engine call; issue 15 moved every attempt onto one tenacity-decided path, and this
checks that a first-try success still pays for no retry machinery. It runs a child under
``valgrind --tool=callgrind`` with ``--n`` calls and one with none, and prints the difference per call. With
``--wrapped`` it also prints what ``tenacity.AsyncRetrying`` wrapped around every call would cost (the design
the module avoids).
"""

from __future__ import annotations

import argparse
import asyncio

import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from callgrind import instructions


async def _calls(n: int, wrapped: bool) -> None:
    from genroute.engines.retry import RetryConfig, call_with_retry

    config = RetryConfig()

    async def attempt(remaining_s: float) -> int:
        return 1

    if wrapped:
        import tenacity

        from genroute.errors import BackendUnavailable

        async def call() -> int:
            retrying = tenacity.AsyncRetrying(stop=tenacity.stop_after_attempt(config.attempts), reraise=True,
                                              retry=tenacity.retry_if_exception_type(BackendUnavailable))
            async for state in retrying:
                with state:
                    return await attempt(60.0)
            raise AssertionError("unreachable")
    else:
        async def call() -> int:
            return await call_with_retry(attempt, config, deadline_s=60.0)

    await call()  # imports and first-call caches out of the count
    for _ in range(n):
        await call()


def _count(n: int, wrapped: bool) -> int:
    count = instructions([__file__, "--child", str(n)] + (["--wrapped"] if wrapped else []))
    assert count is not None
    return count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--child", type=int)
    parser.add_argument("--wrapped", action="store_true")
    args = parser.parse_args()
    if args.child is not None:
        asyncio.run(_calls(args.child, args.wrapped))
        return
    for wrapped in (False, True):
        per_call = (_count(args.n, wrapped) - _count(0, wrapped)) / args.n
        name = "AsyncRetrying around each call" if wrapped else "call_with_retry"
        print(f"{name:32} {per_call:9.0f} instructions per first-try success")


if __name__ == "__main__":
    main()
