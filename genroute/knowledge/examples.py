"""The ICL example store (a Chroma collection of ``{input, output, label?, metadata?}``) and its selectors.

Selectors: ``fixed`` (first k in file order), ``random`` (seeded per request), ``knn`` (most similar
inputs), ``mmr`` (similar yet mutually diverse), ``balanced`` (nearest per label, labels taken in
turn). An example whose input equals the request's (after normalising case, whitespace and Unicode composition) is
never selected, so an evaluation item that is also in the store cannot leak its own answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genroute.bounds import is_real, is_whole
from genroute.errors import BackendUnavailable, ConfigError, UsageError
from genroute.knowledge.collection_checks import check_collection_name
from genroute.knowledge.ingest import JSONL_SUFFIXES, IngestReport, expand_paths
from genroute.knowledge.records import (GENERATION, FileState, check_target, file_state, paid_writes,
                                        settle_sources, upsert_missing, withdraw_deleted)
from genroute.runtime.locks import LoopsLock

if TYPE_CHECKING:
    from opentelemetry import trace

    from genroute.knowledge.store import Hit, KnowledgeStore
    from genroute.runtime.embeddings import RequestEmbeddings

Strategy = Literal["fixed", "random", "knn", "mmr", "balanced"]
STRATEGIES: tuple[str, ...] = ("fixed", "random", "knn", "mmr", "balanced")


@dataclass(frozen=True)
class ExampleRecord:
    """A stored example; ``score`` is its similarity to the request when a query selected it."""

    id: str
    input: str
    output: str
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    score: float | None = None
    embedding: list[float] | None = field(default=None, repr=False, compare=False)


def input_key(text: str) -> str:
    """The leakage key of an input: hash of its case-folded, whitespace-collapsed text in NFC."""
    # NFC: "café" typed with a combining accent is the same text (and MiniLM embeds both alike, as the nearest).
    # Not folded, on purpose: punctuation ("3.5" / "35", "No." / "No", "Let's eat, grandma" / "Let's eat grandma"
    # ask other things) and compatibility forms (NFKC: "x²" is "x2", "…" is "..."). The key is also stored (example
    # metadata, tune_result.json, compiled policies): a wider fold would re-key those, and an old store would then
    # show a request its own example (an unchanged file is not written again).
    folded = unicodedata.normalize("NFC", " ".join(text.casefold().split()))
    return hashlib.sha256(folded.encode("utf-8")).hexdigest()[:32]


def input_keys(texts: Iterable[str]) -> tuple[str, ...]:
    """The sorted, distinct ``input_key`` of each text: what a compiled file records of the inputs it was fit on."""
    return tuple(sorted({input_key(text) for text in texts}))


def example_id(inp: str, out: str, label: str | None) -> str:
    """Content id of an example, so reloading a file upserts rather than duplicates."""
    return hashlib.sha256(json.dumps([inp, out, label]).encode("utf-8")).hexdigest()[:32]


async def aload_examples(store: KnowledgeStore, paths: Sequence[str | Path], *, collection: str,
                         batch_size: int | None = None, progress: bool = False,
                         on_batch: Callable[[int, int], None] | None = None) -> IngestReport:
    """Load JSONL example files into ``collection`` (idempotent: content ids, stored ones skipped).

    Every file is read and checked before anything is written, so a bad line anywhere (named as
    ``path:line`` in the ``UsageError``'s field) leaves the collection as it was. The collection then holds each
    file's examples as the file holds them now: examples an earlier load stored that the file no longer has (an
    edited output or label, a removed line) are deleted, as ingestion does with chunks; so are those of files gone
    from a directory of ``paths``; but an example another file holds too (loaded now or before) stays. A directory's ``.jsonl``/``.ndjson`` files are read, nothing else. A load that
    fails part-way says on its error what the batches it stored cost; ``on_batch(batches, examples)`` is called
    after each batch written, as ``aingest``'s.
    """
    started = time.perf_counter()
    check_target(store, on_batch)
    check_collection_name(collection, "collection")  # a list was a TypeError from `in`; refused before any read
    await asyncio.to_thread(store.check_writable)  # before any file is read, not at the first write
    files = expand_paths(paths, suffixes=JSONL_SUFFIXES, empty_dirs=collection in await store.collections())
    records: dict[str, tuple[str, dict[str, Any]]] = {}
    produced: dict[str, set[str]] = {}
    generations: dict[str, int] = {}
    states: dict[str, FileState] = {}
    total = 0
    for path in files:
        states[str(path)] = file_state(path)  # before reading: an edit during the read shows as a change
        generations[str(path)] = generation = time.time_ns()
        produced[str(path)] = mine = set()
        for ex in _read_examples(path):
            rid = example_id(ex.input, ex.output, ex.label)
            meta = {"output": ex.output, "label": ex.label, "input_key": input_key(ex.input),
                    "ord": len(records), "source": str(path), GENERATION: generation,
                    "metadata": json.dumps(ex.metadata, sort_keys=True) if ex.metadata else None}
            records.setdefault(rid, (ex.input, meta))
            mine.add(rid)
            total += 1
    # New examples go after the stored ones, so the fixed selector keeps load order across loads
    # (examples already stored are skipped and keep their place).
    base = await store.count(collection, kind="examples") if collection in await store.collections() else 0
    for _, meta in records.values():
        meta["ord"] += base
    with paid_writes() as charges:  # what embedding the new examples costs
        added, batches = await upsert_missing(store, collection, records, kind="examples", batch_size=batch_size,
                                              progress=progress, on_batch=on_batch)
        # A kept example keeps its place in the fixed selector's order.
        removed = await settle_sources(store, collection, generations, records, kind="examples", produced=produced,
                                       kept_as_stored=("ord",), states=states)
        removed += await withdraw_deleted(store, collection, paths, files, kind="examples")
    return IngestReport(collection=collection, files=len(files), documents=total, chunks=len(records), added=added,
                        skipped=len(records) - added, batches=batches, removed=removed,
                        seconds=time.perf_counter() - started,
                        cost_usd=charges.cost_usd, cost_estimated=charges.estimated)


def _read_examples(path: Path) -> list[Any]:
    """The examples of one JSONL file; a bad line is a ``UsageError`` whose field is ``path:line`` (as tuning names
    it), any other error one naming ``paths``."""
    from genroute.tuning.data import load_examples

    try:
        return load_examples(path)
    except UsageError as exc:
        if exc.field is not None and exc.field.startswith(f"{path}:"):
            raise
        raise UsageError(exc.message, field="paths") from None


class ExampleStore:
    """Selects examples for a request from one collection of a ``KnowledgeStore``."""

    def __init__(self, store: KnowledgeStore, collection: str, *, field: str = "collection") -> None:
        check_target(store, None)  # anything else was an AttributeError at the first read
        self.store = store
        self.collection = collection
        self.field = field
        self._pool: list[ExampleRecord] | None = None
        self._stamp = 0  # the collection's write stamp when the pool was read
        self._count: int | None = None
        self._counted = 0  # the collection's write stamp when it was counted
        self._reloaded: list[ExampleRecord] | None = None  # the pool the last ``reload`` read, until taken
        self._mark: tuple[int, ...] | None = None  # the store's ``place_mark`` before the pool and count were read
        #: Reads of every example from Chroma (the pool's first, and each after a write or a change ``reload`` saw).
        self.pool_reads = 0
        self._lock = LoopsLock()  # a router serves several event loops: an asyncio.Lock binds to one

    @property
    def count(self) -> int | None:
        """Number of stored examples, once known (``None`` before the first selection)."""
        return self._count

    async def size(self) -> int:
        """Number of stored examples (counted once, and again after this process wrote to the collection, as the
        pool is read again); an empty collection is a ``ConfigError``."""
        stamp = self.store.written(self.collection)
        if self._count is None or self._counted != stamp:
            count = await self.store.count(self.collection, kind="examples", field=self.field)
            if count == 0:
                raise ConfigError(f"example collection {self.collection!r} is empty; load examples "
                                  "first (genroute ingest --kind examples)", field=self.field)
            self._count, self._counted = count, stamp
        return self._count

    async def pool(self) -> list[ExampleRecord]:
        """Every example in file order (fixed and random selection need them all); kept, and read again after this
        process wrote to the collection (a load through any store of it), or after ``refresh``."""
        stamp = self.store.written(self.collection)  # before the read: a write during it is read next time
        if self._pool is None or self._stamp != stamp:
            async with self._lock:
                if self._pool is None or self._stamp != stamp:
                    mark = await asyncio.to_thread(self.store.place_mark)
                    self._count = None  # counted again: the collection may be empty now
                    await self.size()
                    records = await self._read_pool()
                    self._pool, self._stamp, self._mark = records, stamp, mark
                    self._count = len(records)
        return self._pool

    async def input_keys(self) -> frozenset[str]:
        """The ``input_key`` of every stored example: the inputs ``select`` never shows a request of its own."""
        return frozenset(str(r.metadata.get("input_key")) for r in await self.pool())

    def refresh(self) -> None:
        """Forget the cached pool and count (after loading more examples), and a pool ``reload`` kept for the facts."""
        self._pool = None
        self._count = None
        self._mark = None
        self._reloaded = None

    async def reload(self) -> None:
        """Read the count and (if read before) the pool again and swap them in: selections meanwhile use the old
        ones, where ``refresh`` made the next selection wait for the read. A collection now empty, or a read that
        fails, is forgotten instead: the next selection reports it. A store that cannot be reached (a Chroma server
        down: ``BackendUnavailable``) says nothing of the collection: what was read before is kept and the error
        raised, so that a refresh keeps this backend's facts and reports it. Nothing is read when the store's place is
        unchanged since the last read (``place_mark``: an embedded store's database file; a server's is always read)."""
        # A pool an earlier reload kept no facts took (its refresh stopped before them) is not this one's.
        self._reloaded = None
        stamp = self.store.written(self.collection)
        mark = await asyncio.to_thread(self.store.place_mark)
        if (mark is not None and mark == self._mark and self._count is not None and self._counted == stamp
                and (self._pool is None or self._stamp == stamp)):
            self._reloaded = self._pool  # what the backend's facts count, as after a read
            return
        try:
            count = await self.store.count(self.collection, kind="examples", field=self.field)
            pool = None if self._pool is None else await self._read_pool()
        except BackendUnavailable:  # the store is down, not the collection gone: kept, and reported by the refresh
            raise
        except Exception:  # the next selection reads again and raises it, as after ``refresh``
            count = 0
        if count == 0:
            self.refresh()
            return
        if pool is not None:
            self._pool, self._stamp, count = pool, stamp, len(pool)
        self._count, self._counted, self._mark = count, stamp, mark
        self._reloaded = pool

    def take_reloaded(self) -> list[ExampleRecord] | None:
        """The pool the last ``reload`` read (once; ``None``: it read none, or it was taken): what the backend's
        facts count after a refresh, instead of reading the collection a second time."""
        pool, self._reloaded = self._reloaded, None
        return pool

    async def _read_pool(self) -> list[ExampleRecord]:
        self.pool_reads += 1
        hits = await self.store.get_all(self.collection, kind="examples", field=self.field)
        records = [_record(h) for h in hits]
        records.sort(key=lambda r: r.metadata.get("ord", 0))
        return records

    async def select(self, text: str, *, strategy: Strategy, k: int, seed: int = 0, fetch_k: int | None = None,
                     mmr_lambda: float = 0.5, tracer: trace.Tracer | None = None,
                     embeddings: RequestEmbeddings | None = None) -> list[ExampleRecord]:
        """Up to ``k`` examples for the request input ``text``, best first, never one with the same input
        (``text`` is embedded, if the strategy needs it, in a span sent to ``tracer``, unless its request already
        did: ``embeddings``). ``fetch_k``: the candidates mmr and balanced choose from (at least ``k``); other
        strategies ignore it."""
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown selector {strategy!r}; known: {', '.join(STRATEGIES)}", field="selector")
        if not isinstance(text, str):  # an AttributeError ('int' object has no attribute 'casefold')
            raise UsageError(f"must be the request's text, not {type(text).__name__}", field="text")
        if not is_whole(k):  # "2" was a TypeError, 2.5 one for fixed
            raise UsageError(f"must be a whole number of examples, got {k!r:.40}", field="k")
        if strategy == "mmr" and not (is_real(mmr_lambda) and 0 <= mmr_lambda <= 1):  # 5 or NaN was taken
            raise UsageError(f"must be a number from 0 to 1, got {mmr_lambda!r:.40}", field="mmr_lambda")
        if k <= 0:
            return []
        key = input_key(text)
        if strategy == "fixed":
            return [r for r in await self.pool() if r.metadata.get("input_key") != key][:k]
        if strategy == "random":
            rng = random.Random(f"{seed}:{key}")  # reproducible per (seed, request)
            eligible = [r for r in await self.pool() if r.metadata.get("input_key") != key]
            return rng.sample(eligible, min(k, len(eligible)))
        want = k if strategy == "knn" else _candidates(k, fetch_k)
        # An empty collection is refused (counted once). The index is queried directly, not capped by that count:
        # examples loaded since (by another process too) are candidates at once.
        await self.size()
        from genroute.knowledge.embedder_base import aembed_text

        vector = await aembed_text(self.store.embedder, text, tracer=tracer, embeddings=embeddings)
        mmr_needs = strategy == "mmr"
        # A metadata filter makes Chroma search several times slower, so over-fetch a little and drop
        # leaks here; only if more than the slack leaked (many copies of the input) query with the filter.
        slack = 2
        hits = await self.store.query_vector(self.collection, vector, kind="examples",
                                             k=want + slack, include_embeddings=mmr_needs,
                                             field=self.field)
        kept = [h for h in hits if h.metadata.get("input_key") != key]
        if len(kept) < want and len(kept) < len(hits) and len(hits) == want + slack:
            kept = await self.store.query_vector(self.collection, vector, kind="examples", k=want,
                                                 where={"input_key": {"$ne": key}},
                                                 include_embeddings=mmr_needs, field=self.field)
        candidates = [_record(h, scored=True) for h in kept[:want]]
        if strategy == "knn":
            return candidates[:k]
        if strategy == "mmr":
            return mmr(vector, candidates, k, mmr_lambda)
        return balanced(candidates, k)


def _candidates(k: int, fetch_k: int | None) -> int:
    """How many nearest examples mmr/balanced choose ``k`` from: ``fetch_k``, by default max(4k, 20)."""
    if fetch_k is None:
        return max(4 * k, 20)
    if fetch_k < k:
        raise ConfigError(f"must be at least k ({k}): the selector picks k of these candidates", field="fetch_k")
    return fetch_k


def mmr(query: Sequence[float], candidates: list[ExampleRecord], k: int, lambda_: float) -> list[ExampleRecord]:
    """Maximal marginal relevance: trade similarity to ``query`` against similarity to those already picked."""
    import numpy as np

    if not candidates:
        return []
    vectors = np.asarray([c.embedding for c in candidates], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-12
    q = np.asarray(query, dtype=np.float32)
    q /= np.linalg.norm(q) + 1e-12
    relevance = vectors @ q
    chosen: list[int] = []
    redundancy = np.full(len(candidates), -np.inf, dtype=np.float32)
    while len(chosen) < min(k, len(candidates)):
        scores = lambda_ * relevance - (1 - lambda_) * np.where(np.isinf(redundancy), 0.0, redundancy)
        scores[chosen] = -np.inf
        best = int(np.argmax(scores))
        chosen.append(best)
        redundancy = np.maximum(redundancy, vectors @ vectors[best])
    return [candidates[i] for i in chosen]


def balanced(candidates: list[ExampleRecord], k: int) -> list[ExampleRecord]:
    """Take labels in turn (the label with the nearest example first), each label's nearest examples first."""
    by_label: dict[str | None, list[ExampleRecord]] = {}
    for c in candidates:  # candidates arrive nearest first, so dict order ranks labels by their best
        by_label.setdefault(c.label, []).append(c)
    queues = list(by_label.values())
    out: list[ExampleRecord] = []
    depth = 0
    while len(out) < k and any(len(q) > depth for q in queues):
        out.extend(q[depth] for q in queues if len(q) > depth)
        depth += 1
    return out[:k]


def _record(hit: Hit, *, scored: bool = False) -> ExampleRecord:
    meta = hit.metadata
    raw_meta = meta.get("metadata")
    try:
        extra = json.loads(raw_meta) if isinstance(raw_meta, str) else {}
    except json.JSONDecodeError:
        extra = {}
    if not isinstance(extra, dict):
        extra = {}
    # The file's own metadata at the top level ({{ metadata.topic }} in a template), and still under
    # "extra" as before; genroute's bookkeeping keys win a clash (selection depends on them).
    return ExampleRecord(
        id=hit.id, input=hit.text, output=str(meta.get("output", "")), label=meta.get("label"),
        metadata={**extra, "ord": meta.get("ord", 0), "input_key": meta.get("input_key"),
                  "source": meta.get("source"), **({"extra": extra} if extra else {})},
        score=hit.score if scored else None,
        embedding=hit.embedding,
    )
