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
    return plugin.load()
