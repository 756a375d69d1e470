"""Few-shot in-context learning: per-request example selection from a Chroma example store.

Two prompt shapes. ``turns`` (default): each example is a user turn and a model turn, then the request;
every engine renders that as a dialogue, which the base local Gemma 3 270M continues with a bare label
(the local engine's transcript is ``User: ...\\nAssistant: ...``). ``text``: one user turn of
``Input: ...\\nOutput: ...`` blocks ending in ``Input: <request>\\nOutput:`` with a stop at the next
``\\nInput:``, for engines that pass a single turn through verbatim. Measured on dynasent with the local
engine: ``text`` gave no valid label in 20 requests (the transcript wrapper breaks the pattern),
``turns`` a valid label every time.

Stored examples are untrusted data, as retrieved chunks are for RAG: their input, output and label go
into the prompt with turn and block markers defused (``defused``), and the backend never sends tools,
so an example that says "call delete_all" can only be imitated as text, never executed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from genroute.backends.base import BackendConfig, BackendOutput, Prepared, SingleCallBackend, user_content
from genroute.backends.icl_examples import as_hit, defused, example_task, task_counts
from genroute.backends.templating import check_template, compile_template, render
from genroute.engines.gemini_cache import ContextCacheSettings, PrefixCaches, cache_gone
from genroute.errors import BackendRejected, BackendUnavailable
from genroute.runtime.threads import on_daemon_thread
from genroute.types import GenerateRequest

if TYPE_CHECKING:
    from google.genai import types

    from genroute.knowledge.examples import ExampleRecord, ExampleStore
    from genroute.runtime.context import RunContext
    from genroute.runtime.resources import Resources

_log = logging.getLogger(__name__)


class IclConfig(BackendConfig):
    """Config of an ``icl`` backend."""

    kind: Literal["icl"] = "icl"
    collection: str = Field(min_length=3, max_length=512, description="Chroma collection of examples.")
    selector: Literal["fixed", "random", "knn", "mmr", "balanced"] = "knn"
    k: int = Field(default=4, ge=0, le=64, description="Examples to show (fewer if the budget runs out).")
    seed: int = Field(default=0, description="Seed of the random selector (combined with the request).")
    fetch_k: int | None = Field(default=None, ge=1,
                                description="Candidates for mmr/balanced, at least k (default max(4k, 20)).")
    mmr_lambda: float = Field(default=0.5, ge=0.0, le=1.0, description="MMR: 1 = pure similarity, 0 = pure diversity.")
    example_tokens: int = Field(default=1500, ge=0, description="Token budget for the rendered examples.")
    instructions: str | None = Field(default=None, description="Text before the examples, in the user turn.")
    example_template: str = Field(default="Input: {{ input }}\nOutput: {{ output }}",
                                  description="Jinja2 for one example: input, output, label, metadata, n.")
    query_template: str = Field(default="Input: {{ input }}\nOutput:", description="Jinja2 for the request.")
    separator: str = "\n\n"
    order: Literal["nearest_last", "nearest_first"] = Field(
        default="nearest_last",
        description="Where the most similar example goes (last = next to the request); `fixed` and `random` keep "
                    "their own order (the file's; the draw's).",
    )
    stop: tuple[str, ...] = Field(default=("\nInput:",), description="Stop sequences added in `text` format.")
    format: Literal["text", "turns"] = Field(
        default="turns",
        description="`text`: one user turn of rendered examples; `turns`: each example as a user/model turn pair.",
    )

    context_cache: ContextCacheSettings | None = Field(
        default=None, description="Cache the fixed example prefix on Gemini (`client.caches`); off by default.",
    )

    @field_validator("fetch_k")
    @classmethod
    def _fetch_k_covers_k(cls, value: int | None, info: ValidationInfo) -> int | None:
        k = info.data.get("k")
        if value is not None and k is not None and info.data.get("selector") in ("mmr", "balanced") and value < k:
            raise ValueError(f"must be at least k ({k}): the selector picks k of these candidates")
        return value

    @model_validator(mode="after")
    def _templates_compile(self) -> IclConfig:
        if self.context_cache is not None and self.selector != "fixed":
            raise ValueError("context_cache needs selector: fixed (other selectors change the prefix per request)")
        for name in ("example_template", "query_template"):
            check_template(getattr(self, name), name=name)
        return self


class IclBackend(SingleCallBackend):
    """Few-shot prompting with examples chosen per request (fixed, random, kNN, MMR or label-balanced)."""

    kind: ClassVar[str] = "icl"
    Config: ClassVar[type[BackendConfig]] = IclConfig
    capabilities: ClassVar[frozenset[str]] = frozenset({"examples"})

    config: IclConfig

    def __init__(self, name: str, config: BackendConfig, resources: Resources) -> None:
        super().__init__(name, config, resources)
        settings = self.config.context_cache
        self._caches = PrefixCaches(settings or ContextCacheSettings())
        self._tags: tuple[tuple[Any, int], list[Any]] | None = None  # (place mark and write stamp, tags) last read

    def billed_rates(self) -> tuple[tuple[str, str], ...]:
        """A context cache's storage is billed per token-hour: its model needs a ``cache_storage`` price."""
        if self.config.context_cache is None:
            return ()
        return (("cache_storage", f"backends.{self.name}.context_cache"),)

    @cached_property
    def examples(self) -> ExampleStore:
        """The example store over this backend's collection."""
        from genroute.knowledge.examples import ExampleStore

        from genroute.knowledge.store import require_store

        store = require_store(self.resources.knowledge, who=f"backend {self.name!r}")
        return ExampleStore(store, self.config.collection, field=f"backends.{self.name}.collection")

    @cached_property
    def _templates(self) -> tuple[Any, Any]:
        return compile_template(self.config.example_template), compile_template(self.config.query_template)

    async def probe(self) -> str:
        """Count the collection: one Chroma call (the store answers and holds the collection; no embedding)."""
        name = self.config.collection
        # on a daemon thread, which a hung Chroma must not hold the process's exit with; one count at a time: a check
        # made while an earlier one's still hangs waits for that one
        store, field = self.examples.store, f"backends.{self.name}.collection"
        n = await on_daemon_thread((store, name, field), "genroute-probe", store.count_sync, name, kind="examples",
                                   field=field)
        return f"collection {name!r} holds {n} examples"

    def stop_sequences(self) -> tuple[str, ...]:
        """``generation.stop_sequences``, then (in ``text`` format) ``stop``, the format's own."""
        cfg = self.config
        own = cfg.generation.stop_sequences
        return own if cfg.format == "turns" else tuple(dict.fromkeys(own + cfg.stop))

    def facts(self) -> dict[str, Any]:
        """Collection, selector, k, ``example_count`` and ``example_counts`` per task (read from the store,
        blocking; zero and empty if it is unavailable)."""
        pool = self.examples.take_reloaded() if "examples" in self.__dict__ else None
        if pool is not None:  # a refresh just read every example (``reload``): counted from it, not read again
            tags = [(r.metadata.get("extra") or {}).get("task") for r in pool]
        else:
            tags = self._stored_tags()
        return {"collection": self.config.collection, "selector": self.config.selector, "k": self.config.k,
                "example_count": len(tags), "example_counts": task_counts(tags, self.config.tasks)}

    def _stored_tags(self) -> list[Any]:
        """Each stored example's task tag, from the collection's metadata (blocking; empty if it is unavailable), or as
        the last read found them while the store's place is unchanged since (``place_mark``, and no write by this
        process: a ``knn`` backend's refresh reads no more than a ``fixed`` one's)."""
        try:
            store = self.examples.store
            key = (store.place_mark(), store.written(self.config.collection))
            if key[0] is not None and self._tags is not None and self._tags[0] == key:
                return self._tags[1]
            col = store.collection_sync(self.config.collection, kind="examples",
                                        field=f"backends.{self.name}.collection")
            tags = [example_task(meta) for meta in col.get(include=["metadatas"])["metadatas"] or []]
        except BackendUnavailable as exc:  # a replica started while the Chroma server is down: said, not silent
            _log.warning("backend %r counts 0 examples until a refresh can read collection %r: %s: %s", self.name,
                         self.config.collection, type(exc).__name__, exc)
            return []
        except Exception:  # facts must never fail router construction; the first request reports it
            return []
        self._tags = (key, tags)
        return tags

    def refresh(self) -> None:
        """Forget the cached example pool (after examples were loaded)."""
        self._tags = None
        if "examples" in self.__dict__:
            self.examples.refresh()

    async def reload(self) -> None:
        """Read the example pool and count again and swap them in (``Router.refresh``): selections meanwhile use the
        ones read before."""
        if "examples" in self.__dict__:
            await self.examples.reload()

    async def select(self, request: GenerateRequest, ctx: RunContext | None = None) -> list[ExampleRecord]:
        """The examples this request will be shown, best first (before the token budget); with ``ctx``, a query's
        (knn, mmr, balanced) embedding joins the request's trace and reuses its embeddings."""
        cfg = self.config
        on = ctx is not None and cfg.selector not in ("fixed", "random")
        return await self.examples.select(request.input, strategy=cfg.selector, k=cfg.k, seed=cfg.seed,
                                          fetch_k=cfg.fetch_k, mmr_lambda=cfg.mmr_lambda,
                                          tracer=ctx.tracer if on and ctx else None,
                                          embeddings=ctx.request_embeddings() if on and ctx else None)

    async def shown(self, request: GenerateRequest, ctx: RunContext) -> list[tuple[ExampleRecord, str]]:
        """``select`` then ``fit``: the examples shown, in prompt order, with their text, in a span that names them
        (``genroute.icl.example_ids``): a query's retrieval span, or (``fixed``, ``random``: no query) the
        ``genroute.icl.examples`` span."""
        cfg = self.config
        if cfg.selector in ("fixed", "random"):  # the pool as read (Chroma only when it was read again): no query
            from genroute.knowledge.telemetry import examples_span, recorded_ids

            with examples_span(ctx.tracer, cfg.collection, cfg.selector) as span:
                shown = self.fit(await self.select(request))
                span.set_attribute("genroute.icl.example_ids", recorded_ids(ex.id for ex, _ in shown))
            return shown
        from genroute.knowledge.telemetry import record_hits, recorded_ids, retrieval_span

        with retrieval_span(ctx.tracer, self.examples.store, cfg.collection, cfg.k) as span, ctx.charged():
            chosen = await self.select(request, ctx)
            record_hits(span, [as_hit(e) for e in chosen], capture=ctx.capture_content,
                        max_chars=ctx.telemetry.capture_max_chars)
            shown = self.fit(chosen)
            # Ids (content hashes; a foreign collection's, cut), not texts: those stay behind content capture.
            span.set_attributes({"genroute.icl.selector": cfg.selector,
                                 "genroute.icl.example_ids": recorded_ids(ex.id for ex, _ in shown)})
        return shown

    def fit(self, chosen: list[ExampleRecord]) -> list[tuple[ExampleRecord, str]]:
        """Examples (defused, with their rendered text) that fit the token budget, in prompt order."""
        from genroute.knowledge.chunking import token_counter

        cfg = self.config
        counter = token_counter()
        kept: list[tuple[ExampleRecord, str]] = []
        used = 0
        for n, ex in enumerate(chosen, start=1):
            ex = defused(ex)
            block = self._render(self._templates[0], {"input": ex.input, "output": ex.output, "label": ex.label,
                                                      "metadata": ex.metadata, "n": n}, "example_template")
            cost = counter.count(block)
            if used + cost > cfg.example_tokens:
                continue  # a shorter example further down may still fit
            used += cost
            kept.append((ex, block))
        ranked = cfg.selector in ("knn", "mmr", "balanced")  # fixed and random rank nothing by similarity
        return kept[::-1] if ranked and cfg.order == "nearest_last" else kept

    def contents(self, request: GenerateRequest, shown: list[tuple[ExampleRecord, str]], *,
                 split: bool = False) -> tuple[list[types.Content], list[types.Content]]:
        """(static prefix, per-request tail): examples as user/model turn pairs (``turns``) or one rendered
        user turn (``text``; with ``split`` the examples and the query become two turns, for caching)."""
        from google.genai import types

        cfg = self.config
        if cfg.format == "turns":
            prefix: list[types.Content] = []
            for ex, _ in shown:
                prefix.append(user_content(ex.input))
                prefix.append(types.Content(role="model", parts=[types.Part(text=ex.output)]))
            return prefix, [user_content(request.input)]
        query = self._render(self._templates[1], {"input": request.input, "task": request.task,
                                                  "metadata": request.metadata, "variables": request.variables},
                             "query_template")
        head = ([cfg.instructions] if cfg.instructions else []) + [block for _, block in shown]
        if split and head:
            return [user_content(cfg.separator.join(head))], [user_content(query)]
        return [], [user_content(cfg.separator.join(head + [query]))]

    def _render(self, template: Any, scope: dict[str, Any], name: str) -> str:
        return render(template, scope, backend=self.name, field=f"backends.{self.name}.{name}")

    async def prepare(self, request: GenerateRequest, ctx: RunContext) -> Prepared:
        cfg = self.config
        shown = await self.shown(request, ctx)
        system = cfg.system
        stops = cfg.generation.stop_sequences
        if cfg.format == "turns":
            system = "\n\n".join(t for t in (cfg.system, cfg.instructions) if t) or None
        else:
            stops = self.stop_sequences()  # within the engine's limit: checked when the router was built
            ctx.format_stops = cfg.stop  # kept when the request gives stop_sequences of its own
        prefix, tail = self.contents(request, shown, split=cfg.context_cache is not None)
        extra: dict[str, Any] = {"examples": [ex.id for ex, _ in shown]}
        config = cfg.generation.to_genai(system=system, stop_sequences=list(stops) or None)
        inline = Prepared(model=cfg.model, contents=prefix + tail, config=config, extra=extra)
        cache = await self._context_cache(prefix, system, ctx) if cfg.context_cache is not None else None
        if cache is None:
            return inline
        # The system instruction lives in the cache; Gemini rejects it next to cached_content.
        config = cfg.generation.to_genai(stop_sequences=list(stops) or None, cached_content=cache)
        return Prepared(model=cfg.model, contents=tail, config=config,
                        extra={**extra, "cached_content": cache, "inline": inline})

    async def _context_cache(self, prefix: list[types.Content], system: str | None,
                             ctx: RunContext) -> str | None:
        """The name of a Gemini cache holding ``prefix`` (made on first use), or ``None`` to send it inline."""
        from genroute.knowledge.chunking import token_counter

        settings = self.config.context_cache
        engine = self.engine
        if settings is None or not prefix or not engine.context_caching:
            return None
        text = "\n".join(p.text or "" for c in prefix for p in c.parts or ()) + (system or "")
        if token_counter().count(text) < settings.min_tokens:
            return None

        def pay(tokens: int | None) -> float:
            # Storage is billed per token-hour for the cache's lifetime (and, on Vertex AI, its creation as input):
            # the request that made it pays, an estimate when the answer counted no tokens or never came.
            counted = token_counter().count(text) if tokens is None else tokens
            return ctx.charge_cache(engine, self.config.model, counted, settings.ttl_s, estimated=tokens is None)

        def create() -> Any:
            return engine.create_cache(self.config.model, prefix, system=system, ttl_s=settings.ttl_s,
                                       display_name=f"genroute-{self.name}", timeout_s=ctx.remaining_s(),
                                       tracer=ctx.tracer, charge=pay)

        return await self._caches.name((self.config.model, system, text), create)

    async def run(self, request: GenerateRequest, ctx: RunContext) -> BackendOutput:
        prepared = await self.prepare(request, ctx)
        try:
            return await self.run_prepared(prepared, ctx)
        except BackendRejected as exc:
            return await self.run_prepared(self._inline_after(prepared, exc), ctx)

    async def stream(self, request: GenerateRequest, ctx: RunContext) -> AsyncGenerator[str | BackendOutput, None]:
        prepared = await self.prepare(request, ctx)
        sent = False
        try:
            async with aclosing(self.stream_prepared(prepared, ctx)) as items:
                async for item in items:
                    sent = True
                    yield item
            return
        except BackendRejected as exc:
            if sent:
                raise
            prepared = self._inline_after(prepared, exc)
        async with aclosing(self.stream_prepared(prepared, ctx)) as items:
            async for item in items:
                yield item

    def _inline_after(self, prepared: Prepared, exc: BackendRejected) -> Prepared:
        """The same call with the prefix inline, if ``exc`` says its cache is gone; else re-raise ``exc``."""
        inline = prepared.extra.get("inline")
        if inline is None or not cache_gone(exc):
            raise exc
        # Expired or deleted early: forget it (the next request makes a new one) and answer this one inline.
        self._caches.forget(prepared.extra["cached_content"])
        return inline

    async def stream_prepared(self, prepared: Prepared, ctx: RunContext) -> AsyncGenerator[str | BackendOutput, None]:
        """The call's text deltas stripped as ``_output`` strips its text, so that they join to exactly that text."""
        started = False
        held = ""  # trailing whitespace: sent once more text follows it, dropped at the end
        async with aclosing(super().stream_prepared(prepared, ctx)) as items:
            async for item in items:
                if not isinstance(item, str):
                    yield item
                    continue
                if not started:
                    item = item.lstrip()
                    started = bool(item)
                text = held + item
                body = text.rstrip()
                held = text[len(body):]
                if body:
                    yield body

    def _output(self, prepared: Prepared, text: str, reason: str | None) -> BackendOutput:
        # Base models often lead with a space after "Output:" and trail a newline before the stop.
        return super()._output(prepared, text.strip(), reason)

