"""One model turn of the function-calling loop, read whole or chunk by chunk: the parts that go back into the
history, the function calls to run, the text the user sees and the finish reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

from genroute.backends.base import finish_reason

if TYPE_CHECKING:
    from google.genai import types


class ModelTurn:
    """One model turn, whole or streamed: its parts, function calls, text and finish reason."""

    def __init__(self, separator: str) -> None:
        self.parts: list[types.Part] = []
        self.calls: list[types.FunctionCall] = []
        self.text = ""
        self.finish: str | None = None
        self._separator = separator

    def add(self, response: types.GenerateContentResponse, whole: bool) -> list[str]:
        """Take in a response (``whole``) or stream chunk; return the user-visible text it adds."""
        self.finish = finish_reason(response, whole) or self.finish
        content = response.candidates[0].content if response.candidates else None
        deltas: list[str] = []
        for part in (content.parts or []) if content is not None else []:
            if self.parts and _plain_text(self.parts[-1]) and _plain_text(part):
                # Streamed text arrives in pieces; the history sent back holds it whole.
                self.parts[-1] = self.parts[-1].model_copy(update={"text": f"{self.parts[-1].text}{part.text}"})
            else:
                self.parts.append(part)
            if part.function_call is not None:
                self.calls.append(part.function_call)
            elif part.text and not part.thought:
                if not self.text and self._separator:
                    deltas.append(self._separator)
                self.text += part.text
                deltas.append(part.text)
        return deltas


def _plain_text(part: types.Part) -> bool:
    return part.text is not None and not part.thought and part.thought_signature is None
