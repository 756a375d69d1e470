"""The executor: runs a decision's rungs in order, validates, falls through, shadows, and accounts."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from genroute.backends.base import BackendOutput, produced
from genroute.errors import (
    BackendError, BackendRejected, BudgetExceeded, ConfigError, GenrouteError, StreamInterrupted, ValidationFailed,
)
from genroute.runtime.context import RunContext
from genroute.runtime.spend import add_spend
from genroute.router.attempt import admitted
from genroute.router.ledger import Ledger
from genroute.router.shadows import MAX_SHADOWS, Shadows
from genroute.router.validators import Check, Judge, Validator, named_in, resolve
from genroute.types import Decision, GenerateChunk, GenerateRequest, GenerateResult, Rung

if TYPE_CHECKING:
    from genroute.admission import Admission
    from genroute.backends.base import Backend
    from genroute.outcomes.recorder import OutcomeRecorder
    from genroute.policies.base import Policy
    from genroute.runtime.pricing import Pricing
    from genroute.runtime.telemetry import Telemetry

#: Validator names kept resolved: the config's, then those policies make up per request, up to this many (a name
#: per request, e.g. a pattern naming the request's own id, would otherwise be kept for good).
MAX_CHECKS = 1024


#: What ends a rung and lets the next one try: a backend failure, or a budget refusing that rung.
_RUNG_ERRORS = (BackendError, BudgetExceeded)


def _unknown_backend(name: str, index: int, backends: Mapping[str, Any]) -> ConfigError:
    """The error for a decision whose rung ``index`` names no backend of the router (built-in policies are checked
    when the router is built; a policy in code is checked here, as its decisions' validator names are)."""
    known = ", ".join(sorted(backends))
    return ConfigError(f"the policy decided for unknown backend {name!r} (known: {known})",
                       field=f"decision.rungs.{index}.backend")


class Executor(Shadows):
    """Carries out decisions; the only code that runs backends (shadows: ``genroute.router.shadows``)."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        policy: Policy,
        *,
        telemetry: Telemetry,
        pricing: Pricing,
        validators: Mapping[str, Validator | Judge] | None = None,
        timeout_s: float | None = None,
        max_shadows: int = MAX_SHADOWS,
        outcomes: OutcomeRecorder | None = None,
        unsafe_shadows: frozenset[str] = frozenset(),
        admission: Admission | None = None,
    ) -> None:
        self.backends = backends
        self.policy = policy
        #: The gates (budgets, rate limits, breakers) every attempt enters and exits; None: none.
        self.admission = admission
        self.telemetry = telemetry
        self.pricing = pricing
        self.validators = dict(validators or {})
        #: The router's default deadline; shadows use it too (else ``SHADOW_TIMEOUT_S``).
        self.timeout_s = timeout_s
        self.max_shadows = max_shadows
        #: Writes served and shadow outcomes (``None``: outcomes are not recorded).
        self.outcomes = outcomes
        #: Backends that may never be shadowed (tools with side effects).
        self.unsafe_shadows = unsafe_shadows
        self._init_shadows()
        # Every validator name is resolved now, so a typo fails the build instead of a paid-for request.
        self._checks: dict[str, Check] = {}
        for name in self.validators:
            self._check(name, f"validators.{name}")
        for name, field in named_in(getattr(policy, "config", None), policy.field):
            self._check(name, field)

    # -- the one loop over rungs ------------------------------------------------------------------------

    def stream(self, request: GenerateRequest, decision: Decision, span: trace.Span, start: float,
               deadline: float | None, ledger: Ledger | None = None, *, bounded: bool = False
               ) -> AsyncGenerator[GenerateChunk | GenerateResult, None]:
        """Stream the first rung that produces output (text chunks, then the result); fall back only before the
        first chunk is sent: ``run`` with ``live=True``.

        A rung with validators that is not the last one is buffered (validated before anything is sent), so
        that a rejected answer can still fall through; the last rung streams live. ``bounded``: the caller
        cancels each step at ``deadline`` (moved on by the time its reader holds a chunk, as ``ctx.deadline``).
        """
        return self.run(request, decision, span, start, deadline, ledger, live=True, bounded=bounded)

    async def run(self, request: GenerateRequest, decision: Decision, span: trace.Span, start: float,
                  deadline: float | None, ledger: Ledger | None = None, *, live: bool = False, bounded: bool = False
                  ) -> AsyncGenerator[GenerateChunk | GenerateResult, None]:
        """Run rungs until one answers acceptably; raise a typed error when none does. Run and stream alike: each
        rung is one admitted attempt; only a stream (``live``, ``stream``) yields text as it comes.

        The last item is the ``GenerateResult`` itself (the only one without ``live``: the caller awaits ``anext``
        of it and then closes it, ``aclose``, in its own coroutine; a request in flight holds no coroutine of the
        executor's around the rung loop). ``ledger`` (a fresh one if not given) sums what every rung cost, so a
        caller that times the whole request out can still say what it cost. ``bounded``: the caller cancels the
        run at ``deadline``.
        """
        ledger = ledger if ledger is not None else Ledger()
        last_error: GenrouteError | None = None
        first_chunk_s: float | None = None
        read_s = 0.0  # the time the reader held chunks: left out of latencies (only one rung sends chunks)
        rungs = decision.rungs
        for index in range(len(rungs)):  # not enumerate: a request in flight holds one object less
            rung = rungs[index]
            checks = self._checks_for(rung, index) if rung.validators else ()
            passes = live and not (checks and index < len(rungs) - 1)
            ctx = RunContext(request, rung.backend, telemetry=self.telemetry, pricing=self.pricing, deadline=deadline,
                             bounded=bounded)  # as _context, without its call: every rung builds one
            if ledger.embeddings is not None:  # what the policy or an earlier rung embedded
                ctx.embeddings = ledger.embeddings
            sent = False
            pending: list[str] | None = None  # text a buffered rung produced (made only for one)
            output: BackendOutput | None = None
            rung_start = time.perf_counter()
            attempt = admitted(self.admission, request, decision, rung.backend, ctx, span, passes)
            try:
                async with attempt:
                    try:
                        backend = self.backends[rung.backend]
                    except KeyError:  # a policy written in code decided for a backend the router lacks
                        raise _unknown_backend(rung.backend, index, self.backends) from None
                    if live:
                        async with aclosing(backend.stream(request, ctx)) as items:
                            async for item in items:
                                if isinstance(item, BackendOutput):
                                    output = item
                                elif output is not None:  # the reader would get text the result does not hold
                                    raise StreamInterrupted(f"stream from {rung.backend!r} yielded text after its "
                                                            "final output", backend=rung.backend)
                                elif passes:
                                    if first_chunk_s is None:
                                        first_chunk_s = time.perf_counter() - start
                                    sent = True
                                    held = time.perf_counter()
                                    try:
                                        yield GenerateChunk(text=item)
                                    finally:  # also a reader that stops: not the request's time (docs/requests.md)
                                        read = time.perf_counter() - held  # neither in its deadline nor its latency
                                        read_s += read
                                        if ctx.deadline is not None:
                                            ctx.deadline += read
                                elif pending is None:
                                    pending = [item]
                                else:
                                    pending.append(item)
                        if output is None:
                            raise StreamInterrupted(f"stream from {rung.backend!r} ended without its final output",
                                                    backend=rung.backend)
                    else:
                        output = await backend.run(request, ctx)
                        if type(output) is not BackendOutput:  # a backend of code or a plugin: checked
                            output = produced(backend, output)
                if checks:
                    await self._validate(rung, checks, request, decision, output, ctx)
                for text in pending or ():  # a buffered rung's text, validated: a reader that stops here is charged
                    if first_chunk_s is None:
                        first_chunk_s = time.perf_counter() - start
                    held = time.perf_counter()
                    yield GenerateChunk(text=text)
                    read_s += time.perf_counter() - held
            except _RUNG_ERRORS as exc:
                last_error = exc
                ledger.embeddings = ctx.embeddings  # what it embedded (or reused), for the next rungs
                ledger.record(span, ctx, rung.backend, index, rung_start + read_s, exc, admitted=attempt.admitted)
                if sent:
                    interrupted = StreamInterrupted(  # with the provider's status, if it sent one
                        f"stream from {rung.backend!r} failed after output was sent: {exc}", backend=rung.backend,
                        status=getattr(exc, "status", None))
                    interrupted.tool_calls = getattr(exc, "tool_calls", ())  # tools that ran before it failed
                    ledger.charge(interrupted, span)
                    raise interrupted from exc
                if _final(exc, rung):
                    break
                continue
            except BaseException as exc:  # cancelled, the deadline, or a consumer that stopped: charged all the same
                ledger.record(span, ctx, rung.backend, index, rung_start + read_s, exc, admitted=attempt.admitted)
                ledger.charge(exc, span)
                raise
            result = ledger.result(decision, ctx, output, span, start + read_s, first_chunk_s,
                                   outcome_ids=self.outcomes is not None, served=(index, rung_start + read_s))
            if self.outcomes is not None or decision.shadow:  # anything to hand the answer to
                self._served(request, decision, span, result, output, ctx)
            yield result
            return
        raise ledger.failure(decision, last_error, span)

    # -- pieces ----------------------------------------------------------------------------------------

    def _context(self, request: GenerateRequest, backend: str, deadline: float | None,
                 bounded: bool = False) -> RunContext:
        """A run context for a check's, a shadow's or an accounted side call (the rung loop builds its own
        inline: it is on every request's path)."""
        return RunContext(request, backend, telemetry=self.telemetry, pricing=self.pricing, deadline=deadline,
                          bounded=bounded)

    def use_policy(self, policy: Policy) -> None:
        """Decide with ``policy`` from now on (its validator names are resolved first)."""
        for name, field in named_in(getattr(policy, "config", None), policy.field):
            self._check(name, field)
        self.policy = policy

    def resolve_check(self, name: str, field: str) -> Check:
        """The check a validator name resolves to (``ConfigError`` naming ``field`` if unknown)."""
        return self._check(name, field)

    def _check(self, name: str, field: str) -> Check:
        check = self._checks.get(name)
        if check is None:
            check = resolve(name, self.validators, backends=self.backends, field=field)
            if len(self._checks) < MAX_CHECKS:
                self._checks[name] = check
        return check

    def _checks_for(self, rung: Rung, index: int) -> list[Check]:
        # Names a policy makes up per request (not in its config) are resolved here, still before any spend.
        return [self._check(name, f"decision.rungs.{index}.validators") for name in rung.validators]

    async def _validate(self, rung: Rung, checks: list[Check], request: GenerateRequest, decision: Decision,
                        output: BackendOutput, ctx: RunContext) -> None:
        """Raise ``ValidationFailed`` with the first check's reason for rejecting ``output``."""
        run = functools.partial(self._run_for_check, request, decision, ctx)
        for check in checks:
            try:
                reason = await check(request, output, run)
            except ValidationFailed as exc:  # a judge whose own call failed
                exc.validator = rung.validators[checks.index(check)]
                raise
            if reason is not None:
                error = ValidationFailed(f"{rung.backend}: {reason}", backend=rung.backend)
                error.validator = rung.validators[checks.index(check)]  # the name, for the rung's event
                raise error

    async def _run_for_check(self, request: GenerateRequest, decision: Decision, ctx: RunContext,
                             backend: str, check_request: GenerateRequest) -> BackendOutput:
        """Run ``backend`` for a check (a judge) of the rung ``ctx`` accounts: own admission, cost in the rung."""
        side = self._context(check_request, backend, ctx.deadline, ctx.bounded)
        side.embeddings = ctx.embeddings  # a judge's backend that embeds shares the request's vectors too
        # The gates see the request (its key, tenant, task: whose budget pays) with what this call sends: a judge's
        # prompt goes without the conversation's turns and the request's generation settings, so its hold adds
        # neither (they are the request's, held by its own attempts).
        gated = request if request.history is None and request.generation is None else request.model_copy(
            update={"history": check_request.history, "generation": check_request.generation})
        try:
            async with admitted(self.admission, gated, decision, backend, side, trace.get_current_span()):
                runner = self.backends[backend]
                return produced(runner, await runner.run(check_request, side))
        except _RUNG_ERRORS as exc:  # an answer that could not be checked is not accepted
            raise ValidationFailed(f"{ctx.backend}: validator backend {backend!r} failed: {exc}",
                                   backend=ctx.backend) from exc
        finally:
            add_spend(ctx, side)

    # -- shadows ---------------------------------------------------------------------------------------

    async def run_judge(self, request: GenerateRequest, decision: Decision, deadline: float | None,
                        backend: str, judge_request: GenerateRequest) -> tuple[BackendOutput, float]:
        """Run a scoring judge through the check path (own reservation); its answer and cost."""
        accounted = self._context(request, backend, deadline)
        output = await self._run_for_check(request, decision, accounted, backend, judge_request)
        return output, accounted.cost_usd


def _final(error: GenrouteError, rung: Rung) -> bool:
    """Whether ``error`` ends the decision instead of falling through to the next rung."""
    return isinstance(error, BackendRejected) and not rung.fall_through_on_rejected
