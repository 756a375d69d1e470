"""A GGUF file's metadata header, read only as far as the keys asked for; and the check of a LoRA adapter.

llama.cpp does not survive every bad adapter: when it refuses one, llama-cpp-python misses the NULL it gets back
and the first decode crashes the process (SIGSEGV). So the engine checks the files first. The ``gguf``
package's reader would do, but it parses the whole file eagerly (8.6 s for the bundled 270M model's
262k-token vocabulary on a loaded 2-core box, at every model load) and fails on a malformed file with
whatever numpy raises; this one stops at the keys it wants and has one error type.

Layout (GGUF v2/v3, little-endian): ``b"GGUF"``, u32 version, u64 tensor count, u64 key/value count, then per
key: a string key (u64 length + UTF-8), a u32 value type and the value; arrays are a u32 element type, a u64
count and the elements.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection
from pathlib import Path
from typing import BinaryIO

from genroute.errors import ConfigError

MAGIC = b"GGUF"
#: Value type → struct format of the fixed-size ones.
_FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
#: llama.cpp's own limit on a key's length is far below this; a longer one means a corrupt file.
_MAX_KEY = 1 << 16
#: What ``check_lora_adapter`` reads from an adapter.
ADAPTER_KEYS = ("general.architecture", "general.type", "adapter.type")


class GGUFError(ValueError):
    """The file is not a readable GGUF header."""


class _Reader:
    """Reads a header through ``handle``, never past the file's end (a corrupt length cannot allocate)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.size = os.fstat(handle.fileno()).st_size

    def _room(self, n: int) -> None:
        if n > self.size - self.handle.tell():
            raise GGUFError("truncated (a length points past the end of the file)")

    def skip(self, n: int) -> None:
        self._room(n)
        self.handle.seek(n, os.SEEK_CUR)

    def take(self, n: int) -> bytes:
        self._room(n)
        return self.handle.read(n)

    def number(self, fmt: str) -> int | float | bool:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, limit: int | None = None) -> str:
        length = int(self.number("<Q"))
        if limit is not None and length > limit:
            raise GGUFError(f"a key of {length} bytes")
        try:
            return self.take(length).decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFError("a string that is not UTF-8") from None

    def value(self, kind: int, keep: bool) -> str | int | float | bool | None:
        """The value of type ``kind`` (``None`` for an array, or when not ``keep``: then it is only skipped)."""
        if kind in _FIXED and keep:
            return self.number(_FIXED[kind])
        if kind in _FIXED:
            self.skip(struct.calcsize(_FIXED[kind]))
            return None
        if kind == _STRING and keep:
            return self.string()
        if kind == _STRING:
            self.skip(int(self.number("<Q")))
            return None
        if kind != _ARRAY:
            raise GGUFError(f"unknown value type {kind}")
        inner, count = int(self.number("<I")), int(self.number("<Q"))
        if inner in _FIXED:
            self.skip(count * struct.calcsize(_FIXED[inner]))
            return None
        if inner != _STRING:  # llama.cpp does not read nested arrays either
            raise GGUFError(f"an array of value type {inner}")
        for _ in range(count):  # each string costs at least its 8-byte length, so the file's size bounds this
            self.skip(int(self.number("<Q")))
        return None


def read_fields(path: str | Path, keys: Collection[str]) -> dict[str, str | int | float | bool]:
    """The scalar and string values of ``keys`` in a GGUF file's metadata (keys it lacks are left out).

    Stops reading at the last key asked for. Raises ``GGUFError`` for a file that is not GGUF v2/v3 or is cut
    short, ``OSError`` when the file cannot be read."""
    wanted = set(keys)
    found: dict[str, str | int | float | bool] = {}
    with open(path, "rb") as handle:
        reader = _Reader(handle)
        if reader.size < 4 or reader.take(4) != MAGIC:
            raise GGUFError("not a GGUF file (no GGUF magic)")
        version = reader.number("<I")
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version}")
        reader.number("<Q")  # tensor count
        for _ in range(int(reader.number("<Q"))):  # each key costs bytes, so the file's size bounds this
            if wanted <= found.keys():
                break
            key = reader.string(limit=_MAX_KEY)
            value = reader.value(int(reader.number("<I")), keep=key in wanted)
            if key in wanted and value is not None:
                found[key] = value
    return found


def header_fields(path: Path, keys: Collection[str], *, field: str) -> dict[str, str | int | float | bool]:
    """``read_fields``, with an unreadable or malformed file as a ``ConfigError`` naming ``field``."""
    try:
        return read_fields(path, keys)
    except (GGUFError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable GGUF file: {exc}", field=field) from None


def check_lora_adapter(adapter: Path, model: Path, *, engine: str) -> None:
    """Refuse a ``lora_path`` that is not a GGUF LoRA adapter for ``model``'s architecture (llama.cpp would
    crash on it at the first decode)."""
    field = f"engines.{engine}.lora_path"
    if not adapter.is_file():
        raise ConfigError(f"no LoRA adapter at {adapter}", field=field)
    meta = header_fields(adapter, ADAPTER_KEYS, field=field)
    kinds = (meta.get("general.type"), meta.get("adapter.type"))
    if kinds != ("adapter", "lora"):
        raise ConfigError(f"{adapter} is not a LoRA adapter (general.type {kinds[0]!r}, adapter.type "
                          f"{kinds[1]!r}; want 'adapter' and 'lora')", field=field)
    base = header_fields(model, ("general.architecture",), field=f"engines.{engine}.model_path")
    if meta.get("general.architecture") != base.get("general.architecture"):
        raise ConfigError(f"{adapter} is an adapter for {meta.get('general.architecture')!r} models; the model "
                          f"{model} is {base.get('general.architecture')!r}", field=field)


def check_context_size(model: Path, n_ctx: int, *, engine: str) -> None:
    """Refuse an ``n_ctx`` beyond the context length ``model`` was trained for (llama.cpp would try to allocate
    a KV cache that large: 2**31 tokens took 8.7 GB before it failed, 2**33 a numpy ``MemoryError``)."""
    try:
        key = f"{read_fields(model, ('general.architecture',)).get('general.architecture')}.context_length"
        trained = read_fields(model, (key,)).get(key)
    except (GGUFError, OSError):
        return  # loading it, llama.cpp says what is wrong with the file
    if isinstance(trained, int) and n_ctx > trained:
        raise ConfigError(f"{n_ctx} tokens is more than the {trained} that {model.name} was trained for",
                          field=f"engines.{engine}.n_ctx")
