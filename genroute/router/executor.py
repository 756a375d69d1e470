"""The executor: runs a decision's rungs in order, validates, falls through, shadows, and accounts."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from genroute.backends.base import BackendOutput
from genroute.errors import (
    AllRungsFailed, BackendError, BackendRejected, BudgetExceeded, GenrouteError, StreamInterrupted,
    ValidationFailed,
)
from genroute.router.context import RunContext
from genroute.router.validators import Validator, resolve
from genroute.types import (
    Decision, DecisionRecord, GenerateChunk, GenerateRequest, GenerateResult, Rung, RungAttempt, Usage,
)

if TYPE_CHECKING:
    from genroute.backends.base import Backend
    from genroute.policies.base import Policy
    from genroute.router.pricing import Pricing
    from genroute.router.telemetry import Telemetry


@dataclass
class _Ledger:
    """What the rungs of one request added up to."""

    attempts: list[RungAttempt] = field(default_factory=list)
    usage: Usage = Usage()
    cost_usd: float = 0.0
    cloud_equivalent_cost_usd: float | None = None

    def add(self, attempt: RungAttempt, ctx: RunContext) -> None:
        self.attempts.append(attempt)
        self.usage = self.usage + ctx.usage
        self.cost_usd += ctx.cost_usd
        if ctx.cloud_equivalent_cost_usd is not None:
            self.cloud_equivalent_cost_usd = (self.cloud_equivalent_cost_usd or 0.0) + ctx.cloud_equivalent_cost_usd


class Executor:
    """Carries out decisions; the only code that runs backends."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        policy: Policy,
        *,
        telemetry: Telemetry,
        pricing: Pricing,
        validators: Mapping[str, Validator] | None = None,
    ) -> None:
        self.backends = backends
        self.policy = policy
        self.telemetry = telemetry
        self.pricing = pricing
        self.validators = dict(validators or {})
        self._shadows: set[asyncio.Task[Any]] = set()

    # -- complete answers ------------------------------------------------------------------------------

    async def run(self, request: GenerateRequest, decision: Decision, span: trace.Span, start: float,
                  deadline: float | None) -> GenerateResult:
        """Run rungs until one answers acceptably; raise a typed error when none does."""
        ledger = _Ledger()
        last_error: GenrouteError | None = None
        for index, rung in enumerate(decision.rungs):
            ctx = self._context(request, rung.backend, deadline)
            token = None
            rung_start = time.perf_counter()
            try:
                token = self.policy.reserve(request, decision, rung.backend)
                output = await self.backends[rung.backend].run(request, ctx)
                self._validate(rung, request, output)
            except BackendError as exc:
                last_error = exc
                self._record(span, ledger, ctx, rung, index, rung_start, exc)
                if _final(exc, rung):
                    break
                continue
            finally:
                self.policy.settle(token, ctx.cost_usd)
            self._record(span, ledger, ctx, rung, index, rung_start, None)
            self._start_shadows(request, decision, span)
            return self._result(decision, ledger, ctx, output, span, start, None)
        raise self._failure(decision, ledger, last_error, span)

    # -- streams ---------------------------------------------------------------------------------------

    async def stream(self, request: GenerateRequest, decision: Decision, span: trace.Span, start: float,
                     deadline: float | None) -> AsyncIterator[GenerateChunk]:
        """Stream the first rung that produces output; fall back only before the first chunk is sent.

        A rung with validators that is not the last one is buffered (validated before anything is sent), so
        that a rejected answer can still fall through; the last rung streams live.
        """
        ledger = _Ledger()
        last_error: GenrouteError | None = None
        first_chunk_s: float | None = None
        for index, rung in enumerate(decision.rungs):
            buffered = bool(rung.validators) and index < len(decision.rungs) - 1
            ctx = self._context(request, rung.backend, deadline)
            token = None
            sent = False
            pending: list[str] = []
            output: BackendOutput | None = None
            rung_start = time.perf_counter()
            try:
                token = self.policy.reserve(request, decision, rung.backend)
                async with aclosing(self.backends[rung.backend].stream(request, ctx)) as items:
                    async for item in items:
                        if isinstance(item, BackendOutput):
                            output = item
                        elif buffered:
                            pending.append(item)
                        else:
                            if first_chunk_s is None:
                                first_chunk_s = time.perf_counter() - start
                            sent = True
                            yield GenerateChunk(text=item)
                assert output is not None, "backend stream ended without its final output"
                self._validate(rung, request, output)
            except BackendError as exc:
                last_error = exc
                self._record(span, ledger, ctx, rung, index, rung_start, exc)
                if sent:
                    raise StreamInterrupted(
                        f"stream from {rung.backend!r} failed after output was sent: {exc}", backend=rung.backend
                    ) from exc
                if _final(exc, rung):
                    break
                continue
            finally:
                self.policy.settle(token, ctx.cost_usd)
            for text in pending:
                if first_chunk_s is None:
                    first_chunk_s = time.perf_counter() - start
                yield GenerateChunk(text=text)
            self._record(span, ledger, ctx, rung, index, rung_start, None)
            self._start_shadows(request, decision, span)
            result = self._result(decision, ledger, ctx, output, span, start, first_chunk_s)
            yield GenerateChunk(done=True, result=result)
            return
        raise self._failure(decision, ledger, last_error, span)

    # -- pieces ----------------------------------------------------------------------------------------

    def _context(self, request: GenerateRequest, backend: str, deadline: float | None) -> RunContext:
        return RunContext(request, backend, telemetry=self.telemetry, pricing=self.pricing, deadline=deadline)

    def _validate(self, rung: Rung, request: GenerateRequest, output: BackendOutput) -> None:
        """Raise ``ValidationFailed`` with the first validator's reason for rejecting ``output``."""
        for name in rung.validators:
            reason = resolve(name, self.validators, field=f"rungs.{rung.backend}.validators")(request, output)
            if reason is not None:
                raise ValidationFailed(f"{rung.backend}: {reason}", backend=rung.backend)

    def _record(self, span: trace.Span, ledger: _Ledger, ctx: RunContext, rung: Rung, index: int,
                rung_start: float, error: GenrouteError | None) -> None:
        if error is None:
            outcome = "ok"
        elif isinstance(error, ValidationFailed):
            outcome = "rejected_by_validator"
        else:
            outcome = "error"
        attempt = RungAttempt(
            backend=rung.backend, outcome=outcome,
            error_type=None if error is None else type(error).__name__,
            error=None if error is None else str(error),
            latency_s=time.perf_counter() - rung_start, cost_usd=ctx.cost_usd,
        )
        ledger.add(attempt, ctx)
        event: dict[str, Any] = {
            "genroute.rung.index": index, "genroute.backend": rung.backend, "genroute.rung.outcome": outcome,
            "genroute.rung.latency_s": attempt.latency_s, "gen_ai.usage.cost.amount": attempt.cost_usd,
        }
        if error is not None:
            event["error.type"] = attempt.error_type
        span.add_event("genroute.rung", event)

    def _result(self, decision: Decision, ledger: _Ledger, ctx: RunContext, output: BackendOutput,
                span: trace.Span, start: float, first_chunk_s: float | None) -> GenerateResult:
        backend = ledger.attempts[-1].backend
        span.set_attributes({
            "genroute.backend": backend,
            "genroute.rungs_tried": len(ledger.attempts),
            "gen_ai.usage.cost.amount": ledger.cost_usd,
            "gen_ai.usage.cost.currency": "USD",
            **({"gen_ai.response.model": output.model} if output.model else {}),
        })
        if ledger.cloud_equivalent_cost_usd is not None:
            span.set_attribute("genroute.cloud_equivalent.cost.amount", ledger.cloud_equivalent_cost_usd)
        if first_chunk_s is not None:
            span.set_attribute("genroute.time_to_first_token_s", first_chunk_s)
        return GenerateResult(
            text=output.text, backend=backend, model=ctx.model or output.model,
            usage=ledger.usage, cost_usd=ledger.cost_usd,
            cloud_equivalent_cost_usd=ledger.cloud_equivalent_cost_usd,
            latency_s=time.perf_counter() - start,
            time_to_first_token_s=first_chunk_s,
            finish_reason=output.finish_reason,
            decision=DecisionRecord(policy=decision.policy, reason=decision.reason,
                                    rungs_tried=tuple(ledger.attempts), shadow=decision.shadow),
            citations=output.citations, tool_calls=output.tool_calls,
            trace_id=format(span.get_span_context().trace_id, "032x") if span.get_span_context().is_valid else None,
        )

    def _failure(self, decision: Decision, ledger: _Ledger, last_error: GenrouteError | None,
                 span: trace.Span) -> GenrouteError:
        span.set_attributes({
            "genroute.rungs_tried": len(ledger.attempts),
            "gen_ai.usage.cost.amount": ledger.cost_usd, "gen_ai.usage.cost.currency": "USD",
        })
        # One rung, or every rung refused by a budget: the caller gets that typed error, not a wrapper.
        if last_error is not None and (len(decision.rungs) == 1 or all(
                a.error_type == BudgetExceeded.__name__ for a in ledger.attempts)):
            return last_error
        tried = "; ".join(f"{a.backend}: {a.error_type}" for a in ledger.attempts)
        error = AllRungsFailed(f"every rung failed ({tried})", attempts=list(ledger.attempts))
        error.__cause__ = last_error
        return error

    # -- shadows ---------------------------------------------------------------------------------------

    def _start_shadows(self, request: GenerateRequest, decision: Decision, span: trace.Span) -> None:
        for backend in decision.shadow:
            if backend in self.backends and random.random() < decision.shadow_rate:
                task = asyncio.get_running_loop().create_task(self._shadow(request, backend, span))
                self._shadows.add(task)
                task.add_done_callback(self._shadows.discard)

    async def _shadow(self, request: GenerateRequest, backend: str, parent: trace.Span) -> None:
        """Run a shadow backend for telemetry only; its outcome never reaches the caller."""
        link = trace.Link(parent.get_span_context())
        with self.telemetry.tracer.start_as_current_span(
            "genroute.shadow", context=trace.set_span_in_context(trace.INVALID_SPAN), links=[link],
            attributes={"genroute.backend": backend, "genroute.shadow": True},
            record_exception=False, set_status_on_exception=False,
        ) as span:
            ctx = self._context(request, backend, None)
            try:
                output = await self.backends[backend].run(request, ctx)
            except Exception as exc:  # a shadow must never surface; it is only measured
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                return
            span.set_attributes({"gen_ai.usage.cost.amount": ctx.cost_usd, "gen_ai.usage.cost.currency": "USD",
                                 "genroute.shadow.chars": len(output.text)})

    async def drain_shadows(self, timeout_s: float = 5.0) -> None:
        """Wait for running shadow tasks (at shutdown), cancelling what outlives ``timeout_s``."""
        if not self._shadows:
            return
        done, pending = await asyncio.wait(set(self._shadows), timeout=timeout_s)
        for task in pending:
            task.cancel()


def _final(error: GenrouteError, rung: Rung) -> bool:
    """Whether ``error`` ends the decision instead of falling through to the next rung."""
    return isinstance(error, BackendRejected) and not rung.fall_through_on_rejected
