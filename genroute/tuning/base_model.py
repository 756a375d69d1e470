"""The base model local LoRA tuning starts from: found, checked, and loaded as float32 transformers weights.

transformers dequantizes the base GGUF once (~30 s here); the float32 weights are cached as safetensors, keyed by the
file's content, and loaded from there after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genroute.cache import atomic_write_bytes, atomic_write_via
from genroute.errors import UsageError


def resolve_base_model(path: Path | None) -> Path:
    """The base GGUF: ``path`` if given, else the bundled Gemma the local engine also defaults to."""
    if path is not None:
        if not Path(path).is_file():
            raise UsageError(f"no such file: {path}", field="base_model_path")
        return Path(path)
    from genroute.engines.local_config import default_model_path

    return default_model_path()


def check_base_architecture(base_path: Path) -> None:
    """Refuse, before training, a base GGUF whose tensors the adapter writer cannot name (not Gemma 3)."""
    from genroute.tuning.gguf_adapter import ARCHITECTURE, gguf_architecture

    found = gguf_architecture(base_path)
    if found != ARCHITECTURE:
        raise UsageError(f"{base_path} is a {found or 'unnamed'} model; local LoRA tuning writes "
                         f"{ARCHITECTURE} (Gemma 3) adapters only", field="base_model_path")


def load_base_model(base_path: Path) -> Any:
    """The base model as a float32 transformers ``Gemma3ForCausalLM``, via the safetensors cache."""
    torch = _import_torch()
    from transformers import AutoModelForCausalLM

    from genroute.cache import check_owned

    cached = _cached_model_dir(base_path)
    if not (cached / "model.safetensors").is_file():
        _dequantize_to_cache(base_path, cached)
    for name in ("config.json", "model.safetensors"):  # what from_pretrained reads: not a file another user could write
        check_owned(cached / name, field="GENROUTE_CACHE_DIR")
    model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=torch.float32)
    model.eval()
    return model


@contextlib.contextmanager
def _library_bars(shown: bool) -> Iterator[None]:
    """transformers' own "Loading weights" bars, hidden as genroute's are (``--quiet``, or stderr no terminal)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if was and not shown:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was and not shown:
            hf_logging.enable_progress_bar()


def _cached_model_dir(base_path: Path) -> Path:
    from genroute.cache import cache_dir

    # Keyed by content (size + first and last 4 MiB: header, metadata and tail tensors) rather than path,
    # so copies of one GGUF share a cache entry; hashing all 250 MB would cost a second every run.
    size = base_path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with base_path.open("rb") as handle:
        digest.update(handle.read(4 << 20))
        handle.seek(max(0, size - (4 << 20)))
        digest.update(handle.read())
    return cache_dir("tuning", f"base-{digest.hexdigest()[:16]}")


def _dequantize_to_cache(base_path: Path, cached: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_path.parent), gguf_file=base_path.name,
                                                 dtype=torch.float32)
    # The output projection is tied to the embedding; transformers re-ties it on load.
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    # The config first, the weights published last with a rename (their presence marks the cache complete): a crash
    # leaves no half cache behind. safetensors opens its file by name, following links: it writes in a directory
    # only this user can enter.
    # Owner-only, whatever the umask: a group-writable file in the cache is refused when loaded (check_owned).
    atomic_write_bytes(cached / "config.json", json.dumps(config, indent=1).encode("utf-8"), private=True)
    atomic_write_via(cached / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}),
                     private=True)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError("local tuning needs the tune-local extra: pip install 'genroute[tune-local]'",
                         field="tune-local") from None
    return torch
