"""``cascade``: explicit ordered rungs with validators, plus sampled shadow backends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import ConfigDict, Field

from genroute.policies.base import BackendInfo, Policy, PolicyConfig, PolicyContext
from genroute.policies.static import check_backends
from genroute.public_model import ConfigModel
from genroute.types import Decision, GenerateRequest, Rung


class CascadeRung(ConfigModel):
    """One configured rung: the backend, the validators its answer must pass, and escalation on 4xx."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field(min_length=1)
    validators: tuple[str, ...] = ()
    fall_through_on_rejected: bool = False


class CascadeConfig(PolicyConfig):
    """Config of ``CascadePolicy``."""

    kind: Literal["cascade"] = "cascade"
    rungs: tuple[CascadeRung, ...] = Field(min_length=1)
    shadow: tuple[str, ...] = Field(default=(), description="Backends run in the background for telemetry.")
    shadow_rate: float = Field(default=1.0, ge=0.0, le=1.0, description="Share of requests shadowed.")


class CascadePolicy(Policy):
    """Try the rungs in order; the executor climbs when a rung fails or a validator rejects its answer."""

    kind = "cascade"
    Config = CascadeConfig
    config: CascadeConfig

    def __init__(self, config: CascadeConfig) -> None:
        super().__init__(config)
        rungs = tuple(Rung(**r.model_dump()) for r in config.rungs)
        path = " -> ".join(_label(r) for r in rungs)
        # The decision never varies, so it is built once.
        self._decision = Decision(policy=self.name, rungs=rungs, reason=f"cascade: {path}",
                                  shadow=config.shadow, shadow_rate=config.shadow_rate)

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        return self._decision

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        named = [(r.backend, f"{self.field}.rungs.{i}.backend") for i, r in enumerate(self.config.rungs)]
        named += [(b, f"{self.field}.shadow.{i}") for i, b in enumerate(self.config.shadow)]
        check_backends(catalogue, named)


def _label(rung: Rung) -> str:
    return f"{rung.backend}[{', '.join(rung.validators)}]" if rung.validators else rung.backend
