"""An example third-party plugin: the ``shortest_name`` policy here, the ``shout`` backend in ``backend``
and the ``echo`` engine in ``engine``, each registered through its entry-point group."""

from __future__ import annotations

from typing import Literal

from genroute.policies.base import Policy, PolicyConfig, PolicyContext
from genroute.types import Decision, GenerateRequest


class ShortestNameConfig(PolicyConfig):
    """Config of ``ShortestNamePolicy``."""

    kind: Literal["shortest_name"] = "shortest_name"
    prefix: str = ""


class ShortestNamePolicy(Policy):
    """Route to the backend with the shortest name that starts with ``prefix`` (a toy rule)."""

    kind = "shortest_name"
    Config = ShortestNameConfig
    config: ShortestNameConfig

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        names = sorted((n for n in context.catalogue if n.startswith(self.config.prefix)),
                       key=lambda n: (len(n), n))
        return Decision.single(self.name, names[0], f"shortest_name: {names[0]} is the shortest name")
