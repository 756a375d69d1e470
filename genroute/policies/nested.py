"""A policy that wraps one nested policy and passes the executor's hooks (admission, binding) on to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from genroute.policies.base import BackendInfo, Policy
from genroute.types import Decision, GenerateRequest

if TYPE_CHECKING:
    from genroute.runtime.resources import Resources


class NestedPolicy(Policy):
    """Base of ``explore`` and ``challenger``: ``self.inner`` decides first; hooks go to it."""

    inner: Policy

    def reserve(self, request: GenerateRequest, decision: Decision, backend: str) -> Any:
        return self.inner.reserve(request, decision, backend)

    def settle(self, token: Any, cost_usd: float) -> None:
        self.inner.settle(token, cost_usd)

    def bind(self, resources: Resources) -> None:
        self.inner.bind(resources)

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        self.inner.validate_against(catalogue)
