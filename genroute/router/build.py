"""Building a Router from configuration (engines, knowledge, tools, backends, policy), and the price check
every router makes however it was built."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from genroute.config import RouterConfig, import_object, load_config, validate_kind
from genroute.runtime.resources import Resources
from genroute.runtime.pricing import Pricing
from genroute.router.validators import from_config

if TYPE_CHECKING:
    from genroute.backends.base import Backend
    from genroute.policies.base import Policy
    from genroute.router.validators import Judge, Validator

R = TypeVar("R")


def build_router(
    cls: Callable[..., R],
    source: str | Path | Mapping[str, Any] | RouterConfig,
    *,
    tools: Mapping[str, Callable[..., Any]] | None = None,
    validators: Mapping[str, Validator | Judge] | None = None,
    engine_options: Mapping[str, Mapping[str, Any]] | None = None,
    policy: Policy | None = None,
    **router_kwargs: Any,
) -> R:
    """Validate ``source`` and assemble the router it describes (nothing is sent to any model).

    ``tools`` and ``validators`` add Python callables to those named in config; ``policy`` replaces the
    configured policy with a policy object; ``engine_options`` pass extra constructor arguments per engine
    (e.g. Vertex ``credentials``).
    """
    config = load_config(source)
    engines = {}
    for name, raw in config.engines.items():
        engine_cls, engine_config = validate_kind("engines", raw, field=f"engines.{name}")
        engines[name] = engine_cls(name, engine_config, **dict((engine_options or {}).get(name, {})))
    all_tools = {name: import_object(target, field=f"tools.{name}") for name, target in config.tools.items()}
    all_tools.update(tools or {})
    all_validators = {name: from_config(raw, field=f"validators.{name}") for name, raw in config.validators.items()}
    all_validators.update(validators or {})
    pricing = Pricing(config.pricing)
    knowledge = None
    if config.knowledge is not None:
        from genroute.knowledge import build_store

        knowledge = build_store(config.knowledge, engines=engines, field="knowledge")
    resources = Resources(engines, tools=all_tools, knowledge=knowledge, pricing=pricing)
    backends = {}
    for name, raw in config.backends.items():
        backend_cls, backend_config = validate_kind("backends", raw, field=f"backends.{name}")
        # Router.__init__ checks each backend's engine and prices (for routers built in code too).
        backends[name] = backend_cls(name, backend_config, resources)
    if policy is None and config.policy is not None:
        from genroute.policies import build_policy

        policy = build_policy(config.policy, field="policy")
    router_kwargs.setdefault("capture_content", config.telemetry.capture_content)
    router_kwargs.setdefault("timeout_s", config.timeout_s)
    router_kwargs.setdefault("outcomes", config.outcomes)
    router_kwargs.setdefault("state", config.state)
    router_kwargs.setdefault("rate_limits", config.rate_limits)
    router_kwargs.setdefault("breakers", config.breakers)
    return cls(backends, policy, resources=resources, validators=all_validators, **router_kwargs)


def require_prices(backends: Mapping[str, Backend], pricing: Pricing) -> None:
    """``ConfigError`` naming the config field when a backend's calls could not be priced (they would
    silently cost 0), for routers built from config and in code alike; nothing is sent."""
    for backend in backends.values():
        engine = backend.engine  # ConfigError naming backends.<name>.engine if there is no such engine
        # A backend may bill as another model (a tuned one at its base model's rates) and name that field.
        model, field = backend.billed_as(pricing)
        priced = engine.pricing_model(model)
        if priced is not None:
            pricing.require(priced, field=field)
            continue
        reference = engine.reference_model
        if reference:  # a free local engine still reports what its calls would cost in the cloud
            pricing.require(reference, field=f"engines.{backend.config.engine}.reference_model")
