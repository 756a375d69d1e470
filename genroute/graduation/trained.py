"""What a tuned backend was tuned from: where it runs and, for a local LoRA run, the inputs its
``tune_result.json`` records (``tuned_inputs`` adds the graduation's own tuning set). Read by the bench's graduation
advisor and by a promotion decision, which both leave out records whose input the tuned model was trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict, Field

from genroute.public_model import PublicModel

if TYPE_CHECKING:
    from genroute.graduation.export import TuningSet
    from genroute.router.router import Router


class TunedInfo(PublicModel):
    """What the router knows about the tuned backend: where it runs and what it was tuned from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    where: Literal["vertex", "local"]
    base_model: str | None = None
    tune_result: str | None = Field(default=None, description="tune_result.json of a local LoRA run.")


def tuned_info(router: Router, backend: str) -> TunedInfo:
    """Where ``backend`` (a ``tuned`` backend of ``router``) runs and what it was tuned from: a local LoRA's
    ``tune_result.json`` (beside the adapter its engine serves), else a Vertex AI model."""
    config = router.backends[backend].config
    base = getattr(config, "base_model", None)
    engine = router.resources.engines.get(getattr(config, "engine", ""))
    if getattr(engine, "kind", None) == "local":
        lora = getattr(engine, "lora_path", None)
        return TunedInfo(where="local", base_model=base,
                         tune_result=str(Path(lora).parent / "tune_result.json") if lora else None)
    return TunedInfo(where="vertex", base_model=base)


def trained_inputs(info: TunedInfo | None) -> frozenset[str]:
    """The input keys (``knowledge.examples.input_key``) a local tuning run read, from its ``tune_result.json``
    (empty when it records none, as an earlier genroute's does not, or cannot be read)."""
    if info is None or not info.tune_result or not Path(info.tune_result).is_file():
        return frozenset()
    try:
        keys = json.loads(Path(info.tune_result).read_text(encoding="utf-8")).get("input_keys")
    except (OSError, ValueError, AttributeError):
        return frozenset()
    return frozenset(k for k in keys if isinstance(k, str)) if isinstance(keys, list) else frozenset()


def tuned_inputs(router: Router, backends: tuple[str, ...], tuning_set: TuningSet | None) -> frozenset[str]:
    """The input keys the ``backends`` were tuned on, as the bench's advisor reads them (a local adapter's
    ``tune_result.json``), and those of the graduation's ``tuning_set`` when there is one (a Vertex AI job lists none
    of its own)."""
    from genroute.knowledge.examples import input_key
    from genroute.tuning.data import load_examples

    keys: set[str] = set()
    for name in backends:
        if getattr(router.backends[name], "kind", None) == "tuned":
            keys |= trained_inputs(tuned_info(router, name))
    train = tuning_set.train_path if tuning_set is not None else None
    if train is not None and Path(train).is_file():
        keys |= {input_key(e.input) for e in load_examples(train)}
    return frozenset(keys)
