"""One Gemini SDK request: its contents in the form the SDK takes cheapest, its server-side deadline header, and
what its answer says (ended, or not an answer at all)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from genroute.errors import BackendUnavailable, GenrouteError
from genroute.runtime.telemetry import counts_kept

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from google.genai import types

#: The header that tells the server how long the client waits (the SDK derives it from an HTTP timeout).
_SERVER_TIMEOUT = "X-Server-Timeout"


def sdk_contents(contents: list[types.Content] | str) -> Any:
    """``contents`` in the cheapest form the SDK accepts: one user turn of plain text goes as the string itself
    (the SDK builds the same request from it with less work than it spends on a ``Content`` list)."""
    if isinstance(contents, str):
        return str(contents)  # a str subclass the SDK would send as an empty turn: as the plain str
    if len(contents) == 1:
        content = contents[0]
        parts = content.parts
        if content.role == "user" and parts is not None and len(parts) == 1:
            part = parts[0]
            if part.text is not None and part.model_fields_set == {"text"}:
                return part.text
    return contents


def server_timeout(seconds: float) -> dict[str, str]:
    """The header telling the server the client waits ``seconds`` (rounded up to whole seconds)."""
    return {_SERVER_TIMEOUT: str(math.ceil(seconds))}


def with_timeout(config: types.GenerateContentConfig | None, seconds: float | None) -> Any:
    """``config`` telling the server the attempt's own deadline (keeping the caller's other HTTP options).

    ``None`` keeps ``config`` as it is: the client's header applies, and the SDK skips merging per-request
    options. A config that sets nothing goes as ``None``: the SDK deep-copies and converts any config object it
    is given, empty or not. Only the header: a timer, not an HTTP timeout, ends the attempt.
    """
    if seconds is None:
        return config if config is not None and config.model_fields_set else None
    from google.genai import types

    http = config.http_options if config is not None and config.http_options is not None else types.HttpOptions()
    http = http.model_copy(update={"headers": {**(http.headers or {}), **server_timeout(seconds)}})
    if config is None:
        return types.GenerateContentConfig(http_options=http)
    return config.model_copy(update={"http_options": http})


def counted(response: types.GenerateContentResponse) -> types.GenerateContentResponse:
    """``response`` with any negative token count in its usage dropped: no provider means a count below zero, so it
    is read as a count left out (estimated where billed), never as tokens that would lower a bill. A stream's chunks
    are checked as they are read; a whole answer's counts are checked where they are first read (``usage_of``)."""
    meta = response.usage_metadata
    # One test a response: ints OR'ed are negative exactly when one of them is. The split by modality (sent with
    # every real answer) is not walked here: ``usage_of`` reads a negative modality count as none.
    if meta is not None and ((meta.prompt_token_count or 0) | (meta.candidates_token_count or 0)
                             | (meta.cached_content_token_count or 0) | (meta.thoughts_token_count or 0)
                             | (meta.tool_use_prompt_token_count or 0) | (meta.total_token_count or 0)) < 0:
        response.usage_metadata = counts_kept(meta)
    return response


def ends_answer(chunk: types.GenerateContentResponse) -> bool:
    """Whether a stream chunk ends the answer (a finish reason, or a blocked prompt)."""
    if chunk.prompt_feedback is not None and chunk.prompt_feedback.block_reason is not None:
        return True
    return any(c.finish_reason is not None for c in chunk.candidates or ())


def not_an_answer(response: types.GenerateContentResponse, contents: list[types.Content] | str,
                  config: types.GenerateContentConfig | None, engine: str) -> BackendUnavailable | None:
    """The error for a 200 body that is not an answer (``null``, a list, an object with neither candidates nor
    ``promptFeedback``: a provider's or a proxy's hiccup, retried as a malformed body is), with what the attempt
    cost billed (the usage it reports, the rest estimated); ``None`` for an answer (a blocked prompt is one)."""
    return None if _answers(response) else _not_answered(response, contents, config, engine)


async def leading_chunks(chunks: AsyncIterator[types.GenerateContentResponse], contents: list[types.Content] | str,
                         config: types.GenerateContentConfig | None, engine: str,
                         read: list[types.GenerateContentResponse]) -> list[types.GenerateContentResponse]:
    """A stream's chunks up to the first that answers (candidates, or a blocked prompt's feedback): one, as a rule,
    collected in ``read`` (so that an attempt failing before it can be billed what they reported: ``bill_lost``).
    A stream that ended before one sent no answer: ``not_an_answer``'s error (billed), retried as it is."""
    while (chunk := await anext(chunks, None)) is not None:
        read.append(counted(chunk))
        if _answers(chunk):
            return read
    if not read:
        raise BackendUnavailable("stream ended before its first chunk", backend=engine)
    # Billed at the latest usage an event reported (an empty event after it does not make the bill an estimate).
    reported = next((chunk for chunk in reversed(read) if chunk.usage_metadata is not None), read[-1])
    raise _not_answered(reported, contents, config, engine)


def bill_lost(exc: BaseException, contents: list[types.Content] | str, config: types.GenerateContentConfig | None,
              read: list[types.GenerateContentResponse] | None = None) -> None:
    """Bill an attempt that failed with ``exc``: the latest usage its ``read`` chunks reported (the provider counted
    that prompt, whether the stream then broke or sent an error event), else its estimated input if the provider
    processed it anyway (``processed``). A genroute error raised inside the attempt billed what it had already. A
    failure raised while the attempt was being cancelled (a transport's cleanup on a loop closed under it) is billed
    as the cancellation it came from."""
    from genroute.engines.errors import cancellation_under
    from genroute.runtime.billing import bill, estimated_input, filled_usage, processed
    from genroute.runtime.telemetry import usage_of

    if isinstance(exc, GenrouteError):
        return
    if isinstance(exc, Exception):
        exc = cancellation_under(exc) or exc
    reported = next((chunk for chunk in reversed(read or ()) if chunk.usage_metadata is not None), None)
    if reported is not None:
        bill(filled_usage(usage_of(reported), reported, contents, config)[0])  # the final count is not known
    elif processed(exc):
        bill(estimated_input(contents, config))


def _answers(response: types.GenerateContentResponse) -> bool:
    return bool(response.candidates) or response.prompt_feedback is not None


def _not_answered(response: types.GenerateContentResponse, contents: list[types.Content] | str,
                  config: types.GenerateContentConfig | None, engine: str) -> BackendUnavailable:
    from genroute.runtime.billing import bill, filled_usage
    from genroute.runtime.telemetry import usage_of

    usage, estimated = filled_usage(usage_of(response), response, contents, config)
    bill(usage, estimated=estimated)
    return BackendUnavailable("malformed response body: an answer with neither candidates nor promptFeedback",
                              backend=engine)
