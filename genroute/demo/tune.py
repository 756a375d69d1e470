"""The demo's tuned backend: a LoRA adapter for ``review_rating``, trained once on the bundled reviews and cached.

The adapter is trained on first use when the ``tune-local`` extra is installed (about a minute or two on
two cores, plus ~40 s the very first time to dequantize the base model) and published atomically as
``<cache>/review-lora-<settings>.gguf``; later runs find it and skip training.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genroute.tuning.local_lora import LocalTuneConfig

TRAIN_DATA = "review_sentiment.jsonl"
#: Module names of the ``tune-local`` extra; all must be importable for the demo to train.
TUNE_MODULES = ("torch", "transformers", "peft", "gguf")
#: 112 rows, 10% held out for validation: 13 steps of 8 an epoch, ~1.5 s a step on one thread.
#: ``benchmarks/demo_tuning.py`` on 144 held-out DynaSent reviews (accuracy; negative / positive recall):
#: lr 1e-3: 3 epochs 76% (99/52), 4 epochs 76% (59/94), 5 epochs 77% (61/94);
#: lr 5e-4: 3 epochs 75% (59/93), 4 epochs 84% (89/78), the only balanced one. The base model: 0%.
EPOCHS = 4
LEARNING_RATE = 5e-4
#: The settings are part of the cache name, so changing them retrains instead of reusing a stale adapter.
_TAG = f"e{EPOCHS}-lr{LEARNING_RATE:g}-d1"
ADAPTER_NAME = f"review-lora-{_TAG}.gguf"
SUMMARY_NAME = f"review-lora-{_TAG}.json"


def adapter_path(cache: Path) -> Path:
    """Where the demo keeps its review adapter."""
    return cache / ADAPTER_NAME


def tuning_available() -> bool:
    """Whether the ``tune-local`` extra is installed (checked without importing torch)."""
    return all(importlib.util.find_spec(name) is not None for name in TUNE_MODULES)


def tune_options() -> dict[str, Any]:
    """The ``LocalTuneConfig`` fields the demo trains with (the rest are the tuner's defaults)."""
    # ~100 rows x several epochs is what it takes for the 270M model to learn to stop after the label;
    # a handful of steps leaves it rambling like the base model. One torch thread: two oversubscribe a
    # 2-core machine badly.
    return {"threads": 1, "epochs": EPOCHS, "learning_rate": LEARNING_RATE, "progress": True}


def train_review_adapter(cache: Path, *, config: LocalTuneConfig | None = None) -> dict[str, Any]:
    """Train the review adapter (with ``config``, the demo's ``tune_options()`` by default), publish it at
    ``adapter_path(cache)`` and return the run's summary."""
    from genroute.cache import atomic_write_bytes
    from genroute.tuning.local_lora import LocalTuneConfig, tune_local

    # A new directory only this user can enter (mkdtemp, 0700), not a name others can guess (the pid): the cache may
    # be a shared directory (--cache-dir), where a link or a directory planted at that name took the adapter the demo
    # then serves, and had the summary written through whatever link stood at its name.
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".review-lora.", suffix=".tmp"))
    try:
        with as_file(files("genroute.demo") / "data" / TRAIN_DATA) as data:
            result = tune_local(data, work, config=config or LocalTuneConfig(**tune_options()))
        summary = result.model_dump(mode="json")
        summary["adapter_path"] = str(adapter_path(cache))
        # Summary first, adapter last: the adapter's presence is what marks the cache as complete.
        atomic_write_bytes(cache / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode("utf-8"), private=True)
        os.replace(result.adapter_path, adapter_path(cache))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def summary_line(summary: dict[str, Any]) -> str:
    """One line: adapter size, training time and validation loss of a finished run."""
    size_mb = summary["adapter_bytes"] / 1e6
    val = summary.get("validation_loss")
    before = summary.get("initial_validation_loss")
    loss = "no validation rows" if val is None else (
        f"validation loss {val:.3f}" + ("" if before is None else f" (before: {before:.2f})"))
    return (f"trained {ADAPTER_NAME}: {size_mb:.1f} MB, {summary['train_seconds']:.0f} s training "
            f"({summary['steps']} steps on {summary['train_examples']} reviews), {loss}")
