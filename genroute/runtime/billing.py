"""What the provider bills for engine attempts whose answer the caller never sees, calls made outside engine
calls (embeddings: ``charging``/``charge``), and token estimates.

An attempt that times out, is cancelled, or whose connection breaks after the request went out has usually
been processed by the provider, which bills it although no answer arrives; an error answer from the provider
(4xx/5xx) is not billed, and neither is a request that never left (a refused connection). An engine reports
each processed-but-lost attempt with ``bill`` (its input tokens, estimated); whoever runs the engine call
(``RunContext``) collects the reports with ``metering`` and charges them, marked estimated, whether the call
then succeeds on a retry or fails. Usage the caller does see (stream chunks received before a cut) is
charged by the caller from the chunks themselves, never billed here twice.

Estimates use Gemini's own rule of thumb (about four characters per token), the same the loopback test
server uses for its counts.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from genroute.errors import GenrouteError
from genroute.runtime.media import estimate_audio
from genroute.types import Usage

if TYPE_CHECKING:
    from google.genai import types
    from pydantic_core import ValidationError

CHARS_PER_TOKEN = 4


class Meter:
    """Usage billed for the attempts of one engine call whose answer was lost, one entry per attempt (each is
    priced on its own: a prompt-size price tier applies per request, not to their sum).

    ``with meter:`` (or ``with metering(meter):``) collects what engine calls made inside the block ``bill``.
    Set and reset without a ``yield`` of an async generator in between (a context variable set across a yield
    would leak into the consumer's context). Its own context manager: every engine call enters one.
    """

    # What a meter starts with, as class attributes: most calls lose no attempt, so most meters never set their own
    # (and a meter built on every engine call runs no ``__init__``).
    attempts: tuple[Usage, ...] = ()
    #: Whether any of it is an estimate (it always is for a lost attempt).
    estimated = False

    def add(self, usage: Usage, *, estimated: bool = True) -> None:
        """Count ``usage`` as billed."""
        self.attempts = (*self.attempts, usage)
        self.estimated = self.estimated or estimated

    def __enter__(self) -> Meter:
        self._token = _METER.set(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _METER.reset(self._token)


_METER: ContextVar[Meter | None] = ContextVar("genroute_meter", default=None)


def metering(meter: Meter) -> Meter:
    """``with metering(meter):`` collects what engine calls made inside the block ``bill`` into ``meter``."""
    return meter


def bill(usage: Usage, *, estimated: bool = True) -> None:
    """Report ``usage`` the provider bills for an attempt whose answer the caller will not see."""
    meter = _METER.get()
    if meter is not None and not usage.is_zero:
        meter.add(usage, estimated=estimated)


@dataclass
class Charges:
    """What calls made outside an engine call's own accounting (embeddings) cost, summed for whoever made
    them: a rung (retrieval, example selection), a request's decision (semantic routing), an ingest run."""

    cost_usd: float = 0.0
    #: Whether any of it is an estimate.
    estimated: bool = False
    #: What vectors made (and charged) elsewhere in the request, and reused here, cost: not billed again (``reused``).
    reused_usd: float = 0.0
    #: How long making those vectors took (where this caller's own clock did not already count it).
    reused_s: float = 0.0

    def add(self, cost_usd: float, *, estimated: bool) -> None:
        """Count ``cost_usd``."""
        self.cost_usd += cost_usd
        self.estimated = self.estimated or estimated


_CHARGES: ContextVar[Charges | None] = ContextVar("genroute_charges", default=None)


class charging:  # noqa: N801 - a function-style context manager, like metering
    """Collect what calls made inside the block ``charge`` into ``charges`` (the innermost block wins, so a
    call is counted once). Worker threads started inside (``asyncio.to_thread``) inherit it.

    Set and reset without a ``yield`` of an async generator in between (see ``metering``). A class, not a
    generator: every request enters one.
    """

    __slots__ = ("_charges", "_token")

    def __init__(self, charges: Charges) -> None:
        self._charges = charges

    def __enter__(self) -> Charges:
        self._token = _CHARGES.set(self._charges)
        return self._charges

    def __exit__(self, *exc: Any) -> None:
        _CHARGES.reset(self._token)


def charge(cost_usd: float, *, estimated: bool) -> None:
    """Report ``cost_usd`` billed by a call made outside an engine call's accounting (an embedding)."""
    charges = _CHARGES.get()
    if charges is not None:
        charges.add(cost_usd, estimated=estimated)


def reused(cost_usd: float, seconds: float = 0.0) -> None:
    """Report that a vector made and charged elsewhere in the request (at ``cost_usd``, in ``seconds``) was reused:
    nothing is billed; a shadow's outcome side counts both, as what the shadow would have cost and taken on its own."""
    charges = _CHARGES.get()
    if charges is not None:
        charges.reused_usd += cost_usd
        charges.reused_s += seconds


def estimate_tokens(text: str | int) -> int:
    """Tokens in ``text`` (or in that many characters) by Gemini's rule of thumb, 0 for nothing."""
    chars = text if isinstance(text, int) else len(text)
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def estimate_input(contents: list[types.Content] | str, config: types.GenerateContentConfig | None = None) -> int:
    """Estimated prompt tokens of a request: its contents (a ``str``: one user turn), system instruction and tool
    declarations."""
    chars = len(contents) if isinstance(contents, str) else sum(_content_chars(c) for c in contents or ())
    if config is not None:
        system = config.system_instruction
        if isinstance(system, str):
            chars += len(system)
        elif system is not None and hasattr(system, "parts"):
            chars += _content_chars(system)
        for tool in config.tools or ():
            dump = getattr(tool, "model_dump", None)
            if dump is not None:
                chars += len(json.dumps(dump(mode="json", exclude_none=True)))
    return estimate_tokens(chars)


def filled_usage(usage: Usage | None, response: types.GenerateContentResponse,
                 contents: list[types.Content] | str, config: types.GenerateContentConfig | None
                 ) -> tuple[Usage, bool]:
    """``usage`` as a response reported it, with the counts it left out estimated, and whether any was.

    Gemini leaves a zero count out, so a prompt with no count, or text with no output or thinking count, was
    not counted rather than free: the prompt is estimated from the request, the output from the text. A count
    given as 0 stands."""
    meta = response.usage_metadata
    reported = usage or Usage()
    guessed = False
    if meta is None or meta.prompt_token_count is None:
        reported, guessed = reported + estimated_input(contents, config), True
    if not counts_output(meta):
        chars = output_chars(response)
        if chars:
            reported, guessed = reported.model_copy(update={"output_tokens": estimate_tokens(chars)}), True
    return reported, guessed


def estimated_input(contents: list[types.Content] | str, config: types.GenerateContentConfig | None = None) -> Usage:
    """A request's input as estimated for a provider's bill that never came: its text (``estimate_input``) and the
    audio of its parts, at the duration they tell or the most they can last (``media.estimate_audio``), which is priced
    as audio."""
    audio = estimate_audio(contents)
    return Usage(input_tokens=estimate_input(contents, config) + audio, audio_input_tokens=audio)


def counts_output(meta: types.GenerateContentResponseUsageMetadata | None) -> bool:
    """Whether a response's usage counts its output (Gemini leaves a zero count out: none, if it does not)."""
    return meta is not None and (meta.candidates_token_count is not None or meta.thoughts_token_count is not None)


def output_chars(response: types.GenerateContentResponse) -> int:
    """Characters of output in a response (text, thoughts and function calls of its first candidate)."""
    if not response.candidates or response.candidates[0].content is None:
        return 0
    return _content_chars(response.candidates[0].content)


def _content_chars(content: Any) -> int:
    chars = 0
    for part in getattr(content, "parts", None) or ():
        if part.text:
            chars += len(part.text)
        for payload in (part.function_call, part.function_response):
            if payload is not None:
                chars += len(json.dumps(payload.model_dump(mode="json", exclude_none=True), default=str))
    return chars


#: The SDK's types of the answers genroute reads: one that fails to validate is an answer the provider (or a proxy
#: before it) sent in the wrong shape, not a request the SDK refused.
_ANSWERS = frozenset({"GenerateContentResponse", "EmbedContentResponse", "CountTokensResponse", "CachedContent"})


def malformed_answer(exc: BaseException) -> TypeGuard[ValidationError]:
    """Whether ``exc`` is the SDK's refusal of an answer it received: JSON, but not of the answer's shape."""
    pydantic_core = sys.modules.get("pydantic_core")
    return (pydantic_core is not None and isinstance(exc, pydantic_core.ValidationError)
            and exc.title in _ANSWERS)


def processed(exc: BaseException) -> bool:
    """Whether an attempt that failed with ``exc`` was probably processed (and billed) by the provider.

    Yes for timeouts, cancellation, connections broken after sending and unreadable bodies; no for the
    provider's own error answers, connections that were never made, and errors raised before sending.
    """
    if isinstance(exc, asyncio.CancelledError | TimeoutError):
        return True
    if isinstance(exc, GenrouteError):
        return False
    genai_errors = sys.modules.get("google.genai.errors")
    if genai_errors is not None and isinstance(exc, genai_errors.APIError):
        return False  # the provider answered with an error: not billed
    if isinstance(exc, ConnectionRefusedError):
        return False
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return False
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectorError):
        return False
    if isinstance(exc, json.JSONDecodeError | ConnectionError | EOFError):
        return True
    if genai_errors is not None and isinstance(exc, genai_errors.UnknownApiResponseError) or malformed_answer(exc):
        return True
    if httpx is not None and isinstance(exc, httpx.TransportError | httpx.DecodingError):
        return True
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)


__all__ = ["Charges", "Meter", "bill", "charge", "charging", "counts_output", "estimate_input", "estimate_tokens",
           "estimated_input", "filled_usage", "malformed_answer", "metering", "output_chars", "processed"]
