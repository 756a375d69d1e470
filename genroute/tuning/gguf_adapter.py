"""Write a LoRA adapter as a GGUF file that llama.cpp loads next to its base model.

llama.cpp's adapter loader (``llama_adapter_lora_init``) wants: ``general.type = "adapter"``,
``general.architecture`` equal to the base model's, ``adapter.type = "lora"``, ``adapter.lora.alpha``
(f32), and for every adapted base tensor ``W`` (GGUF name, e.g. ``blk.3.attn_q.weight``) a pair
``W.lora_a`` / ``W.lora_b``. GGUF lists dimensions innermost first, so a row-major numpy array of shape
``(rows, cols)`` appears as ``ne = [cols, rows]``: PEFT's ``lora_A.weight`` ``(r, in)`` becomes
``ne = [in, r]`` and ``lora_B.weight`` ``(out, r)`` becomes ``ne = [r, out]`` — exactly the shapes the
loader checks against the base tensor ``ne = [in, out]``. No transpose is needed for projections.
llama.cpp scales the product by ``alpha / r`` (``r`` read from ``lora_b``), as PEFT does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from genroute.cache import atomic_write_via
from genroute.errors import UsageError

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: Hugging Face module suffix → GGUF tensor stem, for the Gemma 3 decoder block.
_GEMMA3_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
#: The only base architecture whose tensor names this writer knows (``general.architecture`` in the GGUF).
ARCHITECTURE = "gemma3"


def unmappable_targets(names: Sequence[str]) -> list[str]:
    """The PEFT ``target_modules`` entries that select no module this writer can map to a GGUF tensor.

    PEFT matches a name against a module path's dotted suffixes, so ``q_proj``, ``self_attn.q_proj`` and
    ``model.layers.3.self_attn.q_proj`` are all fine; ``attn_q`` (a GGUF name) or ``q_norm`` are not.
    """
    def ok(name: str) -> bool:
        match = _LAYER.search(name)
        if match is not None:
            return match.group(2) in _GEMMA3_NAMES
        return any(known == name or known.endswith("." + name) for known in _GEMMA3_NAMES)

    return [name for name in names if not ok(name)]


def lora_targets() -> list[str]:
    """The module names LoRA may target (short PEFT spelling)."""
    return sorted(known.rsplit(".", 1)[-1] for known in _GEMMA3_NAMES)


def gguf_architecture(path: str | Path) -> str | None:
    """``general.architecture`` of a GGUF file (``None`` if it has none); reads the header only."""
    from genroute.engines.gguf_header import GGUFError, read_fields

    try:
        found = read_fields(path, ("general.architecture",)).get("general.architecture")
    except (GGUFError, OSError) as exc:
        raise UsageError(f"{path} is not a readable GGUF file: {exc}", field="base_model_path") from None
    return None if found is None else str(found)


def gguf_tensor_name(hf_module: str) -> str:
    """The GGUF base tensor name (``blk.N.attn_q.weight``) of a Hugging Face Gemma 3 projection module."""
    match = _LAYER.search(hf_module)
    if match is None or match.group(2) not in _GEMMA3_NAMES:
        known = ", ".join(sorted(_GEMMA3_NAMES))
        raise UsageError(f"cannot map {hf_module!r} to a GGUF tensor (LoRA targets: {known})",
                         field="target_modules")
    return f"blk.{match.group(1)}.{_GEMMA3_NAMES[match.group(2)]}.weight"


def write_lora_adapter(
    path: str | Path,
    pairs: Mapping[str, tuple[NDArray[Any], NDArray[Any]]],
    *,
    alpha: float,
    architecture: str = "gemma3",
    name: str | None = None,
    dtype: str = "f32",
) -> Path:
    """Write ``{hf_module: (lora_A (r, in), lora_B (out, r))}`` as a GGUF LoRA adapter, atomically.

    Tensors are written in sorted name order and without timestamps, so equal inputs give equal bytes.
    """
    import gguf

    if not pairs:
        raise UsageError("no LoRA tensors to write", field="pairs")
    np_dtype = {"f32": np.float32, "f16": np.float16}.get(dtype)
    if np_dtype is None:
        raise UsageError(f"unsupported dtype {dtype!r} (f32, f16)", field="dtype")
    path = Path(path)
    tensors: dict[str, NDArray[Any]] = {}
    for module, (lora_a, lora_b) in pairs.items():
        if lora_a.ndim != 2 or lora_b.ndim != 2 or lora_a.shape[0] != lora_b.shape[1]:
            raise UsageError(f"{module}: lora_A {lora_a.shape} and lora_B {lora_b.shape} do not pair",
                             field="pairs")
        base = gguf_tensor_name(module)
        tensors[f"{base}.lora_a"] = np.ascontiguousarray(lora_a, dtype=np_dtype)
        tensors[f"{base}.lora_b"] = np.ascontiguousarray(lora_b, dtype=np_dtype)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), architecture)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
            if name:
                writer.add_name(name)
            for tensor_name in sorted(tensors):
                writer.add_tensor(tensor_name, tensors[tensor_name])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    # gguf opens its file by name, following links: it writes in a directory only this user can enter, and a
    # failure while writing (full disk, a bad tensor) leaves neither a temporary file nor a half adapter behind.
    # Owner-only when new (a rerun keeps its mode): the adapter is fitted to the training rows, which it can give back.
    atomic_write_via(path, write, private=True, same_mode=True)
    return path


def read_lora_adapter(path: str | Path) -> tuple[dict[str, object], dict[str, NDArray[Any]]]:
    """Read an adapter back: (metadata scalars, ``{tensor name: array}`` in row-major numpy shape)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, object] = {}
    for key, field in reader.fields.items():
        if key.startswith(("general.", "adapter.")):
            meta[key] = field.contents()
    arrays = {t.name: np.array(t.data).reshape(tuple(reversed([int(d) for d in t.shape])))
              for t in reader.tensors}
    return meta, arrays
