"""What the rungs of one request added up to, and the result or the error the caller gets from it."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

from genroute.errors import (AllRungsFailed, BackendError, BudgetExceeded, ConfigError, GenrouteError, UsageError,
                             ValidationFailed)
from genroute.construct import builder, from_values
from genroute.runtime.spend import add_spend
from genroute.types import NO_USAGE, Citation, DecisionRecord, GenerateResult, RungAttempt, ToolCall, Usage

if TYPE_CHECKING:
    from opentelemetry import trace

    from genroute.backends.base import BackendOutput
    from genroute.runtime.billing import Charges
    from genroute.runtime.context import RunContext
    from genroute.runtime.embeddings import RequestEmbeddings
    from genroute.types import Decision


# What a request returns, built without validating it again (genroute/construct.py).
_attempt, _decision, _result = builder(RungAttempt), builder(DecisionRecord), from_values(GenerateResult)


class Ledger:
    """What the rungs of one request added up to (failed, cancelled and abandoned ones included)."""

    # What a request starts with, as class attributes (a ledger sets its own as its rungs add to them): one is built
    # on every request, and runs no ``__init__`` (``add_charges`` counts what deciding cost, where it can cost).
    attempts: tuple[RungAttempt, ...] = ()
    usage: Usage = NO_USAGE
    cost_usd: float = 0.0
    cost_estimated: bool = False
    cache_storage_cost_usd: float = 0.0
    cloud_equivalent_cost_usd: float | None = None
    #: What the request embedded (its policy, a failed rung), for its next rungs to reuse (``None``: nothing).
    embeddings: RequestEmbeddings | None = None

    def add_charges(self, charges: Charges) -> None:
        """Add what calls made outside the rungs cost (deciding, for a policy that embeds the request)."""
        self.cost_usd += charges.cost_usd
        self.cost_estimated = self.cost_estimated or charges.estimated

    def record(self, span: trace.Span, ctx: RunContext, backend: str, index: int, started: float,
               error: BaseException, *, admitted: bool = True) -> None:
        """Add the rung ``ctx`` accounted, which ``error`` ended, to the ledger, with a ``genroute.rung`` event on the
        root span. The rung that serves is recorded by ``result``."""
        if not admitted:  # refused by a budget, a rate limit or an open breaker: nothing was sent
            outcome = "skipped"
        elif isinstance(error, ValidationFailed):
            outcome = "rejected_by_validator"
        elif isinstance(error, GenrouteError):
            outcome = "error"
        else:
            outcome = "cancelled"
        latency_s = time.perf_counter() - started
        # A reader that stopped reading the stream (closed it, or let it go) cut the rung: no error of the rung's.
        error_type = None if type(error) is GeneratorExit else type(error).__name__
        self._event(span, ctx, index, backend, outcome, latency_s, error_type, error)
        self.attempts += (_attempt(backend=backend, outcome=outcome, error_type=error_type, error=str(error),
                                   latency_s=latency_s, cost_usd=float(ctx.cost_usd), usage=ctx.usage,
                                   cost_estimated=ctx.cost_estimated,
                                   tool_calls=tuple(getattr(error, "tool_calls", ()))),)
        add_spend(self, ctx)

    @staticmethod
    def _event(span: trace.Span, ctx: RunContext, index: int, backend: str, outcome: str, latency_s: float,
               error_type: str | None, error: BaseException | None) -> None:
        """The ``genroute.rung`` event of a rung (on the root ``span``)."""
        event: dict[str, Any] = {
            "genroute.rung.index": index, "genroute.backend": backend, "genroute.rung.outcome": outcome,
            "genroute.rung.latency_s": latency_s, "gen_ai.usage.cost.amount": ctx.cost_usd,
        }
        if ctx.cost_estimated:
            event["genroute.cost.estimated"] = True
        if error_type is not None:
            event["error.type"] = error_type
            if isinstance(error, ValidationFailed) and error.validator is not None:  # which check refused it
                event["genroute.validator"] = error.validator
        span.add_event("genroute.rung", event)

    def charge(self, error: BaseException, span: trace.Span | None = None) -> None:
        """Put the summed cost on ``error`` (a genroute error, or a cancellation, which the router's close turns
        into a ``UsageError`` that carries it: ``carrying_cost``) and on the root ``span``."""
        if isinstance(error, GenrouteError):
            error.cost_usd, error.usage, error.cost_estimated = self.cost_usd, self.usage, self.cost_estimated
            error.cloud_equivalent_cost_usd = self.cloud_equivalent_cost_usd
        elif isinstance(error, asyncio.CancelledError):
            vars(error).update(cost_usd=self.cost_usd, usage=self.usage, cost_estimated=self.cost_estimated,
                               cloud_equivalent_cost_usd=self.cloud_equivalent_cost_usd)
        if span is not None:
            span.set_attributes(self.span_attributes())

    def span_attributes(self) -> dict[str, Any]:
        """The root span's cost attributes."""
        attrs: dict[str, Any] = {"genroute.rungs_tried": len(self.attempts),
                                 "gen_ai.usage.cost.amount": self.cost_usd, "gen_ai.usage.cost.currency": "USD"}
        if self.cost_estimated:
            attrs["genroute.cost.estimated"] = True
        if self.cache_storage_cost_usd:
            attrs["genroute.cost.cache_storage.amount"] = self.cache_storage_cost_usd
        if self.cloud_equivalent_cost_usd is not None:
            attrs["genroute.cloud_equivalent.cost.amount"] = self.cloud_equivalent_cost_usd
        return attrs

    def result(self, decision: Decision, ctx: RunContext, output: BackendOutput, span: trace.Span, start: float,
               first_chunk_s: float | None, *, outcome_ids: bool, served: tuple[int, float]) -> GenerateResult:
        """The caller's result, served by the rung ``ctx`` accounted, which ``served`` (its index and start) records
        first; its attributes go on ``span``.

        A request its first rung served records no ``genroute.rung`` event: the root span's own attributes (backend,
        rungs tried, cost) already say all of it, and that is the hot path.
        """
        backend = ctx.backend
        latency_s = time.perf_counter() - served[1]
        if self.attempts:  # rungs failed before it: its event says this one served
            self._event(span, ctx, served[0], backend, "ok", latency_s, None, None)
        self.attempts += (_attempt(backend=backend, outcome="ok", error_type=None, error=None, latency_s=latency_s,
                                   cost_usd=float(ctx.cost_usd), usage=ctx.usage, cost_estimated=ctx.cost_estimated,
                                   tool_calls=()),)
        add_spend(self, ctx)
        if span.is_recording():
            attrs = self.span_attributes()
            attrs["genroute.backend"] = backend  # the model that answered is on its inference span
            if first_chunk_s is not None:
                attrs["genroute.time_to_first_token_s"] = first_chunk_s
            span.set_attributes(attrs)
        context = span.get_span_context()
        trace_id = format(context.trace_id, "032x") if context.is_valid else None
        # Every value is already validated (the request, the policy's decision, the SDK's usage) or genroute's own
        # sum: built without validating it all again (genroute/construct.py), unless the backend's output (a
        # plain dataclass a plugin may fill as it likes) holds other types than declared: then it is validated.
        cloud = self.cloud_equivalent_cost_usd
        # The result's 16 fields in their order: 15 in one display and the last stored after (a display or a call
        # of more than 15 is built entry by entry, genroute/construct.py ``from_values``).
        values: dict[str, Any] = {
            "text": output.text, "backend": backend, "model": ctx.model or output.model,
            "usage": self.usage, "cost_usd": float(self.cost_usd), "cost_estimated": self.cost_estimated,
            "cache_storage_cost_usd": float(self.cache_storage_cost_usd),
            "cloud_equivalent_cost_usd": None if cloud is None else float(cloud),
            "latency_s": time.perf_counter() - start,
            "time_to_first_token_s": first_chunk_s,
            "finish_reason": output.finish_reason,
            "decision": _decision(policy=decision.policy, reason=decision.reason, rungs_tried=self.attempts,
                                  shadow=decision.shadow),
            "citations": tuple(output.citations), "tool_calls": tuple(output.tool_calls), "trace_id": trace_id,
        }
        values["outcome_id"] = (trace_id or uuid.uuid4().hex) if outcome_ids else None
        return _result(values) if _as_declared(output) else _undeclared(values, backend)

    def running(self, decision: Decision) -> str:
        """The backend of the rung tried last (the one a deadline cut), else the decision's first."""
        return self.attempts[-1].backend if self.attempts else decision.rungs[0].backend

    def failure(self, decision: Decision, last_error: GenrouteError | None, span: trace.Span) -> GenrouteError:
        """The error the caller gets when no rung served: the last one's, or ``AllRungsFailed``."""
        span.set_attributes(self.span_attributes())
        # One rung, or every rung refused by a budget: the caller gets that typed error, not a wrapper.
        if last_error is not None and (len(decision.rungs) == 1 or all(
                a.error_type == BudgetExceeded.__name__ for a in self.attempts)):
            self.charge(last_error)
            if isinstance(last_error, BackendError):  # an engine's error names the engine: the caller's is the rung
                last_error.backend = self.attempts[-1].backend
            return last_error
        # Each rung's own error too: "tuned: BackendRejected" alone does not say the endpoint is gone (a CLI user
        # gets only this line).
        tried = "; ".join(f"{a.backend}: {a.error_type}" + (f": {_clip(a.error)}" if a.error else "")
                          for a in self.attempts)
        untried = len(decision.rungs) - len(self.attempts)
        what = f"a final error ended the decision, {untried} rung(s) not tried" if untried else "every rung failed"
        error = AllRungsFailed(f"{what} ({tried})", attempts=list(self.attempts))
        error.__cause__ = last_error
        self.charge(error)
        return error


#: The most of one rung's error message that ``AllRungsFailed``'s message repeats (``attempts`` has it whole).
_ERROR_CHARS = 200


def _clip(text: str) -> str:
    return text if len(text) <= _ERROR_CHARS else f"{text[:_ERROR_CHARS]}..."


def _undeclared(values: dict[str, Any], backend: str) -> GenerateResult:
    """The result of ``values`` taken from a backend's output holding other types than ``BackendOutput`` declares,
    validated: a value that cannot be one (a ``None`` text) is a ``ConfigError`` naming the backend's section, not a
    ``UsageError`` naming the result's ``text``, which the caller never set."""
    try:
        return GenerateResult(**values)
    except UsageError as exc:
        raise ConfigError(f"backend {backend!r} returned a BackendOutput whose {exc.field or 'fields'} "
                          f"cannot be a result's: {exc.message}", field=f"backends.{backend}") from exc


def _as_declared(output: BackendOutput) -> bool:
    """Whether ``output`` holds exactly the types ``BackendOutput`` declares (what genroute's backends build)."""
    return (type(output.text) is str and type(output.model) is str
            and (output.finish_reason is None or type(output.finish_reason) is str)
            and (not output.citations or all(type(c) is Citation for c in output.citations))
            and (not output.tool_calls or all(type(c) is ToolCall for c in output.tool_calls)))
