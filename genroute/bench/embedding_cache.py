"""Request embeddings computed once and kept on disk, keyed by the embedder's fingerprint and each text's content.

The file's name holds the model's name and a digest of the embedder's identity (``runtime.embeddings.vector_key``: its
``fingerprint()``, i.e. model file, version and settings, ``Embedder.fingerprint``; the one definition, by which a
request's backends share vectors too), so a model changed under the same name starts a cache of its own instead of
reading the other's vectors; an embedder without one is known by its model name alone.

The file (format 2, ``embeddings-MODEL-DIGEST.v2.tsv``) is append-only: a JSON header line, then a line per text,
``key<TAB>width<TAB>base64 of its float32 vector`` (a line cut short decodes to fewer numbers than its width).
Each chunk's lines are one ``O_APPEND`` write, fsync'd, under an exclusive ``flock`` where the system has one, so
two processes filling one cache interleave whole chunks; a process reads the lines the other appended before it
embeds a chunk. A torn line (a process killed mid-write) is skipped on read and fenced off by a newline before the
next chunk; the rest is kept. A read takes the lines of the expected length as one array (``_decode_whole``: one
base64 decode for all of them where a vector needs no padding) and only the others (torn, or another width) one by
one. A format-1 file (the ``.npz`` the whole cache was rewritten into per chunk: quadratic in the texts embedded)
is read once and its vectors carried into the new file; a later format is refused.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genroute.cache import open_unlinked
from genroute.errors import UsageError
from genroute.runtime.embeddings import vector_key

try:
    import fcntl
except ImportError:  # Windows: the O_APPEND write of whole lines alone
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: The format this module writes; a file of a later one is refused, not misread.
FORMAT = 2
_MAGIC = "genroute_embedding_cache"


class CachedEmbedder:
    """Wraps an embedder (``embed_array``, ``model``): texts embedded before are read from ``cache_dir``."""

    def __init__(self, embedder: Any, cache_dir: str | Path, *, chunk: int = 2048) -> None:
        self.embedder = embedder
        self.chunk = chunk
        self.model = getattr(embedder, "model", "unknown")
        self.width: int | None = getattr(embedder, "dimension", None)
        identity = vector_key(embedder) or str(self.model)
        digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(self.model))
        self.path = Path(cache_dir) / f"embeddings-{safe}-{digest}.v{FORMAT}.tsv"
        #: The format-1 file of the same embedder, read once into ``path`` when that does not exist yet.
        self.legacy_path = Path(cache_dir) / f"embeddings-{safe}-{digest}.npz"
        self._vectors: dict[str, NDArray[Any]] = {}
        self._offset = 0  # how far ``path`` has been read (the end of its last whole line)
        if self.path.exists():
            self._read_new()
        elif self.legacy_path.exists():
            legacy = _read_npz(self.legacy_path, self.model, self.width)
            self._append(list(legacy), np.stack(list(legacy.values())) if legacy else np.zeros((0, 0)))
            self._read_new()

    @staticmethod
    def key(text: str) -> str:
        """The content key of ``text``."""
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]

    def embed_array(self, texts: Sequence[str]) -> NDArray[Any]:
        """Embeddings of ``texts``; new ones are computed and appended ``chunk`` texts at a time."""
        keys = [self.key(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in self._vectors}.items())
        for start in range(0, len(todo), self.chunk):  # saved chunk by chunk: a stopped run keeps its progress
            if self.path.exists():
                self._read_new()  # what another process sharing the file embedded meanwhile
            part = [(k, t) for k, t in todo[start:start + self.chunk] if k not in self._vectors]
            if part:
                vectors = np.asarray(self.embedder.embed_array([t for _, t in part]), dtype=np.float32)
                self._append([k for k, _ in part], vectors)
                self.width = self.width or vectors.shape[1]
                self._vectors.update(zip([k for k, _ in part], vectors, strict=True))
        return np.stack([self._vectors[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)

    def _append(self, keys: Sequence[str], vectors: NDArray[Any]) -> None:
        """Append a line per vector: one write, fsync'd, after a newline if the file ends in a torn line."""
        if not self.path.exists():
            self._create()
        body = b"".join(
            b"%s\t%d\t%s\n" % (k.encode("ascii"), len(v), base64.b64encode(np.asarray(v, dtype="<f4").tobytes()))
            for k, v in zip(keys, vectors, strict=True))
        # Past no link at its own name (open_unlinked, as results.jsonl): one planted in a shared cache directory
        # had the vectors appended to whatever file it pointed at.
        fd = open_unlinked(self.path, os.O_RDWR | os.O_APPEND, field="cache_dir")
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close
            end = os.fstat(fd).st_size
            if end and os.pread(fd, 1, end - 1) != b"\n":
                body = b"\n" + body  # a torn line stays one line, skipped on read
            if body:
                os.write(fd, body)
                os.fsync(fd)
        finally:
            os.close(fd)

    def _create(self) -> None:
        """The file with its header, made whole before it appears (another process may make it first)."""
        from genroute.cache import atomic_write_bytes

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        header = {_MAGIC: FORMAT, "model": str(self.model), "dtype": "float32"}
        # Owner-only: a vector per input text (an embedding gives much of its text back).
        atomic_write_bytes(self.path, json.dumps(header).encode() + b"\n", private=True, keep=True)

    def _read_new(self) -> None:
        """Read the whole lines appended since the last read; a line that is not one (a torn write) is skipped."""
        try:
            with os.fdopen(open_unlinked(self.path, os.O_RDONLY, field="cache_dir"), "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError as exc:
            raise UsageError(f"{self.path} cannot be read ({exc.strerror or exc}); cache in another directory",
                             field="cache_dir") from None
        end = data.rfind(b"\n") + 1  # the whole lines read
        begin = 0
        if self._offset == 0:
            if not end:  # not even a header line: not a file this module made (it writes the header whole)
                raise self._refused("no header")
            begin = data.index(b"\n") + 1
            self._check_header(data[:begin - 1])
        if self.width is None and begin < end:
            self.width = _width_of(data[begin:data.index(b"\n", begin)])
        keys, vectors, lines = _decode_whole(memoryview(data)[begin:end], self.width)
        raws = []
        for line in lines:  # what the vectorised decode left: torn lines, a vector of another width
            fields = line.split(b"\t")
            try:
                key, width, raw = fields[0].decode("ascii"), int(fields[1]), binascii.a2b_base64(fields[2])
            except (IndexError, ValueError, binascii.Error):  # a torn line (UnicodeDecodeError is a ValueError)
                continue
            if len(fields) != 3 or len(key) != 32 or len(raw) != 4 * width:
                continue
            if self.width is None:
                self.width = width
            if width != self.width:
                raise UsageError(f"{self.path} holds vectors {width} wide, not {self.model}'s {self.width}-wide "
                                 "ones; delete it, or cache in another directory", field="cache_dir")
            keys.append(key)
            raws.append(raw)
        if raws:  # one array for these lines (a row of it per text), not an array a line
            rest = np.frombuffer(b"".join(raws), dtype="<f4").astype(np.float32).reshape(len(raws), -1)
            vectors = np.concatenate([vectors, rest]) if len(vectors) else rest
        self._vectors.update(zip(keys, vectors, strict=True))
        self._offset += end

    def _check_header(self, line: bytes) -> None:
        try:
            header = json.loads(line)
        except ValueError:
            header = None
        version = header.get(_MAGIC) if isinstance(header, dict) else None
        if not isinstance(version, int):
            raise self._refused("no genroute header")
        if version != FORMAT:
            raise UsageError(f"{self.path} is an embedding cache of format {version}; this genroute reads format "
                             f"{FORMAT}: delete it, or cache in another directory", field="cache_dir")

    def _refused(self, why: str) -> UsageError:
        return UsageError(f"{self.path} is not an embedding cache genroute wrote ({why}); delete it, or cache in "
                          "another directory", field="cache_dir")


def _read_npz(path: Path, model: str, width: int | None) -> dict[str, NDArray[Any]]:
    """The vectors of a format-1 cache file; one genroute did not write, or of another width, is a ``UsageError``
    (the traceback of numpy's reader, or vectors of mixed widths, otherwise)."""
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


def _width_of(line: bytes) -> int | None:
    """The width a line gives its vector, if it reads as a number."""
    try:
        return int(line.split(b"\t")[1])
    except (IndexError, ValueError):
        return None


def _decode_whole(body: memoryview, width: int | None) -> tuple[list[str], NDArray[Any], list[bytes]]:
    """The lines of ``body`` laid out as this module writes a vector ``width`` wide, decoded together: their keys
    and vectors, and the other lines, for the reader to take one by one (a torn line is shorter, a vector of
    another width has another length; a line of the right length that is not one goes there too).

    Every such line is ``length`` bytes, so ``body`` is read as a (lines x ``length``) array: keys and the width
    checked by array comparisons, the base64 of every vector decoded by one strict call when it has no padding (a
    vector of a multiple of 3 floats), a call a line otherwise. Reading 100,000 lines one by one (a split, a decode
    and a check each) took most of a warm read.
    """
    empty = np.zeros((0, width or 0), dtype=np.float32)
    if width is None or not len(body):
        return [], empty, bytes(body).split(b"\n")[:-1]
    tag = b"\t%d\t" % width
    size = 4 * width
    encoded = 4 * -(-size // 3)
    length = 32 + len(tag) + encoded + 1
    raw = np.frombuffer(body, dtype=np.uint8)
    rest: list[bytes] = []
    if len(raw) % length == 0 and bool((raw[length - 1::length] == ord("\n")).all()):
        rows = raw.reshape(-1, length)
    else:  # some line has another length: those are read one by one
        lines = bytes(body).split(b"\n")[:-1]
        rest = [line for line in lines if len(line) != length - 1]
        fit = [line for line in lines if len(line) == length - 1]
        rows = np.frombuffer(b"\n".join(fit) + b"\n", dtype=np.uint8).reshape(-1, length) if fit else \
            raw[:0].reshape(0, length)
    keys = rows[:, :32]
    good = ((rows[:, 32:32 + len(tag)] == np.frombuffer(tag, dtype=np.uint8)).all(axis=1)
            & ((keys < 128) & (keys != ord("\t")) & (keys != ord("\n"))).all(axis=1))
    if not good.all():
        rest += [rows[i, :-1].tobytes() for i in np.flatnonzero(~good)]
        rows = rows[good]
    text = np.ascontiguousarray(rows[:, length - 1 - encoded:length - 1]).reshape(-1).data  # one copy
    vectors = None
    if size % 3 == 0:  # no "=" padding: the lines' base64 is one base64 text
        with contextlib.suppress(binascii.Error):
            vectors = binascii.a2b_base64(text, strict_mode=True)
    if vectors is None:  # padding, or not base64 somewhere: a call a line, and a line that is not one left over
        decoded = []
        for i in range(len(rows)):
            try:
                decoded.append(binascii.a2b_base64(text[i * encoded:(i + 1) * encoded], strict_mode=True))
            except binascii.Error:
                decoded.append(b"")
        bad = [i for i, vector in enumerate(decoded) if len(vector) != size]
        if bad:
            rest += [rows[i, :-1].tobytes() for i in bad]
            rows = np.delete(rows, bad, axis=0)
        vectors = b"".join(vector for vector in decoded if len(vector) == size)
    joined = np.ascontiguousarray(rows[:, :32]).tobytes().decode("ascii")
    return ([joined[i:i + 32] for i in range(0, len(joined), 32)],
            np.frombuffer(vectors, dtype="<f4").astype(np.float32, copy=False).reshape(len(rows), width), rest)
