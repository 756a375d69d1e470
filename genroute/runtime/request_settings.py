"""A request's own generation settings (``GenerateRequest.generation``) laid over the config a backend built.

Applied in ``RunContext.generate`` and ``stream``, the one path every engine call of every backend takes (a plugin's
included), so that the override reaches each engine (Gemini, a tuned endpoint, the local model and its LoRA) on every
rung and shadow of the request, while the config the backend built, and may have cached, is left as it was: the
override is a copy. Only the sampling and output fields are touched: a response schema, tools, a system instruction
or a context cache stay the backend's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from genroute.errors import UsageError
from genroute.types import RequestGeneration

if TYPE_CHECKING:
    from google.genai import types


def overridden(config: types.GenerateContentConfig | None, generation: RequestGeneration,
               format_stops: Sequence[str] = (), max_stops: int | None = None,
               seed_range: tuple[int, int] | None = None) -> types.GenerateContentConfig:
    """``config`` with the fields ``generation`` gives in place of its own (a new config; ``config`` is not changed).

    A given ``stop_sequences`` replaces the backend's, but ``format_stops``, the stops a backend adds for its own
    prompt format (an ICL backend's ``stop``), are kept after it; more than ``max_stops`` in all (the engine's limit,
    Gemini's 5) is a ``UsageError`` naming ``generation.stop_sequences``, none dropped. A ``seed`` outside
    ``seed_range`` (the engine's) is a ``UsageError`` naming ``generation.seed``."""
    from google.genai import types

    update = generation.given()
    check_seed(update.get("seed"), seed_range, field="generation.seed")
    if "stop_sequences" in update:
        stops = list(dict.fromkeys((*update["stop_sequences"], *format_stops)))
        if max_stops is not None and len(stops) > max_stops:
            added = len(stops) - len(set(update["stop_sequences"]))
            raise UsageError(f"{len(stops)} stop sequences" + (f" ({added} added by the backend's prompt format)"
                             if added else "") + f": this backend's engine takes at most {max_stops} a call",
                             field="generation.stop_sequences")
        update["stop_sequences"] = stops or None
    if config is None:
        return types.GenerateContentConfig(**update)
    # model_copy(update=) marks the fields set, as the engines and the span read them (model_fields_set).
    return config.model_copy(update=update)


def check_seed(seed: int | None, seed_range: tuple[int, int] | None, *, field: str) -> None:
    """``UsageError`` naming ``field`` when ``seed`` is outside ``seed_range`` (an engine's ``seed_range``; ``None``:
    any): the local engine's own check named its direct call's ``config.seed``, not the setting to change."""
    if seed is not None and seed_range is not None and not seed_range[0] <= seed <= seed_range[1]:
        raise UsageError(f"this backend's engine takes a seed from {seed_range[0]} to {seed_range[1]}", field=field)
