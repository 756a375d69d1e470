"""Model runtimes: ``Engine`` (the extension point), ``GeminiEngine`` and the local engine.

Engine modules import their SDKs lazily, and this package loads them on first attribute access, so
``import genroute`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from genroute.engines.base import Engine

if TYPE_CHECKING:
    from genroute.engines.gemini import GeminiEngine
    from genroute.engines.gemini_config import GeminiEngineConfig, VertexConfig
    from genroute.engines.retry import RetryConfig

_LAZY = {
    "GeminiEngine": "genroute.engines.gemini",
    "GeminiEngineConfig": "genroute.engines.gemini",
    "VertexConfig": "genroute.engines.gemini",
    "RetryConfig": "genroute.engines.retry",
}

__all__ = ["Engine", "GeminiEngine", "GeminiEngineConfig", "RetryConfig", "VertexConfig"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
