"""Audio tokens of a request, from what its parts tell of their duration: for an attempt whose usage never came back.

Gemini counts 32 tokens a second of audio. Some inline audio tells its duration in a header, without decoding: a WAV
clip (its byte rate), raw PCM (``audio/pcm;rate=N``: 16-bit mono, as Gemini takes it), FLAC (its STREAMINFO's sample
count and rate) and AIFF (its COMM chunk's). Any other audio (MP3, AAC, Ogg...: its duration is in its encoding) is
counted at the most it can last, its size at the lowest bitrate those codecs go down to (6 kb/s, Opus's), so that a
budget is never under-charged: a 128 kb/s MP3 is counted about 21 times its length. No estimate counts more than the
9.5 hours of audio Gemini takes in a prompt. Files given by URI count nothing here: their bytes are not in the request.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from google.genai import types

#: Tokens Gemini counts for a second of audio.
AUDIO_TOKENS_PER_SECOND = 32
#: The most audio Gemini takes in one prompt, in seconds (9.5 hours).
MAX_AUDIO_SECONDS = 9.5 * 3600
#: The lowest bitrate (bits a second) of the compressed audio Gemini takes (Opus; MP3's and AAC's is 8 kb/s): a clip
#: whose bytes do not tell its duration lasts at most its size at this rate.
FLOOR_BITRATE = 6_000
#: The bytes of a canonical WAV header (RIFF, fmt and data chunk headers) before its samples.
_WAV_HEADER = 44


def estimate_audio(contents: list[types.Content] | str) -> int:
    """Audio tokens of a request's inline audio (``audio_seconds``), 0 for none."""
    if isinstance(contents, str):
        return 0
    seconds = 0.0
    for content in contents or ():
        for part in getattr(content, "parts", None) or ():
            blob = part.inline_data
            if blob is not None and blob.data and (blob.mime_type or "").startswith("audio/"):
                seconds += audio_seconds(blob.data, blob.mime_type or "")
    return math.ceil(min(seconds, MAX_AUDIO_SECONDS) * AUDIO_TOKENS_PER_SECOND) if seconds > 0 else 0


def audio_seconds(data: bytes, mime_type: str) -> float:
    """The duration of ``data`` where a header tells it (WAV, PCM's ``rate``, FLAC, AIFF), else the most it can last
    (its size at ``FLOOR_BITRATE``)."""
    told = _told_seconds(data, mime_type)
    return told if told is not None else len(data) * 8 / FLOOR_BITRATE


def _told_seconds(data: bytes, mime_type: str) -> float | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE" and len(data) > _WAV_HEADER:
        byte_rate = int.from_bytes(data[28:32], "little")
        return (len(data) - _WAV_HEADER) / byte_rate if byte_rate > 0 else None
    if len(data) >= 26 and data[:4] == b"fLaC" and data[4] & 0x7F == 0:  # STREAMINFO comes first
        fields = int.from_bytes(data[18:26], "big")  # rate 20 bits, channels 3, bits a sample 5, samples 36
        rate, samples = fields >> 44, fields & (1 << 36) - 1
        return samples / rate if rate and samples else None  # 0 samples: not known to the encoder
    if data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC"):
        return _aiff_seconds(data)
    kind, _, params = mime_type.partition(";")
    if kind.strip().lower() != "audio/pcm":
        return None
    rate = _parameters(params).get("rate", "")
    return len(data) / (2 * int(rate)) if rate.isdigit() and int(rate) > 0 else None


def _aiff_seconds(data: bytes) -> float | None:
    """Frames over sample rate, from the COMM chunk (its rate an 80-bit extended float)."""
    at = 12
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4:at + 8], "big")
        if data[at:at + 4] == b"COMM" and size >= 18 and at + 26 <= len(data):
            frames = int.from_bytes(data[at + 10:at + 14], "big")
            exponent = (int.from_bytes(data[at + 16:at + 18], "big") & 0x7FFF) - 16383  # a rate of 1 Hz to 1 GHz
            rate = math.ldexp(int.from_bytes(data[at + 18:at + 26], "big"), exponent - 63) if 0 <= exponent < 30 else 0
            return frames / rate if frames and rate > 0 else None
        at += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def _parameters(params: str) -> dict[str, Any]:
    pairs = (p.split("=", 1) for p in params.split(";") if "=" in p)
    return {name.strip().lower(): value.strip() for name, value in pairs}
