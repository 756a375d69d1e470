"""Plugin classes that go wrong in each way a third-party plugin can, for the registry's error tests.

``tests/test_policies_plugin.py`` registers them through entry points of a distribution it writes at test time
(``misbehaving`` fixture), so they are found the way an installed package's are.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from genroute_plugin_example import ShortestNameConfig, ShortestNamePolicy
from genroute_plugin_example.backend import ShoutBackend, ShoutConfig
from genroute_plugin_example.engine import EchoEngine, EchoEngineConfig
from pydantic import field_validator


@dataclasses.dataclass
class DataclassConfig:
    """A config that is a class but not a pydantic model."""

    kind: str = "dataclass_config"


class DataclassConfigPolicy(ShortestNamePolicy):
    """Its ``Config`` is a dataclass."""

    kind = "dataclass_config"
    Config = DataclassConfig  # type: ignore[assignment]


class TypeErrorConfig(ShortestNameConfig):
    """A validator that raises something other than ``ValueError``."""

    kind: Literal["validator_type_error"] = "validator_type_error"  # type: ignore[assignment]

    @field_validator("prefix")
    @classmethod
    def _check(cls, value: str) -> str:
        raise TypeError("prefix checker crashed")


class TypeErrorPolicy(ShortestNamePolicy):
    """Its config validator raises ``TypeError``."""

    kind = "validator_type_error"
    Config = TypeErrorConfig


class InitFailsConfig(ShortestNameConfig):
    """Config of ``InitFailsPolicy``."""

    kind: Literal["init_fails"] = "init_fails"  # type: ignore[assignment]


class InitFailsPolicy(ShortestNamePolicy):
    """Its ``__init__`` raises."""

    kind = "init_fails"
    Config = InitFailsConfig

    def __init__(self, config: Any) -> None:
        raise RuntimeError("policy init exploded")


class ExplodingEngineConfig(EchoEngineConfig):
    """Config of ``ExplodingEngine``."""

    kind: Literal["exploding_engine"] = "exploding_engine"  # type: ignore[assignment]


class ExplodingEngine(EchoEngine):
    """Its ``__init__`` raises (a device it needs is missing)."""

    kind = "exploding_engine"
    Config = ExplodingEngineConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("no such device")


class ExplodingBackendConfig(ShoutConfig):
    """Config of ``ExplodingBackend``."""

    kind: Literal["exploding_backend"] = "exploding_backend"  # type: ignore[assignment]


class ExplodingBackend(ShoutBackend):
    """Its ``__init__`` raises."""

    kind = "exploding_backend"
    Config = ExplodingBackendConfig

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("backend init exploded")


class NoDecisionConfig(ShortestNameConfig):
    """Config of ``NoDecisionPolicy``."""

    kind: Literal["no_decision"] = "no_decision"  # type: ignore[assignment]


class NoDecisionPolicy(ShortestNamePolicy):
    """Its ``decide`` returns ``None`` (a branch its author forgot to return from)."""

    kind = "no_decision"
    Config = NoDecisionConfig

    def decide(self, request: Any, context: Any) -> Any:
        return None


class TextOutputConfig(ShoutConfig):
    """Config of ``TextOutputBackend``."""

    kind: Literal["text_output"] = "text_output"  # type: ignore[assignment]


class TextOutputBackend(ShoutBackend):
    """Its ``run`` returns its answer as a plain ``str``, not a ``BackendOutput``."""

    kind = "text_output"
    Config = TextOutputConfig

    async def run(self, request: Any, ctx: Any) -> Any:
        return f"{request.input}!"


class TextAnswerEngineConfig(EchoEngineConfig):
    """Config of ``TextAnswerEngine``."""

    kind: Literal["text_answer"] = "text_answer"  # type: ignore[assignment]


class TextAnswerEngine(EchoEngine):
    """Its ``generate`` answers a plain ``str``, not a ``GenerateContentResponse``."""

    kind = "text_answer"
    Config = TextAnswerEngineConfig

    async def generate(self, model: str, contents: Any, config: Any = None, *, timeout_s: Any = None) -> Any:
        return "plain text"
