"""The benchmark statistics file: per (task, backend) quality, latency and cost, as ``genroute bench`` measured.

Written by the benchmark harness (``BenchStats.save``), read by ``cost_aware`` and ``budget``. JSON shape::

    {"version": 1, "created_at": "...", "source": "...",
     "tasks": {"banking77": {"icl": {"n": 200, "quality": 0.81, "quality_ci": [0.75, 0.86],
                                      "metric": "label_accuracy", "latency_p50_s": 0.4,
                                      "latency_p95_s": 0.9, "cost_per_request_usd": 0.00012,
                                      "cost_p95_usd": 0.0002, "cost_max_usd": 0.0004}}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterable
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from genroute.config_errors import error_at, pydantic_validated_json
from genroute.errors import ConfigError
from genroute.public_model import PublicModel

#: The key under ``tasks`` for requests without a task.
ANY_TASK = "*"


class BackendStats(PublicModel):
    """What the benchmark measured for one backend on one task."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(ge=0, description="Records scored.")
    # Bounded: ``explore`` draws from Beta(1 + quality x n, 1 + (1 - quality) x n), and ``cost_aware`` compares
    # it with a floor (NaN would meet any floor).
    quality: float = Field(ge=0.0, le=1.0, allow_inf_nan=False, description="Mean score, in [0, 1].")
    quality_ci: tuple[float, float] | None = Field(
        default=None, description="95 % CI (low, high): exact for 0/1 scores, else the bounded t "
                                 "interval (genroute.bench.t_interval).")
    metric: str | None = Field(default=None, description="Scorer name, e.g. label_accuracy.")
    #: ``None``: no latency was recorded (an outcome matrix without ``latency_s``), which is unknown, not 0.
    latency_p50_s: float | None = Field(ge=0.0)
    latency_p95_s: float | None = Field(ge=0.0)
    cost_per_request_usd: float = Field(ge=0.0, description="Mean cost per request.")
    failures: int = Field(default=0, ge=0, description="Records that ended in an error.")
    latency_p99_s: float | None = Field(default=None, ge=0.0)
    time_to_first_token_p50_s: float | None = Field(default=None, ge=0.0)
    input_tokens_mean: float | None = Field(default=None, ge=0.0)
    output_tokens_mean: float | None = Field(default=None, ge=0.0)
    cost_p95_usd: float | None = Field(default=None, ge=0.0, description="95th percentile cost per request.")
    cost_max_usd: float | None = Field(default=None, ge=0.0, description="Highest cost of one request.")
    cost_n: int | None = Field(default=None, ge=0, description="Records whose cost was recorded, when fewer than "
                               "n: the cost figures are over these (a missing cost is unknown, not free).")
    latency_n: int | None = Field(default=None, ge=0, description="Records whose latency was recorded, when fewer "
                                  "than n: the latency figures are over these.")

    @model_validator(mode="after")
    def _ordered(self) -> BackendStats:
        if (self.latency_p50_s is None) != (self.latency_p95_s is None):
            raise ValueError("latency_p50_s and latency_p95_s are both given or both null")
        if self.latency_p95_s is not None and self.latency_p50_s is not None and self.latency_p95_s < self.latency_p50_s:
            raise ValueError("latency_p95_s must be >= latency_p50_s")
        if self.quality_ci is not None and self.quality_ci[0] > self.quality_ci[1]:
            raise ValueError("quality_ci must be (low, high)")
        if self.cost_p95_usd is not None and self.cost_max_usd is not None and self.cost_max_usd < self.cost_p95_usd:
            raise ValueError("cost_max_usd must be >= cost_p95_usd")
        return self

    def cost_bound(self, margin: float = 1.0) -> float:
        """A cost per request that (almost) no request exceeds: the max, else the p95, else mean x ``margin``."""
        if self.cost_max_usd is not None:
            return self.cost_max_usd
        if self.cost_p95_usd is not None:
            return self.cost_p95_usd
        return self.cost_per_request_usd * margin


class BenchStats(PublicModel):
    """Benchmark statistics keyed by task, then backend."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    created_at: str | None = None
    source: str | None = Field(default=None, description="Dataset or command that produced the figures.")
    tasks: dict[str, dict[str, BackendStats]] = Field(default_factory=dict)
    input_keys: tuple[str, ...] | None = Field(
        default=None, description="The input key (``knowledge.examples.input_key``: a hash, no text) of each "
                                  "benchmark record the figures came from, so a benchmark of a policy built on them "
                                  "can say which of its records the policy was compiled from; ``None`` when "
                                  "none is recorded (an earlier file may hold ``[]``: read as ``None``).")

    @field_validator("input_keys")
    @classmethod
    def _none_when_empty(cls, keys: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return keys or None

    def with_input_keys(self, keys: Iterable[str]) -> BenchStats:
        """A copy listing ``keys`` (sorted, distinct) as the inputs the figures came from; none is ``None``."""
        return self.model_copy(update={"input_keys": tuple(sorted(set(keys))) or None})

    @staticmethod
    def inputs_of(stats: BenchStats | None) -> frozenset[str]:
        """The input keys ``stats`` lists (none for no statistics): what a policy reading them was compiled from."""
        return frozenset(stats.input_keys or ()) if stats is not None else frozenset()

    def get(self, task: str | None, backend: str) -> BackendStats | None:
        """Stats of ``backend`` on ``task`` (``None`` task reads the ``*`` entry); ``None`` if unmeasured."""
        return self.tasks.get(task if task is not None else ANY_TASK, {}).get(backend)

    def for_task(self, task: str | None) -> dict[str, BackendStats]:
        """Every measured backend for ``task`` (falls back to the ``*`` entry)."""
        found = self.tasks.get(task) if task is not None else None
        return found if found is not None else self.tasks.get(ANY_TASK, {})

    def cost(self, backend: str, task: str | None = None) -> float | None:
        """Mean cost per request of ``backend`` on ``task``, else the highest mean over all tasks."""
        entry = self.get(task, backend)
        if entry is not None:
            return entry.cost_per_request_usd
        costs = [by[backend].cost_per_request_usd for by in self.tasks.values() if backend in by]
        return max(costs) if costs else None

    def cost_bound(self, backend: str, task: str | None = None, *, margin: float = 1.0) -> float | None:
        """``BackendStats.cost_bound`` of ``backend`` on ``task``, else the highest over all tasks."""
        entry = self.get(task, backend)
        if entry is not None:
            return entry.cost_bound(margin)
        bounds = [by[backend].cost_bound(margin) for by in self.tasks.values() if backend in by]
        return max(bounds) if bounds else None

    def merged(self, other: BenchStats) -> BenchStats:
        """A copy with ``other``'s entries added (``other`` wins per task and backend)."""
        tasks = {task: dict(by) for task, by in self.tasks.items()}
        for task, by in other.tasks.items():
            tasks.setdefault(task, {}).update(by)
        return self.model_copy(update={"tasks": tasks, "created_at": other.created_at or self.created_at})

    @classmethod
    def load(cls, path: str | Path, *, field: str = "stats_path") -> BenchStats:
        """Read a stats file; ``ConfigError`` naming ``field`` if it is missing or malformed."""
        path = Path(path)
        try:
            return pydantic_validated_json(cls, path.read_bytes())
        except FileNotFoundError:
            raise ConfigError(f"stats file {str(path)!r} does not exist", field=field) from None
        except OSError as exc:  # a directory, no permission
            raise ConfigError(f"cannot read stats file {str(path)!r}: {exc.strerror or exc}", field=field) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = error_at(first)
            raise ConfigError(f"{path.name}: {loc}: {first['msg']}", field=field) from None

    def save(self, path: str | Path) -> Path:
        """Write atomically (readers see the old file or the new one, never half)."""
        from genroute.cache import atomic_write_bytes

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Owner-only when new (a rerun keeps its mode): input_keys are hashes of the inputs, which confirm a guess.
        atomic_write_bytes(path, json.dumps(self.model_dump(mode="json"), indent=2).encode() + b"\n", private=True,
                           same_mode=True)
        return path
