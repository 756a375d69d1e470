"""Rate limits: requests and input tokens per minute, per engine and model (or per backend, or budget key).

Each limit counts in one-minute windows of the state store (so every process sharing the store shares the
limit), the way Gemini states its quotas. An attempt holds one request and its estimated input tokens
before it is sent and settles the tokens the provider reported after (estimate, then correct). When a window
has no room the attempt either waits for the next window, if that comes before its deadline
(``on_limit: wait``), or falls through to the next rung at once with ``RateLimited`` (``fall_through``);
it is never sent to collect a 429.

Counting is per attempt: a function-calling loop that makes several model calls in one attempt counts as
one request (its tokens are all settled). Fixed windows admit up to twice a limit across a window boundary.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from genroute.admission import Attempt, Gate, Instruments, Outcome, hold_ttl_s
from genroute.bounds import NOT_BOOL
from genroute.errors import ConfigError, RateLimited
from genroute.public_model import ConfigModel
from genroute.state.ops import Held, Hold, Settle

if TYPE_CHECKING:
    from genroute.state import StateStore
    from genroute.types import GenerateRequest

#: How long a window's counts outlive it (a long attempt settles into its own window).
KEEP_AFTER_S = 600.0
#: A waiter wakes this long after the window turns, so that the new window is surely the current one.
_WAKE_LATE_S = 0.005


class RateLimitConfig(ConfigModel):
    """One limit: on an engine (optionally one model of it) or on a backend; requests and/or input tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str | None = Field(default=None, description="Engine name (with `model`: only that model).")
    model: str | None = Field(default=None, description="Model of `engine` the limit applies to.")
    backend: str | None = Field(default=None, description="Backend name (instead of `engine`).")
    per: Literal["all", "budget_key"] = Field(default="all", description="`budget_key`: one limit per key.")
    rpm: Annotated[int | None, NOT_BOOL] = Field(default=None, ge=1, description="Requests per minute.")
    tpm: Annotated[int | None, NOT_BOOL] = Field(default=None, ge=1, description="Input tokens per minute.")
    window_s: Annotated[float, NOT_BOOL] = Field(default=60.0, gt=0, allow_inf_nan=False,
                                                 description="The window `rpm` and `tpm` count in (60: per minute, "
                                                 "as Gemini states its quotas).")
    on_limit: Literal["wait", "fall_through"] = Field(
        default="wait", description="No room: wait for the next minute (if before the deadline) or fall through.")

    @model_validator(mode="after")
    def _target(self) -> RateLimitConfig:
        if (self.engine is None) == (self.backend is None):
            raise ValueError("name either `engine` (and optionally `model`) or `backend`")
        if self.model is not None and self.engine is None:
            raise ValueError("`model` needs `engine`")
        if self.rpm is None and self.tpm is None:
            raise ValueError("set `rpm`, `tpm` or both")
        return self

    def scope(self) -> str:
        """The limit's name in store keys and errors."""
        if self.backend is not None:
            return f"backend:{self.backend}"
        return f"engine:{self.engine}" + (f":{self.model}" if self.model else "")


def request_tokens(request: GenerateRequest) -> int:
    """Input tokens a request is assumed to need before it is sent (four characters a token): its input and the
    conversation's earlier turns (``history``), which each call sends."""
    chars = len(request.input) + (sum(len(turn.text) for turn in request.history) if request.history else 0)
    return max(1, math.ceil(chars / 4))


class RateLimitGate(Gate[Hold]):
    """Holds each attempt's request and estimated tokens against the limits that cover its backend."""

    def __init__(self, limits: Sequence[RateLimitConfig], targets: Mapping[str, tuple[str, str]],
                 store: StateStore, instruments: Instruments) -> None:
        """``targets``: backend name -> (engine name, model) of every backend of the router."""
        self.store = store
        self.instruments = instruments
        #: backend -> the limits that cover it, each with its scope (its name in keys and errors).
        self._covering: dict[str, list[tuple[RateLimitConfig, str]]] = {}
        for index, limit in enumerate(limits):
            field = f"rate_limits.{index}"
            if limit.backend is not None and limit.backend not in targets:
                raise ConfigError(f"no backend {limit.backend!r}", field=f"{field}.backend")
            if limit.engine is not None and all(engine != limit.engine for engine, _ in targets.values()):
                raise ConfigError(f"no backend uses engine {limit.engine!r}", field=f"{field}.engine")
            models = sorted({model for engine, model in targets.values() if engine == limit.engine})
            if limit.model is not None and limit.model not in models:  # a typo would limit nothing, silently
                raise ConfigError(f"no backend uses model {limit.model!r} on engine {limit.engine!r} (used: "
                                  f"{', '.join(models)})", field=f"{field}.model")
            for backend, (engine, model) in targets.items():
                if limit.backend == backend or (limit.engine == engine and limit.model in (None, model)):
                    self._covering.setdefault(backend, []).append((limit, limit.scope()))

    def claims(self, attempt: Attempt) -> list[Hold]:
        limits = self._covering.get(attempt.backend)
        if not limits:
            return []
        tokens = request_tokens(attempt.request)
        now = time.time()
        ttl = hold_ttl_s(attempt.deadline, stream=attempt.stream)
        claims = []
        for limit, scope in limits:
            if limit.per == "budget_key":
                scope += f":{attempt.decision.budget_key or attempt.request.key or '-'}"
            window = math.floor(now / limit.window_s)
            account = f"ratelimit:{scope}:{window}"
            keep = 2 * limit.window_s + KEEP_AFTER_S
            tag = (limit, scope, (window + 1) * limit.window_s)  # the limit, its scope, when the window turns
            if limit.rpm is not None:
                claims.append(Hold(account + ":rpm", 1, limit.rpm, ttl, keep, tag))
            if limit.tpm is not None:
                claims.append(Hold(account + ":tpm", tokens, limit.tpm, ttl, keep, tag))
        return claims

    async def refused(self, attempt: Attempt, claim: Hold, result: Any) -> None:
        """No room in this window: fall through (``RateLimited``), or wait for the next window if allowed."""
        limit, scope, turns_at = claim.tag
        wait_s = turns_at - time.time() + _WAKE_LATE_S
        left_s = None if attempt.deadline is None else attempt.deadline - time.monotonic()
        what = "requests" if claim.account.endswith(":rpm") else "tokens"
        if limit.on_limit == "fall_through" or (left_s is not None and wait_s >= left_s):
            self.instruments.limited.add(1, {"genroute.ratelimit.scope": limit.scope()})
            why = "" if limit.on_limit == "fall_through" else "; the next window opens after the deadline"
            raise RateLimited(f"rate limit {scope}: no room for these {what} in this minute{why} "
                              f"(nothing was sent)", backend=attempt.backend, retry_after_s=wait_s)
        started = time.monotonic()
        await asyncio.sleep(max(0.0, wait_s))
        waited = time.monotonic() - started
        attempt.waited_s += waited
        self.instruments.wait.record(waited, {"genroute.ratelimit.scope": limit.scope()})
        if attempt.span.is_recording():
            attempt.span.set_attribute("genroute.ratelimit.wait_s", attempt.waited_s)

    def settlements(self, attempt: Attempt, token: list[tuple[Hold, Held]], outcome: Outcome) -> list[Settle]:
        if not token:
            return []
        tokens = outcome.input_tokens or request_tokens(attempt.request) if outcome.sent else 0
        return [Settle(hold.account, held.hold_id, (1 if outcome.sent else 0) if hold.account.endswith(":rpm")
                       else tokens, keep_s=hold.keep_s) for hold, held in token]


def rate_limit_gate(limits: Sequence[RateLimitConfig], targets: Mapping[str, tuple[str, str]],
                    store: StateStore, instruments: Instruments) -> RateLimitGate | None:
    """The gate for a router's validated ``rate_limits`` (None when there are none); errors name the field."""
    return RateLimitGate(limits, targets, store, instruments) if limits else None
