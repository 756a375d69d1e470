"""Building a Router from configuration (engines, knowledge, tools, backends, policy), and the price check
every router makes however it was built."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from genroute.admission.build import gate_configs
from genroute.bounds import is_whole
from genroute.config import RouterConfig, build_kind, import_object, load_config, validate_kind
from genroute.config_location import locate
from genroute.errors import ConfigError, UsageError
from genroute.runtime.portal import Portal, running_loop
from genroute.runtime.request_settings import check_seed
from genroute.runtime.resources import Resources, check_named
from genroute.runtime.pricing import Pricing
from genroute.runtime.telemetry import CAPTURE_MAX_CHARS
from genroute.router.validators import from_config

if TYPE_CHECKING:
    from genroute.backends.base import Backend
    from genroute.policies.base import Policy
    from genroute.router.validators import Judge, Validator


class _BuiltRouter(Protocol):
    """What building sets on the router it made (``Router`` declares it; not imported here: ``router.router`` imports
    this module)."""

    _config_file: str | None


R = TypeVar("R", bound=_BuiltRouter)

_log = logging.getLogger(__name__)


#: Set once ``from_config`` was called inside a running event loop: its warning is logged once per process.
_warned_in_loop = threading.Event()


def build_router(cls: Callable[..., R], source: str | Path | Mapping[str, Any] | RouterConfig, **kwargs: Any) -> R:
    """``abuild_router`` run through the sync bridge: on the loop thread the router then keeps for its sync API.

    Called inside a running event loop it works, but that loop waits until the router is built (files, imports,
    models, Chroma): one warning per process names ``acreate``, which builds it without blocking the loop."""
    if not _warned_in_loop.is_set() and running_loop() is not None:
        _warned_in_loop.set()
        _log.warning("Router.from_config was called inside a running event loop: the loop is blocked until the "
                     "router is built (engines, models, Chroma); in async code use `await Router.acreate(...)`, "
                     "which builds it in worker threads (this warning is logged once per process)")
    portal = Portal()
    try:
        router = portal.call(abuild_router(cls, source, **kwargs))
    except BaseException:
        portal.close()
        raise
    adopt_portal(router, portal)
    return router


async def abuild_router(
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

    ``tools`` and ``validators`` add Python callables to those named in config (one of a name the config uses
    takes that entry's place: the entry is not imported or built); ``policy`` replaces the
    configured policy with a policy object; ``engine_options`` pass extra constructor arguments per engine
    (e.g. Vertex ``credentials``). Every step that reads files, imports modules, resolves credentials,
    embeds or reads a store runs in a worker thread: a running event loop never waits on construction. A
    ``ConfigError`` about a config file says where the file writes the setting (``error.file``, ``error.line``).
    """
    try:
        return await _assemble(cls, source, tools=tools, validators=validators, engine_options=engine_options,
                               policy=policy, **router_kwargs)
    except ConfigError as exc:
        await asyncio.to_thread(locate, exc, source)
        raise


async def _assemble(
    cls: Callable[..., R],
    source: str | Path | Mapping[str, Any] | RouterConfig,
    *,
    tools: Mapping[str, Callable[..., Any]] | None,
    validators: Mapping[str, Validator | Judge] | None,
    engine_options: Mapping[str, Mapping[str, Any]] | None,
    policy: Policy | None,
    **router_kwargs: Any,
) -> R:
    """``abuild_router``'s work."""
    _check_router_options(cls, router_kwargs)
    # Checked before any work: tools are callables by name, validators callables or judges by name.
    if tools is not None and not (isinstance(tools, Mapping) and all(
            isinstance(name, str) and callable(fn) for name, fn in tools.items())):
        raise UsageError("must map tool names to Python callables", field="tools")
    from genroute.outcomes.settings import settings_from

    check_validators(validators)
    if engine_options is not None and not (isinstance(engine_options, Mapping) and all(
            isinstance(options, Mapping) for options in engine_options.values())):  # a TypeError once loaded
        raise UsageError("must map engine names to mappings of constructor options", field="engine_options")
    # Settings given in code are checked before anything is built, as the config's are.
    settings_from(router_kwargs.get("outcomes"))
    gate_configs(router_kwargs.get("rate_limits", ()), router_kwargs.get("breakers"))
    config = await asyncio.to_thread(load_config, source)
    if policy is None and config.policy is None and len(config.backends) > 1:  # before anything is built
        raise ConfigError("with more than one backend a policy is required", field="policy")
    for name in engine_options or {}:
        if name not in config.engines:  # else silently unused: a typo would drop the credentials it carries
            raise UsageError(f"no engine {name!r} in the config (engines: {', '.join(config.engines) or 'none'})",
                             field=f"engine_options.{name}")
    engines = {}
    for name, raw in config.engines.items():
        options = dict((engine_options or {}).get(name, {}))
        engines[name] = await asyncio.to_thread(_engine, name, raw, options)
    resources, all_validators = await asyncio.to_thread(_resources, config, engines, tools, validators)
    backends = {}
    for name, raw in config.backends.items():
        backends[name] = await asyncio.to_thread(_backend, name, raw, resources)
    # Every built-in backend writes its model call as google-genai's GenerateContentConfig, local ones too: imported
    # here, in a worker thread, or the first request would import it (~0.6 s) on the router's loop, in no span.
    await asyncio.to_thread(importlib.import_module, "google.genai.types")
    if policy is None and config.policy is not None:
        from genroute.policies import build_policy

        policy = await asyncio.to_thread(build_policy, config.policy, field="policy")
    router_kwargs.setdefault("capture_content", config.telemetry.capture_content)
    router_kwargs.setdefault("capture_max_chars", config.telemetry.capture_max_chars)
    router_kwargs.setdefault("timeout_s", config.timeout_s)
    router_kwargs.setdefault("outcomes", config.outcomes)
    router_kwargs.setdefault("state", config.state)
    router_kwargs.setdefault("rate_limits", config.rate_limits)
    router_kwargs.setdefault("breakers", config.breakers)
    # The router binds its policy (semantic routes embed utterances) and reads backend facts (ICL example
    # counts from the store) as it is made.
    router = await asyncio.to_thread(lambda: cls(backends, policy, resources=resources, validators=all_validators,
                                                 **router_kwargs))
    if isinstance(source, str | Path):
        router._config_file = str(source)
    await _read_promotions(router)
    return router


async def _read_promotions(router: Any) -> None:
    """Apply the promotions recorded in the router's shared state store, so that a replica started now routes as the
    running ones do. A store that cannot be read now leaves the config's routing until the next read."""
    from genroute.errors import StateUnavailable

    try:
        await router._apply_promotions()
    except StateUnavailable as exc:  # the store has warned of the outage (once a minute), with what to do
        _log.debug("the promotions recorded in the state store were not read as the router was built: %s", exc)


def _check_router_options(cls: Callable[..., Any], options: Mapping[str, Any]) -> None:
    """``UsageError`` naming an option the router does not take (a misspelt one was a ``TypeError`` once
    everything had been built), or one the config builds itself (``resources``)."""
    taken = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in taken.values()):  # a subclass that takes anything
        return
    known = [n for n, p in taken.items() if p.kind is p.KEYWORD_ONLY and n not in _BUILT_FROM_CONFIG]
    for name in options:
        if name not in known:
            raise UsageError(f"is not an option of a router built from config (options: {', '.join(known)})",
                             field=name)


def _check_kind(part: Any, field: str) -> None:
    """``UsageError`` naming ``field`` unless backend or policy ``part`` has a kind (what the catalogue, decisions and
    spans name it by): a class whose ``Config`` fixes none (``kind: str``) was an ``AttributeError`` when the router
    was built (a backend) or at its first request (a policy)."""
    if not isinstance(getattr(part, "kind", None), str):
        cls = type(part)
        raise UsageError(f"{cls.__module__}.{cls.__qualname__} names no kind: give its Config `kind: "
                         "Literal[\"<its kind>\"]`, or set `kind` on the class", field=field)


def check_arguments(backends: Any, policy: Any = None, resources: Any = None, scrub: Any = None,
                    capture_content: Any = None, stats: Any = None,
                    capture_max_chars: Any = CAPTURE_MAX_CHARS, validators: Any = None) -> None:
    """``UsageError`` naming the argument when a router built in code is given the wrong kind of part (each
    was an ``AttributeError`` from deep inside, or, for ``scrub``, a ``TypeError`` at the first feedback), a
    ``capture_content`` that is not a bool (the text ``"false"`` turned capture on), a ``capture_max_chars``
    that is not a whole number ≥ 1, or ``stats`` that are not
    ``BenchStats`` (a path was ignored: policies decided as if there were none), or ``validators`` that do not
    map names to validators (a ``TypeError`` from deep inside)."""
    from genroute.backends.base import Backend
    from genroute.policies.base import Policy
    from genroute.policies.stats import BenchStats

    check_named(backends, Backend, field="backends")
    for name, backend in backends.items():
        _check_kind(backend, f"backends.{name}")
    if policy is not None and not isinstance(policy, Policy):
        raise UsageError(f"must be a genroute Policy, not {type(policy).__name__} (build one from a mapping "
                         "with genroute.policies.build_policy)", field="policy")
    if policy is not None:
        _check_kind(policy, "policy")
    if resources is not None and not isinstance(resources, Resources):
        raise UsageError(f"must be a genroute.runtime.resources.Resources, not {type(resources).__name__}",
                         field="resources")
    if scrub is not None and not callable(scrub):
        raise UsageError(f"must be a callable, not {type(scrub).__name__}", field="scrub")
    if capture_content is not None and not isinstance(capture_content, bool):
        raise UsageError(f"must be True, False or None, not {type(capture_content).__name__}",
                         field="capture_content")
    if not is_whole(capture_max_chars) or capture_max_chars < 1:
        raise UsageError(f"must be a whole number of characters ≥ 1, not {capture_max_chars!r}",
                         field="capture_max_chars")
    if stats is not None and not isinstance(stats, BenchStats):
        raise UsageError(f"must be genroute.policies.stats.BenchStats (BenchStats.load(path) reads a stats file), "
                         f"not {type(stats).__name__}", field="stats")
    check_validators(validators)


def check_validators(validators: Any) -> None:
    """``UsageError`` unless ``validators`` (if given) maps names to validators."""
    if validators is not None and not (isinstance(validators, Mapping) and all(
            isinstance(name, str) for name in validators)):
        raise UsageError("must map validator names to validators", field="validators")


def check_providers(tracer_provider: Any, meter_provider: Any) -> None:
    """``UsageError`` naming the argument that is not an OpenTelemetry tracer (meter) provider."""
    from opentelemetry import metrics, trace

    for value, kind, field in ((tracer_provider, trace.TracerProvider, "tracer_provider"),
                               (meter_provider, metrics.MeterProvider, "meter_provider")):
        if value is not None and not isinstance(value, kind):
            raise UsageError(f"must be an OpenTelemetry {kind.__name__}, not {type(value).__name__}", field=field)


def default_policy(backends: Mapping[str, Backend]) -> Policy:
    """The policy of a router given none: its one backend (``UsageError`` naming ``policy`` if there are more)."""
    from genroute.policies.static import StaticPolicy

    if len(backends) != 1:
        raise UsageError("with more than one backend a policy is required", field="policy")
    (name,) = backends
    return StaticPolicy(StaticPolicy.Config(kind="static", backend=name))


#: Router arguments ``from_config`` makes from the config itself.
_BUILT_FROM_CONFIG = frozenset({"resources"})


def _engine(name: str, raw: Any, options: dict[str, Any]) -> Any:
    engine_cls, engine_config = validate_kind("engines", raw, field=f"engines.{name}")
    try:
        inspect.signature(engine_cls).bind(name, engine_config, **options)
    except TypeError as exc:  # an option the engine does not take: say so, not TypeError from its constructor
        raise UsageError(f"{engine_cls.__name__} does not take these options: {exc}",
                         field=f"engine_options.{name}") from None
    return build_kind(engine_cls, name, engine_config, field=f"engines.{name}", **options)


def _resources(config: RouterConfig, engines: dict[str, Any], tools: Mapping[str, Callable[..., Any]] | None,
               validators: Mapping[str, Validator | Judge] | None) -> tuple[Resources, dict[str, Any]]:
    # A Python callable takes the place of a config entry of its name: that entry is not imported or built.
    tools, validators = tools or {}, validators or {}
    all_tools = {name: _tool(target, field=f"tools.{name}")
                 for name, target in config.tools.items() if name not in tools}
    all_tools.update(tools)
    all_validators = {name: from_config(raw, field=f"validators.{name}")
                      for name, raw in config.validators.items() if name not in validators}
    all_validators.update(validators)
    knowledge = None
    pricing = Pricing(config.pricing)
    if config.knowledge is not None:
        from genroute.knowledge import build_store

        knowledge = build_store(config.knowledge, engines=engines, field="knowledge", pricing=pricing)
    return Resources(engines, tools=all_tools, knowledge=knowledge, pricing=pricing), all_validators


def _tool(target: str, *, field: str) -> Callable[..., Any]:
    """The callable a config's ``tools`` entry imports (``ConfigError`` naming ``field`` for anything else, even
    when no backend uses it yet)."""
    tool = import_object(target, field=field)
    if not callable(tool):
        raise ConfigError(f"{target!r} is a {type(tool).__name__}, not a callable tool", field=field)
    return tool


def _backend(name: str, raw: Any, resources: Resources) -> Backend:
    backend_cls, backend_config = validate_kind("backends", raw, field=f"backends.{name}")
    # Router.__init__ checks each backend's engine and prices (for routers built in code too).
    return build_kind(backend_cls, name, backend_config, resources, field=f"backends.{name}")


def adopt_portal(router: Any, portal: Portal) -> None:
    """Give ``router`` the loop thread it was built on, stopped when the router is closed or collected."""
    router._portal.close()  # never started: nothing ran on it yet
    router._portal = portal
    release_on_collect(router, portal)


def release_on_collect(router: Any, portal: Portal) -> None:
    """Stop ``portal``'s loop thread when ``router`` is garbage-collected unclosed, or at interpreter exit."""
    weakref.finalize(router, portal.close)


def require_prices(backends: Mapping[str, Backend], pricing: Pricing) -> None:
    """``ConfigError`` naming the config field when a backend's calls could not be priced (they would
    silently cost 0), for routers built from config and in code alike; nothing is sent."""
    for backend in backends.values():
        engine = backend.engine  # ConfigError naming backends.<name>.engine if there is no such engine
        # A backend may bill as another model (a tuned one at its base model's rates) and name that field.
        model, field = backend.billed_as(pricing)
        priced = engine.pricing_model(model)
        if priced is not None:
            price = pricing.require(priced, field=field)
            for rate, asked_by in backend.billed_rates():
                if getattr(price, rate) is None:  # it would count 0: say so rather than under-count
                    raise ConfigError(f"bills the {rate} rate of model {priced!r}, which has none known; give it "
                                      f"under `pricing` ({priced}: {{{rate}: ...}}, USD per 1M tokens"
                                      f"{' per hour' if rate == 'cache_storage' else ''}), or turn this off",
                                      field=asked_by)
            continue
        reference = engine.reference_model
        if reference:  # a free local engine still reports what its calls would cost in the cloud
            pricing.require(reference, field=f"engines.{backend.config.engine}.reference_model")


def require_engine_limits(backends: Mapping[str, Backend]) -> None:
    """``ConfigError`` naming ``backends.<name>.generation.<setting>`` when a backend's engine cannot honour one of its
    generation settings (``Engine.refused_setting``: a blocking safety filter on the local engine, which has none; a
    seed outside ``Engine.seed_range``), or its calls would carry more stop sequences than the engine takes (Gemini:
    5, a 400 at the first request; the local engine takes any)."""
    for name, backend in backends.items():
        refused = backend.engine.refused_setting(backend.config.generation)
        if refused is not None:
            raise ConfigError(f"engine {backend.config.engine!r}: {refused[1]}",
                              field=f"backends.{name}.generation.{refused[0]}")
        try:  # every request failed with the local engine's own UsageError, naming its call's config.seed
            check_seed(backend.config.generation.seed, backend.engine.seed_range, field="seed")
        except UsageError as exc:
            raise ConfigError(f"engine {backend.config.engine!r}: {exc.message}",
                              field=f"backends.{name}.generation.seed") from None
        limit = backend.engine.max_stop_sequences
        stops = backend.stop_sequences()
        if limit is not None and len(stops) > limit:
            own = len(backend.config.generation.stop_sequences)
            added = f" ({len(stops) - own} added by its prompt format: `stop`)" if own < len(stops) else ""
            raise ConfigError(f"{len(stops)} stop sequences{added}: engine {backend.config.engine!r} takes at most "
                              f"{limit} a call", field=f"backends.{name}.generation.stop_sequences")


def warn_unused_prices(backends: Mapping[str, Backend], resources: Resources) -> None:
    """Log a warning naming each ``pricing.<key>`` that prices no model this router's backends, engines or
    embedder use and no built-in model, with the nearest known name: a misspelt key (``gemini-2.5-flsh``) left the
    model it was meant for at the built-in rate, and budgets under-counted. Not an error: a shared config may
    price models other routers use, or that requests and policies name only at run time."""
    pricing = resources.pricing
    models = [m for b in backends.values() for m in (b.config.model, getattr(b.config, "base_model", None),
                                                    b.billed_as(pricing)[0]) if isinstance(m, str)]
    models += [e.reference_model for e in resources.engines.values() if e.reference_model]
    embedder_model = getattr(getattr(getattr(resources.knowledge, "config", None), "embedder", None), "model", None)
    if isinstance(embedder_model, str):
        models.append(embedder_model)
    for key, nearest in pricing.unused(models).items():
        hint = f" (did you mean {nearest!r}?)" if nearest else ""
        _log.warning("pricing.%s prices no model this router uses%s: the key is ignored here", key, hint)
