"""What backends share: engines, tools, the knowledge store and pricing, built lazily from config."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from genroute.errors import ConfigError, UsageError
from genroute.runtime.pricing import Pricing

if TYPE_CHECKING:
    from opentelemetry import trace

    from genroute.engines.base import Engine
    from genroute.runtime.telemetry import Telemetry


class RouteWrites(Protocol):
    """The route collections policies asked a store for (``genroute.knowledge.routes.RouteSync``)."""

    def sync(self) -> object:
        """Write what was asked for and hand each policy what its collection holds."""
        ...


class KnowledgeBase(Protocol):
    """What the router needs of its knowledge store (``genroute.knowledge.KnowledgeStore``): the route
    collections its policies asked for, and closing. Backends that query the store get the store itself
    through ``genroute.knowledge.store.require_store``."""

    @property
    def routes(self) -> RouteWrites:
        """Route collections policies asked for while they were bound."""
        ...

    async def aclose(self) -> None:
        """Release the store's client."""
        ...

    def use_telemetry(self, telemetry: Telemetry) -> None:
        """Record the metrics of the store's embedding calls on ``telemetry``."""
        ...


class Resources:
    """Named engines, tools and knowledge collections that backends look up by name."""

    def __init__(
        self,
        engines: Mapping[str, Engine],
        *,
        tools: Mapping[str, Callable[..., Any]] | None = None,
        knowledge: KnowledgeBase | None = None,
        pricing: Pricing | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        from genroute.engines.base import Engine

        check_named(engines, Engine, field="engines")
        if pricing is not None and not isinstance(pricing, Pricing):
            raise UsageError(f"must be a genroute Pricing (Pricing({{model: prices}}) takes a mapping), not "
                             f"{type(pricing).__name__}", field="pricing")
        self.engines = dict(engines)
        self.tools = dict(tools or {})
        self.knowledge = knowledge
        self.pricing = pricing or Pricing()
        #: Where spans made with these resources outside a rung's run context go (a policy embedding
        #: requests and routes); ``None``: the global provider. A router sets its own before binding its policy.
        self.tracer = tracer

    def use_telemetry(self, telemetry: Telemetry) -> None:
        """Send the spans and metrics of calls made with these resources outside a rung's run context (policies'
        and the knowledge store's embeddings) to ``telemetry``: a router's, set before it binds its policy."""
        self.tracer = telemetry.tracer
        if self.knowledge is not None:
            # A store makes its offline embedder on first use (free: the model loads on its first call); made
            # now, it records its calls' metrics here too.
            getattr(self.knowledge, "embedder", None)
            self.knowledge.use_telemetry(telemetry)

    def engine(self, name: str, *, field: str) -> Engine:
        """The engine called ``name``; ``ConfigError`` naming ``field`` if there is none."""
        try:
            return self.engines[name]
        except KeyError:
            known = ", ".join(sorted(self.engines)) or "none"
            raise ConfigError(f"unknown engine {name!r} (known: {known})", field=field) from None

    def tool(self, name: str, *, field: str) -> Callable[..., Any]:
        """The tool called ``name``; ``ConfigError`` naming ``field`` if there is none."""
        try:
            return self.tools[name]
        except KeyError:
            known = ", ".join(sorted(self.tools)) or "none"
            raise ConfigError(f"unknown tool {name!r} (known: {known})", field=field) from None

    async def aclose(self) -> None:
        """Close every engine and the knowledge store."""
        for engine in self.engines.values():
            await engine.aclose()
        if self.knowledge is not None:
            await self.knowledge.aclose()


def check_named(parts: Any, kind: type, *, field: str) -> None:
    """``UsageError`` naming ``field`` (or ``field.<name>``) unless ``parts`` maps names (non-empty text) to ``kind``
    objects: parts of the wrong kind given in code otherwise fail later, deep inside, with an ``AttributeError``."""
    if not isinstance(parts, Mapping):
        raise UsageError(f"must map names to {kind.__name__} objects, not {type(parts).__name__}", field=field)
    for name, part in parts.items():
        if not isinstance(name, str) or not name:  # a number was named a policy's `backend` error, or passed
            raise UsageError(f"a name is non-empty text (as a config's keys are), not {name!r:.40}", field=field)
        if not isinstance(part, kind):
            raise UsageError(f"must be a genroute {kind.__name__}, not {type(part).__name__}", field=f"{field}.{name}")
