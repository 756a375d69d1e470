"""Kinds that config can name: built-ins plus entry points ``genroute.{engines,backends,policies}``.

A plugin cannot replace a built-in kind: the built-in runs, and the first use of such a name logs a warning naming
the plugin's package (an installed package must not break a config that names a built-in, nor go unnoticed).

A class says its kind once, in its ``Config`` (``kind: Literal["name"]``): ``kind_from_config`` gives the class that
name as its ``kind`` (what decisions, spans and the catalogue read) unless it has one already (its own, or a class's
it extends).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from genroute.errors import ConfigError, GenrouteError

_log = logging.getLogger(__name__)

Group = Literal["engines", "backends", "policies"]

BUILTIN: dict[str, dict[str, str]] = {
    "engines": {
        "gemini": "genroute.engines.gemini:GeminiEngine",
        "local": "genroute.engines.local:LocalEngine",
    },
    "backends": {
        "prompt_template": "genroute.backends.prompt_template:PromptTemplateBackend",
        "icl": "genroute.backends.icl:IclBackend",
        "rag": "genroute.backends.rag:RagBackend",
        "function_calling": "genroute.backends.function_calling:FunctionCallingBackend",
        "tuned": "genroute.backends.tuned:TunedBackend",
    },
    "policies": {
        "static": "genroute.policies.static:StaticPolicy",
        "rules": "genroute.policies.rules:RulesPolicy",
        "ladder": "genroute.policies.ladder:LadderPolicy",
        "semantic": "genroute.policies.semantic:SemanticPolicy",
        "cost_aware": "genroute.policies.cost_aware:CostAwarePolicy",
        "split": "genroute.policies.split:SplitPolicy",
        "budget": "genroute.policies.budget:BudgetPolicy",
        "learned": "genroute.policies.learned:LearnedPolicy",
        "cascade": "genroute.policies.cascade:CascadePolicy",
        "explore": "genroute.policies.explore:ExplorePolicy",
        "challenger": "genroute.policies.challenger:ChallengerPolicy",
    },
}


#: Each plugin class loaded so far -> its kind and where it comes from, for the errors it causes later.
_ORIGINS: dict[type, str] = {}


@lru_cache(maxsize=None)
def _plugins(group: Group) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=f"genroute.{group}")}


def _where(plugin: Any, group: Group) -> str:
    package = getattr(plugin.dist, "name", None) or "an installed package"
    return f"entry point {plugin.value!r} in group genroute.{group}, from {package}"


def plugin_origin(cls: type) -> str | None:
    """``kind 'K' (entry point ..., from PACKAGE)`` for plugin class ``cls``; ``None`` for built-in kinds."""
    return _ORIGINS.get(cls)


def described(cls: type) -> str:
    """What an error names ``cls`` by: its plugin origin (kind, entry point, package), else its class's name (a
    class written in code)."""
    origin = plugin_origin(cls)
    return origin if origin is not None else f"{cls.__module__}.{cls.__qualname__}"


@contextmanager
def plugin_failures(cls: type, *, field: str) -> Iterator[None]:
    """Run plugin ``cls``'s code (config validation, construction): whatever it raises becomes a ``ConfigError``
    naming ``field`` and the plugin. genroute's typed errors, and every error of a built-in kind, pass unchanged."""
    origin = plugin_origin(cls)
    try:
        yield
    except GenrouteError:
        raise
    except Exception as exc:
        if origin is None:
            raise
        raise ConfigError(f"{origin} failed: {type(exc).__name__}: {exc}", field=field) from exc


class KindFromConfig:
    """The base of ``Engine``, ``Backend`` and ``Policy``: each subclass, as it is made, takes the kind its
    ``Config`` fixes (``kind_from_config``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind_from_config(cls)


def kind_from_config(cls: type) -> None:
    """Give engine, backend or policy class ``cls`` the kind its ``Config`` fixes (``kind: Literal["name"]``, or a
    default name) as its ``kind``, unless it has one (its own, or a class's it extends; called as each such class is
    made)."""
    config = getattr(cls, "Config", None)
    if isinstance(getattr(cls, "kind", None), str) or not (isinstance(config, type) and issubclass(config, BaseModel)):
        return
    field = config.model_fields.get("kind")
    if field is None:
        return
    names = get_args(field.annotation) if get_origin(field.annotation) is Literal else ()
    if len(names) == 1 and isinstance(names[0], str):
        cls.kind = names[0]  # type: ignore[attr-defined]
    elif isinstance(field.default, str):
        cls.kind = field.default  # type: ignore[attr-defined]


def kinds(group: Group) -> list[str]:
    """Every kind name available in ``group`` (built-in and plugins)."""
    return sorted(set(BUILTIN[group]) | set(_plugins(group)))


@lru_cache(maxsize=None)
def _shadowed(group: Group, kind: str, where: str) -> None:
    """Warn (once per kind) that a plugin registered a built-in kind's name: the built-in is what runs."""
    _log.warning("kind %r is built in; the plugin at %s registered the same name and is not used (register it "
                 "under another name to use it)", kind, where)


def load(group: Group, kind: str, *, field: str) -> type[Any]:
    """The class implementing ``kind`` in ``group``; ``field`` names the config key for errors."""
    target = BUILTIN[group].get(kind)
    plugin = _plugins(group).get(kind)
    if target is not None and plugin is not None and plugin.value != target:
        _shadowed(group, kind, _where(plugin, group))
    if target is not None:
        module, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"kind {kind!r} is not available: {exc}", field=field) from exc
    if plugin is None:
        raise ConfigError(f"unknown kind {kind!r}; known: {', '.join(kinds(group))}", field=field)
    where = _where(plugin, group)
    try:
        # A third-party module can fail to import in any way (a missing dependency, a bug at import time).
        cls = plugin.load()
    except Exception as exc:
        raise ConfigError(f"kind {kind!r} ({where}) failed to load: {type(exc).__name__}: {exc}",
                          field=field) from exc
    base = _base(group)
    config = getattr(cls, "Config", None)
    if not (isinstance(cls, type) and issubclass(cls, base)
            and isinstance(config, type) and issubclass(config, BaseModel)):
        raise ConfigError(f"kind {kind!r} ({where}) is not a {base.__name__} subclass with a `Config` model "
                          f"(a pydantic BaseModel)", field=field)
    if not isinstance(getattr(cls, "kind", None), str):
        raise ConfigError(f"kind {kind!r} ({where}) names no kind of its own: its `Config` model's `kind` is "
                          f"`Literal[{kind!r}]` (or the class sets `kind = {kind!r}`)", field=field)
    _ORIGINS[cls] = f"kind {kind!r} ({where})"
    return cls


#: The extension point each group's classes implement, loaded by name like the kinds themselves: the registry
#: sits below the packages it loads from and imports none of them.
BASES: dict[Group, str] = {
    "engines": "genroute.engines.base:Engine",
    "backends": "genroute.backends.base:Backend",
    "policies": "genroute.policies.base:Policy",
}


def _base(group: Group) -> type:
    """The extension point a plugin of ``group`` implements."""
    module, _, attr = BASES[group].partition(":")
    return getattr(importlib.import_module(module), attr)
