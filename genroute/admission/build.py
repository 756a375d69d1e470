"""The router's own gates, from its ``rate_limits`` and ``breakers`` sections (a budget's come from its policy)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from genroute.admission import Gate, Instruments
from genroute.admission.breaker import BreakerConfig, BreakerGate
from genroute.admission.ratelimit import RateLimitConfig, rate_limit_gate
from genroute.config_errors import config_error

if TYPE_CHECKING:
    from genroute.state import StateStore


def router_gates(targets: Mapping[str, tuple[str, str]], store: StateStore, instruments: Instruments, *,
                 rate_limits: Sequence[RateLimitConfig | Mapping[str, Any]] = (),
                 breakers: BreakerConfig | Mapping[str, Any] | None = None,
                 ) -> tuple[list[Gate[Any]], BreakerGate | None]:
    """Breakers first (an open one refuses before anything is held), then rate limits.

    ``targets``: backend name -> (engine name, model). Returns the gates and the breaker gate (whose
    health view the router hands to policies), if any."""
    gates: list[Gate[Any]] = []
    breaker = None
    if breakers is not None:
        if not isinstance(breakers, BreakerConfig):
            try:
                breakers = BreakerConfig.model_validate(dict(breakers))
            except ValidationError as exc:
                raise config_error(exc, "breakers") from None
        breaker = BreakerGate(breakers, targets, store, instruments)
        gates.append(breaker)
    limits = rate_limit_gate(rate_limits, targets, store, instruments)
    if limits is not None:
        gates.append(limits)
    return gates, breaker
