"""What building a request's models costs, validated or from already-validated values (``genroute.construct``).

    python benchmarks/model_instructions.py [--n 2000] [--jobs 2]   # ~2 min: each case in a child under callgrind

Every request builds a ``RungAttempt`` per rung, a ``DecisionRecord`` and a ``GenerateResult`` (and, for an
engine that takes no text, a user turn: google-genai ``Content`` of one ``Part``). This counts, per build, the
instructions of each way to build them: pydantic validation, pydantic's ``model_construct`` (for trusted data; a
per-field loop in Python) and ``model_copy``, against ``genroute.construct``'s ``builder``/``replaced`` (what the
hot path uses), and the generic ``cls``-and-``**values`` helper ``builder`` replaced (``generic``). Only the
measured window counts (``callgrind.in_window``), GC off inside it; a child that builds nothing is the baseline.
"""

from __future__ import annotations

import argparse
import gc
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


import checkout  # noqa: F401  (this checkout's genroute, not an installed one)
from callgrind import in_window, run  # noqa: E402

CASES = ("nothing", "Content validated", "Content model_construct", "Content model_copy (old user_content)",
         "Content replaced (user_content)", "RungAttempt validated", "RungAttempt built",
         "DecisionRecord validated", "DecisionRecord built", "GenerateResult validated",
         "GenerateResult model_construct", "GenerateResult generic", "GenerateResult built")


def _builders() -> dict[str, Callable[[], Any]]:
    from google.genai import types

    from genroute.backends.base import user_content
    from genroute.construct import builder
    from genroute.types import DecisionRecord, GenerateResult, RungAttempt, Usage

    usage = Usage(input_tokens=3, output_tokens=4)
    rung = dict(backend="chat", outcome="ok", error_type=None, error=None, latency_s=0.1, cost_usd=1e-6,
                usage=usage, cost_estimated=False, tool_calls=())
    attempt = RungAttempt(**rung)
    record = dict(policy="static", reason="static backend 'chat'", rungs_tried=(attempt,), shadow=())
    result = dict(text="hi", backend="chat", model="gemini-2.5-flash", usage=usage, cost_usd=1e-6,
                  cost_estimated=False, cache_storage_cost_usd=0.0, cloud_equivalent_cost_usd=None, latency_s=0.1,
                  time_to_first_token_s=None, finish_reason="stop", decision=DecisionRecord(**record), citations=(),
                  tool_calls=(), trace_id=None, outcome_id=None)
    part, turn = types.Part(text=""), types.Content(role="user", parts=[types.Part(text="")])
    built_attempt, built_record, built_result = builder(RungAttempt), builder(DecisionRecord), builder(GenerateResult)
    return {
        "nothing": lambda: None,
        "Content validated": lambda: types.Content(role="user", parts=[types.Part(text="hello")]),
        "Content model_construct": lambda: types.Content.model_construct(
            role="user", parts=[types.Part.model_construct(text="hello")]),
        "Content model_copy (old user_content)": lambda: turn.model_copy(
            update={"parts": [part.model_copy(update={"text": "hello"})]}),
        "Content replaced (user_content)": lambda: user_content("hello"),
        "RungAttempt validated": lambda: RungAttempt(**rung),
        "RungAttempt built": lambda: built_attempt(**rung),
        "DecisionRecord validated": lambda: DecisionRecord(**record),
        "DecisionRecord built": lambda: built_record(**record),
        "GenerateResult validated": lambda: GenerateResult(**result),
        "GenerateResult model_construct": lambda: GenerateResult.model_construct(**result),
        "GenerateResult generic": lambda: _generic(GenerateResult, **result),
        "GenerateResult built": lambda: built_result(**result),
    }


def _generic(cls: Any, **values: Any) -> Any:
    """What ``construct`` had before ``builder``: one helper for every model, given all its fields in order."""
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(cls.model_fields)
    if tuple(values) != names:
        raise TypeError("every field, in order")
    model = object.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


_NAMES: dict[Any, tuple[str, ...]] = {}


def _child(case: str, n: int) -> None:
    build = _builders()[case]
    for _ in range(20):  # warm: caches, lazy imports
        build()
    gc.collect()
    gc.disable()

    def window() -> None:
        for _ in range(n):
            build()

    in_window(window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2, help="children run at once (counts do not depend on it)")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.n)
        return

    def count(case: str) -> int:
        counted = run([__file__, "--child", case, "--n", str(args.n)], label=case, window=True)
        assert counted is not None
        return counted[0]

    with ThreadPoolExecutor(args.jobs) as pool:
        counts = dict(zip(CASES, pool.map(count, CASES)))
    base = counts["nothing"]
    print(f"instructions per build (n = {args.n}, the loop itself subtracted):")
    for case in CASES[1:]:
        print(f"  {case:40} {(counts[case] - base) / args.n / 1e3:8.1f} k")


if __name__ == "__main__":
    main()
