"""Scoring a shadow's answer against the served one, and any answer against a feedback label.

The configured ``outcomes.scorer`` is one of:

- a bench scorer (``normalized_exact``, ``label_accuracy``, ``token_f1``, ``exact``, ``json_schema``,
  ``regex:...``) or ``module:function`` called as ``(record, result)`` (awaited if ``async def``; its score
  checked as a benchmark checks it, a number in [0, 1]): the reference is the served answer for a shadow (so the
  score is agreement), the label once feedback gives one;
- ``judge:BACKEND``: that backend grades the answer against the reference (its cost is recorded apart);
- ``validator:NAME``: a validator the router knows (built-in, configured or passed in code) scores each answer
  alone: 1 when it accepts, 0 when it rejects; no reference needed, so the served answer gets a score too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from genroute.backends.base import refuse_rerun
from genroute.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from genroute.backends.base import BackendOutput
    from genroute.router.validators import Check
    from genroute.types import GenerateRequest

#: Runs a backend for a judge; returns its answer and what it cost.
RunJudge = Callable[[str, "GenerateRequest"], Awaitable[tuple["BackendOutput", float]]]


@dataclass(frozen=True)
class Scored:
    """A score and what scoring cost (a judge's call)."""

    score: float
    cost_usd: float = 0.0


@dataclass(frozen=True)
class ShadowScorer:
    """The resolved ``outcomes.scorer``."""

    name: str
    fn: Callable[[Any, Any], float] | None = None
    check: Check | None = None
    judge: str | None = None

    @property
    def needs_reference(self) -> bool:
        """Whether the score compares with a reference (the served answer, or a label)."""
        return self.check is None

    async def score(self, request: GenerateRequest, output: BackendOutput, reference: str | None,
                    run_judge: RunJudge, *, id: str) -> Scored | None:
        """The score of ``output`` (``None`` when a reference is needed and there is none); ``id``: the outcome
        record's, which an error of a ``module:function`` scorer names."""
        if self.check is not None:
            reason = await self.check(request, output, _no_backend_runs)
            return Scored(float(reason is None))
        if reference is None:
            return None
        if self.judge is not None:
            from genroute.bench.scorers import judge_prompt, judge_score
            from genroute.types import GenerateRequest as Request

            prompt = judge_prompt(request.input, reference, output.text)
            verdict, cost = await run_judge(self.judge, Request(input=prompt, task="judge"))
            return Scored(judge_score(verdict.text), cost)
        assert self.fn is not None
        from genroute.bench.scorers import Scorer

        try:  # checked as in a benchmark: a score outside [0, 1], NaN or not a number would poison the statistics
            score, _ = await Scorer(self.name, self.fn).score(_record(request, reference, id), _result(output))
        except UsageError as exc:
            raise UsageError(exc.message, field="outcomes.scorer") from None
        except Exception as exc:  # the function's own error, as it raised it, saying which record it was scoring
            exc.add_note(f"raised by outcomes.scorer {self.name!r} scoring outcome record {id!r}")
            raise
        return Scored(score)


async def _no_backend_runs(backend: str, request: GenerateRequest) -> BackendOutput:
    raise UsageError("a validator used as an outcome scorer cannot run a backend (use judge:BACKEND)",
                     field="outcomes.scorer")


def resolve_shadow_scorer(spec: str, *, resolve_check: Callable[[str, str], Check],
                          backends: Any) -> ShadowScorer:
    """The scorer ``spec`` names; ``ConfigError`` naming ``outcomes.scorer`` if unknown."""
    field = "outcomes.scorer"
    if spec.startswith("validator:"):
        return ShadowScorer(spec, check=resolve_check(spec.removeprefix("validator:"), field))
    if spec.startswith("judge:"):
        backend = spec.removeprefix("judge:")
        if backend not in backends:
            raise ConfigError(f"unknown judge backend {backend!r} (known: {', '.join(sorted(backends))})",
                              field=field)
        refuse_rerun(backend, backends[backend].side_effects(), role="a judge", field=field)
        return ShadowScorer(spec, judge=backend)
    from genroute.bench.scorers import resolve_scorer

    try:
        scorer = resolve_scorer(spec)
    except UsageError as exc:
        raise ConfigError(exc.message, field=field) from None
    return ShadowScorer(spec, fn=scorer.fn)


def _record(request: GenerateRequest, reference: str, id: str) -> Any:
    from genroute.bench.datasets import BenchRecord

    # The outcome record's id: the scorer sees it as ``record.id``, and a bad score's error names it.
    return BenchRecord(id=id, input=request.input, output=reference, label=reference, task=request.task)


def _result(output: BackendOutput) -> Any:
    from genroute.types import DecisionRecord, GenerateResult

    return GenerateResult(text=output.text, backend="", model=output.model,
                          decision=DecisionRecord(policy="outcome", reason="scoring"), tool_calls=output.tool_calls)
