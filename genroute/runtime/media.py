"""Audio tokens of a request, from what its parts tell of their duration: for an attempt whose usage never came back.

Gemini counts 32 tokens a second of audio. Two kinds of inline audio tell their duration without decoding: a WAV clip
(its header's byte rate) and raw PCM (``audio/pcm;rate=N``: 16-bit mono, as Gemini takes it). Other formats (MP3,
FLAC, Ogg, AAC...) and files given by URI count nothing here: their duration is in their encoding.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.genai import types

#: Tokens Gemini counts for a second of audio.
AUDIO_TOKENS_PER_SECOND = 32
#: The bytes of a canonical WAV header (RIFF, fmt and data chunk headers) before its samples.
_WAV_HEADER = 44


def estimate_audio(contents: list[types.Content] | str) -> int:
    """Audio tokens of a request's contents whose duration they tell (WAV, raw PCM), 0 for none."""
    if isinstance(contents, str):
        return 0
    seconds = 0.0
    for content in contents or ():
        for part in getattr(content, "parts", None) or ():
            blob = part.inline_data
            if blob is not None and blob.data and (blob.mime_type or "").startswith("audio/"):
                seconds += audio_seconds(blob.data, blob.mime_type or "")
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND) if seconds > 0 else 0


def audio_seconds(data: bytes, mime_type: str) -> float:
    """The duration of ``data`` if it tells it (a WAV header's byte rate, or PCM's ``rate`` parameter), else 0."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > _WAV_HEADER:
        byte_rate = int.from_bytes(data[28:32], "little")
        return (len(data) - _WAV_HEADER) / byte_rate if byte_rate > 0 else 0.0
    kind, _, params = mime_type.partition(";")
    if kind.strip().lower() != "audio/pcm":
        return 0.0
    rate = _parameters(params).get("rate", "")
    return len(data) / (2 * int(rate)) if rate.isdigit() and int(rate) > 0 else 0.0


def _parameters(params: str) -> dict[str, Any]:
    pairs = (p.split("=", 1) for p in params.split(";") if "=" in p)
    return {name.strip().lower(): value.strip() for name, value in pairs}
