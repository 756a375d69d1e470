"""Where genroute keeps derived files (assembled GGUF, built ONNX graphs, demo stores)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache directory (``$GENROUTE_CACHE_DIR`` or ``~/.cache/genroute``), created, joined with ``parts``."""
    root = os.environ.get("GENROUTE_CACHE_DIR") or Path.home() / ".cache" / "genroute"
    path = Path(root).expanduser().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
