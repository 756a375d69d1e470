"""Plugin classes written from the docstrings alone: each names its kind once, in its ``Config``
(``kind: Literal[...]``), and sets no ``kind`` class attribute; ``tests/test_policies_plugin.py`` installs them
through entry points."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from genroute.backends.base import BackendConfig, Prepared, SingleCallBackend
from genroute.policies.base import Policy, PolicyConfig, PolicyContext
from genroute.types import Decision, GenerateRequest

if TYPE_CHECKING:
    from genroute.runtime.context import RunContext


class WhisperConfig(BackendConfig):
    """Config of ``WhisperBackend``."""

    kind: Literal["whisper"] = "whisper"


class WhisperBackend(SingleCallBackend):
    """Send the request lower-cased."""

    Config = WhisperConfig

    async def prepare(self, request: GenerateRequest, ctx: RunContext) -> Prepared:
        """One engine call with the input lower-cased."""
        return Prepared(model=self.config.model, contents=request.input.lower(), config=None)


class FirstNameConfig(PolicyConfig):
    """Config of ``FirstNamePolicy``."""

    kind: Literal["first_name"]


class FirstNamePolicy(Policy):
    """Route to the backend whose name sorts first."""

    Config = FirstNameConfig

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        name = min(context.catalogue)
        return Decision.single(self.name, name, f"first_name: {name}")


class AnyKindConfig(PolicyConfig):
    """A config whose ``kind`` is any text: it fixes no kind."""


class AnyKindPolicy(Policy):
    """Sets no kind, and its config fixes none."""

    Config = AnyKindConfig

    def decide(self, request: GenerateRequest, context: PolicyContext) -> Decision:
        return Decision.single("any", min(context.catalogue), "any")
