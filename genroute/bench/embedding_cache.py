"""Request embeddings computed once and kept on disk, keyed by the embedder's fingerprint and each text's content.

The file's name holds the model's name and a digest of the embedder's identity (``runtime.embeddings.vector_key``: its
``fingerprint()``, i.e. model file, version and settings, ``Embedder.fingerprint``; the one definition, by which a
request's backends share vectors too), so a model changed under the same name starts a cache of its own instead of
reading the other's vectors; an embedder without one is known by its model name alone.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genroute.errors import UsageError
from genroute.runtime.embeddings import vector_key

if TYPE_CHECKING:
    from numpy.typing import NDArray


class CachedEmbedder:
    """Wraps an embedder (``embed_array``, ``model``): texts embedded before are read from ``cache_dir``."""

    def __init__(self, embedder: Any, cache_dir: str | Path, *, chunk: int = 2048) -> None:
        self.embedder = embedder
        self.chunk = chunk
        self.model = getattr(embedder, "model", "unknown")
        identity = vector_key(embedder) or str(self.model)
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(self.model))
        self.path = Path(cache_dir) / f"embeddings-{safe}-{digest}.npz"
        self._vectors: dict[str, NDArray[Any]] = {}
        if self.path.exists():
            self._vectors = _read(self.path, self.model, getattr(embedder, "dimension", None))

    @staticmethod
    def key(text: str) -> str:
        """The content key of ``text``."""
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def embed_array(self, texts: Sequence[str]) -> NDArray[Any]:
        """Embeddings of ``texts``; new ones are computed and saved ``chunk`` texts at a time."""
        keys = [self.key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self._vectors}.items())
        for start in range(0, len(todo), self.chunk):  # saved chunk by chunk: a stopped run keeps its progress
            part = todo[start:start + self.chunk]
            vectors = np.asarray(self.embedder.embed_array([t for _, t in part]), dtype=np.float32)
            self._vectors.update(zip([k for k, _ in part], vectors, strict=True))
            self._save()
        return np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as fh:
            np.savez(fh, keys=np.array(list(self._vectors)), vectors=np.stack(list(self._vectors.values())))
        os.replace(tmp, self.path)


def _read(path: Path, model: str, width: int | None) -> dict[str, NDArray[Any]]:
    """The vectors of a cache file; one genroute did not write, or of another width, is a ``UsageError`` (the
    traceback of numpy's reader, or vectors of mixed widths, otherwise)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            keys, vectors = data["keys"].tolist(), data["vectors"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as exc:
        raise UsageError(f"{path} is not an embedding cache genroute wrote ({type(exc).__name__}); delete it, or "
                         "cache in another directory", field="cache_dir") from None
    if vectors.ndim != 2 or len(keys) != len(vectors) or (width is not None and vectors.shape[1] != width):
        raise UsageError(f"{path} holds vectors of shape {vectors.shape} for {len(keys)} texts, not {model}'s "
                         f"{width or 'same'}-wide ones; delete it, or cache in another directory", field="cache_dir")
    return dict(zip(keys, vectors, strict=True))

