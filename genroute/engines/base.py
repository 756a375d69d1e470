"""The engine extension point: a model runtime spoken to in google-genai's own types."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from genroute.errors import UsageError
from genroute.public_model import ConfigModel
from genroute.registry import KindFromConfig
from genroute.types import GenerationFields

if TYPE_CHECKING:
    from google.genai import types
    from opentelemetry import trace

#: Charges a context cache's caller for what the provider bills for it, at its tokens (None: unknown, so estimated),
#: and returns that cost in USD (``RunContext.charge_cache``).
CacheCharge = Callable[[int | None], float]
M = TypeVar("M", bound=BaseModel)

class SamplingSettings(GenerationFields, ConfigModel):
    """The sampling settings of a call, within the bounds genroute accepts (a backend's ``generation`` config and
    the local engine's check of a direct call share them; the fields and bounds are ``GenerationFields``')."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Embeddings(list[list[float]]):
    """What ``Engine.embed`` returns: the vectors, in order (it is their list), with the input tokens the provider
    bills for them — as it reported them, or ``estimated`` (about four characters a token) where it reported
    none, as the Gemini Developer API does. ``input_tokens`` ``None``: the engine does not say."""

    def __init__(self, vectors: Any = (), *, input_tokens: int | None = None, estimated: bool = False) -> None:
        super().__init__(vectors)
        self.input_tokens = input_tokens
        self.estimated = estimated


def engine_config(model: type[M], name: str, config: Any) -> M:
    """``config`` (a ``model``, a mapping or ``None``) validated as engine ``name``'s settings: ``ConfigError`` naming
    ``engines.<name>.<setting>``, after ``check_engine_name``."""
    from genroute.config_errors import validated_model

    check_engine_name(name)
    return validated_model(model, config, f"engines.{name}")


def check_engine_name(name: object) -> None:
    """``UsageError`` naming ``name`` unless it is text: an engine's settings given in its place
    (``GeminiEngine({...})``) were written into the errors' field names, an API key in plain text."""
    if not isinstance(name, str):
        raise UsageError(f"an engine's name is text (its key under `engines`), not {type(name).__name__}: an engine "
                         "takes its name, then its settings (GeminiEngine(\"gemini\", {...}))", field="name")


class Engine(KindFromConfig, ABC):
    """A model runtime: Gemini over google-genai, or the embedded local model.

    Engines take ``types.Content`` lists and a ``types.GenerateContentConfig`` and answer with
    ``types.GenerateContentResponse``; they never know which backend or policy called them.
    Retries, if any, live inside the engine (one layer); errors leave it as genroute errors.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    #: ``gen_ai.provider.name`` for spans: ``gcp.gemini``, ``gcp.vertex_ai`` or ``genroute.local``.
    provider: str = "unknown"
    #: For a free engine (``pricing_model`` is ``None``): the cloud model its calls are compared against, whose
    #: price becomes the result's ``cloud_equivalent_cost_usd``. ``None``: no comparison.
    reference_model: str | None = None
    #: The most stop sequences one call may carry (Gemini's API answers more with a 400); ``None``: any number.
    max_stop_sequences: int | None = None
    #: The seeds a call may carry, lowest and highest (llama.cpp's unsigned 32 bits); ``None``: any the API takes.
    seed_range: tuple[int, int] | None = None

    def __init__(self, name: str, config: BaseModel) -> None:
        check_engine_name(name)
        self.name = name
        self.config = config

    @abstractmethod
    async def generate(
        self,
        model: str,
        contents: list[types.Content],
        config: types.GenerateContentConfig | None = None,
        *,
        timeout_s: float | None = None,
    ) -> types.GenerateContentResponse:
        """Generate one complete response."""

    @abstractmethod
    def stream(
        self,
        model: str,
        contents: list[types.Content],
        config: types.GenerateContentConfig | None = None,
        *,
        timeout_s: float | None = None,
    ) -> AsyncGenerator[types.GenerateContentResponse, None]:
        """Generate a response as a stream of partial responses."""

    async def embed(self, model: str, texts: list[str], *,
                    output_dimensionality: int | None = None) -> list[list[float]]:
        """Embed texts (``output_dimensionality`` wide if given); engines without embeddings raise ``UsageError``.

        An engine that knows what the call is billed returns ``Embeddings``; for a plain list the caller
        estimates it from the texts."""
        from genroute.errors import UsageError

        raise UsageError(f"engine {self.name!r} ({self.kind}) does not embed")

    #: Whether ``generate`` takes a keyword ``bounded=True``, sent when the caller itself cancels the call once
    #: ``timeout_s`` runs out (a router's deadline timer): an engine may then skip a timer of its own for that
    #: deadline. Default: not taken (never sent).
    caller_bounded: ClassVar[bool] = False
    #: The same for ``stream``: ``bounded=True`` is sent when the caller cancels each step of the stream once
    #: ``timeout_s`` (moved on by the time its reader holds a chunk) runs out. Default: not taken (never sent).
    caller_bounded_stream: ClassVar[bool] = False

    #: Whether ``generate`` and ``stream`` take ``contents`` as a ``str`` too: one user turn of that text, as
    #: google-genai takes it (it builds the turn itself, for less than a ``Content`` list costs it). Default: no;
    #: the caller (``RunContext``) then sends that turn as ``[user_content(text)]``.
    takes_text: ClassVar[bool] = False

    def expect_deadline(self, seconds: float | None) -> None:
        """The time most calls will have left (a router's ``timeout_s``; None: no deadline). A hint, given before
        the first call: an engine may size what it sets once per client by it, so that calls with that much time
        left need nothing per call. Default: ignored."""

    def pricing_model(self, model: str) -> str | None:
        """The model name to price calls at (``None``: free, e.g. local)."""
        return model

    def refused_setting(self, generation: Any) -> tuple[str, str] | None:
        """The first of a backend's ``generation`` settings (its ``GenerationSettings``) this engine cannot honour,
        and why, as (the setting's name, the reason); building a router refuses that backend with a ``ConfigError``
        naming ``backends.<name>.generation.<setting>``. Default: ``None``, every setting honoured."""
        return None

    #: Whether ``create_cache`` makes context caches (Gemini); backends send their prefix inline otherwise.
    context_caching: ClassVar[bool] = False
    #: Whether making a context cache bills its tokens as input too, on top of their storage (Vertex AI).
    cache_input_billed: bool = False

    async def create_cache(self, model: str, contents: list[types.Content], *, ttl_s: int,
                           system: str | None = None, display_name: str | None = None,
                           timeout_s: float | None = None, tracer: trace.Tracer | None = None,
                           charge: CacheCharge | None = None) -> types.CachedContent:
        """A context cache of ``contents`` (and ``system``) for ``model`` living ``ttl_s``; its span goes to
        ``tracer`` (the request's), with what ``charge`` says it cost. Engines without ``context_caching`` raise
        ``UsageError``."""
        from genroute.errors import UsageError

        raise UsageError(f"engine {self.name!r} ({self.kind}) has no context caching")

    @property
    def lora_path(self) -> str | None:
        """The LoRA adapter this engine applies to every call (a locally tuned model), if any."""
        return None

    async def probe(self, model: str) -> str | None:
        """Check, with no billed call, that this engine can serve ``model`` now (``router.health``): raise if not,
        else say what was checked. ``None``: this engine has nothing to check, and health does not list it."""
        return None

    async def aclose(self) -> None:
        """Release clients, threads and files."""
