"""genroute: route each LLM request to the technique that should answer it.

Heavy modules (google-genai, chromadb, llama_cpp, the router itself) load on first use, so that
``import genroute`` stays cheap.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from genroute.errors import (
    AllRungsFailed,
    BackendError,
    BackendRejected,
    BackendUnavailable,
    BudgetExceeded,
    CircuitOpen,
    ConfigError,
    DeadlineExceeded,
    GenrouteError,
    NoRelevantContext,
    OutcomeStoreError,
    RateLimited,
    StateUnavailable,
    StreamInterrupted,
    ToolLoopExceeded,
    UsageError,
    ValidationFailed,
)

# A library leaves output to the application: without a configured handler, genroute's logs (llama.cpp's native
# lines included, see engines/llama_logs.py) go nowhere rather than to stderr.
logging.getLogger("genroute").addHandler(logging.NullHandler())

_LAZY: dict[str, str] = {
    "Router": "genroute.router.router",
    "GenerateRequest": "genroute.types",
    "RequestGeneration": "genroute.types",
    "Turn": "genroute.types",
    "GenerateResult": "genroute.types",
    "GenerateChunk": "genroute.types",
    "Decision": "genroute.types",
    "DecisionRecord": "genroute.types",
    "RungAttempt": "genroute.types",
    "Rung": "genroute.types",
    "Usage": "genroute.types",
    "Citation": "genroute.types",
    "ToolCall": "genroute.types",
    "RouterConfig": "genroute.config",
    "load_config": "genroute.config",
    "Pricing": "genroute.runtime.pricing",
    "ModelPrice": "genroute.runtime.pricing",
    "OutcomeSettings": "genroute.outcomes.settings",
    "OutcomeRecord": "genroute.outcomes.records",
    "side_effect_free": "genroute.tools",
    "Health": "genroute.router.health",
    "DependencyHealth": "genroute.router.health",
    "RefreshHealth": "genroute.router.health",
}

__all__ = [
    "AllRungsFailed", "BackendError", "BackendRejected", "BackendUnavailable", "BudgetExceeded", "CircuitOpen",
    "Citation", "ConfigError", "DeadlineExceeded", "Decision", "DecisionRecord", "DependencyHealth", "GenerateChunk",
    "GenerateRequest", "GenerateResult", "GenrouteError", "Health", "ModelPrice", "NoRelevantContext", "OutcomeRecord", "OutcomeSettings",
    "OutcomeStoreError", "Pricing", "RateLimited", "RefreshHealth", "RequestGeneration", "Router", "RouterConfig", "Rung", "RungAttempt",
    "StateUnavailable", "StreamInterrupted", "ToolCall", "ToolLoopExceeded", "Turn", "Usage", "UsageError",
    "ValidationFailed", "load_config", "side_effect_free", "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'genroute' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from genroute.config import RouterConfig, load_config
    from genroute.outcomes.records import OutcomeRecord
    from genroute.outcomes.settings import OutcomeSettings
    from genroute.router.health import DependencyHealth, Health, RefreshHealth
    from genroute.runtime.pricing import ModelPrice, Pricing
    from genroute.router.router import Router
    from genroute.tools import side_effect_free
    from genroute.types import (
        Citation, Decision, DecisionRecord, GenerateChunk, GenerateRequest, GenerateResult, RequestGeneration, Rung,
        RungAttempt, ToolCall, Turn, Usage,
    )
