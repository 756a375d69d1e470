"""Where genroute keeps derived files (assembled GGUF, built ONNX graphs, demo stores)."""

from __future__ import annotations

import errno
import os
import secrets
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


def atomic_write_bytes(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file.

    The temporary file beside ``path`` has a random name and is created exclusively: a link planted at a guessable
    name (in a directory others can write to) is never followed, so no other file is overwritten. ``private``: the
    file is readable by its owner only (0600: it holds captured inputs and outputs); otherwise the process umask
    decides, as for any file it creates.
    """
    mode = 0o600 if private else 0o666
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 random names all taken
        raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
