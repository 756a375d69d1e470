"""The shared JSONL example format (``{"input", "output", "label"?, "metadata"?, "id"?, "task"?}``): loading,
checks, split.

Used by local LoRA tuning and by cloud tuning jobs alike, so bad data is rejected before anything is
trained or sent, with the offending file and line named in ``UsageError.field`` (``"FILE:N"``, 1-based).

It is the format ``genroute bench`` reads too, so a benchmark file is a tuning file (a record with a ``label``
and no ``output`` answers its label, the gold answer the bench scores it against): a
top-level ``id`` or ``task`` is kept in ``metadata`` (where the bench reader also looks for them), and
a structured output (a function call, a JSON frame) becomes its JSON text, as the bench reader makes it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ConfigDict, Field

from genroute.errors import UsageError
from genroute.jsonl import blank, label_text, whole_text
from genroute.public_model import PublicModel

DEFAULT_MAX_CHARS = 20_000
DEFAULT_MIN_EXAMPLES = 1
_KNOWN_KEYS = frozenset({"input", "output", "label", "metadata", "id", "task"})
#: Top-level keys the bench reader takes that tuning keeps in ``metadata``.
_METADATA_KEYS = ("id", "task")
T = TypeVar("T")


class Example(PublicModel):
    """One labeled example: the input a model sees and the output it should give."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    label: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    line: int | None = Field(default=None, ge=1, description="1-based line in the file it was read from.")
    path: str | None = Field(default=None, description="The file it was read from, as given to load_examples.")


def load_examples(
    path: str | Path,
    *,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[Example]:
    """Read and check a JSONL file of examples; raise ``UsageError(field="FILE:N")`` on the first bad line.

    Lines end at ``\\n`` only (a raw U+2028 or U+0085 is string content, as JSON allows). Blank lines are skipped
    (they still count for line numbers). ``max_chars`` bounds
    ``len(input) + len(output)`` of one example.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading BOM is not JSON, as genroute.jsonl reads it
    except FileNotFoundError:
        raise UsageError(f"no such file: {path}", field="data") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text: {exc}", field="data") from None
    except OSError as exc:  # a directory, no permission...
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}", field="data") from None
    examples = [
        parse_line(line, lineno, max_chars=max_chars, path=path)
        # "\n" only, as genroute.jsonl.iter_records reads: splitlines() also breaks at U+2028, U+0085 and the
        # like, which JSON allows raw inside strings. A CRLF line's "\r" is JSON whitespace.
        for lineno, line in enumerate(text.split("\n"), start=1)
        if line.strip()
    ]
    if not examples:
        raise UsageError(f"{path} holds no examples", field="data")
    if len(examples) < min_examples:
        raise UsageError(
            f"{path} holds {len(examples)} examples; at least {min_examples} are needed", field="data"
        )
    return examples


def parse_line(line: str, lineno: int, *, max_chars: int = DEFAULT_MAX_CHARS, path: str | Path | None = None
               ) -> Example:
    """Parse one JSONL line into an ``Example``; errors name ``{path}:{lineno}`` (without ``path``: ``line {lineno}``)."""
    where = f"{path}:{lineno}" if path is not None else f"line {lineno}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UsageError(f"invalid JSON ({exc.msg} at column {exc.colno})", field=where) from None
    if not isinstance(record, dict):
        raise UsageError(f"expected a JSON object, got {type(record).__name__}", field=where)
    unknown = sorted(set(record) - _KNOWN_KEYS)
    if unknown:
        raise UsageError(f"unknown keys {unknown}; expected input, output, label, metadata, id, task",
                         field=where)
    label = label_text(record.get("label"))
    if label is not None and not isinstance(label, str):
        raise UsageError(f"field 'label' must be a string or a whole number, got {type(label).__name__}",
                         field=where)
    texts: dict[str, str] = {}
    for key in ("input", "output"):
        value, name = record.get(key), key
        if value is None and key == "output" and label is not None:
            value, name = label, "label"  # a classification record: its label is the answer, as the bench scores it
        if value is None:
            raise UsageError(f"missing field {key!r}" + (" (or 'label')" if key == "output" else ""), field=where)
        if key == "output" and not isinstance(value, str):
            try:  # a structured gold output, as the bench reads it
                value = json.dumps(value, ensure_ascii=False, allow_nan=False)
            except ValueError:  # NaN or Infinity, which Python's reader takes: it would be trained on as text
                raise UsageError("field 'output' holds NaN or Infinity, which is not JSON",
                                 field=where) from None
        if not isinstance(value, str):
            raise UsageError(f"field {key!r} must be a string, got {type(value).__name__}", field=where)
        if refusal := blank(value, name):  # worded as the bench's dataset reader words it
            raise UsageError(refusal, field=where)
        texts[key] = _utf8(value, key, where)
    if label is not None:
        _utf8(label, "label", where)
    metadata = record.get("metadata", {})
    if not isinstance(metadata, dict):
        raise UsageError(f"field 'metadata' must be an object, got {type(metadata).__name__}", field=where)
    # The top-level key wins over the same key inside metadata, as in the bench reader.
    metadata = {**metadata, **{k: record[k] for k in _METADATA_KEYS if record.get(k) is not None}}
    # A task written as a whole number ("task": 3) reads as its digits, as the bench's reader and an outcome matrix
    # read it; anything else that is not text is refused, naming the key the file wrote.
    task = whole_text(metadata.get("task"))
    if task is not None and not isinstance(task, str):
        key = "task" if record.get("task") is not None else "metadata.task"
        raise UsageError(f"field {key!r} must be a string or a whole number, got {type(task).__name__}", field=where)
    if task is not None:
        metadata["task"] = task
    size = len(texts["input"]) + len(texts["output"])
    if size > max_chars:
        raise UsageError(f"example is {size} characters; the limit is {max_chars}", field=where)
    return Example(input=texts["input"], output=texts["output"], label=label, metadata=metadata, line=lineno,
                   path=None if path is None else str(path))


def _utf8(value: str, key: str, where: str) -> str:
    """``value``, if it is text UTF-8 can hold: JSON's ``\\ud83d`` escape parses to a lone surrogate (half an emoji,
    e.g. from text cut at a UTF-16 boundary), which no tokenizer, upload or file write could take."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(f"field {key!r} holds an unpaired surrogate ({value[exc.start]!a} at character "
                         f"{exc.start}), which UTF-8 cannot encode", field=where) from None
    return value


def split(examples: list[T], validation_fraction: float, seed: int = 0, *,
          key: Callable[[T], str] | None = None) -> tuple[list[T], list[T]]:
    """Shuffle with ``seed`` and split into (train, validation); the same inputs give the same split.

    With ``key``, items of one key (copies of one input: ``input_key``) go to the same side, the fraction then
    counting keys: a validation example that repeats a training one would only measure memory. A positive fraction
    keeps at least one validation key and at least one training key.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise UsageError("must be in [0, 1)", field="validation_fraction")
    groups: dict[Any, list[T]] = {}
    for index, item in enumerate(examples):
        groups.setdefault(index if key is None else key(item), []).append(item)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * validation_fraction)
    if validation_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    else:
        n_val = 0
    return [e for group in order[n_val:] for e in group], [e for group in order[:n_val] for e in group]

