"""The router's own gates, from its ``rate_limits`` and ``breakers`` sections (a budget's come from its policy)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from genroute.admission import Gate, Instruments
from genroute.admission.breaker import BreakerConfig, BreakerGate
from genroute.admission.ratelimit import RateLimitConfig, rate_limit_gate
from genroute.config_errors import config_error, pydantic_validated, validated_model
from genroute.errors import ConfigError

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
    limit_configs, breakers = gate_configs(rate_limits, breakers)
    if breakers is not None:
        breaker = BreakerGate(breakers, targets, store, instruments)
        gates.append(breaker)
    limits = rate_limit_gate(limit_configs, targets, store, instruments)
    if limits is not None:
        gates.append(limits)
    return gates, breaker


def gate_configs(rate_limits: Any, breakers: Any) -> tuple[list[RateLimitConfig], BreakerConfig | None]:
    """The ``rate_limits`` and ``breakers`` settings validated (``ConfigError`` naming the field): a router given
    them in code checks them before it builds anything, as a config file's are."""
    if isinstance(rate_limits, str | bytes | Mapping) or not isinstance(rate_limits, Iterable):
        raise ConfigError(f"must be a list of rate limits, not {type(rate_limits).__name__}", field="rate_limits")
    limits = []
    for index, item in enumerate(rate_limits):
        if isinstance(item, RateLimitConfig):
            limits.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(f"must be a mapping, not {type(item).__name__}", field=f"rate_limits.{index}")
        try:
            limits.append(pydantic_validated(RateLimitConfig, dict(item)))
        except ValidationError as exc:
            raise config_error(exc, f"rate_limits.{index}") from None
    return limits, None if breakers is None else validated_model(BreakerConfig, breakers, "breakers")
