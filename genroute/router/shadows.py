"""Shadow runs: the decision's shadow backends run in the background after the served answer, measured and (with
an outcome recorder) scored against it, never shown to the caller.

A mixin of ``Executor`` (kept apart so the rung loop stays one module). A shadow runs on the event loop of the request
that started it; a loop that ends first (``asyncio.run`` per call, a Celery task's) cancels it there, so it records no
outcome: such cancellations are counted (``shadows_cancelled``), marked on the shadow's span and logged once a minute,
pointing at ``adrain`` (wait for them before the loop ends).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from genroute.backends.base import produced
from genroute.log_every import LogEvery
from genroute.runtime.deadlines import deadline_at
from genroute.runtime.embeddings import RequestEmbeddings
from genroute.runtime.telemetry import instrument
from genroute.router.attempt import admitted
from genroute.router.inflight import call_on, poll_until, resume_here
from genroute.types import Decision, GenerateRequest, GenerateResult

if TYPE_CHECKING:
    from genroute.admission import Admission
    from genroute.backends.base import Backend, BackendOutput
    from genroute.outcomes.recorder import OutcomeRecorder
    from genroute.runtime.context import RunContext
    from genroute.runtime.telemetry import Telemetry

_log = logging.getLogger("genroute.router.executor")  # where these lines were logged before the split

#: How long a shadow run may take when neither the request nor the router sets a timeout.
SHADOW_TIMEOUT_S = 60.0
#: Shadow runs in flight per router; more are dropped (and counted), never queued.
MAX_SHADOWS = 16
#: How long a router's close lets shadow runs finish before it cancels them (``drain_shadows``).
CLOSE_SHADOWS_S = 5.0
#: Dropped or cancelled shadow runs are logged at most this often (they are counted on each request's span).
LOG_INTERVAL_S = 60.0
#: The message of the cancellation ``drain_shadows`` sends a shadow it gives up on (not its loop ending).
_DRAINED = "genroute: drained"


class Shadows:
    """Starting, running and draining shadow runs (mixed into ``Executor``)."""

    backends: Mapping[str, Backend]
    admission: Admission | None
    telemetry: Telemetry
    timeout_s: float | None
    max_shadows: int
    outcomes: OutcomeRecorder | None
    unsafe_shadows: frozenset[str]

    def _init_shadows(self) -> None:
        #: Shadow runs dropped because ``max_shadows`` were already in flight.
        self.shadows_dropped = 0
        self._dropped_counter = instrument(self.telemetry.meter.create_counter, "genroute.shadows.dropped",
                                           unit="{run}", description="Shadow runs dropped because max_shadows "
                                                                     "were already in flight")
        #: Shadow runs cancelled before they ended by anything but ``drain_shadows`` (their event loop ending).
        self.shadows_cancelled = 0
        self._warn_log: dict[str, LogEvery] = {}  # when each kind of warning (dropped, cancelled) is due again
        self._shadows: set[asyncio.Task[Any]] = set()
        #: Shadow runs left on an event loop closed under them, for ``drain_shadows`` to end.
        self._stranded_shadows: set[asyncio.Task[Any]] = set()

    if TYPE_CHECKING:  # the executor's
        def _context(self, request: GenerateRequest, backend: str, deadline: float | None,
                     bounded: bool = False) -> RunContext: ...

        async def run_judge(self, request: GenerateRequest, decision: Decision, deadline: float | None,
                            backend: str, judge_request: GenerateRequest) -> tuple[BackendOutput, float]: ...

    def _served(self, request: GenerateRequest, decision: Decision, span: trace.Span, result: GenerateResult,
                output: BackendOutput, ctx: RunContext) -> None:
        """Hand the served answer to the outcome recorder (if any), then start the decision's shadows (with what the
        request embedded: ``ctx``, the serving rung's, holds its policy's, its earlier rungs' and its own vectors)."""
        if self.outcomes is not None and result.outcome_id is not None:
            self.outcomes.served(result.outcome_id, request, result, output)
        if decision.shadow:
            self._start_shadows(request, decision, span, result, ctx.embeddings)

    def _start_shadows(self, request: GenerateRequest, decision: Decision, span: trace.Span,
                       served: GenerateResult, embeddings: RequestEmbeddings | None) -> None:
        """Start the decision's shadows; they share the request's ``embeddings`` (the policy's and the rungs'
        vectors; made here if none were, so that shadows embedding the same text make it once)."""
        if not decision.shadow:
            return
        if embeddings is None:
            embeddings = RequestEmbeddings()
        draw = random.random()  # one draw a request: shadows at one rate run on the same requests (paired)
        timeout_s = request.timeout_s or self.timeout_s or SHADOW_TIMEOUT_S
        dropped = 0
        for backend in decision.shadow:
            if backend not in self.backends or draw >= decision.shadow_rates.get(backend, decision.shadow_rate):
                continue
            if backend == served.backend:  # a fallback rung answered: it would run again, compared with itself
                continue
            if backend in self.unsafe_shadows:  # a policy named it per request: never repeat side effects
                span.set_attribute("genroute.shadow.refused", backend)
                continue
            if len(self._shadows) >= self.max_shadows and len(self._live_shadows()) >= self.max_shadows:
                dropped += 1
                continue
            task = asyncio.get_running_loop().create_task(
                self._shadow(request, decision, backend, span, timeout_s, served, embeddings))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)
        if dropped:
            self.shadows_dropped += dropped
            self._dropped_counter.add(dropped)
            span.set_attribute("genroute.shadow.dropped", dropped)
            self._warn("dropped", "dropped %d shadow run(s) so far: %d were already in flight (logged once a minute)",
                       self.shadows_dropped, self.max_shadows)  # under load that is every request: throttled

    def _live_shadows(self) -> set[asyncio.Task[Any]]:
        """The shadow runs that can still end. One that has ended is dropped here: its done callback, which drops it
        too, runs only on a later turn of its loop, and until then it kept its place under ``max_shadows``. One whose
        loop was closed under it (``run_until_complete``, then ``close`` with it still pending) never will end there:
        it is set aside, for the router's close to end, instead of keeping its place for good."""
        for task in [task for task in list(self._shadows) if task.done() or task.get_loop().is_closed()]:  # a copy
            self._shadows.discard(task)  # (other threads' loops add and discard theirs meanwhile: see drain)
            if not task.done():
                self._stranded_shadows.add(task)
        return self._shadows

    async def _shadow(self, request: GenerateRequest, decision: Decision, backend: str, parent: trace.Span,
                      timeout_s: float, served: GenerateResult, embeddings: RequestEmbeddings) -> None:
        """Run a shadow backend; its answer never reaches the caller, it is measured (and, with an outcome
        recorder, scored against the served answer and stored as a paired outcome).

        It passes admission like a rung (budgets count it, rate limits and breakers apply) and is skipped
        when admission refuses it. It reuses the request's ``embeddings``; one it makes is charged to it (its span's
        cost, its budgets' settle), never to the served answer.
        """
        link = trace.Link(parent.get_span_context())
        with self.telemetry.tracer.start_as_current_span(
            "genroute.shadow", context=trace.set_span_in_context(trace.INVALID_SPAN), links=[link],
            attributes={"genroute.backend": backend, "genroute.shadow": True},
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                ctx = self._context(request, backend, time.monotonic() + timeout_s, True)  # the block below ends it
                ctx.embeddings = embeddings
                attempt = admitted(self.admission, request, decision, backend, ctx, span)
                started = time.perf_counter()
                try:
                    async with attempt:
                        with deadline_at(ctx.deadline):
                            runner = self.backends[backend]
                            output = produced(runner, await runner.run(request, ctx))
                except Exception as exc:  # a shadow must never surface; it is only measured
                    if not attempt.admitted:  # e.g. BudgetExceeded: a shadow never spends what the budget refuses
                        span.set_attribute("genroute.shadow.skipped", type(exc).__name__)
                        return
                    span.set_attribute("error.type", type(exc).__name__)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    return
                finally:
                    span.set_attributes({"gen_ai.usage.cost.amount": ctx.cost_usd, "gen_ai.usage.cost.currency": "USD"})
                    if ctx.cost_estimated:  # a call of it was lost or cut: as the root span and rung events say
                        span.set_attribute("genroute.cost.estimated", True)
                span.set_attribute("genroute.shadow.chars", len(output.text))
                if ctx.reused_embedding_s:  # in its outcome side's latency, not in this span's own duration
                    span.set_attribute("genroute.shadow.reused_embedding_s", ctx.reused_embedding_s)
                if self.outcomes is not None and served.outcome_id is not None:
                    judge = functools.partial(self.run_judge, request, decision, ctx.deadline)
                    await self.outcomes.shadow_run(served.outcome_id, request, backend, output, ctx,
                                                   time.perf_counter() - started, span, judge)
            except asyncio.CancelledError as exc:  # its event loop ended (or the router's drain gave up on it)
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                if exc.args[:1] != (_DRAINED,):
                    self._cancelled_early()
                raise

    def _cancelled_early(self) -> None:
        """Count a shadow run cancelled before it ended by something other than ``drain_shadows``: as a rule the end
        of the event loop it ran on (``asyncio.run`` per call cancels what is left on its loop), which records no
        outcome for it; logged once a minute, saying how to keep them."""
        self.shadows_cancelled += 1
        self._warn("cancelled", "%d shadow run(s) cancelled before they ended so far, recording no outcome: the event "
                   "loop they ran on ended under them (asyncio.run, or a task per call, cancels what is left on its "
                   "loop); await router.adrain() before it ends to let them finish (logged once a minute)",
                   self.shadows_cancelled)

    def _warn(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message`` as a warning unless one of its ``kind`` was logged less than ``LOG_INTERVAL_S`` ago."""
        if self._warn_log.setdefault(kind, LogEvery(LOG_INTERVAL_S)).due():
            _log.warning(message, *args)

    async def drain_shadows(self, timeout_s: float = CLOSE_SHADOWS_S, *, writes: bool = True) -> None:
        """Wait for running shadow tasks (at shutdown), cancelling what outlives ``timeout_s``.

        A shadow runs on the loop of the request that started it, maybe another thread's: it is cancelled on
        that loop and watched from here, never awaited across loops. Then, within the same ``timeout_s``, the outcome
        writes of the shadows that ended (which no longer wait for them: ``OutcomeRecorder._write_behind``), unless
        ``writes`` is false: a close, whose store's close waits for every write in its own bound (waited for here
        too, a stuck store held the close 5 s more).
        """
        end = time.monotonic() + timeout_s
        shadows = list(self._live_shadows())  # a copy: other threads' loops add and discard theirs meanwhile
        stranded, self._stranded_shadows = self._stranded_shadows, set()
        # Those on a loop closed under them: resumed here, cancelled (as a request left there is, InFlight.close).
        pending = [resume_here(task) for task in stranded]
        for task in pending:
            task.cancel()
        if shadows and not await poll_until(lambda: all(task.done() for task in shadows), timeout_s):
            late = [task for task in shadows if not task.done()]
            for task in late:
                call_on(task.get_loop(), task.cancel, _DRAINED)
            pending += late
        # Let the cancelled runs settle their admission and end their spans.
        await poll_until(lambda: all(task.done() for task in pending), 1.0)
        recorder = self.outcomes
        if writes and recorder is not None and recorder.writes_behind:
            await poll_until(lambda: not recorder.writes_behind, max(0.0, end - time.monotonic()))

