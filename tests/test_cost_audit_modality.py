"""Audio input priced at the model's audio rate, everywhere cost is counted.

Gemini splits a prompt's tokens (and its cached content's) by modality (``promptTokensDetails``,
``cacheTokensDetails``); audio costs more than text on several models (gemini-2.5-flash: $1.00 against $0.30 per 1M).
genroute carries the audio part in ``Usage`` and prices it at the table's (or the config's) audio rate. An application
sends audio through a backend of its own (here ``AudioQuestion``: the request's text with a clip,
``types.Part.from_bytes``), on the loopback server, whose answers split a prompt with audio as the API does.
"""

from __future__ import annotations

import io
import wave
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from google import genai
from google.genai import types

from genroute import ConfigError, GenerateRequest, Router
from genroute.backends.base import BackendConfig, Prepared, SingleCallBackend
from genroute.backends.prompt_template import PromptTemplateConfig
from genroute.bench.report import COLUMNS, summarize, table_rows
from genroute.bench.datasets import BenchRecord
from genroute.bench.runner import Outcome, run_one
from genroute.bench.scorers import resolve_scorer
from genroute.runtime.pricing import ModelPrice, Pricing
from genroute.runtime.media import audio_seconds, estimate_audio
from genroute.testing import Fault, GeminiTestServer
from genroute.testing.cache_routes import CacheRoutes
from genroute.testing.replies import estimate_tokens, prompt_split
from genroute.types import Usage

from .conftest import TEST_KEY
from .cost_audit import FLASH, answer, answered, audit_config, served_record_cost, sinks, usage_cost
from .redis_fixtures import redis_server, redis_session, state  # noqa: F401

if TYPE_CHECKING:
    from genroute.runtime.context import RunContext

#: 32,000 bytes of a WAV clip: the loopback server counts audio at 1,000 bytes a token (Gemini's 32 tokens a second,
#: for 16 kHz 16-bit mono), so 32 tokens.
CLIP = b"RIFF" + bytes(31_996)


def wav(seconds: float, rate: int = 16_000, channels: int = 1) -> bytes:
    """A WAV clip of ``seconds`` of silence, 16-bit at ``rate``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(channels)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(bytes(2 * channels * int(rate * seconds)))
    return out.getvalue()


class AudioQuestion(SingleCallBackend):
    """An application's backend: the request's text and an audio clip, in one user turn."""

    kind: ClassVar[str] = "audio_question"
    Config: ClassVar[type[BackendConfig]] = PromptTemplateConfig
    clip: bytes = CLIP
    mime: str = "audio/wav"

    async def prepare(self, request: GenerateRequest, ctx: RunContext) -> Prepared:
        turn = types.Content(role="user", parts=[types.Part(text=request.input),
                                                 types.Part.from_bytes(data=self.clip, mime_type=self.mime)])
        return Prepared(model=self.config.model, contents=[turn], config=None)


def with_audio(router: Router, clip: bytes = CLIP, mime: str = "audio/wav") -> Router:
    """``router`` with its ``chat`` backend sending ``clip`` (its budget, telemetry and outcome store shared)."""
    chat = router.backends["chat"]
    backend = AudioQuestion("chat", chat.config, router.resources)
    backend.clip, backend.mime = clip, mime
    return router.replacing({"chat": backend})


def flac(seconds: float, rate: int = 44_100) -> bytes:
    """The start of a FLAC stream: its STREAMINFO block (sample rate, 2 channels, 16 bits, sample count), then frames."""
    fields = rate << 44 | 1 << 41 | 15 << 36 | int(rate * seconds)
    return b"fLaC" + bytes([0x80, 0, 0, 34]) + bytes(10) + fields.to_bytes(8, "big") + bytes(16) + bytes(4_000)


def aiff(seconds: float, rate: int = 22_050) -> bytes:
    """An AIFF clip of ``seconds`` of 16-bit mono silence (its rate an 80-bit extended float, as the format writes)."""
    frames, shift = int(rate * seconds), rate.bit_length() - 1
    extended = (16_383 + shift).to_bytes(2, "big") + (rate << (63 - shift)).to_bytes(8, "big")
    comm = b"COMM" + (18).to_bytes(4, "big") + (1).to_bytes(2, "big") + frames.to_bytes(4, "big") \
        + (16).to_bytes(2, "big") + extended
    ssnd = b"SSND" + (8 + 2 * frames).to_bytes(4, "big") + bytes(8 + 2 * frames)
    return b"FORM" + (4 + len(comm) + len(ssnd)).to_bytes(4, "big") + b"AIFF" + comm + ssnd


def split(text: int, audio: int) -> list[dict[str, Any]]:
    """A ``promptTokensDetails`` (or ``cacheTokensDetails``) list as Gemini sends it."""
    return [{"modality": "TEXT", "tokenCount": text}, {"modality": "AUDIO", "tokenCount": audio}]


# -- the price arithmetic ----------------------------------------------------------------------------------------


def test_audio_tokens_are_priced_at_the_audio_rates_and_the_rest_at_text_rates() -> None:
    flash = Pricing().lookup(FLASH)
    assert flash is not None and (flash.audio_input, flash.cached_audio_input) == (1.00, 0.10)
    cases = [  # (usage, USD x 1M)
        (Usage(input_tokens=1000, output_tokens=100), 1000 * 0.30 + 100 * 2.50),
        (Usage(input_tokens=1000, output_tokens=100, audio_input_tokens=800), 200 * 0.30 + 800 * 1.00 + 250),
        # 600 cached (500 of them audio), 400 fresh (300 of them audio)
        (Usage(input_tokens=1000, output_tokens=100, cached_input_tokens=600, audio_input_tokens=800,
               cached_audio_input_tokens=500), 100 * 0.30 + 300 * 1.00 + 100 * 0.03 + 500 * 0.10 + 250),
        # counts past their totals are held to them
        (Usage(input_tokens=100, audio_input_tokens=900, cached_audio_input_tokens=50), 100 * 1.00),
    ]
    for usage, micro_usd in cases:
        assert flash.cost(usage) == pytest.approx(micro_usd / 1e6)
    # One price for every modality (2.5 Pro): audio bills as text, in its prompt-size tier too.
    pro = Usage(input_tokens=300_000, output_tokens=10, audio_input_tokens=200_000)
    assert Pricing().cost("gemini-2.5-pro", pro) == pytest.approx((300_000 * 2.50 + 10 * 15.00) / 1e6)


def test_the_config_prices_audio_and_a_bad_rate_is_an_error_naming_it() -> None:
    usage = Usage(input_tokens=100, cached_input_tokens=50, audio_input_tokens=100, cached_audio_input_tokens=50)
    priced = Pricing({"my-model": {"input": 1.0, "output": 0.0, "cached_input": 0.5, "audio_input": 4.0,
                                   "cached_audio_input": 2.0}})
    assert priced.cost("my-model", usage) == pytest.approx((50 * 4.0 + 50 * 2.0) / 1e6)
    # Without a cached audio rate, cached audio bills as cached text.
    assert ModelPrice(input=1.0, output=0.0, cached_input=0.5, audio_input=4.0).cost(usage) == \
        pytest.approx((50 * 4.0 + 50 * 0.5) / 1e6)
    with pytest.raises(ConfigError) as caught:
        Pricing({"my-model": {"input": 1.0, "output": 0.0, "audio_input": -1.0}})
    assert caught.value.field == "pricing.my-model.audio_input"


def test_usage_sums_add_their_audio_parts() -> None:
    one = Usage(input_tokens=10, audio_input_tokens=8, cached_input_tokens=4, cached_audio_input_tokens=2)
    two = Usage(input_tokens=5, audio_input_tokens=1)
    assert one + two == Usage(input_tokens=15, audio_input_tokens=9, cached_input_tokens=4, cached_audio_input_tokens=2)


# -- the loopback server answers as Gemini does ----------------------------------------------------------------


def test_the_loopback_server_splits_a_prompt_with_audio_by_modality(gemini_server: GeminiTestServer) -> None:
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=gemini_server.base_url))
    audio = [types.Part(text="What is said here?"), types.Part.from_bytes(data=CLIP, mime_type="audio/wav")]
    meta = client.models.generate_content(model=FLASH, contents=audio).usage_metadata
    assert meta is not None and meta.prompt_token_count == 5 + 32
    assert [(d.modality, d.token_count) for d in meta.prompt_tokens_details or ()] == [
        (types.MediaModality.TEXT, 5), (types.MediaModality.AUDIO, 32)]
    chunks = list(client.models.generate_content_stream(model=FLASH, contents=audio))
    assert len(chunks) > 1
    assert all(c.usage_metadata is not None and c.usage_metadata.prompt_tokens_details == meta.prompt_tokens_details
               for c in chunks)
    # A text prompt: no split (the server sends none, as genroute's hot path expects of a text request).
    text = client.models.generate_content(model=FLASH, contents="What is said here?").usage_metadata
    assert text is not None and text.prompt_tokens_details is None and text.prompt_token_count == 5


def test_the_loopback_servers_context_cache_of_audio_is_split_by_modality(gemini_server: GeminiTestServer) -> None:
    CacheRoutes(gemini_server)
    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=gemini_server.base_url))
    clip = types.Content(role="user", parts=[types.Part.from_bytes(data=CLIP, mime_type="audio/wav")])
    cache = client.caches.create(model=FLASH, config=types.CreateCachedContentConfig(contents=[clip]))
    meta = client.models.generate_content(model=FLASH, contents="Summarize it.",
                                          config=types.GenerateContentConfig(cached_content=cache.name)).usage_metadata
    assert meta is not None and meta.cached_content_token_count == 32
    assert [(d.modality, d.token_count) for d in meta.cache_tokens_details or ()] == [(types.MediaModality.AUDIO, 32)]
    assert [(d.modality, d.token_count) for d in meta.prompt_tokens_details or ()] == [
        (types.MediaModality.TEXT, 4), (types.MediaModality.AUDIO, 32)]


# -- every sink ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_an_audio_prompt_is_priced_at_the_audio_rate_in_every_sink(gemini_server, otel, state, tmp_path, stream):
    # Would catch: audio priced at the text rate ($0.30 for $1.00 on 2.5 Flash: under-charged by 3x in the spans, the
    # result, the budget and the outcome record), or a stream priced from a chunk other than the last.
    usage = {"promptTokenCount": 1000, "candidatesTokenCount": 50, "totalTokenCount": 1050,
             "promptTokensDetails": split(200, 800)}
    if stream:  # every chunk carries the usage so far; the last one the whole of it
        so_far = {**usage, "candidatesTokenCount": 20, "totalTokenCount": 1020}
        gemini_server.reply_json([answer("It says ", so_far, finish=None), answer("hello.", usage)])
    else:
        gemini_server.reply_json(answer("It says hello.", usage))

    with Router.from_config(audit_config(gemini_server, state, tmp_path), **otel.providers) as router:
        audio = with_audio(router)
        if stream:
            *_, last = audio.stream("What is said here?", timeout_s=20)
            result = last.result
        else:
            result = audio.generate("What is said here?", timeout_s=20)
        found = sinks(otel, audio, result, record=served_record_cost(audio, result))

    billed = (200 * 0.30 + 800 * 1.00 + 50 * 2.50) / 1e6
    assert usage_cost(FLASH, usage) == pytest.approx(billed)
    found.assert_all(billed)
    assert result.usage.audio_input_tokens == 800 and result.usage.input_tokens == 1000
    assert not result.cost_estimated


def test_an_implicit_cache_hit_on_audio_is_priced_at_the_cached_audio_rate(gemini_server, otel, state, tmp_path):
    # Would catch: cached audio priced at the cached text rate ($0.03 for $0.10), or the cached audio counted twice
    # (once as audio input, once as cached).
    usage = {"promptTokenCount": 5000, "candidatesTokenCount": 10, "totalTokenCount": 5010,
             "cachedContentTokenCount": 4096, "promptTokensDetails": split(1000, 4000),
             "cacheTokensDetails": split(96, 4000)}
    gemini_server.reply_json(answer("ok", usage))

    with Router.from_config(audit_config(gemini_server, state, tmp_path), **otel.providers) as router:
        audio = with_audio(router)
        result = audio.generate("What is said here?", timeout_s=20)
        found = sinks(otel, audio, result, record=served_record_cost(audio, result))

    billed = (904 * 0.30 + 96 * 0.03 + 4000 * 0.10 + 10 * 2.50) / 1e6
    assert usage_cost(FLASH, usage) == pytest.approx(billed)
    found.assert_all(billed)
    assert (result.usage.audio_input_tokens, result.usage.cached_audio_input_tokens) == (4000, 4000)


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_the_servers_own_count_of_an_audio_prompt_is_what_is_charged(gemini_server, otel, tmp_path, stream):
    # Nothing scripted: the server counts the prompt (its text, and the clip's 32 audio tokens) as it answers.
    with Router.from_config(audit_config(gemini_server, {"kind": "memory"}, tmp_path), **otel.providers) as router:
        audio = with_audio(router)
        if stream:
            *_, last = audio.stream("What is said here?", timeout_s=20)
            result = last.result
        else:
            result = audio.generate("What is said here?", timeout_s=20)

    prompt, details = prompt_split(gemini_server.requests[-1].body)
    assert details is not None and {"modality": "AUDIO", "tokenCount": 32} in details
    output = estimate_tokens(result.text)
    billed = ((prompt - 32) * 0.30 + 32 * 1.00 + output * 2.50) / 1e6
    assert result.cost_usd == pytest.approx(billed)
    assert result.usage.audio_input_tokens == 32


# -- audio whose usage never came back ----------------------------------------------------------------------------


def test_a_clip_tells_its_duration_where_its_bytes_say_it_else_the_most_it_can_last() -> None:
    assert audio_seconds(wav(1.0), "audio/wav") == pytest.approx(1.0)
    assert audio_seconds(wav(0.5, rate=44_100, channels=2), "audio/x-wav") == pytest.approx(0.5)
    assert audio_seconds(bytes(48_000), "audio/pcm;rate=24000") == pytest.approx(1.0)
    assert audio_seconds(flac(2.5), "audio/flac") == pytest.approx(2.5)
    assert audio_seconds(aiff(1.5), "audio/aiff") == audio_seconds(aiff(1.5, rate=8_000), "audio/x-aiff") == 1.5
    # An encoded format (MP3, AAC, Ogg), a rate not given, a header without a byte rate or a sample count: its size at
    # 6 kb/s, the lowest bitrate of the codecs Gemini takes (before: 0 s, its audio charged nothing).
    for data, mime in [(bytes(48_000), "audio/mp3"), (bytes(48_000), "audio/pcm"), (CLIP, "audio/wav"),
                       (flac(0)[:-4_000] + bytes(5_000), "audio/flac"), (bytes(48_000), "audio/ogg")]:
        assert audio_seconds(data, mime) == pytest.approx(len(data) * 8 / 6_000), mime
    assert estimate_audio([types.Content(role="user", parts=[
        types.Part.from_bytes(data=bytes(40_000_000), mime_type="audio/mp3")])]) == 9.5 * 3600 * 32  # Gemini's most


@pytest.mark.parametrize(("clip", "mime", "tokens"), [
    (bytes(16_000), "audio/mp3", 683),  # 128 kb/s: 1 s; at most 21.3 s (6 kb/s), so counted 683 tokens
    (flac(1.0), "audio/flac", 32), (aiff(1.0), "audio/aiff", 32), (bytes(16_000), "audio/ogg", 683)])
def test_a_lost_attempt_with_compressed_audio_is_charged_at_least_its_audio(gemini_server, otel, state, tmp_path,
                                                                            clip, mime, tokens):
    # Only WAV and PCM told their duration: an attempt lost with MP3, FLAC or Ogg audio was charged its text alone.
    usage = {"promptTokenCount": 40, "candidatesTokenCount": 5, "totalTokenCount": 45,
             "promptTokensDetails": split(8, 32)}
    gemini_server.fault(Fault.malformed_json())
    gemini_server.reply_json(answer("fine", usage))
    with Router.from_config(audit_config(gemini_server, state, tmp_path), **otel.providers) as router:
        audio = with_audio(router, clip=clip, mime=mime)
        result = audio.generate("What is said here?", timeout_s=20)
        found = sinks(otel, audio, result, record=served_record_cost(audio, result))
    found.assert_all(5 * 0.30e-6 + tokens * 1.00e-6 + usage_cost(FLASH, usage))
    assert result.cost_estimated and result.usage.audio_input_tokens == 32 + tokens


@pytest.mark.parametrize("how", ["lost", "uncounted", "uncounted-stream"])
def test_audio_whose_usage_never_came_is_estimated_from_its_duration_at_the_audio_rate(
        gemini_server, otel, state, tmp_path, how):
    # Would catch: an attempt lost after it was sent (a cut 200 body, retried), or an answer without a prompt count,
    # charged the estimate of its text alone: the second of audio it sent (32 tokens, at $1.00 a 1M) counted nothing.
    usage = {"promptTokenCount": 40, "candidatesTokenCount": 5, "totalTokenCount": 45,
             "promptTokensDetails": split(8, 32)}
    if how == "lost":
        gemini_server.fault(Fault.malformed_json())
        gemini_server.reply_json(answer("fine", usage))
    elif how == "uncounted":
        gemini_server.reply_json(answer("fine", {"candidatesTokenCount": 5, "totalTokenCount": 5}))
    else:
        gemini_server.reply_json([answer("fi", {"candidatesTokenCount": 2, "totalTokenCount": 2}, finish=None),
                                  answer("ne", {"candidatesTokenCount": 5, "totalTokenCount": 5})])

    with Router.from_config(audit_config(gemini_server, state, tmp_path), **otel.providers) as router:
        audio = with_audio(router, clip=wav(1.0))
        if how.endswith("stream"):
            *_, last = audio.stream("What is said here?", timeout_s=20)
            result = last.result
        else:
            result = audio.generate("What is said here?", timeout_s=20)
        found = sinks(otel, audio, result, record=served_record_cost(audio, result))

    estimate = 5 * 0.30e-6 + 32 * 1.00e-6  # "What is said here?" at four characters a token, and a second of audio
    found.assert_all(estimate + (usage_cost(FLASH, usage) if how == "lost" else 5 * 2.50e-6))
    assert result.cost_estimated


# -- the benchmark's rows and report -------------------------------------------------------------------------------


async def test_a_benchmark_row_keeps_the_audio_tokens_it_was_charged_for(gemini_server, tmp_path) -> None:
    usage = {"promptTokenCount": 1000, "candidatesTokenCount": 1, "totalTokenCount": 1001,
             "promptTokensDetails": split(200, 800)}
    gemini_server.reply_json(answer("hello", usage))
    record = BenchRecord(id="r1", input="What is said here?", output="hello")
    async with await Router.acreate(audit_config(gemini_server, {"kind": "memory"}, tmp_path)) as router:
        row = await run_one(with_audio(router), "chat", record, resolve_scorer("exact"), stream=False)
    assert row.ok and (row.input_tokens, row.audio_input_tokens) == (1000, 800)
    assert row.cost_usd == pytest.approx(usage_cost(FLASH, usage))


def test_the_benchmark_keeps_the_audio_tokens_of_its_rows_and_reports_their_mean() -> None:
    rows = [Outcome(backend="chat", record_id=str(i), ok=True, scorer="exact", input_tokens=100,
                    audio_input_tokens=audio, cost_usd=0.001) for i, audio in enumerate((60, 80))]
    (summary,) = summarize(rows)
    assert summary.audio_input_tokens == 70.0
    (row,) = table_rows([summary])
    assert row[COLUMNS.index("audio tok")] == "70.0"


async def test_a_benchmark_row_keeps_the_audio_output_tokens_it_was_charged_for(gemini_server, tmp_path) -> None:
    # Its cost priced them at the audio output rate, but the row (results.jsonl) had no audio_output_tokens.
    model = "gemini-2.5-flash-preview-tts"
    usage = {"promptTokenCount": 100, "candidatesTokenCount": 50, "totalTokenCount": 150,
             "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 10}, {"modality": "AUDIO",
                                                                                   "tokenCount": 40}]}
    gemini_server.reply_json(answer("It says.", usage, model=model))
    config = audit_config(gemini_server, {"kind": "memory"}, tmp_path,
                          pricing={model: {"input": 0.5, "output": 10.0, "audio_output": 20.0}})
    config["backends"]["chat"]["model"] = model
    record = BenchRecord(id="r1", input="Say it.", output="It says.")
    async with await Router.acreate(config) as router:
        row = await run_one(router, "chat", record, resolve_scorer("exact"), stream=False)
    assert row.ok and (row.output_tokens, row.audio_output_tokens) == (50, 40)
    assert row.cost_usd == pytest.approx((100 * 0.5 + 10 * 10.0 + 40 * 20.0) / 1e6)
    assert Outcome.model_validate_json(row.model_dump_json()) == row  # kept in results.jsonl and read back


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_an_answer_in_text_and_audio_bills_each_at_its_own_output_rate(gemini_server, otel, tmp_path, stream):
    # A speech or native-audio model's answer reports its output split by modality (``candidatesTokensDetails``):
    # it was all billed at the `output` rate, the audio part at the text one (or the text at the audio one).
    model = "gemini-2.5-flash-preview-tts"
    usage = {"promptTokenCount": 100, "candidatesTokenCount": 50, "totalTokenCount": 150,
             "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 10}, {"modality": "AUDIO",
                                                                                   "tokenCount": 40}]}
    if stream:  # the last event carries the whole usage
        so_far = {"promptTokenCount": 100, "candidatesTokenCount": 5, "totalTokenCount": 105}
        gemini_server.reply_json([answer("It ", so_far, model=model, finish=None), answer("says.", usage, model=model)])
    else:
        gemini_server.reply_json(answer("It says.", usage, model=model))
    config = audit_config(gemini_server, {"kind": "memory"}, tmp_path,
                          pricing={model: {"input": 0.5, "output": 10.0, "audio_output": 20.0}})
    config["backends"]["chat"]["model"] = model
    with Router.from_config(config, **otel.providers) as router:
        result = answered(router, "Say it.", stream=stream)
        found = sinks(otel, router, result, record=served_record_cost(router, result))
    found.assert_all((100 * 0.5 + 10 * 10.0 + 40 * 20.0) / 1e6)  # the spans, the result, budget, metric, record
    assert result.usage.audio_output_tokens == 40 and result.usage.output_tokens == 50
    # Without an audio output rate the whole answer bills at `output`, as before; tiers must price it when the base does.
    assert Pricing({model: {"input": 0.5, "output": 10.0}}).cost(model, result.usage) == pytest.approx(550 / 1e6)
    with pytest.raises(ConfigError, match="give this tier its own audio_output"):
        Pricing({model: {"input": 0.5, "output": 10.0, "audio_output": 20.0,
                         "tiers": [{"above_input_tokens": 1000, "input": 1.0, "output": 20.0}]}})
