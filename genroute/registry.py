"""Kinds that config can name: built-ins plus entry points ``genroute.{engines,backends,policies}``."""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Literal

from genroute.errors import ConfigError

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


@lru_cache(maxsize=None)
def _plugins(group: Group) -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=f"genroute.{group}")}


def kinds(group: Group) -> list[str]:
    """Every kind name available in ``group`` (built-in and plugins)."""
    return sorted(set(BUILTIN[group]) | set(_plugins(group)))


def load(group: Group, kind: str, *, field: str) -> type:
    """The class implementing ``kind`` in ``group``; ``field`` names the config key for errors."""
    target = BUILTIN[group].get(kind)
    if target is not None:
        module, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"kind {kind!r} is not available: {exc}", field=field) from exc
    plugin = _plugins(group).get(kind)
    if plugin is None:
        raise ConfigError(f"unknown kind {kind!r}; known: {', '.join(kinds(group))}", field=field)
    where = f"entry point {plugin.value!r} in group genroute.{group}, from " \
            f"{getattr(plugin.dist, 'name', None) or 'an installed package'}"
    try:
        # A third-party module can fail to import in any way (a missing dependency, a bug at import time).
        cls = plugin.load()
    except Exception as exc:
        raise ConfigError(f"kind {kind!r} ({where}) failed to load: {type(exc).__name__}: {exc}",
                          field=field) from exc
    base = _base(group)
    if not (isinstance(cls, type) and issubclass(cls, base) and isinstance(getattr(cls, "Config", None), type)):
        raise ConfigError(f"kind {kind!r} ({where}) is not a {base.__name__} subclass with a `Config` model",
                          field=field)
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
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
