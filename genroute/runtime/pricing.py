"""USD prices per 1M tokens, and the arithmetic that turns usage into cost."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from genroute.config_errors import config_error, pydantic_validated
from genroute.errors import ConfigError
from genroute.public_model import ConfigModel
from genroute.types import Usage

if TYPE_CHECKING:
    from genroute.engines.base import Engine


class PriceTier(ConfigModel):
    """Prices that apply once a prompt exceeds ``above_input_tokens``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    above_input_tokens: int = Field(gt=0)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    audio_input: float | None = Field(default=None, ge=0, description="USD per 1M audio input tokens above the "
                                      "threshold; required when the model prices audio apart below it.")
    cached_audio_input: float | None = Field(default=None, ge=0, description="USD per 1M cached audio input tokens "
                                             "above the threshold; required when the model sets it below it.")
    audio_output: float | None = Field(default=None, ge=0, description="USD per 1M audio output tokens above the "
                                       "threshold; required when the model prices audio output apart below it.")


class ModelPrice(ConfigModel):
    """USD per 1M tokens: input, output (thinking tokens bill as output), cached input (explicit caches and
    Gemini's implicit cache hits alike), context-cache storage per hour, and audio input where the model prices it
    apart from text (images, video and documents bill as text on every model priced here)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    cache_storage: float | None = Field(default=None, ge=0,
                                        description="USD per 1M tokens per hour a context cache is stored.")
    audio_input: float | None = Field(default=None, ge=0, description="USD per 1M audio input tokens, at every "
                                      "prompt size (unset: audio bills as text).")
    cached_audio_input: float | None = Field(default=None, ge=0, description="USD per 1M cached audio input tokens "
                                             "(unset: as cached text).")
    audio_output: float | None = Field(default=None, ge=0, description="USD per 1M audio output tokens (a speech or "
                                       "native-audio answer), where the response splits its output by modality "
                                       "(unset: audio output bills at `output`).")
    tiers: tuple[PriceTier, ...] = ()

    @field_validator("tiers")
    @classmethod
    def _by_threshold(cls, tiers: tuple[PriceTier, ...]) -> tuple[PriceTier, ...]:
        return tuple(sorted(tiers, key=lambda t: t.above_input_tokens))

    @model_validator(mode="after")
    def _tiers_price_audio(self) -> ModelPrice:
        # Above a threshold the base audio rate was charged beside the tier's text rates: an under-count wherever
        # audio, like text, costs more there. Which rate applies above it is not known, so it must be given.
        for rate in ("audio_input", "cached_audio_input", "audio_output"):
            for i, tier in enumerate(self.tiers):
                if getattr(self, rate) is not None and getattr(tier, rate) is None:
                    raise ValueError(f"tiers.{i}: audio is priced apart ({rate}) below {tier.above_input_tokens} "
                                     f"input tokens; give this tier its own {rate} (its rate above is not known)")
        return self

    def cost(self, usage: Usage) -> float:
        """The USD cost of ``usage`` at these prices, picking the prompt-size tier."""
        price: ModelPrice | PriceTier = self
        for tier in self.tiers:  # sorted by threshold (validated)
            if usage.input_tokens > tier.above_input_tokens:
                price = tier
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        cached_rate = price.input if price.cached_input is None else price.cached_input
        total = (
            (usage.input_tokens - cached) * price.input
            + cached * cached_rate
            + (usage.output_tokens + usage.thinking_tokens) * price.output
        )
        if usage.audio_input_tokens:  # a text prompt pays nothing for this test but the test
            total += _audio_extra(usage, price, cached, cached_rate)
        if usage.audio_output_tokens and price.audio_output is not None:  # beyond the output rate it was charged
            total += min(usage.audio_output_tokens, usage.output_tokens) * (price.audio_output - price.output)
        return total / 1_000_000


def _audio_extra(usage: Usage, price: ModelPrice | PriceTier, cached: int, cached_rate: float) -> float:
    """What ``usage``'s audio tokens cost (USD x 1M) beyond the text rates of ``price`` (the prompt size's tier)
    that ``ModelPrice.cost`` charged them at."""
    audio = min(usage.audio_input_tokens, usage.input_tokens)
    audio_cached = min(usage.cached_audio_input_tokens, cached, audio)
    audio_fresh = min(audio - audio_cached, usage.input_tokens - cached)
    audio_rate = price.input if price.audio_input is None else price.audio_input
    audio_cached_rate = cached_rate if price.cached_audio_input is None else price.cached_audio_input
    return audio_fresh * (audio_rate - price.input) + audio_cached * (audio_cached_rate - cached_rate)


def _p(inp: float, out: float, cached: float | None, *tiers: tuple[int, float, float, float | None],
       storage: float | None = None, audio: tuple[float, float] | None = None) -> ModelPrice:
    return ModelPrice(
        input=inp, output=out, cached_input=cached, cache_storage=storage,
        audio_input=None if audio is None else audio[0], cached_audio_input=None if audio is None else audio[1],
        tiers=tuple(PriceTier(above_input_tokens=a, input=i, output=o, cached_input=c) for a, i, o, c in tiers),
    )


#: Gemini Developer API list prices (standard tier) as published in 2025–2026. The source of truth is
#: ai.google.dev/gemini-api/docs/pricing, which is not in the reference corpus this table was checked against
#: (2026-12-06) as a page of its own: each group names the pages that quote it. Thinking tokens bill at the output
#: price (the pricing page's "Output price (including thinking tokens)", quoted below). Audio input is dearer than
#: text on some models and priced apart (``audio=(input, cached input)``): the page lists input as "$0.30 (text /
#: image / video) $1.00 (audio)", so images, video and documents bill as text. Its audio rates are read from copies
#: of the page kept in public repositories (checked 2026-12-06: gfargo/token-tally's scripts/fixtures/gemini/
#: pricing.md, fetched 2025-10-08, and a later copy that lists Gemini 3.1 Pro, which agree where both list a rate)
#: and cross-checked against a second source each, named below; a rate found once is left out. The models without
#: one (the Pro models, 2.0 Flash-Lite, the embedding model) list a single price for every modality.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    # Input $2.00 / output $12.00 up to 200k prompt tokens, $4.00 / $18.00 above (aifreeapi.com/en/posts/
    # gemini-3-api-pricing-quota, 2026-02-04, and .../gemini-api-pricing-2026, January 2026). Cached $0.20 / $0.40
    # and storage $4.50/1M/hour: not in the corpus, kept. The model itself was shut down on 2026-03-09 in favour
    # of gemini-3.1-pro-preview (the deprecations page as quoted by glbgpt.com); kept for configs that name it.
    "gemini-3-pro-preview": _p(2.00, 12.00, 0.20, (200_000, 4.00, 18.00, 0.40), storage=4.50),
    # The pricing page (Gemini Developer API pricing, "Gemini 3.1 Pro Preview", standard paid tier) as transcribed
    # in api-evangelist/gemini's plans/gemini-plans-pricing.yml (page read 2026-09-20; read here 2026-12-07): input
    # "$2.00, prompts <= 200k tokens" / "$4.00, prompts > 200k tokens", output "$12.00" / "$18.00"; the same four
    # figures at blog.laozhang.ai/en/posts/gemini-3-1-pro-preview-free-api ("rechecked on March 28, 2026" against the
    # pricing page) and inference.sh/apps/openrouter/gemini-3-1-pro-preview (2026-10-11). Cached input $0.20 up to
    # 200k: cloudprice.net/models/vertex_ai%2Fgemini-3.1-pro-preview (Vertex AI and the Gemini API alike) and
    # airouter.megatech.cc/models/gemini-3.1-pro-preview (read 2026-12-07). Not found for it: the cached rate above
    # 200k (cached tokens of such a prompt bill at its input rate, $4.00: over, never under) and the context-cache
    # storage price (an ICL context_cache on it is refused until `pricing` gives cache_storage). One price for every
    # input modality, as for the other Pro models (no audio rate listed).
    "gemini-3.1-pro-preview": _p(2.00, 12.00, 0.20, (200_000, 4.00, 18.00, None)),
    # The pricing page as quoted by factquire.com/models/google/gemini-3-flash-preview.json (read 2026-07-04):
    # "$0.50 (text / image / video) $1.00 (audio)", output "(including thinking tokens) $3.00", context caching
    # "$0.05 (text / image / video)"; one price at every prompt size (evolink.ai lists the same above 200k).
    # Audio $1.00, cached audio $0.10 and storage $1.00/1M/hour: the later page copy, and two project notes that quote
    # the page ("$0.05 (text/image/video), $0.10 (audio) + $1.00/M tokens/hour storage").
    "gemini-3-flash-preview": _p(0.50, 3.00, 0.05, storage=1.00, audio=(1.00, 0.10)),
    # Input $1.25 / output $10.00 up to 200k, $2.50 / $15.00 above (deploybase.ai/articles/gemini-api-pricing,
    # 2026-01-08, "from Google's official pricing page (March 2026)"); cached $0.125 / $0.25 and storage $4.50
    # (the pricing page as quoted in discuss.ai.google.dev/t/question-about-gemini-api-caching-pricing/107349).
    # An older thread (.../92919) quotes the earlier cache price, $0.31 / $0.625: superseded, not used.
    "gemini-2.5-pro": _p(1.25, 10.00, 0.125, (200_000, 2.50, 15.00, 0.25), storage=4.50),
    # Input $0.30 / output $2.50 (deploybase.ai, above; hivebook.wiki/wiki/gemini-2-5-google-s-multimodal-
    # flagship-family: storage $1.00/1M/hour, thinking billed at the output rate). Cached $0.03: deploybase gives
    # caching as a 90% discount; the figure itself is not in the corpus. One blog (May 2026, dev.to mirror) gives
    # cache reads $0.075 and thinking $3.50 (the 2025 preview's prices): they disagree, kept as they were.
    # Both page copies: cached "$0.03 (text / image / video) $0.1 (audio)", audio input $1.00; audio $1.00 also in
    # api-evangelist/gemini's plans/gemini-plans-pricing.yml (the page as read 2026-09-20), cached audio $0.10 in
    # LiteLLM's price map (vertex_ai/gemini-2.5-flash: cache_read_input_token_cost_per_audio_token 1e-07).
    "gemini-2.5-flash": _p(0.30, 2.50, 0.03, storage=1.00, audio=(1.00, 0.10)),
    # Input $0.10 / output $0.40 (alltoken.ai/models/gemini-2.5-flash-lite, morphllm.com/gemini-api-pricing);
    # storage $1.00/1M/hour (hivebook.wiki, above). Cached $0.01: the later page copy ("$0.01 (text / image / video)
    # $0.03 (audio)"; the 2025-10-08 copy still had $0.025 / $0.125). Audio $0.30 in both copies and at
    # anttisahla.com/ai/models/gemini-2-5-flash-lite (verified 2026-05-16); cached audio $0.03 in the later copy and
    # a project note quoting the page ("$0.01; $0.03 audio").
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.01, storage=1.00, audio=(0.30, 0.03)),
    # Input $0.10 / cached $0.025 / output $0.40 (modelpedia.dev/google/gemini-2.0-flash, updated 2026-03-22;
    # morphllm.com, above, with its shutdown on 2026-06-01); storage $1.00, audio $0.70 and cached audio $0.175 (both
    # page copies; audio $0.70 also in a pricing table that quotes the page, "$0.10 per 1M tokens (text/image/video),
    # $0.70 (audio)").
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025, storage=1.00, audio=(0.70, 0.175)),
    # Input $0.075 / output $0.30 (yingtu.ai/blog/gemini-flash-api-cheapest-cost); no context caching on this
    # model (discuss.ai.google.dev/t/query-gemini-2-0-flash-lite-explicit-caching-costs-and-max-ttl-limit/83445).
    "gemini-2.0-flash-lite": _p(0.075, 0.30, None),
    # $0.15 per 1M input tokens, the same on Vertex AI (Gemini API pricing page, ai.google.dev/gemini-api/docs/pricing;
    # the general-availability post, developers.googleblog.com/en/gemini-embedding-available-gemini-api/).
    "gemini-embedding-001": _p(0.15, 0.0, None),
    # No text-embedding-004: the Gemini API shut it down on 2026-01-14 (same post, and the deprecations page,
    # ai.google.dev/gemini-api/docs/deprecations); it was listed here at $0, so an embedder configured with it (or with
    # Vertex AI's, billed there per 1,000 characters) was costed at nothing. Unpriced, it is a ConfigError naming
    # knowledge.embedder.model: give its price under `pricing`.
}


#: Vertex AI supervised tuning list prices, USD per 1M training tokens (billed per epoch), as published in 2025.
#: UNVERIFIED: the tuning section of the Vertex AI pricing page (cloud.google.com/vertex-ai/generative-ai/pricing)
#: is not in the reference corpus these prices were checked against (searched 2026-12-07: the Vertex AI pricing page,
#: its supervised tuning pages and third-party copies; none lists a training-token price for these models). So every
#: figure made from them says so (``TRAINING_PRICE_CAVEAT``: the graduation report and span, the bench advisor).
#: Used by the graduation advisor; pass your own (``genroute bench --tuning-price``) when yours differ.
TRAINING_PRICES: dict[str, float] = {
    "gemini-2.5-pro": 25.0,
    "gemini-2.5-flash": 5.0,
    "gemini-2.5-flash-lite": 1.5,
    "gemini-2.0-flash": 3.0,
    "gemini-2.0-flash-lite": 1.0,
}


#: How a figure made from ``TRAINING_PRICES`` is labelled: they could not be checked against the published page.
TRAINING_PRICE_CAVEAT = "unverified 2025 list price"


#: What may follow a known model name and still be that model: versions and dates (``-001``,
#: ``-preview-05-20``, ``-latest``, ``-exp-1206``), never a variant such as ``-image`` or ``-tts``.
_VERSION_SUFFIX = re.compile(r"(?:-(?:\d+|preview|exp|latest))+")


_MAX_RESOLVED = 1024

#: Model names of Gemini's audio-answering variants (``gemini-2.5-flash-preview-tts``, ``...-native-audio-...``).
_AUDIO_OUT = re.compile(r"-tts\b|native-audio", re.IGNORECASE)


def _price(name: str, price: Any) -> ModelPrice:
    """``price`` as a ``ModelPrice`` (a mapping is validated as the config's ``pricing`` entries are); an error
    names ``pricing.<name>`` (a mapping was kept as it was, and the first request that used it failed)."""
    from pydantic import ValidationError

    if isinstance(price, ModelPrice):
        return price
    if not isinstance(price, Mapping):
        raise ConfigError(f"must be a ModelPrice or a mapping of prices, not {type(price).__name__}",
                          field=f"pricing.{name}")
    try:
        return pydantic_validated(ModelPrice, price)
    except ValidationError as exc:
        raise config_error(exc, f"pricing.{name}") from None


class Pricing:
    """A price table: defaults overridden by config, looked up by exact name or by name plus a version suffix."""

    def __init__(self, overrides: Mapping[str, ModelPrice | Mapping[str, Any]] | None = None) -> None:
        if overrides is not None and not isinstance(overrides, Mapping):  # a number was an AttributeError
            raise ConfigError(f"must map model names to prices, not {type(overrides).__name__}", field="pricing")
        self._overrides = {name: _price(name, price) for name, price in (overrides or {}).items()}
        self._prices = {**DEFAULT_PRICES, **self._overrides}
        self._by_length = sorted(self._prices, key=len, reverse=True)
        #: Every name looked up, resolved once: the table never changes, and every call is priced.
        self._resolved: dict[str, ModelPrice | None] = {}
        #: What each engine's calls priced as a name are charged at (``charged_at``), resolved once per pair.
        self._charged: dict[tuple[Engine, str], tuple[ModelPrice | None, str | None]] = {}
        #: The (engine, name) pairs ``require_charged`` passed, with what their calls are charged at (``charged_at``):
        #: a call looks its pair up once, before it is sent, and is charged at what it found.
        self.sendable: dict[tuple[Engine, str], tuple[ModelPrice | None, str | None]] = {}

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of ``model`` or None: the exact name (a tuned endpoint may be priced under its full
        resource name), then without its resource path, then a known name followed by a version suffix."""
        try:
            return self._resolved[model]
        except KeyError:
            pass
        known = _known_name(model, self._by_length)
        price = None if known is None else self._prices[known]
        if len(self._resolved) >= _MAX_RESOLVED:  # names come from configs and responses: this rarely fills
            self._resolved.clear()
        self._resolved[model] = price
        return price

    def charged_at(self, engine: Engine, model: str) -> tuple[ModelPrice | None, str | None]:
        """The price a call to ``engine`` priced as ``model`` is charged at (``None``: nothing), and the model its
        cloud equivalent is priced at (``Engine.reference_model``; ``None``: none). An engine whose calls are free
        (local: ``Engine.pricing_model`` ``None``) is charged the configured price of ``model`` itself if ``pricing``
        names it (its compute, say), and only such an engine has a cloud equivalent. Resolved once per pair: the
        engine's pricing and the table never change."""
        try:
            return self._charged[engine, model]
        except KeyError:
            pass
        priced = engine.pricing_model(model)
        free = priced is None
        if free and self.overrides(model):
            priced = model
        charged = (None if priced is None else self.lookup(priced), engine.reference_model if free else None)
        if len(self._charged) >= _MAX_RESOLVED:  # engines and models come from configs: this rarely fills
            self._charged.clear()
        self._charged[engine, model] = charged
        return charged

    def require_charged(self, engine: Engine, model: str) -> tuple[ModelPrice | None, str | None]:
        """``ConfigError`` naming ``pricing`` before a call to ``engine`` priced as ``model`` when the table cannot
        price it (a backend choosing its model at run time): it would be billed and counted nowhere, at 0. Building
        the router checks the models configs name; this covers the rest, before anything is sent. Else what the call
        is charged at (``charged_at``), kept in ``sendable``."""
        charged = self.charged_at(engine, model)
        if charged[0] is None and engine.pricing_model(model) is not None:
            raise ConfigError(f"no price known for model {model!r}, which a backend asked for at run time: add it "
                              "under `pricing` (USD per 1M tokens); nothing was sent", field="pricing")
        if len(self.sendable) >= _MAX_RESOLVED:  # as _charged: engines and models come from configs
            self.sendable.clear()
        self.sendable[engine, model] = charged
        return charged

    def training_price(self, model: str) -> tuple[str, float] | None:
        """``(priced name, USD per 1M training tokens)`` for supervised tuning of ``model``, or None."""
        known = _known_name(model, sorted(TRAINING_PRICES, key=len, reverse=True))
        return None if known is None else (known, TRAINING_PRICES[known])

    def overrides(self, model: str) -> bool:
        """Whether the configured prices name ``model`` itself (exactly or without its resource path)."""
        return any(name in self._overrides for name in _names(model))

    def tuned_billed_as(self, model: str, base_model: str) -> tuple[str, str]:
        """What a tuned ``model`` trained from ``base_model`` is priced as, and which of the two config fields
        names it: the tuned model if the configured prices name it, else its base model (tuned calls bill at
        base rates)."""
        return (model, "model") if self.overrides(model) else (base_model, "base_model")

    def unused(self, models: Iterable[str]) -> dict[str, str | None]:
        """The configured names that price none of ``models`` (the models a router calls and bills as) and no
        built-in model, each with the nearest name of ``models`` or of the built-in table (None: nothing near)."""
        used = {self.priced_as(m) for m in models}
        builtin = sorted(DEFAULT_PRICES, key=len, reverse=True)
        names = sorted({name for m in models for name in _names(m)} | set(DEFAULT_PRICES))
        return {key: next(iter(difflib.get_close_matches(key, names, n=1, cutoff=0.6)), None)
                for key in self._overrides if key not in used and _known_name(key, builtin) is None}

    def priced_as(self, model: str) -> str | None:
        """The name of the table ``model``'s price is found under (see ``lookup``), or None."""
        return _known_name(model, self._by_length)

    def require(self, model: str, *, field: str) -> ModelPrice:
        """The price of ``model``; ``ConfigError`` naming ``field`` if it is unknown."""
        price = self.lookup(model)
        if price is None:
            # A misspelt built-in name (gemini-2.5-flsh) is the likelier mistake than a model genroute cannot price.
            near = difflib.get_close_matches(model.rsplit("/", 1)[-1], sorted(DEFAULT_PRICES), n=1, cutoff=0.8)
            meant = f"did you mean {near[0]!r}? Else " if near else ""
            # Audio output bills at its own rate, which no model of the table has (they answer in text): the text
            # model a speech variant is named after must not price it, and the rate to give is its audio one.
            speech = " (it answers in audio: give its audio output rate as `audio_output` beside its text one as " \
                     "`output`; the built-in table prices no text-to-speech or native-audio model)" \
                if _AUDIO_OUT.search(model) else ""
            raise ConfigError(f"no price known for model {model!r}; {meant}add it under `pricing` (USD per 1M "
                              f"tokens){speech}", field=field)
        return price

    def cost(self, model: str | None, usage: Usage) -> float:
        """USD cost of ``usage`` on ``model``; a ``None`` model (local) is free."""
        if model is None:
            return 0.0
        price = self.lookup(model)
        return 0.0 if price is None else price.cost(usage)

    def storage_cost(self, model: str | None, tokens: int, seconds: float) -> float:
        """USD for storing a context cache of ``tokens`` on ``model`` for ``seconds`` (0 if unpriced)."""
        price = self.lookup(model) if model is not None else None
        if price is None or not price.cache_storage:
            return 0.0
        return tokens * (seconds / 3600) * price.cache_storage / 1_000_000


def _known_name(model: str, known_longest_first: list[str]) -> str | None:
    """The known name ``model`` is: itself, without its resource path, or a known name plus a version suffix."""
    for name in _names(model):
        if name in known_longest_first:
            return name
    name = _names(model)[-1]
    for known in known_longest_first:
        if name.startswith(known) and _VERSION_SUFFIX.fullmatch(name, len(known)):
            return known
    return None


def _names(model: str) -> tuple[str, ...]:
    """``model`` as given, without a ``models/`` prefix, its last two path segments (``endpoints/123`` of a tuned
    endpoint's resource name) and its last one (most specific first)."""
    bare = model.removeprefix("models/")
    return tuple(dict.fromkeys((model, bare, "/".join(bare.rsplit("/", 2)[-2:]), bare.rsplit("/", 1)[-1])))
