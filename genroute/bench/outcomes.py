"""Outcome matrices: each record's outcome under every candidate, read from a file instead of calling models.

Record shape (one JSON object a line; ``.jsonl.gz`` is read through gzip), the same one production outcome
stores write, so one compile step trains from a benchmark, a published matrix or production::

    {"input": "...", "output": "gold (optional)", "metadata": {"task": "...", "id": "...", ...},
     "outcomes": {"candidate": {"score": 0.0..1.0, "cost_usd": 0.0001?, "latency_s": 0.8?}, ...}}

The candidates become backends: ``genroute.bench.matrix_stats`` gives the bench's own summaries and
``BenchStats`` from the matrix's arrays, so the report and the compile step treat them like measured backends. Costs
come from the records' ``cost_usd``, else from a ``CandidatePricing`` (USD per 1M input/output tokens per candidate,
with a stated token estimate), else they are 0 and only quality is compared.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genroute.bounds import is_real, is_whole
from genroute.bench.datasets import BenchRecord, given_id
from genroute.bench.matrix_cells import MatrixCells
from genroute.bench.runner import Outcome
from genroute.bench.text_match import UNSEGMENTED
from genroute.config_errors import error_at, pydantic_validated, validator_message
from genroute.errors import UsageError
from genroute.jsonl import iter_records, nth_record
from genroute.outcomes.records import OutcomeRecord, check_sides, number_refusal
from genroute.public_model import ConfigModel

if TYPE_CHECKING:
    from numpy.typing import NDArray

#: The scorer name recorded on rows read from a matrix (the file's own metric, whatever it was).
MATRIX_SCORER = "outcome-matrix"


class CandidatePrice(ConfigModel):
    """A candidate's list price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # An infinite price would make every mean cost inf and fail the statistics far from the prices file.
    input_usd_per_1m: float = Field(ge=0.0, allow_inf_nan=False)
    output_usd_per_1m: float = Field(ge=0.0, allow_inf_nan=False)


class CandidatePricing(ConfigModel):
    """Per-request cost from list prices and a token estimate that is the same for every candidate.

    Input tokens: the query's whitespace-separated words (LLMRouter's own estimate for this data); output
    tokens: ``output_tokens`` per request. Neither published matrix has per-query token counts; an outcome that
    records its ``input_tokens`` or ``output_tokens`` is priced on them instead.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prices: dict[str, CandidatePrice] = Field(min_length=1)
    output_tokens: int = Field(default=256, ge=0)
    basis: str = Field(default="list prices", description="Where the prices come from, for the report.")

    def input_tokens(self, text: str) -> int:
        """The input token estimate for ``text``: its whitespace-separated words, and a token per character of a
        script written without spaces (a Chinese or Japanese question is one "word" of 40 characters)."""
        unspaced = len(_UNSPACED.findall(text))
        return len((_UNSPACED.sub(" ", text) if unspaced else text).split()) + unspaced

    def cost(self, text: str, candidate: str, *, input_tokens: int | None = None,
             output_tokens: int | None = None) -> float:
        """USD for one request of ``text`` to ``candidate``; token counts the outcome recorded are used where given
        (else the estimate)."""
        price = self.prices[candidate]
        tokens_in = self.input_tokens(text) if input_tokens is None else input_tokens
        tokens_out = self.output_tokens if output_tokens is None else output_tokens
        return (tokens_in * price.input_usd_per_1m + tokens_out * price.output_usd_per_1m) / 1e6

    def describe(self, *, recorded: bool = False) -> str:
        """The cost model in one sentence (``recorded``: some outcomes gave their own token counts)."""
        words = "query words (a character each in Chinese, Japanese, Thai...)"
        if recorded:
            return (f"cost = {self.basis} x the input and output tokens each outcome recorded (where it gave none: "
                    f"{words} as input tokens, {self.output_tokens} output tokens)")
        return (f"cost = {self.basis} x ({words} as input tokens + {self.output_tokens} output tokens), "
                "the same token estimate for every candidate")


def load_pricing(path: str | Path, *, output_tokens: int = 256, usd_per_1m_per_billion: float | None = None,
                 field: str = "prices") -> CandidatePricing:
    """Read ``{candidate: {"input_usd_per_1m", "output_usd_per_1m"} | {"size": "7B"} | {"params_b": 7}}``.

    Keys starting with ``_`` are notes. Entries with only a size are priced at ``usd_per_1m_per_billion`` x billions of parameters (input and
    output alike): price proportional to parameter count, for matrices published without prices.
    ``UsageError`` naming ``output_tokens`` unless it is an integer >= 0, ``usd_per_billion`` unless that is a
    finite number >= 0, and the candidate's price unless it is one (a bool is no size).
    """
    if not is_whole(output_tokens) or output_tokens < 0:
        raise UsageError(f"must be an integer >= 0 (got {output_tokens!r})", field="output_tokens")
    if usd_per_1m_per_billion is not None and (not is_real(usd_per_1m_per_billion)
                                               or not 0 <= usd_per_1m_per_billion < math.inf):
        raise UsageError(f"must be a finite number >= 0 (got {usd_per_1m_per_billion!r})", field="usd_per_billion")
    if not isinstance(path, str | os.PathLike):  # None was a TypeError from pathlib
        raise UsageError(f"the prices file must be a file path, not {type(path).__name__}", field=field)
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"prices file {str(path)!r} does not exist", field=field) from None
    except ValueError as exc:  # not JSON, or not UTF-8 text
        raise UsageError(f"prices file {str(path)!r} is not JSON ({exc})", field=field) from None
    except OSError as exc:  # a directory, no permission
        raise UsageError(f"prices file {str(path)!r} cannot be read ({exc.strerror or exc})", field=field) from None
    if not isinstance(raw, dict) or not raw:
        raise UsageError("prices file must map candidate names to prices", field=field)
    prices, sized, listed = {}, False, False
    for name, entry in raw.items():
        if name.startswith("_"):  # notes
            continue
        entry = entry if isinstance(entry, dict) else {}
        # Other keys (model, notes) are kept as published; one that reads as a price but is not one of ours
        # ("ouput_usd_per_1m", "output_usd_per_1M") would leave the output priced as the input, silently.
        if stray := sorted(k for k in entry if _PRICE_WORD.search(k) and k not in _PRICE_KEYS):
            raise UsageError(f"unknown price key(s) {', '.join(stray)} (known: {', '.join(_PRICE_KEYS)})",
                             field=f"{field}.{name}")
        if "input_usd_per_1m" in entry:
            prices[name] = _price(entry["input_usd_per_1m"], entry.get("output_usd_per_1m", entry["input_usd_per_1m"]),
                                  field=f"{field}.{name}")
            listed = True
            continue
        billions = _billions(entry.get("params_b", entry.get("size")))
        if billions is None or usd_per_1m_per_billion is None:
            raise UsageError(f"{name}: needs input_usd_per_1m/output_usd_per_1m, or a size with "
                             "usd_per_1m_per_billion", field=f"{field}.{name}")
        prices[name] = _price(billions * usd_per_1m_per_billion, billions * usd_per_1m_per_billion,
                              field=f"{field}.{name}")
        sized = True
    parts = ([f"${usd_per_1m_per_billion:g} per 1M tokens per billion parameters"] if sized else []) + \
        ([f"list prices from {Path(path).name}"] if listed else [])
    return CandidatePricing(prices=prices, output_tokens=output_tokens, basis=" and ".join(parts))


#: Characters of scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, kana, CJK ideographs in
#: and beyond the BMP): each is a token of the input estimate.
_UNSPACED = re.compile(f"[{UNSEGMENTED}]")
#: The keys of a price entry, and what makes another key look like a mistyped one.
_PRICE_KEYS = ("input_usd_per_1m", "output_usd_per_1m", "params_b", "size")
_PRICE_WORD = re.compile(r"usd|price|cost|per_?1m|input|output|param", re.IGNORECASE)


def _price(input_usd: Any, output_usd: Any, *, field: str) -> CandidatePrice:
    """A candidate's price; ``UsageError`` naming ``field`` and the bad part if it is not two numbers >= 0."""
    try:
        return pydantic_validated(CandidatePrice, {"input_usd_per_1m": input_usd, "output_usd_per_1m": output_usd})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise UsageError(validator_message(error), field=".".join((field, *(str(p) for p in error["loc"])))) from None


def _billions(size: Any) -> float | None:
    if is_real(size):
        return float(size)
    if isinstance(size, bool):  # to Python True is 1; to a user it is no size
        return None
    match = re.fullmatch(r"\s*(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)\s*[bB]\s*", str(size or ""))
    if not match:
        return None
    return float(match.group(2)) * (int(match.group(1)) if match.group(1) else 1)


@dataclass(frozen=True)
class OutcomeMatrix:
    """Records and, per record and candidate, a score, a cost and a latency (arrays of shape (n, C))."""

    records: tuple[BenchRecord, ...]
    candidates: tuple[str, ...]
    scores: NDArray[Any]
    costs: NDArray[Any]
    latencies: NDArray[Any]
    cost_basis: str
    source: str | None = None
    dropped: int = 0
    #: The ids the records gave (``None``: every id was given); the others are the reader's ``record-N``.
    given_ids: frozenset[str] | None = None
    #: Candidates the file has outcomes of that ``load_matrix``'s ``candidates`` left out.
    left_out: tuple[str, ...] = ()

    @property
    def ids(self) -> list[str]:
        """Record ids, in order."""
        return [r.id for r in self.records]

    @property
    def tasks(self) -> list[str | None]:
        """Record tasks, in order."""
        return [r.task for r in self.records]

    def subset(self, ids: Iterable[str]) -> OutcomeMatrix:
        """The records whose id is in ``ids`` (in this matrix's order)."""
        wanted = set(ids)
        rows = [i for i, r in enumerate(self.records) if r.id in wanted]
        return replace(self, records=tuple(self.records[i] for i in rows), scores=self.scores[rows],
                       costs=self.costs[rows], latencies=self.latencies[rows])


def read_outcome_records(source: str | Path | Iterable[Mapping[str, Any] | BaseModel], *,
                         field: str = "outcomes") -> Iterable[tuple[str, OutcomeRecord]]:
    """``(where, record)`` for each record of a file or an iterable (mappings or ``OutcomeRecord``s, e.g. an
    ``OutcomeStore``'s); an invalid record is a ``UsageError`` naming where it is."""
    if isinstance(source, str | Path):
        name = Path(source).name
        items: Iterable[tuple[str, Any]] = ((f"{name}:{n}", raw) for n, raw in
                                            iter_records(source, field=field, what="outcome file"))
    elif isinstance(source, Iterable):
        items = ((nth_record(n), raw) for n, raw in enumerate(source))
    else:  # None or a number was a TypeError ("not iterable")
        raise UsageError(f"must be an outcome file's path or outcome records, not {type(source).__name__}",
                         field=field)
    for where, raw in items:
        try:
            record = raw if isinstance(raw, OutcomeRecord) else pydantic_validated(
                OutcomeRecord, raw.model_dump() if isinstance(raw, BaseModel) else raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            at = error_at(first)  # "" for the record as a whole (a task that is no text)
            raise UsageError(number_refusal(where, first) or f"{where}: {at + ': ' if at else ''}{first['msg']}",
                             field=field) from None
        if not (record.input or "").strip():
            raise UsageError(f"{where}: input: a router needs the request text (record without captured input)",
                             field=field)
        check_sides(where, record, raw, field=field)
        yield where, record


def load_matrix(source: str | Path | Iterable[Mapping[str, Any] | BaseModel], *,
                pricing: CandidatePricing | None = None, candidates: Sequence[str] | None = None,
                field: str = "outcomes", candidates_field: str = "candidates") -> OutcomeMatrix:
    """An ``OutcomeMatrix`` from a file or records; records missing a candidate's outcome are dropped
    (counted in ``dropped``): a router can only be scored where every candidate's outcome is known. A name of
    ``candidates`` that no record has is a ``UsageError`` naming ``candidates_field``. Each record's outcomes are
    kept as numbers while the rest is read (``genroute.bench.matrix_cells``), not as their models."""
    if candidates is not None:
        listed = None if isinstance(candidates, str) or not isinstance(candidates, Iterable) else list(candidates)
        if listed is None or not all(isinstance(c, str) for c in listed):
            raise UsageError(f"must be a list of candidate names, not {candidates!r:.80}", field=candidates_field)
        candidates = listed
    cells, parsed = MatrixCells(), list[tuple[str, OutcomeRecord]]()
    for where, rec in read_outcome_records(source, field=field):
        cells.add(len(parsed), where, rec)
        parsed.append((where, rec.model_copy(update={"outcomes": {}})))
    if not parsed:
        raise UsageError("the outcome matrix holds no records", field=field)
    present = sorted(cells.columns)
    if candidates and len(set(candidates)) < len(candidates):  # "a,a" would be two candidates that are one
        raise UsageError(f"names a candidate twice ({', '.join(candidates)})", field=candidates_field)
    if candidates and (unknown := [c for c in candidates if c not in present]):
        raise UsageError(f"no record has an outcome of {', '.join(map(repr, unknown))} (candidates in the file: "
                         f"{', '.join(present) or 'none'})", field=candidates_field)
    names = tuple(candidates) if candidates else tuple(present)
    if not names:
        raise UsageError("the outcome matrix names no candidate (every record's outcomes are empty)", field=field)
    if pricing is not None and (missing := [c for c in names if c not in pricing.prices]):
        raise UsageError(f"no price for candidate(s) {', '.join(missing)}", field="prices")
    scores, costs, latencies, cell = cells.grids(len(parsed), names)
    keep = ~np.isnan(scores).any(axis=1)
    records, wheres, seen, given_ids = [], [], set(), set()
    for n in np.flatnonzero(keep).tolist():
        where, rec = parsed[n]
        wheres.append(where)
        named = given_id(rec.metadata.get("id"))
        rid = named or f"record-{n + 1}"
        if rid in seen:
            raise UsageError(f"{where}: duplicate record id {rid!r}", field=field)
        seen.add(rid)
        if named is not None:
            given_ids.add(rid)
        try:
            records.append(pydantic_validated(BenchRecord, {
                "id": rid, "input": rec.input or "", "output": rec.output or "", "metadata": rec.metadata,
                "task": rec.task}))
        except ValidationError as exc:  # a metadata.label_set that is not a list
            raise UsageError(f"{where}: metadata: {validator_message(exc.errors()[0])}", field=field) from None
    if not records:
        raise UsageError(f"no record has a scored outcome for every candidate ({', '.join(names)}){cells.unscored}"
                         f"{_coverage(cells, len(parsed), names)}", field=field)
    scores, costs, latencies, cell = scores[keep], costs[keep], latencies[keep], cell[keep]
    given = ~np.isnan(costs)
    if pricing is None and given.any() and not given.all():
        i, j = np.argwhere(~given)[0].tolist()
        raise UsageError(f"{wheres[i]}: outcomes.{names[j]}.cost_usd: not recorded, while other outcomes have theirs: "
                         "give every one, or prices to price the others (a missing cost is unknown, not free)",
                         field=field)
    unpriced = np.argwhere(~given)
    for i, j in unpriced.tolist():  # priced on its recorded tokens where it gave them, else on the estimate
        tokens_in, tokens_out = cells.tokens.get(int(cell[i, j]), (None, None))
        costs[i, j] = 0.0 if pricing is None else pricing.cost(records[i].input, names[j], input_tokens=tokens_in,
                                                                output_tokens=tokens_out)
    recorded = any(int(cell[i, j]) in cells.tokens for i, j in unpriced.tolist())
    basis = ("cost_usd from the file" if given.all() else pricing.describe(recorded=recorded) if pricing is not None
             else "no costs (quality only)")
    if pricing is not None and given.any() and not given.all():  # the report must not say every cost was priced
        basis = f"cost_usd from the file for {int(given.sum()):,} of {given.size:,} outcomes; the others: {basis}"
    return OutcomeMatrix(
        records=tuple(records), candidates=names, scores=scores, costs=costs, latencies=latencies,
        cost_basis=basis, source=str(source) if isinstance(source, str | Path) else None,
        dropped=len(parsed) - len(records), given_ids=frozenset(given_ids),
        left_out=tuple(c for c in present if c not in names))


def _coverage(cells: MatrixCells, total: int, names: Sequence[str]) -> str:
    """How many records each candidate is scored on, and the way out (a sparse matrix: RouterEval's shape, many
    candidates each scored on some of the queries)."""
    if len(names) < 2:
        return ""
    counts = {c: cells.scored(c) for c in names}
    ranked = sorted(names, key=lambda c: (-counts[c], c))
    shown = ", ".join(f"{c} {counts[c]}" for c in ranked[:8]) + (", ..." if len(ranked) > 8 else "")
    return (f"; records scored per candidate: {shown} of {total}; route between candidates that share records "
            "(candidates, --candidates)")


def matrix_from_table(records: Sequence[BenchRecord], table: Mapping[str, Mapping[str, Outcome]],
                      backends: Sequence[str], *, cloud: bool = False) -> OutcomeMatrix:
    """A live benchmark's outcomes (``table[record id][backend]``) as a matrix: failures score 0; cost is the
    measured one, or the cloud-equivalent one with ``cloud``."""
    def cost(o: Outcome) -> float:
        return (o.cloud_equivalent_cost_usd or 0.0) if cloud else o.cost_usd

    cells = [[table[r.id][b] for b in backends] for r in records]
    return OutcomeMatrix(
        records=tuple(records), candidates=tuple(backends),
        scores=np.array([[o.score if o.ok else 0.0 for o in row] for row in cells], dtype=np.float64).reshape(-1, len(backends)),
        costs=np.array([[cost(o) for o in row] for row in cells], dtype=np.float64).reshape(-1, len(backends)),
        latencies=np.array([[o.latency_s for o in row] for row in cells], dtype=np.float64).reshape(-1, len(backends)),
        cost_basis="cloud-equivalent" if cloud else "measured")
