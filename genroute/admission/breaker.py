"""Circuit breakers per backend and per engine+model, shared through the state store.

After ``failures`` retryable failures (5xx, 429, timeouts, refused connections, also after a stream's first chunk,
or an attempt still running when its request's deadline passed) within ``window_s``, a breaker opens for
``cooldown_s``; a 429 with ``Retry-After`` opens it for that long, up to ``max_retry_after_s`` (a longer one, a daily
quota's "retry in 86400 s", opens it for ``max_retry_after_s`` with a warning naming the backend: then one probe asks
again, rather than a backend closed for a day on one answer). While a breaker is open the router drops its backend's
rungs from the decision (``skip_open``; the reason says so) and nothing is sent to it. When the cool-down
ends the breaker is half-open: one attempt (the probe) is let through; its success closes the breaker (a stream its
reader stopped was answering), its failure opens it again, and a probe ending neither way (cancelled by its caller,
a request refused as sent) lets the next attempt probe. With a shared store (Redis) each attempt's breakers are
checked in the store as part of its admission's one store call, so an attempt never passes a breaker another process
opened; the decision's view (which rungs to leave out) is read from the store at most ``refresh_s`` after the last
read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import ConfigDict, Field

from genroute.admission import Attempt, Gate, Instruments, Outcome
from genroute.bounds import NOT_BOOL
from genroute.errors import BackendUnavailable, CircuitOpen, RateLimited, StreamInterrupted
from genroute.public_model import ConfigModel
from genroute.state.ops import Close, Fail, Open, Probe, Release, Settlement

if TYPE_CHECKING:
    from genroute.state import StateStore
    from genroute.types import Decision

_log = logging.getLogger(__name__)
#: How long a half-open probe is held when its request has no deadline.
PROBE_TTL_S = 60.0


class BreakerConfig(ConfigModel):
    """The router's ``breakers`` section: when a backend (or an engine's model) counts as unhealthy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures: Annotated[int, NOT_BOOL] = Field(default=5, ge=1,
                                               description="Retryable failures within `window_s` that open it.")
    window_s: Annotated[float, NOT_BOOL] = Field(default=60.0, gt=0, allow_inf_nan=False,
                                                 description="Window the failures are counted in.")
    cooldown_s: Annotated[float, NOT_BOOL] = Field(default=30.0, gt=0, allow_inf_nan=False,
                                                   description="How long it stays open before a probe.")
    refresh_s: Annotated[float, NOT_BOOL] = Field(default=0.5, gt=0, le=60,
                                                  description="How stale this process's view may be.")
    max_retry_after_s: Annotated[float, NOT_BOOL] = Field(
        default=300.0, gt=0, allow_inf_nan=False, description="Longest a 429's Retry-After opens it for; a longer "
        "one opens it this long (logged), then one probe asks again.")


class BreakerGate(Gate[Probe]):
    """Refuses attempts on open breakers, lets one probe through half-open ones, counts failures."""

    def __init__(self, config: BreakerConfig, targets: Mapping[str, tuple[str, str]], store: StateStore,
                 instruments: Instruments) -> None:
        self.config = config
        self.store = store
        self.instruments = instruments
        #: backend -> the breakers guarding it: its own and its engine's model's.
        self.names = {b: (f"backend:{b}", f"model:{engine}:{model}") for b, (engine, model) in targets.items()}
        self._all = sorted({n for names in self.names.values() for n in names})
        self._until: dict[str, float] = {}  # breaker -> time.monotonic() it half-opens (absent: closed)
        self._read_at = -float("inf")

    # -- the view policies and the decision filter read ------------------------------------------------

    async def health(self) -> dict[str, float]:
        """Backends whose breaker is not closed: seconds until it half-opens (<= 0: half-open now)."""
        if time.monotonic() - self._read_at >= self.config.refresh_s:
            self._read_at = time.monotonic()  # before the await: concurrent requests do not all re-read
            found = await self.store.breakers(self._all)
            now = time.monotonic()
            self._until = {name: now + left for name, left in found.items()}
        return self.view()

    def view(self) -> dict[str, float]:
        """``health`` from this process's last read, without reading the store."""
        if not self._until:
            return {}
        now = time.monotonic()
        out = {}
        for backend, names in self.names.items():
            lefts = [self._until[n] - now for n in names if n in self._until]
            if lefts:
                out[backend] = max(lefts)
        return out

    # -- the gate ---------------------------------------------------------------------------------------

    def claims(self, attempt: Attempt) -> list[Probe]:
        # What this process saw open refuses at once; the store checks the rest (and claims a half-open
        # breaker's one probe) in the admission's one call, so a breaker another process opened is seen there.
        names = self.names.get(attempt.backend, ())
        if not self._until:  # this process saw them all closed
            if not self.store.shared:  # and its view is the whole state
                return []
            ttl = PROBE_TTL_S if attempt.deadline is None else max(1.0, attempt.deadline - time.monotonic())
            return [Probe(name, ttl) for name in names]
        now = time.monotonic()
        for name in names:
            until = self._until.get(name)
            if until is not None and until > now:
                raise CircuitOpen(f"circuit breaker {name} is open for {until - now:.1f} s more (nothing was sent)",
                                  backend=attempt.backend, retry_after_s=until - now)
        ttl = PROBE_TTL_S if attempt.deadline is None else max(1.0, attempt.deadline - now)
        if not self.store.shared:  # this process's view is the whole state: only a half-open one needs a probe
            return [Probe(name, ttl) for name in names if name in self._until]
        return [Probe(name, ttl) for name in names]

    def admitted(self, attempt: Attempt, claims: Sequence[Probe], results: Sequence[Any]) -> list[str]:
        probes = []
        for claim, checked in zip(claims, results, strict=True):
            if checked.probing:
                probes.append(claim.name)
            else:  # closed in the store (e.g. another process's probe closed it)
                self._until.pop(claim.name, None)
        return probes

    async def refused(self, attempt: Attempt, claim: Probe, result: Any) -> None:
        name = claim.name
        if result.open_s > 0:
            self._until[name] = time.monotonic() + result.open_s
            raise CircuitOpen(f"circuit breaker {name} is open for {result.open_s:.1f} s more (nothing was sent)",
                              backend=attempt.backend, retry_after_s=result.open_s)
        self._until.setdefault(name, time.monotonic())
        raise CircuitOpen(f"circuit breaker {name} is half-open and its one probe is in flight "
                          "(nothing was sent)", backend=attempt.backend)

    def settlements(self, attempt: Attempt, token: list[str], outcome: Outcome) -> list[Settlement]:
        if not outcome.sent:
            return []
        error = _failure(outcome.error)
        if error is None:
            return [Close(name) for name in token]  # the probe answered: close
        if not _unhealthy(error, attempt):
            # Neither healthy nor not (its caller went away, or the request was refused as sent): if this attempt was
            # the probe, another one probes now, instead of none until this probe's hold lapses.
            return [Release(name) for name in token]
        retry_after = self._capped(_retry_after(error))
        ops: list[Settlement] = []
        for name in self.names.get(attempt.backend, ()):
            if retry_after:
                ops.append(Open(name, retry_after))
            elif name in token:
                ops.append(Open(name, self.config.cooldown_s))
            else:
                ops.append(Fail(name, self.config.failures, self.config.window_s, self.config.cooldown_s))
        return ops

    def settled(self, attempt: Attempt, token: list[str], outcome: Outcome, results: Sequence[Any]) -> None:
        error = _failure(outcome.error)
        if error is None:
            for name, closed in zip(token, results, strict=False):
                if closed:
                    self._until.pop(name, None)
                    self._event(attempt, name, "closed", "the half-open probe succeeded")
            return
        asked = _retry_after(error)
        retry_after = self._capped(asked)
        for name, opened in zip(self.names.get(attempt.backend, ()), results, strict=False):
            if not opened:
                continue
            if asked and retry_after:
                open_s, why = retry_after, f"429 with Retry-After {asked:g} s"
                if asked != retry_after:
                    why += f" (capped at breakers.max_retry_after_s, {retry_after:g} s)"
                    _log.warning("circuit breaker %s of backend %r opens for %g s, not the %g s its 429's Retry-After "
                                 "asked for (breakers.max_retry_after_s): then one probe asks again", name,
                                 attempt.backend, retry_after, asked)
            elif name in token:
                open_s, why = self.config.cooldown_s, f"the half-open probe failed ({type(error).__name__})"
            else:
                open_s, why = self.config.cooldown_s, \
                    f"{self.config.failures} retryable failures within {self.config.window_s:g} s " \
                    f"(last: {type(error).__name__})"
            self._until[name] = max(self._until.get(name, 0.0), time.monotonic() + open_s)
            self.instruments.opens.add(1, {"genroute.breaker": name})
            self._event(attempt, name, "open", why)

    def _capped(self, asked: float | None) -> float | None:
        """How long a 429 that asked to wait ``asked`` s opens the breakers: up to ``max_retry_after_s``."""
        return None if asked is None else min(asked, self.config.max_retry_after_s)

    def _event(self, attempt: Attempt, name: str, state: str, reason: str) -> None:
        attempt.span.add_event("genroute.breaker", {"genroute.breaker": name, "genroute.breaker.state": state,
                                                    "genroute.breaker.reason": reason})


def _failure(error: BaseException | None) -> BaseException | None:
    """The failure to judge the backend by, None for an answered attempt (no error, or a stream its reader stopped
    reading: chunks were arriving). For a stream the provider failed after its first chunk, the provider's failure
    (a 5xx, a cut connection, a 429 with its Retry-After) as it would have been before that chunk."""
    if error is None or isinstance(error, GeneratorExit):
        return None
    if isinstance(error, StreamInterrupted) and isinstance(error.__cause__, BackendUnavailable):
        return error.__cause__
    return error


def _retry_after(error: BaseException) -> float | None:
    """A 429's ``Retry-After`` in seconds (None: not a 429, or none given)."""
    return getattr(error, "retry_after_s", None) if getattr(error, "status", None) == 429 else None


def _unhealthy(error: BaseException, attempt: Attempt) -> bool:
    """Whether ``error`` says the backend is unhealthy (not our own refusals, not the caller's mistakes)."""
    if isinstance(error, RateLimited | CircuitOpen):
        return False
    if isinstance(error, BackendUnavailable):
        return True
    # Cancelled by the request's deadline: the backend did not answer in time.
    return attempt.deadline is not None and time.monotonic() >= attempt.deadline - 0.01


def skip_open(decision: Decision, health: Mapping[str, float]) -> Decision:
    """``decision`` without the rungs whose breaker is open (half-open ones stay: one may probe).

    Pure: the health view is read by the router and handed in. ``CircuitOpen`` if no rung is left."""
    if not health:
        return decision
    kept = [r for r in decision.rungs if health.get(r.backend, 0.0) <= 0.0]
    if len(kept) == len(decision.rungs):
        return decision
    skipped = ", ".join(f"{r.backend} (open {health[r.backend]:.1f} s more)" for r in decision.rungs
                        if r not in kept)
    if not kept:
        first = decision.rungs[0].backend
        raise CircuitOpen(f"every rung's circuit breaker is open: {skipped} (nothing was sent)", backend=first,
                          retry_after_s=min(health[r.backend] for r in decision.rungs))
    return decision.model_copy(update={"rungs": tuple(kept),
                                       "reason": f"{decision.reason}; breaker open, skipped: {skipped}"})
