"""What a router needs to learn from production: the outcome recorder, and the shadow-safety check."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from genroute.backends.base import refuse_rerun
from genroute.runtime.telemetry import instrument

if TYPE_CHECKING:
    from genroute.backends.base import Backend
    from genroute.outcomes.recorder import OutcomeRecorder
    from genroute.outcomes.settings import OutcomeSettings, ScrubHook
    from genroute.policies.base import Policy
    from genroute.router.executor import Executor
    from genroute.state import StateStore


def build_recorder(settings: OutcomeSettings, executor: Executor, *, scrub: ScrubHook | None,
                   secrets: tuple[str, ...], state: StateStore) -> OutcomeRecorder:
    """The recorder for ``settings``: store opened, scorer and scrub hook resolved (``ConfigError`` if not)."""
    from genroute.outcomes.recorder import OutcomeRecorder
    from genroute.outcomes.scoring import resolve_shadow_scorer
    from genroute.outcomes.settings import resolve_scrub, sqlite_path
    from genroute.outcomes.shared import SharedOutcomeStore
    from genroute.outcomes.store import OutcomeStore
    from genroute.state.memory import MemoryStateStore

    shared = settings.store == "state" or (settings.store == "auto" and not isinstance(state, MemoryStateStore))
    if shared:  # `path` beside a shared store: the SQLite file archives every write this process reads
        archive = None if settings.path is None else OutcomeStore(settings.path, synchronous=settings.synchronous)
        store: OutcomeStore | SharedOutcomeStore = SharedOutcomeStore(
            state, max_items=settings.shared_max_items, max_age_s=settings.shared_max_age_s, archive=archive)
    else:
        store = OutcomeStore(sqlite_path(settings), synchronous=settings.synchronous)
    scorer = resolve_shadow_scorer(settings.scorer, resolve_check=executor.resolve_check,
                                   backends=executor.backends)
    recorder = OutcomeRecorder(settings, store, scorer, scrub=resolve_scrub(settings, scrub), secrets=secrets)
    count_lost_writes(recorder, executor.telemetry.meter, "state" if shared else "sqlite")
    return recorder


def count_lost_writes(recorder: OutcomeRecorder, meter: Any, store: str) -> None:
    """Count the recorder's lost writes (``write_errors``) as ``genroute.outcomes.write_errors``."""
    counter = instrument(meter.create_counter, "genroute.outcomes.write_errors", unit="{write}",
                         description="Outcome records that were not stored (the request was answered)")
    attributes = {"genroute.outcomes.store": store}
    recorder.on_lost = lambda: counter.add(1, attributes)


def unsafe_backends(backends: Mapping[str, Backend]) -> dict[str, tuple[str, ...]]:
    """Backends that must never be shadowed, with the tools that make them so."""
    found = {name: backend.side_effects() for name, backend in backends.items()}
    return {name: tools for name, tools in found.items() if tools}


def check_shadows(policy: Policy, unsafe: Mapping[str, tuple[str, ...]]) -> None:
    """``ConfigError`` if the policy's config shadows a backend whose tools have side effects."""
    for name, field in shadowed_in(getattr(policy, "config", None), policy.field):
        refuse(name, unsafe, field=field)


def refuse(name: str, unsafe: Mapping[str, tuple[str, ...]], *, field: str) -> None:
    """``ConfigError`` naming ``field`` if shadowing ``name`` would repeat side effects."""
    refuse_rerun(name, unsafe.get(name, ()), role="shadowed", field=field)


def shadowed_in(config: Any, field: str) -> Iterator[tuple[str, str]]:
    """Every backend name a policy config lists under a ``shadow`` key (at any depth), with its field."""
    if isinstance(config, BaseModel):
        config = config.model_dump()
    if isinstance(config, Mapping):
        if config.get("kind") == "challenger" and config.get("mode", "shadow") == "shadow":
            yield str(config.get("backend")), f"{field}.backend"
        for key, value in config.items():
            path = f"{field}.{key}"
            if key == "shadow" and isinstance(value, list | tuple):
                yield from ((name, f"{path}.{i}") for i, name in enumerate(value) if isinstance(name, str))
            elif key == "shadow" and isinstance(value, str):
                yield value, path
            else:
                yield from shadowed_in(value, path)
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            yield from shadowed_in(value, f"{field}.{index}")


def engine_secrets(resources: Any) -> tuple[str, ...]:
    """Literal credentials in engine configs, so captured text can never keep one."""
    found = []
    for engine in getattr(resources, "engines", {}).values():
        config = getattr(engine, "config", None)
        value = getattr(config, "api_key", None)
        secret = getattr(value, "get_secret_value", None)
        values = [secret() if callable(secret) else value]
        env = getattr(config, "api_key_env", None)
        if isinstance(env, str):
            values += [os.environ.get(env), os.environ.get("GOOGLE_API_KEY")]
        found += [v for v in values if isinstance(v, str) and len(v) >= 8]
    return tuple(found)
