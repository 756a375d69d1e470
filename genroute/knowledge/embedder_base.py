"""The embedder interface (``Embedder``, ``ArrayEmbedder``) and what every embedder shares: its span and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace

from genroute.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from numpy.typing import NDArray
    import numpy as np

    from genroute.runtime.embeddings import RequestEmbeddings
    from genroute.runtime.telemetry import Telemetry

_tracer = trace.get_tracer("genroute")


class ArrayEmbedder(Protocol):
    """What the learned policy and the offline benchmark embed with: texts in, one row per text out
    (``LocalEmbedder``, or a cache in front of one)."""

    model: str

    def embed_array(self, texts: list[str]) -> NDArray[Any]:
        """Embed ``texts`` into a float array of shape ``(len(texts), dimension)``."""
        ...


class Embedder(ABC):
    """Turns texts into vectors; ``embed`` is the sync twin of ``aembed``."""

    model: str
    provider: str
    dimension: int
    #: Tokens the embedder reads of each text (longer ones are cut); ``None``: no known limit.
    max_length: int | None = None
    #: Where spans go when a call passes no tracer; ``None``: the global tracer provider.
    tracer_provider: trace.TracerProvider | None = None
    #: Where calls' duration, token and cost metrics go (a router's); ``None``: not recorded.
    telemetry: Telemetry | None = None

    @staticmethod
    @abstractmethod
    def name() -> str:
        """A stable name for this kind of embedder."""

    @abstractmethod
    async def aembed(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> list[list[float]]:
        """Embed ``texts`` (one vector per text, in order); the ``embeddings`` span goes to ``tracer``."""

    def fingerprint(self) -> str:
        """What this embedder's vectors depend on, for caches of them (same fingerprint, same vectors): here its
        model's name, width and the tokens it reads; an embedder whose weights can change under one name adds them."""
        return f"{self.model}|{self.dimension}|{self.max_length}"

    def embed(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> list[list[float]]:
        """Embed ``texts`` from sync code; refuses to run inside a running event loop."""
        from genroute.runtime.portal import run_sync

        return checked_vectors(self, texts, run_sync(self.aembed(texts, tracer=tracer), "embed"))

    def cost_estimate(self, texts: list[str]) -> float:
        """What embedding ``texts`` is estimated to cost in USD, before it is done (0: the embedder is free)."""
        return 0.0

    def _span(self, tracer: trace.Tracer | None) -> trace.Span:
        # CLIENT for the local model too, as the local engine's inference spans are: one kind for every model call.
        if tracer is None:
            tracer = (_tracer if self.tracer_provider is None
                      else trace.get_tracer("genroute", tracer_provider=self.tracer_provider))
        return tracer.start_span(f"embeddings {self.model}", kind=trace.SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "embeddings", "gen_ai.request.model": self.model,
            "gen_ai.provider.name": self.provider, "gen_ai.embeddings.dimension.count": self.dimension},
            record_exception=False, set_status_on_exception=False)

    def _measure(self, duration_s: float, charged: tuple[int, float, bool] | None,
                 error: BaseException | None) -> None:
        """Record the call on ``telemetry``'s metrics as a generate call is: its duration, the tokens of an
        answered call when they are counted (an estimate is not reported as a count), and its cost (of any call
        billed). ``charged``: the input tokens, cost and whether they are estimates (None: nothing billed)."""
        telemetry = self.telemetry
        if telemetry is None or not telemetry.metered:
            return
        from genroute.runtime.telemetry import error_type

        attrs = {"gen_ai.operation.name": "embeddings", "gen_ai.provider.name": self.provider,
                 "gen_ai.request.model": self.model}
        if error is None:
            telemetry.record_call(attrs, None, duration_s)
        elif isinstance(error, Exception):  # not a cancellation: the call's own failure
            telemetry.record_call({**attrs, "error.type": error_type(error)}, None, duration_s)
        if charged is None:
            return
        tokens, cost, estimated = charged
        if error is None and not estimated:  # as for generate calls: token points for answered calls only
            telemetry.tokens.record(tokens, {**attrs, "gen_ai.token.type": "input"})
        if cost:
            telemetry.count_cost(cost, attrs, estimated=estimated)


async def aembed_text(embedder: Embedder, text: str, *, tracer: trace.Tracer | None = None,
                      embeddings: RequestEmbeddings | None = None) -> list[float]:
    """``text``'s vector: the one its request already made with an embedder of the same identity (``embeddings``,
    the request's: its policy, an earlier rung or another shadow embedded the same text), else embedded now (and
    kept there)."""
    from genroute.runtime.embeddings import vector_key

    async def embed() -> list[float]:
        return checked_vectors(embedder, [text], await embedder.aembed([text], tracer=tracer))[0]

    key = None if embeddings is None else vector_key(embedder)
    return await (embed() if embeddings is None or key is None else embeddings.avector(key, text, embed))


def checked_vectors(embedder: Embedder, texts: list[str], vectors: Any) -> Any:
    """``vectors``, what ``embedder`` answered for ``texts``, if it is one vector per text, each ``dimension`` wide
    (lists, or a numpy array's rows); else a ``ConfigError`` naming ``knowledge.embedder`` and the embedder's class.
    An embedder of one's own that answered otherwise was a ``UsageError`` naming no field from Chroma (``Unequal
    lengths for fields``, ``expecting embedding with dimension of 4, got 6``), or went unnoticed: a new collection
    took the vectors and recorded the width the embedder claims."""
    width = embedder.dimension
    if _length(vectors) == len(texts) and all(_length(vector) == width for vector in vectors):
        return vectors
    cls = type(embedder)
    if _length(vectors) != len(texts):
        got = type(vectors).__name__ if _length(vectors) is None else f"{_length(vectors)} vectors"
        problem = f"answered {len(texts)} texts with {got}"
    else:
        bad = next(n for n, vector in enumerate(vectors) if _length(vector) != width)
        size = _length(vectors[bad])
        got = f"a {type(vectors[bad]).__name__}" if size is None else f"a vector {size} wide"
        problem = f"answered text {bad} with {got}, not its dimension {width}"
    raise ConfigError(f"embedder {cls.__module__}.{cls.__qualname__} ({embedder.model!r}) {problem}: aembed() "
                      "returns one list of `dimension` floats per text, in order", field="knowledge.embedder")


def _length(value: Any) -> int | None:
    """``len(value)`` of a sequence (not text); ``None`` for anything else."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return None
    return len(value)


def traced(embedder: object, tracer: trace.Tracer | None) -> dict[str, trace.Tracer]:
    """The keyword that hands ``tracer`` to ``embedder``: for a genroute ``Embedder`` when there is a tracer;
    nothing for an array embedder of the caller's own (a cache, a test double), which need not take one."""
    return {"tracer": tracer} if tracer is not None and isinstance(embedder, Embedder) else {}


def checked_texts(texts: Any) -> list[str]:
    """``texts`` as a list of str; a ``UsageError`` naming ``texts`` (or the item, ``texts.<i>``) otherwise,
    before anything is sent (a model's client would take bytes or a nested list as some other input)."""
    if isinstance(texts, str):
        raise UsageError("embed() takes a list of texts, not a str", field="texts")
    try:
        texts = list(texts)
    except TypeError:
        raise UsageError(f"embed() takes a list of texts, not {type(texts).__name__}", field="texts") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise UsageError(f"must be a str, not {type(text).__name__}", field=f"texts.{i}")
    return texts


def record_error(span: trace.Span, exc: BaseException) -> None:
    """Mark ``span`` failed with ``exc``'s class name only, as every other span is: a provider's message may echo
    what was sent."""
    from genroute.runtime.telemetry import error_type

    kind = error_type(exc)
    span.set_attribute("error.type", kind)
    span.set_status(trace.StatusCode.ERROR, kind)
