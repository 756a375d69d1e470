"""What a stream delivered, for ``RunContext.stream`` to charge (and, with content capture on, to record)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from genroute.runtime.billing import counts_output, estimate_tokens, estimated_input, output_chars
from genroute.runtime.telemetry import usage_of
from genroute.types import Usage

if TYPE_CHECKING:
    from google.genai import types


class Received:
    """What a stream delivered: the latest usage it reported, the output that arrived after it, and the chunk
    that describes the answer (``last``: the latest that counted its usage or had candidates)."""

    def __init__(self) -> None:
        self.last: types.GenerateContentResponse | None = None
        #: The chunk whose usage is charged (read once, at the end: not a ``Usage`` built for every chunk).
        self.reported: types.GenerateContentResponse | None = None
        self.chars_after = 0
        self.chunks = 0
        #: Whether a chunk had candidates or promptFeedback: a stream of none (or of no chunk) is not an answer.
        self.answered = False

    def add(self, response: types.GenerateContentResponse) -> None:
        self.chunks += 1
        if not self.answered and (response.candidates or response.prompt_feedback is not None):
            self.answered = True  # read until the first such chunk (Gemini's first), then one attribute a chunk
        if counts_output(response.usage_metadata):
            # Gemini's usage is cumulative: each chunk's replaces the one before
            self.reported, self.chars_after, self.last = response, 0, response
            return
        # No count of the output so far (Gemini leaves a zero count out): its text is estimated; a count of the
        # prompt alone is kept only where none came before.
        self.chars_after += output_chars(response)
        if self.reported is None and response.usage_metadata is not None:
            self.reported = response
        if self.last is None or response.candidates:  # the answer's latest candidates carry its finish reason
            self.last = response

    def usage(self, contents: list[types.Content] | str, config: types.GenerateContentConfig | None, *,
              complete: bool) -> tuple[Usage, bool]:
        """The usage to charge, and whether any of it is estimated (always, for a stream that did not finish)."""
        if self.chunks == 0:
            return Usage(), False  # nothing arrived: lost attempts, if any, were billed by the engine
        meta = None if self.reported is None else self.reported.usage_metadata
        reported = None if self.reported is None else usage_of(self.reported)
        usage = reported or Usage()
        estimated = not complete or reported is None or self.chars_after > 0
        if meta is None or meta.prompt_token_count is None:  # as ``billing.filled_usage``: a count given as 0 stands
            usage = usage + estimated_input(contents, config)
            estimated = True
        extra = estimate_tokens(self.chars_after)
        if extra:
            usage = usage.model_copy(update={"output_tokens": usage.output_tokens + extra})
        return usage, estimated


class CapturedReceived(Received):
    """What a stream delivered, its answer kept whole too: content capture records all of it, not the last
    chunk's."""

    def __init__(self) -> None:
        super().__init__()
        self.chunk_candidates: list[list[types.Candidate]] = []

    def add(self, response: types.GenerateContentResponse) -> None:
        super().add(response)
        self.chunk_candidates.append(response.candidates or [])

    def candidates(self) -> list[types.Candidate]:
        """One candidate per index: its chunks' parts in order, and the latest finish reason."""
        from google.genai import types

        merged: dict[int, types.Candidate] = {}
        for chunk in self.chunk_candidates:
            for n, candidate in enumerate(chunk):
                index = candidate.index if candidate.index is not None else n
                parts = candidate.content.parts if candidate.content is not None else None
                whole = merged.setdefault(index, types.Candidate(index=index, content=types.Content(parts=[])))
                whole.content.parts.extend(parts or [])  # type: ignore[union-attr]
                if candidate.finish_reason is not None:
                    whole.finish_reason = candidate.finish_reason
        return [merged[i] for i in sorted(merged)]
