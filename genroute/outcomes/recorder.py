"""The outcome recorder: turns served answers, shadow answers and user feedback into outcome records.

The executor hands it each served result (kept in memory, bounded, so that feedback and shadows can find the
request) and each finished shadow run; ``Router.feedback`` hands it the user's verdict. Shadow and feedback may
arrive in either order; each writes what it knows and the store merges them under the request's id.

Text is kept only with ``capture`` on, and only after the scrub hook and the secret filter ran: the labeled example
(the input and an accepted answer: a label, or a score >= ``pass_score``) in ``input``/``output``, and, in a
shadow's paired record, the input and each side's answer in ``metadata.answered_input``/``metadata.answers`` (never
an example), so that a label given to any replica sharing the store scores both sides. Without capture a record
holds scores, costs, latencies and token counts, and a label given to a process that did not serve the request
cannot be scored: it is noted (``metadata.feedback.label_scored: false``) and logged (with capture on it is still
kept as the record's labeled example when the input is given).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from genroute.errors import ConfigError, UsageError
from genroute.log_every import LogEvery
from genroute.outcomes.lost_writes import LostWrites
from genroute.outcomes.records import OutcomeRecord, Side, add_scoring_cost
from genroute.outcomes.settings import OutcomeSettings, ScrubHook, redact_secrets
from genroute.outcomes.store import OutcomeStore
from genroute.runtime.forks import forget_at_fork

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from genroute.backends.base import BackendOutput
    from genroute.outcomes.scoring import RunJudge, ShadowScorer
    from genroute.outcomes.shared import SharedOutcomeStore
    from genroute.runtime.context import RunContext
    from genroute.types import GenerateRequest, GenerateResult, Turn

_log = logging.getLogger(__name__)

#: Shadow outcome writes handed to the SQLite store's writer without their shadows waiting (``_write_behind``), at
#: most; beyond, a shadow waits for its write: memory stays bounded, and no outcome is dropped for it.
MAX_WRITES_BEHIND = 256


@dataclass
class _Pending:
    """What is remembered of a served request until its feedback (memory only, never stored as such)."""

    request: GenerateRequest
    backend: str
    output: BackendOutput
    side: Side
    trace_id: str | None = None
    shadows: dict[str, BackendOutput] = field(default_factory=dict)
    label: str | None = None
    #: The backend the policy sent the request to first (its split arm, even when another rung answered).
    arm: str | None = None
    #: What deciding cost (a semantic or learned policy's embedding of the request): the policy's, not the side's.
    routing_cost_usd: float = 0.0


class OutcomeRecorder(LostWrites):
    """Writes outcome records to the store; one per router."""

    def __init__(self, settings: OutcomeSettings, store: OutcomeStore | SharedOutcomeStore, scorer: ShadowScorer, *,
                 scrub: ScrubHook | None = None, secrets: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.store = store
        self.scorer = scorer
        self.scrub = scrub
        self._secrets = secrets
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        #: Writes that failed (the request was answered; only its outcome was lost). Logged too, at most once a
        #: minute (a full disk fails every write: one warning a request would flood the logs, and fill the disk more).
        self.write_errors = 0
        self._lost_log = LogEvery(60.0)
        self._lost_unlogged = 0
        self._forget_parent()  # the lock and count of writes behind (``_write_behind``)
        forget_at_fork(self)

    # -- from the executor ----------------------------------------------------------------------------

    def served(self, id: str, request: GenerateRequest, result: GenerateResult, output: BackendOutput) -> None:
        """Remember a served answer (bounded: the oldest is forgotten first)."""
        tried = result.decision.rungs_tried
        side = served_side(result)
        self._pending[id] = _Pending(request, result.backend, output, side, result.trace_id,
                                     arm=tried[0].backend if tried else result.backend,
                                     routing_cost_usd=routing_cost(result, side))
        if len(self._pending) > self.settings.max_pending:
            self._pending.popitem(last=False)

    async def shadow(self, id: str, request: GenerateRequest, backend: str, output: BackendOutput, side: Side,
                     run_judge: RunJudge) -> OutcomeRecord | None:
        """Score a finished shadow run against the served answer (or the label) and store the pair."""
        return await self._write(await self._paired(id, request, backend, output, side, run_judge))

    async def _paired(self, id: str, request: GenerateRequest, backend: str, output: BackendOutput, side: Side,
                      run_judge: RunJudge) -> OutcomeRecord:
        """The record of a finished shadow run: scored against the served answer (or the label), paired with it."""
        pending = self._pending.get(id)
        sides: dict[str, Side] = {}
        judge_cost = 0.0
        if pending is not None:
            pending.shadows[backend] = output
            reference = pending.label
            agreement = None
            if self.scorer.needs_reference:
                scored = await self.scorer.score(request, output, pending.output.text, run_judge, id=id)
                agreement = None if scored is None else scored.score
                judge_cost += 0.0 if scored is None else scored.cost_usd
            truth = await self.scorer.score(request, output, reference, run_judge, id=id) \
                if reference is not None or not self.scorer.needs_reference else None
            judge_cost += 0.0 if truth is None else truth.cost_usd
            update: dict[str, Any] = {} if agreement is None else {"agreement": agreement}
            if truth is not None:
                update["score"] = truth.score
            sides[backend] = side.model_copy(update=update)
            served = pending.side
            if not self.scorer.needs_reference and served.score is None:
                own = await self.scorer.score(pending.request, pending.output, None, run_judge, id=id)
                served = pending.side = served.model_copy(update={"score": None if own is None else own.score})
            sides[pending.backend] = served
        else:
            sides[backend] = side
        metadata = self._metadata(id, request, pending)
        if pending is not None:
            metadata.update(self._answers(pending, backend, output))
        add_scoring_cost(metadata, f"shadow:{backend}", judge_cost)
        return OutcomeRecord(metadata=metadata, outcomes=sides)

    async def shadow_run(self, id: str, request: GenerateRequest, backend: str, output: BackendOutput,
                         ctx: RunContext, latency_s: float, span: Span, run_judge: RunJudge) -> None:
        """``shadow`` for a finished shadow run (its context holds cost and tokens); failures are counted on the
        span and logged, never raised: a lost outcome must not fail anything else."""
        # With what vectors it reused from the served rungs or another shadow cost them and took to make: what it costs
        # and takes on its own, as the served side counts its rungs' embeddings (the policy's is routing's, on neither
        # side); a reusing shadow looked faster than the same backend served by the embedding's time.
        side = Side(role="shadow", cost_usd=ctx.cost_usd + ctx.reused_cost_usd,
                    latency_s=latency_s + ctx.reused_embedding_s,
                    cloud_equivalent_cost_usd=ctx.cloud_equivalent_cost_usd,
                    input_tokens=ctx.usage.input_tokens, output_tokens=ctx.usage.billed_output_tokens)
        try:
            record = await self._paired(id, request, backend, output, side, run_judge)
        except Exception as exc:  # a scorer or judge that failed
            self._count_error()
            span.set_attribute("genroute.outcome.error", type(exc).__name__)
            # The type alone (a message may quote the request) and the record's id: which outcome it was.
            _log.warning("shadow outcome of %s not recorded (outcome record %r): %s", backend, id, type(exc).__name__)
            return
        span.set_attribute("genroute.outcome.id", record.id)
        agreement = record.outcomes[backend].agreement
        if agreement is not None:
            span.set_attribute("genroute.shadow.agreement", agreement)
        await self._write_behind(record)

    async def _write_behind(self, record: OutcomeRecord) -> None:
        """Store a shadow's record without the shadow waiting for the write: its place under the router's cap of
        shadows in flight is free once its model ran and it was scored. The SQLite store's writer answers on its own
        thread (a write that fails is counted and logged there, as one waited for); ``close`` waits for them. Past
        ``MAX_WRITES_BEHIND`` unanswered, and with the shared store, the shadow waits for its write as it did: its
        place stays taken, so it is new shadows that are dropped (counted and logged), before their model runs."""
        if isinstance(self.store, OutcomeStore):
            with self._lock:
                room = self._behind < MAX_WRITES_BEHIND
                if room:
                    self._behind += 1
            if room:
                try:
                    written = self.store.submit(record)
                except Exception as exc:  # no writer thread to be had: lost, counted and logged
                    self._written_behind(record.id, exc)
                    return
                written.add_done_callback(lambda done: self._written_behind(record.id, done.exception()))
                return
        await self._write(record)

    def _written_behind(self, id: str, exc: BaseException | None) -> None:
        with self._lock:
            self._behind -= 1
        if exc is not None:
            self._lost(id, exc)

    @property
    def writes_behind(self) -> int:
        """Shadow outcome writes handed to the store's writer that were not answered yet (``_write_behind``)."""
        return self._behind

    def close(self, timeout_s: float | None) -> None:
        """Wait for the writes handed to the SQLite store (or the shared store's SQLite archive) and move them into its
        file (``OutcomeStore.close``): on a worker thread, when the router closes."""
        store = self.store if isinstance(self.store, OutcomeStore) else self.store.archive
        if store is not None:
            store.close(timeout_s)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's writes in flight are the parent's (its writer thread answers them there)."""
        self._lock = threading.Lock()
        self._behind = 0

    # -- from the user --------------------------------------------------------------------------------

    async def feedback(self, target: GenerateResult | str, *, score: float | None, label: str | None,
                       input: str | None, run_judge: RunJudge) -> OutcomeRecord:
        """Record how a served answer turned out; with ``capture``, keep the accepted example."""
        id = target if isinstance(target, str) else (target.outcome_id or target.trace_id)
        if not id:
            raise UsageError("this result has no id to attach feedback to (was it served by this router?)",
                             field="result")
        pending = self._pending.get(id)
        stored = None
        if pending is None and (isinstance(target, str) or label is not None):
            stored = await self.store.get(id)  # served by another process (or forgotten here)
            if stored is None and isinstance(target, str):
                raise UsageError(f"no request with id {id!r} is known to this router or its outcome store (a request "
                                 "another replica served is in a shared store only once a shadow of it or a feedback "
                                 "was recorded: give its feedback to the replica that served it)", field="result")
        # What the label scores: this process's memory of the request, else the answers the record kept.
        known = _known(pending) if pending is not None else _kept(stored)
        request = known[0] if known is not None else None
        routing = 0.0  # what deciding cost, kept apart from the served side (``served_side``)
        if pending is not None:
            served_backend: str | None = pending.backend
            served = pending.side
        elif not isinstance(target, str):  # a result this router forgot (``max_pending``): read from it again
            served_backend, served = target.backend, served_side(target)
            routing = routing_cost(target, served)
        else:
            served_backend = stored.metadata.get("served") if stored is not None else None
            served = Side.model_validate({})  # what the store holds stays; only the score is added
        served_text = known[1][served_backend].text if known is not None and served_backend in known[1] else \
            (None if isinstance(target, str) else target.text)
        passed = score is not None and score >= self.settings.pass_score
        accepted = label if label is not None else (served_text if passed else None)
        # Before anything changes: a scrub hook that fails refuses the call and loses nothing.
        text_in, text_out, history = self._capture(
            pending.request.input if pending is not None else (input or _input(request)),
            accepted, request.task if request is not None else (stored.task if stored is not None else None),
            pending.request.history if pending is not None else None)
        scores, judge_cost = await self._label_scores(id, known, label,
                                                      skip=served_backend if score is not None else None,
                                                      run_judge=run_judge)
        if pending is not None:
            pending.label = label if label is not None else pending.label
        sides: dict[str, Side] = {}
        if served_backend is not None:
            served_score = score if score is not None else scores.get(served_backend)
            if served_score is not None:
                served = served.model_copy(update={"score": served_score})
                if pending is not None:
                    pending.side = served
            sides[served_backend] = served
        sides.update({b: Side.model_validate({"score": v}) for b, v in scores.items() if b != served_backend})
        metadata = self._metadata(id, request if pending is not None else None, pending)
        if routing:
            metadata["routing_cost_usd"] = routing
        metadata["feedback"] = {"score": score, "label_given": label is not None, "at": time.time()}
        if history:  # the conversation the labeled example answered, as the scrub hook and filter left it
            metadata["history"] = history
        add_scoring_cost(metadata, "feedback", judge_cost)
        if label is not None and known is None:
            metadata["feedback"]["label_scored"] = False
            _log.warning("a label for %s scored no answer: this process did not serve the request and its record "
                         "keeps no answers to score (only a shadow's paired record keeps them, with outcomes.capture "
                         "on, unless the scrub hook dropped them)", id)
        record = OutcomeRecord(input=text_in, output=text_out, metadata=metadata, outcomes=sides)
        try:
            return await self.store.upsert(record)
        except (sqlite3.Error, OSError) as exc:  # the file refused it (disk full, read-only): a genroute error
            raise self._store_error(f"feedback for {id}", exc) from exc

    async def _label_scores(self, id: str, known: tuple[GenerateRequest, dict[str, BackendOutput]] | None,
                            label: str | None, *, skip: str | None,
                            run_judge: RunJudge) -> tuple[dict[str, float], float]:
        """Each known answer's score against ``label`` (``skip``: a side the caller scored itself), and what the
        scoring cost (a judge's calls)."""
        if label is None or known is None:
            return {}, 0.0
        request, outputs = known
        scores, cost = {}, 0.0
        for backend, output in outputs.items():
            if backend != skip:
                scored = await self.scorer.score(request, output, label, run_judge, id=id)
                if scored is not None:
                    scores[backend] = scored.score
                    cost += scored.cost_usd
        return scores, cost

    # -- pieces ---------------------------------------------------------------------------------------

    def _metadata(self, id: str, request: GenerateRequest | None, pending: _Pending | None) -> dict[str, Any]:
        metadata: dict[str, Any] = {"id": id, "source": "production", "scorer": self.scorer.name, "at": time.time()}
        if pending is not None and pending.trace_id is not None:
            metadata["trace_id"] = pending.trace_id
        if request is not None:
            metadata["task"] = request.task
            metadata["features"] = {"input_chars": len(request.input)}
            if request.history:
                metadata["features"]["history_turns"] = len(request.history)
            if request.generation is not None:  # its own settings over the backends': statistics may tell them apart
                metadata["generation"] = request.generation.given()
        if pending is not None:
            metadata["served"] = pending.backend
            metadata["arm"] = pending.arm
            metadata.setdefault("features", {})["input_tokens"] = pending.side.input_tokens
            if pending.routing_cost_usd:
                metadata["routing_cost_usd"] = pending.routing_cost_usd
        return metadata

    def _capture(self, input: str | None, output: str | None, task: str | None, history: list[Turn] | None = None
                 ) -> tuple[str | None, str | None, list[dict[str, str]] | None]:
        """The example to keep, scrubbed, and the request's earlier turns (``history``, as the scrub hook left them),
        or ``(None, None, None)``: only with capture, only when accepted."""
        if not self.settings.capture or input is None or output is None:
            return None, None, None
        example: Mapping[str, Any] = {"input": input, "output": output, "task": task}
        if history:  # the hook sees the whole conversation: a secret said two turns ago is scrubbed as well
            example = {**example, "history": [turn.model_dump() for turn in history]}
        if self.scrub is not None:
            scrubbed: object = self.scrub(dict(example))  # a hook of the user's: its annotation is a promise
            if scrubbed is None:
                return None, None, None
            if not isinstance(scrubbed, Mapping):
                raise ConfigError(f"the scrub hook must return a mapping or None, not {type(scrubbed).__name__}",
                                  field="outcomes.scrub")
            example = scrubbed
        text_in, text_out = example.get("input"), example.get("output")
        if not isinstance(text_in, str) or not isinstance(text_out, str) or not text_in.strip():
            return None, None, None
        turns = example.get("history") if history else None
        kept = [{"role": str(t.get("role")), "text": redact_secrets(t["text"], self._secrets)} for t in turns
                if isinstance(t, Mapping) and isinstance(t.get("text"), str)] if isinstance(turns, list) else None
        return redact_secrets(text_in, self._secrets), redact_secrets(text_out, self._secrets), kept or None

    def _answers(self, pending: _Pending, backend: str, output: BackendOutput) -> dict[str, Any]:
        """With capture: the input and both answers of a shadow's pair, scrubbed, for a label given elsewhere."""
        if not self.settings.capture:
            return {}
        kept: dict[str, Any] = {"answers": {}}
        try:
            for name, text in ((pending.backend, pending.output.text), (backend, output.text)):
                text_in, text_out, history = self._capture(pending.request.input, text, pending.request.task,
                                                           pending.request.history)
                if text_in is None:
                    return {}  # the scrub hook dropped it
                kept["answered_input"], kept["answers"][name] = text_in, text_out
                if history:
                    kept["answered_history"] = history
        except ConfigError as exc:  # the scores are still recorded; only the answers are not kept
            _log.warning("answers of %s not kept: %s: %s", backend, exc.field, exc.message)
            return {}
        return kept



def routing_cost(result: GenerateResult, side: Side) -> float:
    """What ``result``'s request cost beyond its served ``side`` (``served_side``): deciding (a routing embedding)."""
    return max(0.0, result.cost_usd - side.cost_usd)


def served_side(result: GenerateResult) -> Side:
    """The served backend's side of a record, from its result: what its rungs cost (a failed one's included), not
    what deciding cost (a semantic or learned policy's embedding of the request, paid whichever backend answers, and
    on no shadow's side: kept apart as the record's ``routing_cost_usd``); and how long its rungs took, each from its
    admission on, as a shadow's side is timed from its own admission: the policy's decide time is on neither side
    (the result's ``latency_s`` still holds it), so that served and shadow latencies compare like for like."""
    tried = result.decision.rungs_tried
    cost = sum(attempt.cost_usd for attempt in tried) if tried else result.cost_usd
    latency = sum(attempt.latency_s for attempt in tried) if tried else result.latency_s
    return Side(role="served", cost_usd=cost, latency_s=latency,
                cloud_equivalent_cost_usd=result.cloud_equivalent_cost_usd,
                input_tokens=result.usage.input_tokens, output_tokens=result.usage.billed_output_tokens)


def _known(pending: _Pending) -> tuple[GenerateRequest, dict[str, BackendOutput]]:
    """The request and every answer this process remembers of it (served first)."""
    return pending.request, {pending.backend: pending.output, **pending.shadows}


def _kept(record: OutcomeRecord | None) -> tuple[GenerateRequest, dict[str, BackendOutput]] | None:
    """The request and answers a record kept (``_answers``), or ``None`` when it kept none."""
    from genroute.backends.base import BackendOutput
    from genroute.types import GenerateRequest

    meta = {} if record is None else record.metadata
    text, answers = meta.get("answered_input"), meta.get("answers")
    if not isinstance(text, str) or not isinstance(answers, dict) or not answers:
        return None
    request = GenerateRequest(input=text, task=record.task if record is not None else None)
    return request, {str(b): BackendOutput(text=str(t), model="") for b, t in answers.items()}


def _input(request: GenerateRequest | None) -> str | None:
    return None if request is None else request.input
