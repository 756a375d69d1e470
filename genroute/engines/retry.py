"""The one retry layer: tenacity, retrying only ``BackendUnavailable``, bounded by attempts and a deadline."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import trace
from pydantic import ConfigDict, Field

from genroute.errors import BackendUnavailable
from genroute.public_model import ConfigModel

if TYPE_CHECKING:
    import tenacity

T = TypeVar("T")
logger = logging.getLogger("genroute.engines.retry")
_MIN_ATTEMPT_S = 0.01  # less time than this left: no attempt could succeed


class RetryConfig(ConfigModel):
    """How an engine retries retryable failures (408/429/5xx, timeouts, connection errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    attempts: int = Field(default=3, ge=1, description="Attempts in total, the first one included.")
    initial_backoff_s: float = Field(default=0.5, ge=0, description="Wait before the first retry.")
    max_backoff_s: float = Field(default=8.0, ge=0, description="Cap of the exponential wait.")
    jitter_s: float = Field(default=0.5, ge=0, description="Uniform random extra wait, up to this.")
    deadline_s: float = Field(default=120.0, gt=0, description="Total time for all attempts and waits.")
    max_retry_after_s: float = Field(
        default=30.0, ge=0, description="Cap on a server's Retry-After; a longer one ends the retries."
    )


def backoff_s(config: RetryConfig, failures: int, exc: BaseException | None) -> float:
    """The wait after the ``failures``-th failed attempt: exponential with jitter, at least Retry-After."""
    wait = min(config.max_backoff_s, config.initial_backoff_s * (2 ** (failures - 1)))
    wait += random.uniform(0, config.jitter_s)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        # A Retry-After beyond the cap means "not soon": waiting the cap would just fail again.
        wait = max(wait, retry_after) if retry_after <= config.max_retry_after_s else math.inf
    return wait


async def call_with_retry(
    attempt: Callable[..., Awaitable[T]],
    config: RetryConfig,
    *args: Any,
    deadline_s: float | None = None,
) -> T:
    """Await ``attempt(*args, remaining_s)`` until it succeeds, retrying ``BackendUnavailable`` only.

    (``args`` rather than a partial or a closure: a call in flight holds one object less.)

    ``remaining_s`` is the time left before the deadline (``min(config.deadline_s, deadline_s)``); an
    attempt should use it to bound its own timeout. The last error is re-raised when attempts run out,
    or when the next wait would cross the deadline.

    Every attempt runs on the one line below and every failure goes to tenacity, which decides whether to
    retry, how long to wait and when to stop. The loop is ``AsyncRetrying.__call__`` without its opening
    step (which only runs ``before`` hooks, of which there are none): tenacity's state is built at the first
    failure, so an answer on the first try costs no more than the call itself (``AsyncRetrying`` wrapped
    around every call measured 110-140k instructions more per first-try success, about a bare span).
    """
    deadline = min(config.deadline_s, deadline_s) if deadline_s is not None else config.deadline_s
    start = time.monotonic()
    remaining = deadline
    retrying: tenacity.AsyncRetrying | None = None
    while True:
        try:
            return await attempt(*args, remaining)
        except Exception as exc:
            last = exc
            if retrying is None:
                # Whether the request's deadline (not the engine's own retry budget) bounds the retries: read
                # only after a failure, so worked out at the first one (as tenacity's state is).
                request_bound = deadline_s is not None and deadline_s <= config.deadline_s
                retrying, state = _retrying(config, start, deadline, request_bound)
            state.set_exception((type(exc), exc, exc.__traceback__))
        do = await retrying.iter(state)  # a DoSleep, or it re-raises the error: not retryable, or stopped
        state.prepare_for_next_attempt()
        assert isinstance(do, float)  # tenacity's DoSleep (typed as any of its actions)
        await asyncio.sleep(do)
        remaining = deadline - (time.monotonic() - start)
        if remaining <= _MIN_ATTEMPT_S:
            # The loop woke us later than tenacity planned: no attempt could succeed in what is left.
            if isinstance(last, BackendUnavailable):
                _out_of_time(last, config, request_bound, time.monotonic() - start, deadline)
            raise last


def _out_of_time(exc: BackendUnavailable, config: RetryConfig, request_bound: bool, elapsed: float,
                 deadline: float) -> None:
    """Mark ``exc`` when retries stop because the request's deadline leaves no room for another attempt.

    Not when the provider's own Retry-After says it is back only after the deadline (or "not soon"): that is
    the backend being unavailable, which a policy may fall through.
    """
    retry_after = exc.retry_after_s
    exc.out_of_time = request_bound and (retry_after is None or (
        retry_after <= config.max_retry_after_s and elapsed + retry_after < deadline))


def retried(attempt: int, wait_s: float, exc: BaseException | None) -> None:
    """Say on the current span (the model call's, or the embedding's) that ``attempt`` failed with ``exc`` and is
    retried after ``wait_s``: a ``genroute.retry`` event with the error's class and HTTP status (never its message),
    so that a trace shows why a call took longer and what the lost attempts were. Failures only: an answer on the
    first try adds nothing."""
    event: dict[str, Any] = {"genroute.retry.attempt": attempt, "genroute.retry.wait_s": wait_s}
    if exc is not None:
        event["error.type"] = type(exc).__name__
        status = getattr(exc, "status", None)
        if status is not None:
            event["http.response.status_code"] = status
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            event["genroute.retry.retry_after_s"] = retry_after
    trace.get_current_span().add_event("genroute.retry", event)


def _retrying(config: RetryConfig, start: float, deadline: float,
              request_bound: bool) -> tuple[tenacity.AsyncRetrying, tenacity.RetryCallState]:
    """tenacity's retry policy for one call that began at ``start``, and its state (attempt 1 has run)."""
    import tenacity  # lazily: ~20 ms to import, and only needed once something failed

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= config.attempts:
            return True
        elapsed = time.monotonic() - start
        # Room for the wait and for an attempt that could still succeed after it.
        if elapsed + state.upcoming_sleep + _MIN_ATTEMPT_S < deadline:
            return False
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, BackendUnavailable):
            _out_of_time(exc, config, request_bound, elapsed, deadline)
        return True

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff_s(config, state.attempt_number, exc)

    def log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        # The error's class and status, never its message (a provider's may quote the request), and the trace id
        # that finds the call's span and its genroute.retry events.
        context = trace.get_current_span().get_span_context()
        logger.info("retrying after attempt %d in %.2fs: %s (status %s, trace %s)", state.attempt_number,
                    state.upcoming_sleep, type(exc).__name__, getattr(exc, "status", None),
                    format(context.trace_id, "032x") if context.is_valid else "none")
        retried(state.attempt_number, state.upcoming_sleep, exc)

    retrying = tenacity.AsyncRetrying(
        stop=stop, wait=wait, retry=tenacity.retry_if_exception_type(BackendUnavailable),
        before_sleep=log, reraise=True, sleep=asyncio.sleep,
    )
    retrying.begin()
    return retrying, tenacity.RetryCallState(retrying, fn=None, args=(), kwargs={})
