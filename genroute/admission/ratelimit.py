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
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from genroute.admission import Attempt, Gate, Instruments, Outcome, hold_ttl_s
from genroute.errors import ConfigError, RateLimited

if TYPE_CHECKING:
    from genroute.state import StateStore

T = TypeVar("T")
#: How long a window's counts outlive it (a long attempt settles into its own window).
KEEP_AFTER_S = 600.0
#: A waiter wakes this long after the window turns, so that the new window is surely the current one.
_WAKE_LATE_S = 0.005


class RateLimitConfig(BaseModel):
    """One limit: on an engine (optionally one model of it) or on a backend; requests and/or input tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str | None = Field(default=None, description="Engine name (with `model`: only that model).")
    model: str | None = Field(default=None, description="Model of `engine` the limit applies to.")
    backend: str | None = Field(default=None, description="Backend name (instead of `engine`).")
    per: Literal["all", "budget_key"] = Field(default="all", description="`budget_key`: one limit per key.")
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, description="Input tokens per minute.")
    window_s: float = Field(default=60.0, gt=0, description="The window `rpm` and `tpm` count in (60: per minute, "
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


def estimate_tokens(text: str) -> int:
    """Input tokens a request is assumed to need before it is sent (four characters a token)."""
    return max(1, math.ceil(len(text) / 4))


#: One limit's holds: (account, request hold, token hold, how long the account is kept).
_Held = tuple[str, str | None, str | None, float]


class RateLimitGate(Gate):
    """Holds each attempt's request and estimated tokens against the limits that cover its backend."""

    def __init__(self, limits: Sequence[RateLimitConfig], targets: Mapping[str, tuple[str, str]],
                 store: StateStore, instruments: Instruments) -> None:
        """``targets``: backend name -> (engine name, model) of every backend of the router."""
        self.store = store
        self.instruments = instruments
        self._covering: dict[str, list[RateLimitConfig]] = {}
        for index, limit in enumerate(limits):
            field = f"rate_limits.{index}"
            if limit.backend is not None and limit.backend not in targets:
                raise ConfigError(f"no backend {limit.backend!r}", field=f"{field}.backend")
            if limit.engine is not None and all(engine != limit.engine for engine, _ in targets.values()):
                raise ConfigError(f"no backend uses engine {limit.engine!r}", field=f"{field}.engine")
            for backend, (engine, model) in targets.items():
                if limit.backend == backend or (limit.engine == engine and limit.model in (None, model)):
                    self._covering.setdefault(backend, []).append(limit)

    async def enter(self, attempt: Attempt) -> list[_Held]:
        limits = self._covering.get(attempt.backend)
        if not limits:
            return []
        tokens = estimate_tokens(attempt.request.input)
        held: list[_Held] = []
        try:
            for limit in limits:
                held.append(await self._hold(attempt, limit, tokens))
        except BaseException:
            await self._release(held, 0, sent=False)
            raise
        return held

    async def exit(self, attempt: Attempt, token: list[_Held],
                   outcome: Outcome) -> None:
        if token:
            tokens = outcome.input_tokens or estimate_tokens(attempt.request.input)
            await self._release(token, tokens, sent=outcome.sent)

    async def _hold(self, attempt: Attempt, limit: RateLimitConfig, tokens: int) -> _Held:
        """Hold a request and ``tokens`` in the current window, waiting for a later one if allowed."""
        scope = limit.scope()
        if limit.per == "budget_key":
            scope += f":{attempt.decision.budget_key or attempt.request.key or '-'}"
        while True:
            now = time.time()
            window = math.floor(now / limit.window_s)
            account = f"ratelimit:{scope}:{window}"
            keep = 2 * limit.window_s + KEEP_AFTER_S
            ttl = hold_ttl_s(attempt.deadline)
            holds = [(account + ":rpm", 1, limit.rpm), (account + ":tpm", tokens, limit.tpm)]
            found = await self._gather(self.store.hold(name, amount, cap, ttl_s=ttl, keep_s=keep)
                                       for name, amount, cap in holds if cap is not None)
            rpm = found.pop(0)[0] if limit.rpm is not None else None
            tpm = found.pop(0)[0] if limit.tpm is not None else None
            if (limit.rpm is None or rpm is not None) and (limit.tpm is None or tpm is not None):
                return account, rpm, tpm, keep
            await self._release([(account, rpm, tpm, keep)], 0, sent=False)  # the half that fit goes back
            wait_s = (window + 1) * limit.window_s - now + _WAKE_LATE_S
            left_s = None if attempt.deadline is None else attempt.deadline - time.monotonic()
            what = "requests" if limit.rpm is not None and rpm is None else "tokens"
            if limit.on_limit == "fall_through" or (left_s is not None and wait_s >= left_s):
                self.instruments.limited.add(1, {"genroute.ratelimit.scope": limit.scope()})
                why = "" if limit.on_limit == "fall_through" else f"; the next window opens after the deadline"
                raise RateLimited(f"rate limit {scope}: no room for these {what} in this minute{why} "
                                  f"(nothing was sent)", backend=attempt.backend, retry_after_s=wait_s)
            started = time.monotonic()
            await asyncio.sleep(wait_s)
            waited = time.monotonic() - started
            attempt.waited_s += waited
            self.instruments.wait.record(waited, {"genroute.ratelimit.scope": limit.scope()})
            if attempt.span.is_recording():
                attempt.span.set_attribute("genroute.ratelimit.wait_s", attempt.waited_s)

    async def _release(self, held: list[_Held], tokens: int, *, sent: bool) -> None:
        await self._gather(self.store.settle(f"{account}:{kind}", hold_id, amount if sent else 0, keep_s=keep)
                           for account, rpm, tpm, keep in held
                           for kind, hold_id, amount in (("rpm", rpm, 1), ("tpm", tpm, tokens)) if hold_id is not None)

    async def _gather(self, calls: Iterable[Awaitable[T]]) -> list[T]:
        """Await independent store calls: concurrently on a networked store (one round trip's wait)."""
        pending = list(calls)
        if self.store.remote and len(pending) > 1:
            return list(await asyncio.gather(*pending))
        return [await call for call in pending]


def rate_limit_gate(raw: Sequence[RateLimitConfig | Mapping[str, object]], targets: Mapping[str, tuple[str, str]],
                    store: StateStore, instruments: Instruments) -> RateLimitGate | None:
    """The gate for a router's ``rate_limits`` section (None when there are none); errors name the field."""
    from pydantic import ValidationError

    limits = []
    for index, item in enumerate(raw):
        if isinstance(item, RateLimitConfig):
            limits.append(item)
            continue
        try:
            limits.append(RateLimitConfig.model_validate(dict(item)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in ("rate_limits", index, *first["loc"]))
            raise ConfigError(first["msg"].removeprefix("Value error, "), field=where) from None
    return RateLimitGate(limits, targets, store, instruments) if limits else None
