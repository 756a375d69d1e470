"""An example third-party engine (``genroute.engines`` entry point ``echo``): answers with the request text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal

from google.genai import types
from pydantic import BaseModel, ConfigDict

from genroute.engines.base import Engine


class EchoEngineConfig(BaseModel):
    """Config of ``EchoEngine``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["echo"] = "echo"
    prefix: str = "echo: "


class EchoEngine(Engine):
    """Reply ``prefix`` + the system instruction (if any) + the last user turn; a word per stream chunk."""

    kind = "echo"
    Config = EchoEngineConfig
    provider = "example.echo"
    config: EchoEngineConfig

    def _answer(self, contents: list[types.Content], config: types.GenerateContentConfig | None) -> str:
        turns = [p.text or "" for c in contents if c.role == "user" for p in c.parts or ()]
        system = config.system_instruction if config is not None else None
        return self.config.prefix + (f"[{system}] " if isinstance(system, str) else "") + (turns[-1] if turns else "")

    def _response(self, text: str, contents: list[types.Content], model: str, *, last: bool) -> Any:
        words_in = sum(len((p.text or "").split()) for c in contents for p in c.parts or ())
        return types.GenerateContentResponse(
            candidates=[types.Candidate(content=types.Content(role="model", parts=[types.Part(text=text)]),
                                        finish_reason=types.FinishReason.STOP if last else None, index=0)],
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=words_in, candidates_token_count=len(text.split()),
                total_token_count=words_in + len(text.split())) if last else None,
            model_version=model,
        )

    async def generate(self, model: str, contents: list[types.Content],
                       config: types.GenerateContentConfig | None = None, *,
                       timeout_s: float | None = None) -> types.GenerateContentResponse:
        """The whole echo at once."""
        return self._response(self._answer(contents, config), contents, model, last=True)

    async def stream(self, model: str, contents: list[types.Content],
                     config: types.GenerateContentConfig | None = None, *,
                     timeout_s: float | None = None) -> AsyncIterator[types.GenerateContentResponse]:
        """The echo word by word; the last chunk carries usage and the finish reason."""
        words = self._answer(contents, config).split(" ")
        for i, word in enumerate(words):
            yield self._response(word if i == 0 else " " + word, contents, model, last=i == len(words) - 1)

    def pricing_model(self, model: str) -> str | None:
        """Echoes are free."""
        return None
