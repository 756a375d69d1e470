"""The one retry layer: tenacity, retrying only ``BackendUnavailable``, bounded by attempts and a deadline."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from genroute.errors import BackendUnavailable

if TYPE_CHECKING:
    import tenacity

T = TypeVar("T")
logger = logging.getLogger("genroute.engines.retry")
_MIN_ATTEMPT_S = 0.01  # less time than this left: no attempt could succeed


class RetryConfig(BaseModel):
    """How an engine retries retryable failures (408/429/5xx, timeouts, connection errors)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attempts: int = Field(default=3, ge=1, description="Attempts in total, the first one included.")
    initial_backoff_s: float = Field(default=0.5, ge=0, description="Wait before the first retry.")
    max_backoff_s: float = Field(default=8.0, ge=0, description="Cap of the exponential wait.")
    jitter_s: float = Field(default=0.5, ge=0, description="Uniform random extra wait, up to this.")
    deadline_s: float = Field(default=120.0, gt=0, description="Total time for all attempts and waits.")
    max_retry_after_s: float = Field(
        default=30.0, ge=0, description="Cap on a server's Retry-After; a longer one ends the retries."
    )


class _Backoff:
    """Exponential backoff with jitter, but never shorter than the server's Retry-After."""

    def __init__(self, config: RetryConfig) -> None:
        self.config = config

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        c = self.config
        exponent = retry_state.attempt_number - 1
        wait = min(c.max_backoff_s, c.initial_backoff_s * (2**exponent)) + random.uniform(0, c.jitter_s)
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after_s", None)
        if retry_after is not None:
            # A Retry-After beyond the cap means "not soon": waiting the cap would just fail again.
            wait = max(wait, retry_after) if retry_after <= c.max_retry_after_s else math.inf
        return wait


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    logger.info("retrying after attempt %d in %.2fs: %s", retry_state.attempt_number,
                retry_state.upcoming_sleep, exc)


async def call_with_retry(
    attempt: Callable[[float], Awaitable[T]],
    config: RetryConfig,
    *,
    deadline_s: float | None = None,
) -> T:
    """Await ``attempt(remaining_s)`` until it succeeds, retrying ``BackendUnavailable`` only.

    ``remaining_s`` is the time left before the deadline (``min(config.deadline_s, deadline_s)``); an
    attempt should use it to bound its own timeout. The last error is re-raised when attempts run out,
    or when the next wait would cross the deadline.
    """
    import tenacity  # lazily: ~20 ms, and only needed once a call is made

    deadline = min(config.deadline_s, deadline_s) if deadline_s is not None else config.deadline_s
    start = time.monotonic()
    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(config.attempts) | tenacity.stop_before_delay(deadline),
        wait=_Backoff(config),
        retry=tenacity.retry_if_exception_type(BackendUnavailable),
        before_sleep=_log_retry,
        reraise=True,
    )
    last: BackendUnavailable | None = None
    async for state in retrying:
        with state:
            remaining = deadline - (time.monotonic() - start)
            if remaining <= _MIN_ATTEMPT_S:
                # Timers may fire a hair early, so tenacity can still see room; the last error says more.
                raise last or BackendUnavailable(f"deadline of {deadline:g}s exceeded before the attempt")
            try:
                return await attempt(remaining)
            except BackendUnavailable as exc:
                last = exc
                raise
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
