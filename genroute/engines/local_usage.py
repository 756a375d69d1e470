"""What a local generation used, as the local engine reports it: the outcome's token counts, how far a generation got
for a caller that stops waiting, and the usage each response (a stream's chunks too) carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from genroute.runtime.billing import bill, estimate_input
from genroute.types import Usage

if TYPE_CHECKING:
    from google.genai import types


@dataclass
class Outcome:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish: str  # "STOP" | "MAX_TOKENS" | "CANCELLED" (stopped by ``cancel``: the engine closed, or nobody waits)


@dataclass
class Progress:
    """How far a generation got, for a caller that stops waiting: its prompt's tokens, once tokenized."""

    prompt_tokens: int | None = None

    def billed(self, contents: list[types.Content], config: types.GenerateContentConfig | None) -> None:
        """Bill the prompt of a generation nobody waits for any more: its token count where the worker tokenized
        it, else estimated (marked estimated either way: llama.cpp may have been stopped in its evaluation)."""
        tokens = estimate_input(contents, config) if self.prompt_tokens is None else self.prompt_tokens
        bill(Usage(input_tokens=tokens))


def usage_metadata(prompt: int, output: int) -> types.GenerateContentResponseUsageMetadata:
    """The usage of ``prompt`` tokens in and ``output`` tokens generated, as a Gemini response reports it."""
    from google.genai import types

    return types.GenerateContentResponseUsageMetadata(
        prompt_token_count=prompt, candidates_token_count=output, total_token_count=prompt + output)


def delta(text: str, progress: Progress, generated: int, model_version: str | None) -> types.GenerateContentResponse:
    """A stream chunk: ``text``, and the usage so far (the prompt, and the ``generated`` tokens), cumulative as
    Gemini's chunks report it: a stream its reader abandons, or its deadline cuts, is charged what llama.cpp counted."""
    from google.genai import types

    prompt = progress.prompt_tokens or 0  # set by the worker before its first delta
    return types.GenerateContentResponse(
        candidates=[types.Candidate(content=types.Content(role="model", parts=[types.Part(text=text)]), index=0)],
        usage_metadata=usage_metadata(prompt, generated), model_version=model_version)
