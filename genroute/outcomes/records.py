"""The outcome record: one request answered by one or more backends, in the shape benchmarks use too.

Benchmark rows, public outcome matrices, shadow comparisons and user feedback share one shape, so the
same compile step trains policies from any of them::

    {"input": str | None, "output": str | None,
     "metadata": {"id", "task", "trace_id", "source", "served", "features", "feedback", ...},
     "outcomes": {backend: {"score", "cost_usd", "latency_s", ...}}}

``input`` and ``output`` hold text only when the application opted in to ``capture`` (and after its scrub
hook ran); otherwise a production record carries scores, costs, latencies and token counts, never text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from genroute.bounds import Number, WholeNumber
from genroute.errors import UsageError
from genroute.jsonl import whole_text
from genroute.public_model import PublicModel


class Side(PublicModel):
    """How one backend did on the record's request."""

    model_config = ConfigDict(frozen=True, extra="allow")

    # Numbers as genroute.bounds.Number reads them: 12.0 tokens (pandas' int column with a NaN) or a numpy scalar is
    # the number it is, "0.5" and true are none (pydantic's lax mode read them as 0.5 and 1).
    score: Number | None = Field(default=None, description="None until a scorer or feedback scored it.")
    cost_usd: Number = 0.0
    latency_s: Number = 0.0
    cloud_equivalent_cost_usd: Number | None = None
    input_tokens: WholeNumber = 0
    #: As billed: a thinking model's thought tokens included (they bill at the output rate), as on a span.
    output_tokens: WholeNumber = 0
    role: Literal["served", "shadow", "bench"] = "bench"
    #: For a shadow: how its answer compared with the served one (the configured scorer, served as reference).
    agreement: Number | None = None


class OutcomeRecord(PublicModel):
    """One record of the outcome store (and one line of an outcome matrix; top-level ``id`` and ``task`` are read
    into metadata, other top-level keys are ignored)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    input: str | None = None
    output: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    outcomes: dict[str, Side] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _top_level_id_and_task(cls, data: Any) -> Any:
        """A line's top-level ``id`` and ``task``, as the bench's dataset format writes them, go into metadata (the
        top-level value wins, as the tuning reader takes it): ignored, a file of such lines had no tasks and
        ids ``record-N`` that clash across files."""
        if isinstance(data, Mapping) and any(data.get(k) is not None for k in ("id", "task")):
            metadata = data.get("metadata")
            if metadata is None or isinstance(metadata, Mapping):
                lifted = {k: data[k] for k in ("id", "task") if data.get(k) is not None}
                data = {**data, "metadata": {**(metadata or {}), **lifted}}
        # A task reads as the bench's and the tuning reader read it (whole_text): 3 is "3"; 3.0 or true is no task.
        metadata = data.get("metadata") if isinstance(data, Mapping) else None
        if isinstance(metadata, Mapping) and metadata.get("task") is not None:
            task = whole_text(metadata["task"])
            if not isinstance(task, str):
                key = "task" if data.get("task") is not None else "metadata.task"
                raise PydanticCustomError("task", "{key}: must be a string or a whole number, got {kind} ({value})",
                                          {"key": key, "kind": type(task).__name__, "value": _shown(task)[:40]})
            data = {**data, "metadata": {**metadata, "task": task}}
        return data

    @property
    def id(self) -> str:
        """The record's id (a trace id for production records)."""
        return str(self.metadata.get("id", ""))

    @property
    def task(self) -> str | None:
        """The request's task, if it had one."""
        task = self.metadata.get("task")
        return None if task is None else str(task)  # text (or None) since validation, as whole_text read it

    def merged(self, other: OutcomeRecord) -> OutcomeRecord:
        """This record with ``other``'s fields added: per backend, ``other``'s set values win."""
        outcomes = dict(self.outcomes)
        for backend, side in other.outcomes.items():
            old = outcomes.get(backend)
            if old is None:
                outcomes[backend] = side
            else:
                # Only what either side set: a default written out (a label-only side's cost_usd 0.0) would read
                # back as a recorded cost, and a priced matrix would take that side as free.
                update = side.model_dump(exclude_unset=True)
                outcomes[backend] = Side.model_validate({**old.model_dump(exclude_unset=True), **update})
        metadata = {**self.metadata, **other.metadata}
        for key in ("features", "feedback", "answers"):
            if isinstance(self.metadata.get(key), dict) and isinstance(other.metadata.get(key), dict):
                metadata[key] = {**self.metadata[key], **other.metadata[key]}
        if isinstance(feedback := metadata.get("feedback"), dict) and any(
                isinstance(m.get("feedback"), dict) and m["feedback"].get("label_given") for m in (self.metadata,
                                                                                                  other.metadata)):
            # A label once given stays given (the record keeps it as its output): a later score alone does not undo it.
            metadata["feedback"] = {**feedback, "label_given": True}
        # Each source's scoring cost kept apart: a write merged twice is still counted once.
        costs = {**_scoring_costs(self.metadata), **_scoring_costs(other.metadata)}
        if costs:
            metadata["scoring_costs"], metadata["scoring_cost_usd"] = costs, sum(costs.values())
        return OutcomeRecord(
            input=other.input if other.input is not None else self.input,
            output=other.output if other.output is not None else self.output,
            metadata=metadata, outcomes=outcomes,
        )

    def line(self) -> dict[str, Any]:
        """The record as a JSON-ready mapping (a side's fields that were never set, or are None, left out: a cost or
        token count nobody recorded stays unknown, not 0)."""
        return {
            "input": self.input, "output": self.output, "metadata": self.metadata,
            "outcomes": {b: s.model_dump(exclude_unset=True, exclude_none=True) for b, s in self.outcomes.items()},
        }


def add_scoring_cost(metadata: dict[str, Any], source: str, cost_usd: float) -> None:
    """Note in ``metadata`` what scoring cost (a judge's calls) for ``source`` (``shadow:B``, ``feedback``):
    ``scoring_costs`` per source and ``scoring_cost_usd``, their sum (merging keeps both right)."""
    if cost_usd:
        costs = metadata.setdefault("scoring_costs", {})
        costs[source] = cost_usd
        metadata["scoring_cost_usd"] = sum(costs.values())


def _scoring_costs(metadata: Mapping[str, Any]) -> dict[str, float]:
    """Scoring costs per source; a record written before they were kept apart has its total under ``recorded``."""
    costs = metadata.get("scoring_costs")
    if isinstance(costs, Mapping):
        return {str(k): float(v) for k, v in costs.items() if isinstance(v, int | float)}
    total = metadata.get("scoring_cost_usd")
    return {"recorded": float(total)} if isinstance(total, int | float) and total else {}


def scoring_cost(record: OutcomeRecord) -> float:
    """What scoring the record cost (judge calls of its shadows and feedback), 0 when nothing was paid."""
    value = record.metadata.get("scoring_cost_usd", 0.0)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else 0.0


#: A side's numeric fields, each a number in a file (``Number``, ``WholeNumber``), and what it must be.
_NUMBERS = {"score": "a number between 0 and 1", "cost_usd": "a number (USD)", "latency_s": "a number (seconds)",
            "cloud_equivalent_cost_usd": "a number (USD)", "agreement": "a number between 0 and 1",
            "input_tokens": "a whole number", "output_tokens": "a whole number"}


def _shown(value: Any) -> str:
    """``value`` as a file wrote it (JSON), else its repr."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


#: What makes an unknown key of a side look like a score, cost or latency given under another name.
_SIDE_WORD = re.compile(r"score|quality|correct|accura|cost|price|usd|latency|seconds", re.IGNORECASE)


def number_refusal(where: str, error: Any) -> str | None:
    """``WHERE: outcomes.NAME.FIELD: must be ..., not VALUE`` for a pydantic ``error`` of an ``OutcomeRecord``'s
    validation that is a side's score, cost, latency or token count given as no number (``"0.5"``, ``true``, 12.5
    tokens: see ``Number``); ``None`` for any other error."""
    loc = error["loc"]
    if len(loc) == 3 and loc[0] == "outcomes" and loc[2] in _NUMBERS:
        return f"{where}: outcomes.{loc[1]}.{loc[2]}: must be {_NUMBERS[loc[2]]}, not {_shown(error['input'])}"
    return None


def check_sides(where: str, record: OutcomeRecord, raw: Any, *, field: str) -> None:
    """``UsageError`` naming ``where`` and ``outcomes.NAME.FIELD`` for a score outside [0, 1], a cost or latency that
    is negative, NaN or infinite (they would poison every mean), a token count below 0, or a key that reads like a
    score or a cost under another name; ``raw`` is the record as read (a mapping). A number that is none (``"0.5"``)
    was refused by the record's validation (``number_refusal`` words it)."""
    given = raw.get("outcomes") if isinstance(raw, Mapping) else None
    for name, side in record.outcomes.items():
        raw_side = given.get(name) if isinstance(given, Mapping) else None
        # Other keys are kept as published, but one that reads like a score or a cost under another name
        # ("cost", "quality") would leave the outcome unscored or free, silently.
        for key in sorted(raw_side or ()) if isinstance(raw_side, Mapping) else ():
            if key not in Side.model_fields and _SIDE_WORD.search(str(key)):
                raise UsageError(f"{where}: outcomes.{name}.{key}: not an outcome field (a score is \"score\", "
                                 "a cost \"cost_usd\", a latency \"latency_s\")", field=field)
        if side.score is not None and not 0.0 <= side.score <= 1.0:
            raise UsageError(f"{where}: outcomes.{name}.score: must be between 0 and 1 (got {side.score})",
                             field=field)
        for key in ("cost_usd", "latency_s"):
            value = getattr(side, key)
            if not math.isfinite(value) or value < 0:
                raise UsageError(f"{where}: outcomes.{name}.{key}: must be a finite number >= 0 (got {value})",
                                 field=field)
        for key in ("input_tokens", "output_tokens"):  # priced by a matrix's --prices: a negative count pays back
            if getattr(side, key) < 0:
                raise UsageError(f"{where}: outcomes.{name}.{key}: must be a whole number >= 0 (got "
                                 f"{getattr(side, key)})", field=field)
