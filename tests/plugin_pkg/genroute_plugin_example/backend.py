"""An example third-party backend (``genroute.backends`` entry point ``shout``): sends the input upper-cased."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from genroute.backends.base import BackendConfig, Prepared, SingleCallBackend, user_content
from genroute.types import GenerateRequest

if TYPE_CHECKING:
    from genroute.runtime.context import RunContext


class ShoutConfig(BackendConfig):
    """Config of ``ShoutBackend``."""

    kind: Literal["shout"] = "shout"
    suffix: str = "!"


class ShoutBackend(SingleCallBackend):
    """Send the request upper-cased with ``suffix`` to whichever engine the config names."""

    kind: ClassVar[str] = "shout"
    Config: ClassVar[type[BackendConfig]] = ShoutConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"shouting"})
    config: ShoutConfig

    async def prepare(self, request: GenerateRequest, ctx: RunContext) -> Prepared:
        """One engine call with the shouted input."""
        return Prepared(model=self.config.model, contents=[user_content(request.input.upper() + self.config.suffix)],
                        config=self.config.generation.to_genai(system=self.config.system))

    def facts(self) -> dict[str, Any]:
        """What a policy may read."""
        return {"suffix": self.config.suffix}
