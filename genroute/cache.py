"""Where genroute keeps derived files (assembled GGUF, built ONNX graphs, demo stores)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from genroute.errors import ConfigError


def cache_dir(*parts: str) -> Path:
    """The cache directory (``$GENROUTE_CACHE_DIR`` or ``~/.cache/genroute``), created, joined with ``parts``."""
    root = os.environ.get("GENROUTE_CACHE_DIR") or Path.home() / ".cache" / "genroute"
    return ensure_dir(Path(root).expanduser().joinpath(*parts), field="GENROUTE_CACHE_DIR")


def ensure_dir(path: Path, *, field: str, writable: bool = False) -> Path:
    """``path``, created with its parents; a ``ConfigError`` naming ``field`` when it cannot be (or written to)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        # An existing read-only directory passes mkdir; a caller that must write there learns it now.
        if writable and not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as a cache directory: {exc.strerror or exc}", field=field) from exc
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
