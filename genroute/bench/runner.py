"""Running a benchmark: every record through every target, bounded, resumable, one JSONL row per outcome."""

from __future__ import annotations

import asyncio
import gzip
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, ValidationError

from genroute.backends.base import refuse_rerun
from genroute.bench.datasets import GOLD_KEYS
from genroute.bench.record_tools import answering_router
from genroute.bench.scorers import check_golds
from genroute.bench.setup_failures import SetupWatch
from genroute.cache import open_unlinked
from genroute.bounds import Number, WholeNumber, is_whole
from genroute.config_errors import check_list, not_a, pydantic_validated_json
from genroute.config_location import locate
from genroute.errors import ConfigError, GenrouteError, UsageError
from genroute.public_model import PublicModel
from genroute.types import GenerateRequest

if TYPE_CHECKING:
    from genroute.bench.datasets import BenchRecord
    from genroute.bench.scorers import Scorer
    from genroute.router.router import Router
    from genroute.types import GenerateResult, Usage

#: The target name under which end-to-end policy runs are recorded.
POLICY_TARGET = "@policy"
RESULTS_FILE = "results.jsonl"
#: Metadata keys that hold the gold answer: never sent to the backend under test.
#: Error types of outcomes whose backend answered but whose answer could not be scored.
SCORING_ERRORS = frozenset({"ScorerError", "JudgeError"})
#: A row's token counts, as ``Usage`` names them.
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cached_input_tokens", "thinking_tokens", "audio_input_tokens",
                "cached_audio_input_tokens", "audio_output_tokens")


class Outcome(PublicModel):
    """How one target did on one record (one line of ``results.jsonl``)."""

    # Finite numbers only, a score in [0, 1] and no cost, latency or token count below 0, as an outcome side's
    # (outcomes.records.check_sides): a row's NaN score or infinite cost, read back from results.jsonl, turned every
    # mean and CI of its target into NaN or inf, and a negative cost paid back the target's other rows.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    backend: str = Field(description="The target: a backend name, or @policy for end-to-end runs.")
    record_id: str
    task: str | None = None
    ok: bool
    score: Number = Field(default=0.0, ge=0, le=1)  # as a scorer returns it (Scorer.checked) and a side holds it
    scorer: str
    answer: str = ""
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    routed_backend: str | None = Field(default=None, description="The backend that answered.")
    model: str | None = None
    error_type: str | None = None
    error: str | None = None
    latency_s: Number | None = Field(default=0.0, ge=0,
                                     description="None: not recorded (an outcome matrix without it).")
    ttft_s: Number | None = Field(default=None, ge=0)
    input_tokens: WholeNumber = Field(default=0, ge=0)
    output_tokens: WholeNumber = Field(default=0, ge=0)
    cached_input_tokens: WholeNumber = Field(default=0, ge=0)
    thinking_tokens: WholeNumber = Field(default=0, ge=0)
    #: The audio part of the input and of its cached part (``Usage``), priced at the model's audio rates.
    audio_input_tokens: WholeNumber = Field(default=0, ge=0)
    cached_audio_input_tokens: WholeNumber = Field(default=0, ge=0)
    #: The audio part of the output (``Usage``: a speech or native-audio model's answer), at the audio output rate.
    audio_output_tokens: WholeNumber = Field(default=0, ge=0)
    cost_usd: Number = Field(default=0.0, ge=0)
    cloud_equivalent_cost_usd: Number | None = Field(default=None, ge=0)
    judge_cost_usd: Number = Field(default=0.0, ge=0)
    judge_error_type: str | None = Field(default=None, description="Why the judge could not grade the answer.")

    @property
    def key(self) -> tuple[str, str]:
        """The resume key: (target, record id)."""
        return self.backend, self.record_id

    @property
    def answered(self) -> bool:
        """Whether the backend answered (its latency and tokens are real), even if scoring then failed."""
        return self.ok or self.error_type in SCORING_ERRORS


class ResultsLog:
    """``results.jsonl`` in an output directory: read what is done, append each new outcome durably."""

    def __init__(self, out_dir: str | Path) -> None:
        self.path = Path(out_dir) / RESULTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.outcomes: dict[tuple[str, str], Outcome] = {}
        self._fh: Any = None
        self._superseded = False
        self._load()

    def _load(self) -> None:
        # Opened past no link at its name (open_unlinked): one planted in a shared output directory had its target
        # read, cut at its last newline and appended to.
        try:
            with os.fdopen(open_unlinked(self.path, os.O_RDONLY, field="out_dir"), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        if end < len(data):
            # A run killed mid-write leaves a partial last line: drop it so appends start on a clean line.
            with os.fdopen(open_unlinked(self.path, os.O_WRONLY, field="out_dir"), "wb") as cut:
                cut.truncate(end)
        self.outcomes = parse_outcomes(data[:end], self.path)

    def done(self, key: tuple[str, str], *, retry_failed: bool = False) -> bool:
        """Whether ``key`` already has an outcome (with ``retry_failed``: a successful one)."""
        outcome = self.outcomes.get(key)
        return outcome is not None and (outcome.ok or not retry_failed)

    def append(self, outcome: Outcome, *, replace: bool = False) -> None:
        """Write one row and flush it to disk before returning (an interrupted run keeps it).

        A row for a key already stored is ignored unless ``replace`` (a retried failure): then it is
        appended too, the last row of a key wins on reading, and ``close`` drops the superseded rows.
        """
        if outcome.key in self.outcomes and not replace:
            return
        if self._fh is None:
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            # Owner-only when new: each row holds a backend's answer to a record (and errors may quote it).
            self._fh = os.fdopen(open_unlinked(self.path, flags, field="out_dir", mode=0o600), "a", encoding="utf-8")
        # One write of a whole line: a crash can only cut the last line, which _load drops.
        self._fh.write(outcome.model_dump_json() + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._superseded |= outcome.key in self.outcomes
        self.outcomes[outcome.key] = outcome

    def close(self) -> None:
        """Close the file; rewrite it with one row per key if retried rows superseded older ones."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._superseded:
            # Made exclusively under a random name (not results.jsonl.tmp, which a link planted in a shared output
            # directory turned into a write to any file of the user's), with the mode the file had; atomic: a crash
            # leaves the old file (whose last rows win) or the new.
            from genroute.cache import atomic_write_bytes

            rows = "".join(o.model_dump_json() + "\n" for o in self.outcomes.values())
            atomic_write_bytes(self.path, rows.encode("utf-8"), private=True, same_mode=True, durable=True)
            self._superseded = False


def request_metadata(record: BenchRecord) -> dict[str, Any]:
    """The record's metadata without its gold answers (templates may render tools, titles, label sets)."""
    return {k: v for k, v in record.metadata.items() if k not in GOLD_KEYS}


async def run_one(router: Router, target: str, record: BenchRecord, scorer: Scorer, *,
                  stream: bool = True) -> Outcome:
    """Send ``record`` to ``target`` (``@policy``: let the router's policy decide) and score the answer."""
    start = time.perf_counter()
    base = {"backend": target, "record_id": record.id, "task": record.task, "scorer": scorer.name}
    try:
        # Built inside the try: a record that slipped past the dataset reader (one built in code with model_copy,
        # its metadata edited in place) is a failed row naming why, not an exception group ending the run.
        request = GenerateRequest(
            input=record.input, task=record.task, metadata=request_metadata(record),
            backend=None if target == POLICY_TARGET else target, key=record.id, history=record.history,
        )
        # Records that declare their own tools are answered with them (else by the router as configured).
        async with answering_router(router, record, target, POLICY_TARGET) as answering:
            result = await _answer(answering, request, stream)
    except Exception as exc:  # noqa: BLE001 - one bad record must not end a long run; the type is reported
        if isinstance(exc, ConfigError):  # the row and the report say where the config file sets it
            locate(exc, router._config_file)
        # What the failed request cost (attempts that timed out or were cut are billed) is the row's cost.
        # Its tokens too (the error's usage: what the attempts that were billed used), so the row's tokens and cost
        # agree as the trace's and the budget's do (a validator's refusal, a stream cut after tokens came).
        # And a free model's tokens their cloud-equivalent cost, as an answered row's are priced.
        used = exc.usage if isinstance(exc, GenrouteError) else None
        return Outcome(**base, ok=False, error_type=type(exc).__name__, error=str(exc)[:500],
                       latency_s=time.perf_counter() - start, cost_usd=spent(exc), **token_fields(used),
                       cloud_equivalent_cost_usd=getattr(exc, "cloud_equivalent_cost_usd", None))
    answer = dict(
        answer=result.text, tool_calls=[{"name": c.name, "args": c.args} for c in result.tool_calls],
        routed_backend=result.backend, model=result.model,
        latency_s=result.latency_s or (time.perf_counter() - start), ttft_s=result.time_to_first_token_s,
        **token_fields(result.usage),
        cost_usd=result.cost_usd, cloud_equivalent_cost_usd=result.cloud_equivalent_cost_usd,
    )
    try:
        score, judge_cost = await scorer.score(record, result, router)
    except Exception as exc:  # noqa: BLE001 - a scorer failing on one answer (bad JSON, a judge outage)
        # must not cancel every other request; the answer and its cost are kept, the row counts as failed.
        judged = scorer.judge is not None
        return Outcome(**base, **answer, ok=False, error_type="JudgeError" if judged else "ScorerError",
                       error=f"{type(exc).__name__}: {exc}"[:500],
                       judge_error_type=type(exc).__name__ if judged else None, judge_cost_usd=spent(exc))
    return Outcome(**base, **answer, ok=True, score=score, judge_cost_usd=judge_cost)


def token_fields(usage: Usage | None) -> dict[str, int]:
    """A row's token counts from ``usage`` (none: all 0)."""
    if usage is None:
        return {}
    return {name: getattr(usage, name) for name in TOKEN_FIELDS}


def spent(error: Exception) -> float:
    """What the request that raised ``error`` cost (a genroute error says; any other, nothing known)."""
    return float(error.cost_usd) if isinstance(error, GenrouteError) else 0.0


async def _answer(router: Router, request: GenerateRequest, stream: bool) -> GenerateResult:
    if not stream:
        return await router.agenerate(request)
    result = None
    async for chunk in router.astream(request):
        if chunk.done:
            result = chunk.result
    if result is None:  # pragma: no cover - the router always ends a stream with a result
        raise GenrouteError("the stream ended without a result")
    return result


def check_concurrency(concurrency: int) -> None:
    """``UsageError`` naming ``concurrency`` unless it is an integer >= 1."""
    if not is_whole(concurrency) or concurrency < 1:
        raise UsageError(f"must be an integer >= 1 (got {concurrency!r})", field="concurrency")


def target_names(targets: Sequence[str]) -> list[str]:
    """``targets`` as a list; ``UsageError`` naming ``backends`` for one string ("smart" is no list of "s", "m"...)."""
    if isinstance(targets, str):
        raise UsageError(f"must be a list of backend names, not the string {targets!r}", field="backends")
    if not isinstance(targets, Iterable):  # None was a TypeError ("not iterable")
        raise UsageError(f"must be a list of backend names, not {type(targets).__name__}", field="backends")
    names = list(targets)
    if len(set(names)) < len(names):  # "chat,chat" made two calls a record for the one backend
        twice = sorted({t for t in names if names.count(t) > 1})
        raise UsageError(f"names a backend twice ({', '.join(twice)})", field="backends")
    return names


def check_flags(**flags: Any) -> None:
    """``UsageError`` naming the first of ``flags`` that is not True or False (the text "false" read as true)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise UsageError(f"must be True or False, not {value!r:.40}", field=name)


def check_targets(router: Router, targets: Sequence[str], scorer: Scorer) -> None:
    """``UsageError`` unless every target (and the judge) is a configured backend or the policy; ``ConfigError`` for a
    judge whose tools are not side-effect-free."""
    if not targets:
        raise UsageError("name at least one backend (or the policy)", field="backends")
    for target in targets:
        if target != POLICY_TARGET and target not in router.backends:
            known = ", ".join(sorted(router.backends))
            raise UsageError(f"unknown backend {target!r} (known: {known})", field="backends")
    if scorer.judge is not None and scorer.judge not in router.backends:
        raise UsageError(f"judge backend {scorer.judge!r} is not configured", field="scorer")
    if scorer.judge is not None:  # asked about each record, a judge with tools that act could act on it
        refuse_rerun(scorer.judge, router.backends[scorer.judge].side_effects(), role="a judge", field="scorer")


async def arun_bench(
    router: Router,
    records: Sequence[BenchRecord],
    targets: Sequence[str],
    scorer: Scorer,
    *,
    out_dir: str | Path | None = None,
    concurrency: int = 4,
    stream: bool = True,
    progress: bool = True,
    on_outcome: Callable[[Outcome], None] | None = None,
    retry_failed: bool = False,
) -> list[Outcome]:
    """Run each record through each target; with ``out_dir``, skip done (target, id) pairs and append new ones.

    ``retry_failed`` also reruns pairs whose stored outcome failed, replacing it; the failed rows of a target with
    no scored row are rerun in any case. A target whose first records all fail the same way (a set-up error:
    ``setup_failures``) is stopped: its other records get no row (a rerun runs them). The caller checks that the
    stored rows were made the same way (``abench`` does, through ``run.json``).

    Returns every outcome for these records and targets (earlier runs' included), target by target in
    record order.
    """
    from genroute.bench.datasets import BenchRecord
    from genroute.bench.scorers import Scorer
    from genroute.router.router import check_router

    check_router(router)
    records = check_list(records, BenchRecord, field="records")
    if not isinstance(scorer, Scorer):  # a name was an AttributeError from deep inside
        raise UsageError(f"must be a Scorer (resolve_scorer(name) makes one), not {type(scorer).__name__}",
                         field="scorer")
    check_concurrency(concurrency)
    targets = target_names(targets)
    check_targets(router, targets, scorer)
    check_golds(scorer, records)
    log = ResultsLog(out_dir) if out_dir is not None else None
    stored = log.outcomes if log is not None else {}
    scored = {key[0] for key, o in stored.items() if o.ok}
    # A target with no scored row (a set-up error: a missing collection, a refused model name) has its failed
    # rows rerun, retry_failed or not: they say nothing about the model.
    todo = [(t, r) for r in records for t in targets  # records outer: a partial run covered every target alike
            if log is None or not log.done((t, r.id), retry_failed=retry_failed or t not in scored)]
    fresh: dict[tuple[str, str], Outcome] = {}
    watch = SetupWatch(scored)
    left = {t: sum(1 for target, _ in todo if target == t) for t in targets}
    semaphore = asyncio.Semaphore(concurrency)
    bar = _progress(progress, total=len(records) * len(targets), initial=len(records) * len(targets) - len(todo))

    async def one(target: str, record: BenchRecord) -> None:
        async with semaphore:
            if target in watch.stopped:  # no row: a resumed run runs the record
                bar.update(1)
                return
            left[target] -= 1
            outcome = await run_one(router, target, record, scorer, stream=stream)
        if log is not None:
            log.append(outcome, replace=True)  # a stored row of this key is being retried
        fresh[outcome.key] = outcome
        watch.see(outcome, left=left[target])
        bar.update(1)
        if on_outcome is not None:
            on_outcome(outcome)

    try:
        async with asyncio.TaskGroup() as group:
            for target, record in todo:
                group.create_task(one(target, record))
    finally:
        bar.close()
        if log is not None:
            log.close()
    known = {**stored, **fresh}
    return [known[(t, r.id)] for t in targets for r in records if (t, r.id) in known]


def parse_outcomes(data: bytes, path: Path) -> dict[tuple[str, str], Outcome]:
    """The outcomes of ``results.jsonl`` lines, by key (the last row of a key wins); ``path`` names errors."""
    outcomes: dict[tuple[str, str], Outcome] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            # Strict: a score, cost or latency written "0.5" or true is no number (lax mode read them as 0.5 and 1);
            # its numbers are read as genroute.bounds.Number reads them (a token count 12.0 is 12).
            outcome = pydantic_validated_json(Outcome, line, strict=True)
        except ValidationError as exc:
            raise UsageError(not_a(f"{path}:{lineno}", "a results row", exc.errors()[0]), field="out") from None
        outcomes[outcome.key] = outcome
    return outcomes


def load_outcomes(out_dir: str | Path) -> list[Outcome]:
    """Every outcome stored in ``out_dir/results.jsonl`` (or, if only that exists, ``results.jsonl.gz``).

    Read only: unlike resuming a run, loading never creates, truncates or rewrites anything, so it can read
    a copy kept in a repository (``benchmarks/data/q340``, gzip-compressed there).
    """
    if not isinstance(out_dir, str | os.PathLike):  # None was a TypeError from pathlib
        raise UsageError(f"must be a results directory, not {type(out_dir).__name__}", field="out")
    plain = Path(out_dir) / RESULTS_FILE
    packed = plain.with_name(RESULTS_FILE + ".gz")
    if plain.is_file():
        path, data = plain, plain.read_bytes()
    elif packed.is_file():
        path, data = packed, gzip.decompress(packed.read_bytes())
    else:
        raise UsageError(f"no {RESULTS_FILE} (or {RESULTS_FILE}.gz) in {out_dir}", field="out")
    # A run killed mid-write leaves a partial last line: it is not an outcome.
    return list(parse_outcomes(data[:data.rfind(b"\n") + 1], path).values())


class _NoProgress:
    def update(self, n: int) -> None:
        """Nothing to show."""

    def close(self) -> None:
        """Nothing to close."""


def _progress(enabled: bool, *, total: int, initial: int) -> Any:
    if not enabled:
        return _NoProgress()
    try:
        from tqdm import tqdm
    except ImportError:  # the bench extra is optional; run without a bar rather than fail
        return _NoProgress()
    return tqdm(total=total, initial=initial, desc="bench", unit="call", leave=False)
