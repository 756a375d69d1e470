"""Text embedders: offline all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime (default) and Gemini embeddings.

Both share one small interface (``embed`` / ``aembed`` / ``dimension`` / ``name()``) and emit an
``embeddings {model}`` span per call, with the tracer the caller passes (a router's backend passes its request's),
else one from the embedder's own ``tracer_provider``, else the global provider's. ``LocalEmbedder`` is also a Chroma
``EmbeddingFunction``; call ``register_with_chroma()`` before reopening a collection that was created with it.

This module holds ``GeminiEmbedder`` and re-exports the rest: the interface from ``embedder_base``, the offline
embedder from ``local_embedder``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from genroute.bounds import is_whole
from genroute.errors import ConfigError, UsageError
from genroute.knowledge.embedder_base import (ArrayEmbedder, Embedder, aembed_text, checked_texts, record_error,
                                              traced)
from genroute.knowledge.local_embedder import (
    LOCAL_MODEL,
    WEIGHTS_PACKAGE,
    WEIGHTS_VERSION,
    LocalEmbedder,
    model_file,
    register_with_chroma,
    tokenizer_file,
)

if TYPE_CHECKING:
    from genroute.engines.base import Engine
    from genroute.runtime.billing import Meter
    from genroute.runtime.pricing import Pricing


class GeminiEmbedder(Embedder):
    """Embeddings from an engine's ``embed`` (e.g. ``gemini-embedding-001`` on a Gemini engine)."""

    def __init__(self, engine: Engine, model: str = "gemini-embedding-001", *, dimension: int = 3072,
                 tracer_provider: trace.TracerProvider | None = None, pricing: Pricing | None = None,
                 task_type: str | None = None) -> None:
        from genroute.engines.base import Engine

        if not isinstance(engine, Engine):  # anything else was an AttributeError (no `provider`)
            raise UsageError(f"must be a genroute Engine (a router's resources.engines[name]), not "
                             f"{type(engine).__name__}", field="engine")
        if not is_whole(dimension) or dimension < 1:
            raise UsageError(f"must be a whole number >= 1, got {dimension!r:.40}", field="dimension")
        self.engine = engine
        self.tracer_provider = tracer_provider
        #: Prices the calls (the router's table, with its overrides; default: the built-in list prices).
        self.pricing = pricing
        self.model = model
        self.provider = engine.provider
        self.dimension = dimension
        #: The Gemini task type asked for (e.g. ``RETRIEVAL_QUERY``; ``None``: the model's default). Vectors of two
        #: task types differ, so it is part of the fingerprint.
        self.task_type = task_type

    def fingerprint(self) -> str:
        """The base's, with the task type when one is asked for."""
        base = super().fingerprint()
        return base if self.task_type is None else f"{base}|task_type={self.task_type}"

    @staticmethod
    def name() -> str:
        """The kind name."""
        return "genroute_gemini"

    async def aembed(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> list[list[float]]:
        """Embed ``texts`` with one ``engine.embed`` call, asking for ``dimension``-wide vectors.

        The call is priced (input tokens at the model's input price) on its span and charged to whoever
        collects charges around it (``genroute.runtime.billing.charging``: the rung, the request's
        decision, the route sync or the ingest run); attempts lost on the way are charged too."""
        from genroute.runtime.billing import Meter, metering

        texts = checked_texts(texts)
        span = self._span(tracer)
        meter = Meter()
        vectors: list[list[float]] | None = None
        error: BaseException | None = None
        started = time.perf_counter()
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False), \
                    metering(meter):
                asked: dict[str, Any] = {} if self.task_type is None else {"task_type": self.task_type}
                vectors = await self.engine.embed(self.model, list(texts), output_dimensionality=self.dimension,
                                                  **asked)
                self._check_widths(vectors)  # billed, whether or not the widths are right
        except BaseException as exc:
            error = exc
            record_error(span, exc)
            raise
        finally:
            charged = self._charge(span, texts, vectors, meter)
            self._measure(time.perf_counter() - started, charged, error)
            span.end()
        return vectors

    def cost_estimate(self, texts: list[str]) -> float:
        """The model's input price for ``texts`` at about four characters a token (what ``aembed`` charges when
        the engine does not count tokens); attempts lost and retried on the way may add to it."""
        from genroute.runtime.billing import estimate_tokens
        from genroute.types import Usage

        tokens = sum(estimate_tokens(t) for t in texts)
        return self._priced(Usage(input_tokens=tokens)) if tokens else 0.0

    def _priced(self, usage: Any) -> float:
        from genroute.runtime.pricing import Pricing

        if self.pricing is None:
            self.pricing = Pricing()
        return self.pricing.cost(self.engine.pricing_model(self.model), usage)

    def _charge(self, span: trace.Span, texts: list[str], vectors: list[list[float]] | None, meter: Meter
                ) -> tuple[int, float, bool] | None:
        # What the answer was billed as the engine reports it (Vertex AI counts tokens; for the Gemini API, which
        # does not, the engine estimates them at four characters a token), else estimated here from the texts;
        # plus attempts lost on the way. Estimates are marked. Returns the input tokens, cost and whether they
        # are estimates (None: nothing was billed).
        from genroute.runtime.billing import charge, estimate_tokens
        from genroute.types import Usage

        calls = list(meter.attempts)
        estimated = meter.estimated
        if vectors is not None:
            tokens = getattr(vectors, "input_tokens", None)
            guessed = tokens is None or getattr(vectors, "estimated", True)
            if tokens is None:  # an engine that does not say (a plain list)
                tokens = sum(estimate_tokens(t) for t in texts)
            if tokens:
                calls.insert(0, Usage(input_tokens=tokens))
                estimated = estimated or guessed
        if not calls:
            return None
        cost = sum(self._priced(call) for call in calls)
        tokens = sum(c.input_tokens for c in calls)
        # Token counts only when the provider counted them: an estimate is marked on the cost instead.
        attrs: dict[str, Any] = ({"genroute.cost.estimated": True} if estimated
                                 else {"gen_ai.usage.input_tokens": tokens})
        attrs["gen_ai.usage.cost.amount"] = cost
        attrs["gen_ai.usage.cost.currency"] = "USD"
        span.set_attributes(attrs)
        charge(cost, estimated=estimated)
        return tokens, cost, estimated

    def _check_widths(self, vectors: list[list[float]]) -> None:
        # A model that ignores output_dimensionality would otherwise fill a collection with vectors
        # Chroma rejects later (or, worse, that other vectors cannot be compared with).
        for n, vector in enumerate(vectors):
            if len(vector) != self.dimension:
                raise ConfigError(
                    f"{self.model} returned a {len(vector)}-wide vector (text {n}) but the embedder is "
                    f"configured for {self.dimension}; set the model's width as the dimension",
                    field="knowledge.embedder.dimension",
                )


__all__ = ["LOCAL_MODEL", "WEIGHTS_PACKAGE", "WEIGHTS_VERSION", "ArrayEmbedder", "Embedder", "GeminiEmbedder",
           "LocalEmbedder", "aembed_text", "checked_texts", "model_file", "register_with_chroma", "tokenizer_file", "traced"]
