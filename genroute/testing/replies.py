"""Wire bodies the loopback server sends: generate replies, embeddings, token counts, errors."""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass(frozen=True)
class Response:
    """What a route answers: a status, headers and a JSON body, or SSE ``events`` for streams."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    events: list[Any] | None = None


@dataclass(frozen=True)
class Reply:
    """A scripted model answer for the next generate/stream request.

    ``parts`` are wire-format parts (``{"text": ...}``, ``{"functionCall": ...}``); ``raw`` replaces
    the whole response body (a list of bodies is sent as one SSE event each on streams).
    """

    parts: tuple[dict[str, Any], ...] = ()
    #: (prompt, output) tokens, or (prompt, output, thoughts): a thinking model's ``thoughtsTokenCount`` too.
    usage: tuple[int, ...] | None = None
    finish_reason: str = "STOP"
    chunks: int | None = None
    raw: Any = None
    model_version: str | None = None

    def __post_init__(self) -> None:
        # Checked when queued: a bad one failed inside the server's thread, as an answer the client could not read.
        from genroute.bounds import is_whole
        from genroute.errors import UsageError

        if not isinstance(self.parts, tuple | list) or not all(isinstance(p, Mapping) for p in self.parts):
            raise UsageError("must be wire-format parts: {\"text\": ...} or {\"functionCall\": ...} mappings",
                             field="parts")
        usage = self.usage
        if usage is not None and not (isinstance(usage, tuple | list) and len(usage) in (2, 3)
                                      and all(is_whole(n) and n >= 0 for n in usage)):
            raise UsageError("must be (prompt tokens, output tokens) or (prompt, output, thought tokens), whole "
                             f"numbers >= 0, got {usage!r}", field="usage")
        if self.chunks is not None and (not is_whole(self.chunks) or self.chunks < 1):
            raise UsageError(f"must be a whole number >= 1, got {self.chunks!r}", field="chunks")
        for name, value in (("finish_reason", self.finish_reason), ("model_version", self.model_version)):
            if value is not None and not isinstance(value, str):
                raise UsageError(f"must be text, not {type(value).__name__}", field=name)


def field_of(body: Any, camel: str) -> Any:
    """``body[camel]`` or its snake_case spelling (the SDK sends both kinds of keys)."""
    if not isinstance(body, Mapping):
        return None
    if camel in body:
        return body[camel]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return body.get(snake)


def texts_in(value: Any) -> Iterator[str]:
    """Every ``text`` string anywhere in a request body."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from texts_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from texts_in(item)


def estimate_tokens(text: str) -> int:
    """A plausible token count: about four characters per token, at least one."""
    return max(1, math.ceil(len(text) / 4))


#: Tokens of one image, as Gemini counts an image of up to 384 pixels a side.
IMAGE_TOKENS = 258
#: Bytes of audio or video data a token: Gemini counts 32 tokens a second of audio, which for 16 kHz 16-bit mono PCM
#: is 1,000 bytes a token (the server cannot decode media; it counts their size).
MEDIA_BYTES_PER_TOKEN = 1000


def media_in(value: Any) -> Iterator[tuple[str, int]]:
    """``(modality, tokens)`` of every media part (``inlineData``, ``fileData``) anywhere in a request body: ``AUDIO``,
    ``IMAGE``, ``VIDEO`` or ``DOCUMENT`` by its MIME type; an image counts ``IMAGE_TOKENS``, inline audio, video or
    a document a token per ``MEDIA_BYTES_PER_TOKEN`` bytes (at least one), and a file (a URI the server cannot read)
    ``IMAGE_TOKENS``."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key in ("inlineData", "inline_data", "fileData", "file_data") and isinstance(item, Mapping):
                yield _media_tokens(item, inline=key.startswith("inline"))
            else:
                yield from media_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from media_in(item)


def _media_tokens(media: Mapping[str, Any], *, inline: bool) -> tuple[str, int]:
    kind = str(field_of(media, "mimeType") or "").split("/", 1)[0]
    modality = {"audio": "AUDIO", "image": "IMAGE", "video": "VIDEO"}.get(kind, "DOCUMENT")
    data = media.get("data")
    if modality == "IMAGE" or not inline or not isinstance(data, str):
        return modality, IMAGE_TOKENS
    size = len(data) * 3 // 4 - data[-2:].count("=")  # base64: the bytes it encodes
    return modality, max(1, math.ceil(size / MEDIA_BYTES_PER_TOKEN))


def prompt_details(body: Any) -> list[dict[str, Any]] | None:
    """The prompt's tokens by modality (``promptTokensDetails``: ``TEXT`` first, then each media modality in the
    order it first appears), or None for a prompt of text alone (the server then reports no split)."""
    media: dict[str, int] = {}
    for modality, tokens in media_in(body):
        media[modality] = media.get(modality, 0) + tokens
    if not media:
        return None
    text = "".join(texts_in(body))
    counts = {"TEXT": estimate_tokens(text)} if text else {}
    return [{"modality": m, "tokenCount": n} for m, n in {**counts, **media}.items()]


def prompt_split(body: Any) -> tuple[int, list[dict[str, Any]] | None]:
    """Estimated prompt tokens of a generate/countTokens request (its text, and its media: ``media_in``), and their
    split by modality (``prompt_details``)."""
    details = prompt_details(body)
    if details is None:
        return estimate_tokens("".join(texts_in(body))), None
    return sum(d["tokenCount"] for d in details), details


def prompt_tokens(body: Any) -> int:
    """Estimated prompt tokens of a generate/countTokens request: its text, and its media (``media_in``)."""
    return prompt_split(body)[0]


def default_text(body: Any) -> str:
    """The answer when nothing is scripted: an echo of the last user text (not model turns or tool results)."""
    contents = field_of(body, "contents")
    turns = [c for c in contents if isinstance(c, Mapping)] if isinstance(contents, list) else []
    texts = [p["text"] for c in turns if c.get("role", "user") == "user" for p in c.get("parts") or []
             if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
    last = texts[-1] if texts else ""
    return f"echo: {last[:200]}"


def error_body(code: int, message: str | None = None, retry_after: float | None = None) -> dict[str, Any]:
    """A Google API error body (``google.rpc.Status``)."""
    status = _STATUS_NAMES.get(code, "UNKNOWN")
    error: dict[str, Any] = {"code": code, "message": message or f"loopback fault {code}", "status": status}
    if retry_after is not None:
        error["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": duration(retry_after)}
        ]
    return {"error": error}


def duration(seconds: float) -> str:
    """``seconds`` as a JSON ``google.protobuf.Duration``: ``"2s"``, ``"0.05s"`` (at most nine decimals)."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def retry_after_header(seconds: float | None) -> dict[str, str]:
    """A ``Retry-After`` header for ``seconds``: HTTP allows whole seconds only, so none for a fraction (the
    ``RetryInfo`` detail still carries it)."""
    if seconds is None or not math.isfinite(seconds) or seconds != int(seconds):
        return {}
    return {"Retry-After": str(int(seconds))}


def split_text(text: str, n: int) -> list[str]:
    """``text`` cut at word boundaries into at most ``n`` non-empty pieces that join back to it."""
    return [event[0]["text"] for event in split_parts([{"text": text}], n)]


def _usage(prompt: int, output: int, details: list[dict[str, Any]] | None = None, thoughts: int = 0
           ) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": output,
                             "totalTokenCount": prompt + output + thoughts}
    if thoughts:  # as Gemini reports them: apart from the answer's tokens, in the total
        usage["thoughtsTokenCount"] = thoughts
    if details is not None:
        usage["promptTokensDetails"] = [dict(d) for d in details]
    return usage


def _body(parts: list[dict[str, Any]], model: str, response_id: str, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if "finishReason" in extra:
        candidate["finishReason"] = extra.pop("finishReason")
    return {"candidates": [candidate], "modelVersion": model, "responseId": response_id, **extra}


def render_generate(reply: Reply, request_body: Any, model: str, response_id: str, *, stream: bool) -> Response:
    """The wire response for a generate (``stream=False``) or SSE stream request."""
    if reply.raw is not None:
        if stream:
            return Response(events=list(reply.raw) if isinstance(reply.raw, list) else [reply.raw])
        return Response(body=reply.raw)
    model = reply.model_version or model
    texts = [p for p in reply.parts if "text" in p]
    others = [p for p in reply.parts if "text" not in p]
    text = "".join(p["text"] for p in texts)
    # As the API does, a prompt with media is counted by modality (``promptTokensDetails``) on every event; a
    # scripted ``usage`` is sent as it is.
    details = None
    if reply.usage is not None:
        usage = _usage(reply.usage[0], reply.usage[1], None, *reply.usage[2:])
    else:
        out = estimate_tokens(text + "".join(str(p) for p in others))
        prompt, details = prompt_split(request_body)
        usage = _usage(prompt, out, details)
    final = {"finishReason": reply.finish_reason, "usageMetadata": usage}
    if not stream:
        return Response(body=_body(list(reply.parts), model, response_id, **final))
    n = reply.chunks if reply.chunks is not None else min(3, max(1, len(text.split())))
    pieces = split_parts(texts, n)
    # As the API does, every event carries the usage so far: the whole prompt and the output sent until then (and
    # every thought: a model thinks before it answers).
    events, sent = [], 0
    for piece in pieces[:-1]:
        sent += sum(len(p["text"]) for p in piece)
        so_far = _usage(usage["promptTokenCount"], round(usage["candidatesTokenCount"] * sent / len(text)), details,
                        usage.get("thoughtsTokenCount", 0))
        events.append(_body(piece, model, response_id, usageMetadata=so_far))
    last_parts = (pieces[-1] if pieces else []) + others
    events.append(_body(last_parts, model, response_id, **final))
    return Response(events=events)


def split_parts(parts: list[dict[str, Any]], n: int) -> list[list[dict[str, Any]]]:
    """Text ``parts`` cut at word boundaries into at most ``n`` events' parts.

    Each piece keeps its part's other keys (``thought``, ``thoughtSignature``), and pieces of different
    parts are never merged, so a thought part stays a thought part and the answer text stays apart.
    """
    words = [(i, w) for i, p in enumerate(parts) for w in (re.findall(r"\s*\S+\s*", p["text"]) or [p["text"]])]
    if not words:
        return []
    n = max(1, min(n, len(words)))
    cuts = [round(i * len(words) / n) for i in range(n + 1)]
    events = []
    for a, b in zip(cuts, cuts[1:]):
        owners: list[int] = []
        event: list[dict[str, Any]] = []
        for i, word in words[a:b]:
            if owners and owners[-1] == i:
                event[-1]["text"] += word
            else:
                owners.append(i)
                event.append({**parts[i], "text": word})
        events.append(event)
    return events


def fake_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector derived from a hash of ``text``."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 7) for v in values]


def embed_response(action: str, body: Any, default_dim: int, *, vertex: bool = False,
                   tokens: Callable[[str], int] = estimate_tokens) -> dict[str, Any]:
    """The wire response for ``embedContent``, ``batchEmbedContents`` or Vertex ``predict``.

    Vertex AI answers carry each text's token count (``tokens(text)``); the Developer API's batch answer
    carries none, as the real one does."""

    def dim_of(item: Any) -> int:
        params = field_of(body, "parameters")
        return int(
            field_of(item, "outputDimensionality")
            or field_of(field_of(item, "embedContentConfig"), "outputDimensionality")  # Vertex AI
            or field_of(body, "outputDimensionality")
            or field_of(params, "outputDimensionality")
            or default_dim
        )

    def text_of(item: Any) -> str:
        content = field_of(item, "content")
        if isinstance(content, str):
            return content
        return "".join(texts_in(content))

    def stats(text: str) -> dict[str, Any]:
        return {"token_count": tokens(text), "truncated": False}  # snake_case on the wire, as Vertex sends it

    if action == "batchEmbedContents":
        texts = [text_of(r) for r in field_of(body, "requests") or []]
        dims = [dim_of(r) for r in field_of(body, "requests") or []]
        if vertex:
            return {"embeddings": [{"values": fake_embedding(t, d), "statistics": stats(t)}
                                   for t, d in zip(texts, dims, strict=True)]}
        return {"embeddings": [{"values": fake_embedding(t, d)} for t, d in zip(texts, dims, strict=True)]}
    if action == "predict":
        predictions = []
        chars = 0
        for inst in field_of(body, "instances") or []:
            text = text_of(inst)
            chars += len(text)
            predictions.append({"embeddings": {"values": fake_embedding(text, dim_of(inst)), "statistics": stats(text)}})
        return {"predictions": predictions, "metadata": {"billableCharacterCount": chars}}
    text = text_of(body)
    return {
        "embedding": {"values": fake_embedding(text, dim_of(body))},
        "usageMetadata": {"promptTokenCount": tokens(text)},
    }
