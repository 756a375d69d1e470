"""Benchmark datasets: the shared JSONL record format, seeded sampling and held-out splits."""

from __future__ import annotations

import difflib
import json
import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from genroute.bounds import REQUEST, check, is_real, is_whole
from genroute.config_errors import error_at, pydantic_validated, validator_message
from genroute.errors import UsageError
from genroute.jsonl import BLANK, blank, existing_file, iter_records, label_text, nth_record, whole_text
from genroute.public_model import PublicModel
from genroute.types import Turn, invalid_text

_log = logging.getLogger(__name__)
KNOWN_KEYS = ("input", "output", "label", "metadata", "id", "task", "history")
# The keys a misspelling of which scores a dataset against the wrong field (or sends the wrong task, or no earlier
# turns): refused. A near-miss of "id" only costs the record its own id (it is then its line number), and "idx"/"uid"
# are common extra columns: those are warned about with the rest.
_SCORED_KEYS = ("input", "output", "label", "metadata", "task", "history")
#: Metadata keys that hold a record's gold answer: never sent with its request (``runner.request_metadata``).
GOLD_KEYS = frozenset({"possible_answer", "answers", "label_vote_counts", "gold", "output", "label"})

class BenchRecord(PublicModel):
    """One labeled record: ``{"input", "output", "label"?, "metadata"?, "history"?}`` plus a stable id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, description="metadata.id, else the record's line number.")
    input: str = Field(min_length=1)
    output: str = ""
    label: str | None = None
    task: str | None = Field(default=None, description="Sent as the request's task (policies key on it).")
    metadata: dict[str, Any] = Field(default_factory=dict)
    history: list[Turn] | None = Field(default=None, description="The conversation's earlier turns, oldest first, "
                                       "sent as the request's history (GenerateRequest.history).")

    @field_validator("input")
    @classmethod
    def _input_not_blank(cls, value: str) -> str:
        # A request refuses a blank input (GenerateRequest): such a record failed mid-run, with a traceback.
        if not value.strip():
            raise ValueError(BLANK)
        return value

    @field_validator("id", "output", "label", "task", "metadata")
    @classmethod
    def _valid_unicode(cls, value: Any, info: ValidationInfo) -> Any:
        # JSON's "\ud800" escape reads as a lone surrogate: a request refuses it in a task or metadata (a traceback
        # mid-run), and the report could not write it in an id, label or answer.
        where = invalid_text(value, info.field_name or "")
        if where is not None:
            raise ValueError(f"{where} is not valid Unicode text (it holds a lone surrogate)")
        return value

    @field_validator("metadata")
    @classmethod
    def _sendable(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        # What its request carries (all but the gold answers) is held to a request's bounds when read: a record past
        # them ended a bench run mid-way with an exception group's traceback.
        check({k: v for k, v in metadata.items() if k not in GOLD_KEYS}, field="", limits=REQUEST)
        return metadata

    @field_validator("metadata")
    @classmethod
    def _label_set_is_a_list(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        # label_accuracy iterates it: one string was read a character a label ("positive,negative": p, o, s...).
        labels = metadata.get("label_set")
        if labels is not None and not isinstance(labels, list | tuple):
            raise ValueError(f"label_set: must be a list of labels, such as [\"negative\", \"positive\"], not "
                             f"{type(labels).__name__}")
        return metadata


def load_records(
    path: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    task: str | None = None,
    field: str = "data",
) -> list[BenchRecord]:
    """Read a JSONL dataset; with ``limit``, a seeded sample of that size (kept in file order)."""
    path = existing_file(path, field=field, what="dataset")
    if task is not None and not isinstance(task, str):  # was named as every record's error, on line 1
        raise UsageError(f"must be a task name, not {type(task).__name__}", field="task")
    records: list[BenchRecord] = []
    seen: dict[str, int] = {}  # each id, with the line that has it
    numbered: set[int] = set()  # the lines of records without an id of their own (their id is line-N)
    unknown: dict[str, int] = {}  # each unknown key, with the line it first appears on
    for lineno, raw in iter_records(path, field=field, what="dataset"):
        where = f"{path.name}:{lineno}"
        for key in sorted(raw.keys() - set(KNOWN_KEYS)):
            _refuse_near_miss(key, raw, where=where, field=field)
            unknown.setdefault(key, lineno)
        record = _record(raw, lineno, task, where=where, field=field)
        if given_id(raw.get("id"), (raw.get("metadata") or {}).get("id")) is None:  # its id is line-N
            numbered.add(lineno)
        if record.id in seen:
            also = _numbered(seen[record.id], lineno, numbered)
            raise UsageError(f"{where}: duplicate record id {record.id!r}{also}", field=field)
        seen[record.id] = lineno
        records.append(record)
    if not records:
        raise UsageError(f"dataset {path.name} holds no records", field=field)
    if unknown:
        first = min(unknown, key=lambda k: (unknown[k], k))
        _log.warning("%s: ignored unknown keys %s (first: %r at line %d); a record is {input, output, label?, task?, "
                     "id?, metadata?, history?}", path.name, sorted(unknown), first, unknown[first])
    return sample(records, limit, seed=seed)


def _numbered(first: int, lineno: int, numbered: set[int]) -> str:
    """What a duplicate id error adds when one of the two records has no id and was given its line number."""
    unnamed = next((line for line in (first, lineno) if line in numbered), None)
    if unnamed is None:
        return f" (line {first} has it too)"
    return (f" (line {first} has it too: line-N is the id a record without one is given, here the record on line "
            f"{unnamed}; give one of the two an id of its own)")


def _refuse_near_miss(key: str, raw: dict[str, Any], *, where: str, field: str) -> None:
    """``UsageError`` if ``key`` looks like a misspelt scored key the record lacks (``lable`` for ``label``): the
    record would be scored against the wrong field. Other extra keys (a dataset's own columns) pass."""
    meant = difflib.get_close_matches(key.lower(), [k for k in _SCORED_KEYS if k not in raw], n=1, cutoff=0.8)
    if meant:
        raise UsageError(f"{where}: {key}: unknown key, probably {meant[0]!r} misspelt (a record is {{input, output, "
                         f"label?, task?, id?, metadata?, history?}}): rename it (a dataset's own columns are "
                         f"read past with a warning; this one would leave the record without its {meant[0]})",
                         field=field)


def _record(raw: dict[str, Any], lineno: int, task: str | None, *, where: str, field: str) -> BenchRecord:
    """One line as a ``BenchRecord``; ``UsageError`` naming ``where`` and the record's bad key otherwise."""
    meta = raw.get("metadata")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise UsageError(f"{where}: metadata: must be a JSON object, got {type(meta).__name__}", field=field)
    if "input" not in raw:
        raise UsageError(f"{where}: input: missing (a record is {{input, output, label?, metadata?}})", field=field)
    if refusal := blank(raw["input"], "input"):  # worded as tuning and ICL example files word it
        raise UsageError(f"{where}: {refusal}", field=field)
    label = label_text(raw.get("label"))
    output = _text(raw.get("output"), where=where, field=field)
    if isinstance(label, str) and not label.strip():
        if output.strip():  # a generation record in a file that gives every record a label key: its output is gold
            label = None
        else:  # no gold answer: label_accuracy would score every backend 0 on it (the later refusal named no line)
            raise UsageError(f"{where}: label: empty, and no output (leave the key out for a record without a "
                             f"label, and give its gold answer as output)", field=field)
    # A task numbered as a whole number (as a label may be) reads as its digits, as an outcome matrix reads it.
    top, inner = whole_text(raw.get("task")), whole_text(meta.get("task"))
    record_task, task_key = (top, "task") if top else (inner, "metadata.task") if inner else (task, "task")
    try:
        return pydantic_validated(BenchRecord, {
            "id": given_id(raw.get("id"), meta.get("id")) or f"line-{lineno}", "input": raw["input"],
            "output": output, "label": label, "task": record_task, "metadata": meta, "history": raw.get("history")})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = error_at(error)
        loc = task_key if loc == "task" else loc  # named where the file wrote it
        raise UsageError(f"{where}: {loc}: {validator_message(error)} (got {error['input']!r:.60})", field=field) from None


def given_id(*candidates: Any) -> str | None:
    """The first id a record gives (``0`` is one; ``None`` and ``""`` are not), as text."""
    return next((str(c) for c in candidates if c is not None and c != ""), None)


def check_records(records: Any, *, field: str = "data") -> list[BenchRecord]:
    """``records`` given in code, held to what ``load_records`` holds a file to: ``BenchRecord`` objects with
    distinct ids, at least one (``UsageError`` naming ``field`` and the record otherwise)."""
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Iterable):
        raise UsageError("must be a dataset path or an iterable of BenchRecord", field=field)
    checked: list[BenchRecord] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        if not isinstance(record, BenchRecord):
            raise UsageError(f"{nth_record(index)} is a {type(record).__name__}, not a BenchRecord",
                             field=f"{field}.{index}")
        if record.id in seen:
            raise UsageError(f"{nth_record(index)}: duplicate record id {record.id!r}", field=f"{field}.{index}")
        seen.add(record.id)
        checked.append(record)
    if not checked:
        raise UsageError("holds no records", field=field)
    return checked


def check_holdout(holdout: Any) -> None:
    """``UsageError`` naming ``holdout`` unless it is a fraction strictly between 0 and 1."""
    if not is_real(holdout) or not 0.0 < holdout < 1.0:
        raise UsageError("must be between 0 and 1", field="holdout")


def check_quality_floor(min_quality: Any) -> None:
    """``UsageError`` naming ``min_quality`` unless it is None or a score a scorer can give (0 to 1)."""
    if min_quality is not None and (not is_real(min_quality) or not 0.0 <= min_quality <= 1.0):
        raise UsageError(f"must be a score between 0 and 1 (scorers score in [0, 1]), got {min_quality!r}",
                         field="min_quality")


def sample(records: Sequence[BenchRecord], limit: int | None, *, seed: int = 0) -> list[BenchRecord]:
    """``limit`` records drawn with ``seed``, in their original order.

    A larger ``limit`` with the same seed draws a superset, so a bigger rerun into the same output directory
    only runs the added records.
    """
    if limit is not None and (not is_whole(limit) or limit < 1):
        raise UsageError(f"must be a whole number >= 1 (got {limit!r})", field="limit")
    if limit is None or limit >= len(records):
        return list(records)
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    return [records[i] for i in sorted(order[:limit])]


def split_ids(ids: Sequence[str], *, holdout: float = 0.3, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded (train, held-out) split of record ids; both sides non-empty when there are >= 2 ids."""
    check_holdout(holdout)
    given = None if isinstance(ids, str | bytes) or not isinstance(ids, Iterable) else list(ids)
    if given is None or not all(isinstance(i, str) for i in given):  # 5 was a TypeError, "abc" split into letters
        raise UsageError(f"must be a list of record ids, not {ids!r:.60}", field="ids")
    ids = given
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    n_held = min(len(order) - 1, max(1, round(len(order) * holdout))) if len(order) >= 2 else 0
    return sorted(order[n_held:]), sorted(order[:n_held])


def input_groups(records: Sequence[BenchRecord]) -> dict[str, list[str]]:
    """Record ids by input, texts that differ only in case, runs of whitespace or Unicode composition being one
    input: the records a held-out split keeps on one side."""
    from genroute.knowledge.examples import input_key

    groups: dict[str, list[str]] = {}
    for record in records:
        groups.setdefault(input_key(record.input), []).append(record.id)
    return groups


def split_by_input(records: Sequence[BenchRecord], *, holdout: float = 0.3, seed: int = 0
                   ) -> tuple[list[str], list[str]]:
    """``split_ids`` of the records' ids, then every record moved to the side of the smallest id sharing its input
    text: a repeated input never sits on both sides (the held-out copy of a training question is no test), and
    records whose inputs are all distinct are split exactly as ``split_ids`` splits them. Texts that differ only
    in case, runs of whitespace or Unicode composition are one input, as ICL's leakage check (``input_key``) and
    the MiniLM embedding the learned router reads them."""
    train, held = split_ids([r.id for r in records], holdout=holdout, seed=seed)
    groups = input_groups(records)
    if len(records) >= 2 and len(groups) < 2:
        raise UsageError("a held-out split needs at least two distinct inputs", field="holdout")
    held_set = set(held)
    held_groups = [ids for ids in groups.values() if min(ids) in held_set]
    if not held_groups and held:  # every held id repeats a training input: hold out the first one's group
        held_groups = [next(ids for ids in groups.values() if held[0] in ids)]
    elif len(held_groups) == len(groups) and train:  # the same, the other way round
        held_groups = [ids for ids in held_groups if train[0] not in ids]
    moved = {i for ids in held_groups for i in ids}
    return sorted(r.id for r in records if r.id not in moved), sorted(moved)


def _text(value: Any, *, where: str, field: str) -> str:
    # Structured gold outputs (function calls, JSON frames) are kept as JSON text, as the shared format says;
    # "output": null is no output (not the gold answer "null").
    if value is None or isinstance(value, str):
        return value or ""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity, which Python's reader takes: the gold answer would be the text "NaN"
        raise UsageError(f"{where}: output: holds NaN or Infinity, which is not JSON",
                         field=field) from None
