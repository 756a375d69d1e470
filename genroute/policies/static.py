"""``static``: every request goes to one backend."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Literal

from pydantic import Field

from genroute.errors import ConfigError
from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext
from genroute.types import Decision, GenerateRequest


class StaticConfig(PolicyConfig):
    """Config of ``StaticPolicy``."""

    kind: Literal["static"] = "static"
    backend: str = Field(min_length=1, description="The backend that answers every request.")


class StaticPolicy(Policy):
    """Send every request to the configured backend."""

    kind = "static"
    Config = StaticConfig
    config: StaticConfig

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        return self._decision

    @cached_property
    def _decision(self) -> Decision:
        # Decisions are frozen: the one answer this policy gives is built once.
        return Decision.single(self.name, self.config.backend, f"static: always {self.config.backend}")

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        check_backends(catalogue, [(self.config.backend, f"{self.field}.backend")])


def check_backends(catalogue: Mapping[str, BackendInfo], named: list[tuple[str, str]]) -> None:
    """Raise ``ConfigError`` naming the field of the first backend not in ``catalogue``."""
    for backend, field in named:
        if backend not in catalogue:
            known = ", ".join(sorted(catalogue)) or "none"
            raise ConfigError(f"unknown backend {backend!r} (known: {known})", field=field)
