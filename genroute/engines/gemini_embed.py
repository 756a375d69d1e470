"""Gemini embeddings: texts in batches, with the input tokens the provider bills for them.

Vertex AI reports each text's tokens (``statistics.token_count``; a single-text ``embedContent`` its
``usageMetadata``, which the SDK turns into the same); the Gemini Developer API reports none, so there they are
estimated at about four characters a token (from the billable characters if the answer gives them, else from
the texts) and marked estimated. An attempt lost after it was sent (a timeout, a broken connection) is billed at
its estimated input, and batches answered before a later one failed are billed as what they were: the caller
never gets their vectors, but the provider charged for them.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from genroute.engines.base import Embeddings
from genroute.engines.gemini_request import server_timeout
from genroute.engines.retry import call_with_retry
from genroute.errors import BackendUnavailable
from genroute.runtime.billing import bill, estimate_tokens, processed
from genroute.types import Usage

if TYPE_CHECKING:
    from google.genai import types

    from genroute.engines.gemini_config import GeminiEngineConfig

_T = TypeVar("_T")


class EmbeddingEngine(Protocol):
    """What ``embed`` uses of ``genroute.engines.gemini.GeminiEngine`` (whose ``embed`` it is)."""

    name: str
    config: GeminiEngineConfig

    def _attempt_timeout(self, remaining_s: float) -> tuple[float, float | None]: ...
    def _aio(self) -> Any: ...
    def _call(self, call: Awaitable[_T], seconds: float | None) -> Awaitable[_T]: ...


async def embed(engine: EmbeddingEngine, model: str, texts: list[str], *, task_type: str | None,
                output_dimensionality: int | None) -> Embeddings:
    """``GeminiEngine.embed``: the vectors of ``texts`` in order, ``embed_batch_size`` texts per request, each
    request retried on its own, with the input tokens they are billed."""
    from google.genai import types

    size = engine.config.embed_batch_size
    with billing_answered(Embeddings(input_tokens=0)) as vectors:
        for start in range(0, len(texts), size):
            batch = texts[start : start + size]

            async def attempt(remaining_s: float, batch: list[str] = batch) -> types.EmbedContentResponse:
                seconds, _ = engine._attempt_timeout(remaining_s)
                cfg = types.EmbedContentConfig(
                    task_type=task_type, output_dimensionality=output_dimensionality,
                    http_options=types.HttpOptions(headers=server_timeout(seconds)),
                )
                sent = engine._aio().models.embed_content(model=model, contents=batch, config=cfg)
                return await engine._call(billed_if_lost(sent, batch), seconds)

            got = count(vectors, await call_with_retry(attempt, engine.config.retry), batch)
            if len(got) != len(batch):
                raise BackendUnavailable(
                    f"embedding response has {len(got)} vectors for {len(batch)} texts", backend=engine.name
                )
            vectors.extend(got)
    return vectors


@contextmanager
def billing_answered(out: Embeddings) -> Iterator[Embeddings]:
    """Collect batches into ``out`` (``count``); if the block fails, bill the batches already answered: the
    caller never gets their vectors, but the provider charged for them."""
    try:
        yield out
    except BaseException:
        if out.input_tokens:
            bill(Usage(input_tokens=out.input_tokens), estimated=out.estimated)
        raise


def count(out: Embeddings, response: types.EmbedContentResponse, texts: list[str]) -> list[list[float]]:
    """Add what one answer is billed to ``out``; the answer's vectors."""
    tokens, reported = billed_tokens(response, texts)
    out.input_tokens = (out.input_tokens or 0) + tokens
    out.estimated = out.estimated or not reported
    return [list(e.values or ()) for e in response.embeddings or ()]


def billed_tokens(response: types.EmbedContentResponse, texts: list[str]) -> tuple[int, bool]:
    """The input tokens one embedding answer is billed, and whether the provider reported them (else estimated)."""
    embeddings = response.embeddings or []
    counts = [e.statistics.token_count if e.statistics is not None else None for e in embeddings]
    # A count below zero (or not a number) is no count: estimated as a missing one, never a refund.
    if counts and all(c is not None and 0 <= c < math.inf for c in counts):
        return round(sum(counts)), True  # type: ignore[arg-type]
    usage = response.usage_metadata
    if usage is not None and usage.prompt_token_count is not None and usage.prompt_token_count > 0:
        return usage.prompt_token_count, True
    metadata = response.metadata
    characters = None if metadata is None else metadata.billable_character_count
    if characters is not None and characters > 0:
        return estimate_tokens(characters), False
    return sum(estimate_tokens(t) for t in texts), False


async def billed_if_lost(call: Awaitable[_T], texts: list[str]) -> _T:
    """``call``; if it fails after the request went out (the provider processed it), its input is billed."""
    try:
        return await call
    except BaseException as exc:
        if processed(exc):
            bill(Usage(input_tokens=sum(estimate_tokens(t) for t in texts)))
        raise
