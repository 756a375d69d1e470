"""A policy that wraps one nested policy and passes the executor's hooks (admission, binding) on to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from genroute.policies.base import BackendInfo, Policy

if TYPE_CHECKING:
    from genroute.admission import Gate
    from genroute.errors import BudgetExceeded
    from genroute.runtime.resources import Resources
    from genroute.state import StateStore
    from genroute.types import Decision, GenerateRequest


class NestedPolicy(Policy):
    """Base of ``explore`` and ``challenger``: ``self.inner`` decides first; hooks go to it."""

    inner: Policy

    @property
    def reads_state(self) -> bool:
        return self.inner.reads_state

    @property
    def nested(self) -> tuple[Policy, ...]:
        return (self.inner,)

    def gates(self, store: StateStore) -> list[Gate[Any]]:
        return self.inner.gates(store)

    def deciding_cost(self, request: GenerateRequest) -> float:
        return self.inner.deciding_cost(request)

    def undecided(self, request: GenerateRequest, refused: BudgetExceeded) -> Decision | None:
        return self.inner.undecided(request, refused)

    def bind(self, resources: Resources) -> None:
        self.inner.bind(resources)

    def validate_against(self, catalogue: Mapping[str, BackendInfo]) -> None:
        self.inner.validate_against(catalogue)
