"""Sync/async parity: every sync API behaves as its async twin (after simonw/llm's tests/test_async_parity.py).

Each sync entry point is its async twin run through the one sync bridge (``genroute.runtime.portal``): same
parameters, same answers, same spans, same errors, and inside a running event loop a ``UsageError`` that
names the twin to await instead.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from genroute import DeadlineExceeded, GenerateResult, GenrouteError, Router, UsageError
from genroute.bench import harness
from genroute.knowledge import ExampleStore, KnowledgeStore, aingest, build_store, ingest
from genroute.knowledge.embedders import Embedder, GeminiEmbedder, LocalEmbedder
from genroute.outcomes import OutcomeRecord, OutcomeStore
from genroute.testing import Fault

from .conftest import budget_usage, gemini_config

#: Where sync/async twins live. Every public ``aX`` with a public ``X`` beside it, and every ``X_sync`` with an ``X``
#: (the stores' blocking cores and their worker-thread twins), must be in ``PAIRS``.
OWNERS: list[Any] = [Router, KnowledgeStore, ExampleStore, Embedder, harness, OutcomeStore]
PAIRS: list[tuple[Any, str, str]] = [
    (Router, "generate", "agenerate"),
    (Router, "stream", "astream"),
    (Router, "decide", "adecide"),
    (Router, "close", "aclose"),
    (Router, "feedback", "afeedback"),
    (Router, "drain", "adrain"),
    (Router, "refresh", "arefresh"),
    (Router, "promote", "apromote"),
    (Router, "rollback", "arollback"),
    (Router, "health", "ahealth"),
    (Embedder, "embed", "aembed"),
    (harness, "bench", "abench"),
    (OutcomeStore, "upsert_sync", "upsert"),
    (OutcomeStore, "get_sync", "get"),
    (OutcomeStore, "records_sync", "records"),
    (OutcomeStore, "changes_sync", "changes"),
    (KnowledgeStore, "collection_sync", "collection"),
    (KnowledgeStore, "count_sync", "count"),
    (KnowledgeStore, "delete_sync", "delete"),
]


def _discovered() -> set[tuple[Any, str, str]]:
    found = set()
    for owner in OWNERS:
        names = {n for n in dir(owner) if not n.startswith("_")}
        for name in names:
            if name.startswith("a") and name[1:] in names and callable(getattr(owner, name)):
                found.add((owner, name[1:], name))
            if name.endswith("_sync") and name.removesuffix("_sync") in names:
                found.add((owner, name, name.removesuffix("_sync")))
    return found


def test_every_twin_pair_is_checked():
    assert _discovered() <= set(PAIRS), sorted((o.__name__, s) for o, s, _ in _discovered() - set(PAIRS))


def _assert_same_parameters(sync_fn: Any, async_fn: Any) -> None:
    """``sync_fn`` takes what ``async_fn`` takes: the same parameters, or the same ones up to ``**kwargs``
    that it forwards (every keyword-only parameter of the twin then goes through)."""
    sync = inspect.signature(sync_fn).parameters
    forwards = any(p.kind is p.VAR_KEYWORD for p in sync.values())
    twin = inspect.signature(async_fn).parameters
    for name, param in twin.items():
        if name in sync:
            assert (sync[name].kind, sync[name].default) == (param.kind, param.default), name
        else:
            assert forwards and param.kind in (param.KEYWORD_ONLY, param.VAR_KEYWORD), name
    assert set(sync) - set(twin) <= {n for n, p in sync.items() if p.kind is p.VAR_KEYWORD}


@pytest.mark.parametrize(("owner", "sync", "async_"), PAIRS, ids=[f"{o.__name__}.{s}" for o, s, _ in PAIRS])
def test_the_sync_twin_takes_the_same_parameters(owner, sync, async_):
    _assert_same_parameters(getattr(owner, sync), getattr(owner, async_))


def test_bench_has_abenchs_signature():
    # ``bench(router, data, **kwargs: Any)`` took anything: a type checker passed ``backend=`` or ``concurrency="2"``.
    assert inspect.signature(harness.bench) == inspect.signature(harness.abench)
    assert harness.bench.__annotations__ == harness.abench.__annotations__
    assert harness.bench.__name__ == "bench"


def test_ingest_takes_what_aingest_takes():
    _assert_same_parameters(ingest, aingest)


# -- the router ----------------------------------------------------------------------------------------------


def _shape(result: GenerateResult) -> dict[str, Any]:
    """What must not depend on sync vs async: everything but timings, ids and the trace."""
    return {
        "text": result.text, "backend": result.backend, "model": result.model, "usage": result.usage,
        "cost_usd": result.cost_usd, "finish_reason": result.finish_reason,
        "decision": (result.decision.policy, result.decision.reason,
                     [(a.backend, a.outcome, a.error_type) for a in result.decision.rungs_tried]),
    }


def _span_shape(otel: Any) -> list[tuple[str, tuple[str, ...]]]:
    spans = otel.exporter.get_finished_spans()
    otel.exporter.clear()
    return sorted((s.name, tuple(sorted(k for k in s.attributes if "latency" not in k))) for s in spans)


def test_generate_and_agenerate_answer_alike(gemini_server, otel):
    gemini_server.reply_text("same answer", usage=(7, 3))
    gemini_server.reply_text("same answer", usage=(7, 3))
    with Router.from_config(gemini_config(gemini_server), **otel.providers) as router:
        sync = router.generate("hello", task="greet")
        sync_spans = _span_shape(otel)

        async def main() -> GenerateResult:
            async with Router.from_config(gemini_config(gemini_server), **otel.providers) as twin:
                return await twin.agenerate("hello", task="greet")

        async_ = asyncio.run(main())
        assert _shape(sync) == _shape(async_)
        assert sync_spans == _span_shape(otel)
    assert gemini_server.requests[0].body == gemini_server.requests[1].body


def test_stream_and_astream_yield_alike(gemini_server):
    for _ in range(2):
        gemini_server.reply_text("one two three", usage=(5, 3), chunks=3)
    with Router.from_config(gemini_config(gemini_server)) as router:
        sync = list(router.stream("hi"))

    async def main() -> list[Any]:
        async with Router.from_config(gemini_config(gemini_server)) as router:
            return [chunk async for chunk in router.astream("hi")]

    async_ = asyncio.run(main())
    assert [c.text for c in sync] == [c.text for c in async_] and len(sync) >= 3
    assert _shape(sync[-1].result) == _shape(async_[-1].result)


def test_decide_and_adecide_decide_alike(gemini_server, tmp_path: Path):
    # A semantic policy on Gemini embeddings: the preview embeds the request, and says what that cost.
    config = {**gemini_config(gemini_server),
              "knowledge": {"path": str(tmp_path / "chroma"),
                            "embedder": {"kind": "gemini", "engine": "gemini", "dimension": 64}},
              "policy": {"kind": "semantic", "routes": {"chat": ["bake rye bread"]}, "default": "chat"}}

    def shape(decision: Any) -> Any:
        return (decision.policy, decision.reason, [r.backend for r in decision.rungs], decision.cost_usd,
                decision.cost_estimated)

    with Router.from_config(config) as router:
        sync = router.decide("how long should rye dough proof?")

    async def main() -> Any:
        async with await Router.acreate(config) as twin:
            return await twin.adecide("how long should rye dough proof?")

    async_ = asyncio.run(main())
    assert shape(sync) == shape(async_)
    assert sync.cost_usd > 0 and sync.cost_estimated
    assert not [r for r in gemini_server.requests if r.action == "generateContent"]


@pytest.mark.parametrize(("fields", "field"), [
    ({"input": ""}, "input"),
    ({"input": "hi", "backend": "nope"}, "backend"),
    ({"input": "hi", "timeout_s": -1}, "timeout_s"),
])
def test_bad_input_is_the_same_usage_error_both_ways(gemini_server, fields, field):
    def sync_error() -> UsageError:
        with Router.from_config(gemini_config(gemini_server)) as router, pytest.raises(UsageError) as err:
            router.generate(**fields)
        return err.value

    async def async_error() -> UsageError:
        async with Router.from_config(gemini_config(gemini_server)) as router:
            with pytest.raises(UsageError) as err:
                await router.agenerate(**fields)
            with pytest.raises(UsageError) as streamed:
                [c async for c in router.astream(**fields)]
            assert (streamed.value.field, streamed.value.message) == (err.value.field, err.value.message)
            return err.value

    sync, async_ = sync_error(), asyncio.run(async_error())
    assert (type(sync), sync.field, sync.message) == (type(async_), async_.field, async_.message)
    assert sync.field == field
    assert not gemini_server.requests


def _same_error(sync: Any, async_: Any) -> GenrouteError:
    """Run ``sync()`` and ``asyncio.run(async_())`` (an async iterator is read to its end): each must raise a
    genroute error, the same type with the same field and message; that error."""
    def raised(call: Any) -> GenrouteError:
        try:
            call()
        except GenrouteError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - the point: anything untyped fails the test
            raise AssertionError(f"untyped: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("no error raised")

    async def drive() -> None:
        result = async_()
        if hasattr(result, "__aiter__"):
            [_ async for _ in result]
        else:
            await result

    one, other = raised(sync), raised(lambda: asyncio.run(drive()))
    def shape(error: GenrouteError) -> tuple[Any, ...]:
        return type(error), getattr(error, "field", None), str(error)

    assert shape(one) == shape(other)
    return one


#: (twin, keyword arguments of the bad call, the field its error names): the router's twins.
ROUTER_CASES = [
    ("decide", {"input": 5}, "input"), ("decide", {"input": "hi", "bogus": 1}, "bogus"),
    ("decide", {"input": "hi", "timeout_s": float("nan")}, "timeout_s"),
    ("stream", {"input": "hi", "timeout_s": "5"}, "timeout_s"), ("stream", {"input": None}, "input"),
    ("generate", {"input": "hi", "task": 5}, "task"), ("generate", {"input": "hi", "metadata": 5}, "metadata"),
    ("feedback", {"result": 5, "score": 1.0}, "result"), ("feedback", {"result": "RESULT", "score": 2}, "score"),
    ("feedback", {"result": "RESULT", "label": 5}, "label"), ("feedback", {"result": "", "score": 1.0}, "result"),
    ("drain", {"timeout_s": -1}, "timeout_s"), ("drain", {"timeout_s": "5"}, "timeout_s"),
]


@pytest.mark.parametrize(("twin", "kwargs", "field"), ROUTER_CASES,
                         ids=[f"{t}-{f}-{i}" for i, (t, _, f) in enumerate(ROUTER_CASES)])
def test_each_router_twin_refuses_bad_input_alike(gemini_server, tmp_path: Path, twin: str, kwargs: dict[str, Any],
                                                   field: str):
    config = {**gemini_config(gemini_server), "outcomes": {"path": str(tmp_path / "o.db"), "scorer": "label_accuracy"}}
    with Router.from_config(config) as router:
        served = router.generate("hi") if "result" in kwargs else None
        sent = len(gemini_server.requests)
        kwargs = {k: served.outcome_id if v == "RESULT" and served else v for k, v in kwargs.items()}
        positional = [kwargs.pop(k) for k in ("input", "result") if k in kwargs]

        def sync() -> Any:
            answer = getattr(router, twin)(*positional, **kwargs)
            return list(answer) if twin == "stream" else answer

        error = _same_error(sync, lambda: router._portal.call(_arun(getattr(router, f"a{twin}"), positional, kwargs)))
        assert getattr(error, "field", None) == field
        assert len(gemini_server.requests) == sent  # nothing sent either way
    assert OutcomeStore(tmp_path / "o.db").count_sync() == 0  # no feedback written either way


async def _arun(fn: Any, positional: list[Any], kwargs: dict[str, Any]) -> Any:
    result = fn(*positional, **kwargs)
    if hasattr(result, "__aiter__"):
        return [_ async for _ in result]
    return await result


def test_the_stores_twins_refuse_bad_input_alike(tmp_path: Path):
    store = OutcomeStore(tmp_path / "o.db")
    for sync, async_, field in [
        (lambda: store.upsert_sync({"metadata": {"id": "r1"}}), lambda: store.upsert({"metadata": {"id": "r1"}}),
         "record"),
        (lambda: store.get_sync(None), lambda: store.get(None), "id"),
        # captured="x" was a ValueError (int("x")), task=5 and since="x" matched nothing without a word.
        (lambda: store.records_sync(captured="x"), lambda: store.records(captured="x"), "captured"),
        (lambda: store.records_sync(task=5), lambda: store.records(task=5), "task"),
        (lambda: store.records_sync(since="yesterday"), lambda: store.records(since="yesterday"), "since"),
    ]:
        assert _same_error(sync, async_).field == field
    assert store.records_sync() == []
    knowledge = build_store({"path": str(tmp_path / "chroma")}, engines={})
    for sync, async_, field in [
        (lambda: knowledge.count_sync("nope", kind="documents"), lambda: knowledge.count("nope", kind="documents"),
         "collection"),
        (lambda: knowledge.delete_sync("docs", 5, kind="documents"),
         lambda: knowledge.delete("docs", 5, kind="documents"), "ids"),
        (lambda: knowledge.collection_sync("x", kind="documents"), lambda: knowledge.collection("x", kind="documents"),
         "collection"),
    ]:
        assert _same_error(sync, async_).field == field


def test_embed_ingest_and_bench_refuse_bad_input_alike(gemini_server, tmp_path: Path):
    with Router.from_config(gemini_config(gemini_server)) as router:
        for embedder in (GeminiEmbedder(router.resources.engines["gemini"]), LocalEmbedder()):
            for texts, field in [("one text", "texts"), ([None], "texts.0"), (5, "texts")]:
                assert _same_error(lambda: embedder.embed(texts),
                                   lambda: router._portal.call(embedder.aembed(texts))).field == field
        store = build_store({"path": str(tmp_path / "chroma")}, engines={})
        for kwargs, field in [({"chunk_tokens": "200"}, "chunk_tokens"), ({"on_batch": 5}, "on_batch"),
                              ({"paths": [None]}, "paths")]:
            given = {"paths": [tmp_path], "collection": "docs", **kwargs}
            assert _same_error(lambda: ingest(store, **given), lambda: aingest(store, **given)).field == field
        data = tmp_path / "data.jsonl"
        data.write_text('{"id": "r1", "input": "hi", "output": "echo: hi"}\n')
        for kwargs, field in [({"backends": None}, "backends"), ({"policy": "false"}, "policy"),
                              ({"scorer": 5}, "scorer")]:
            given = {"backends": ["chat"], "out_dir": tmp_path / "out", "progress": False, **kwargs}
            assert _same_error(lambda: harness.bench(router, data, **given),
                               lambda: router._portal.call(harness.abench(router, data, **given))).field == field
    assert not gemini_server.requests and not (tmp_path / "out").exists()


def test_a_deadline_is_the_same_error_both_ways(gemini_server):
    gemini_server.fault(Fault.delay(5), times=10)
    with Router.from_config(gemini_config(gemini_server)) as router, pytest.raises(DeadlineExceeded) as sync:
        router.generate("slow", timeout_s=0.3)

    async def main() -> DeadlineExceeded:
        async with Router.from_config(gemini_config(gemini_server)) as router:
            with pytest.raises(DeadlineExceeded) as err:
                await router.agenerate("slow", timeout_s=0.3)
            return err.value

    async_ = asyncio.run(main())
    assert str(sync.value) == str(async_) and sync.value.backend == async_.backend


def test_a_closed_router_refuses_both_ways(gemini_server, tmp_path: Path):
    config = {**gemini_config(gemini_server), "outcomes": {"path": str(tmp_path / "o.db"), "scorer": "label_accuracy"}}
    with Router.from_config(config) as router:
        result = router.generate("hi")
    sync_calls = {"generate": lambda: router.generate("hi"), "feedback": lambda: router.feedback(result, score=1.0),
                  "drain": router.drain, "refresh": router.refresh, "promote": lambda: router.promote("t", "chat")}

    async def async_errors() -> dict[str, str]:
        async with await Router.acreate(config) as twin:
            answered = await twin.agenerate("hi")
        calls = {"generate": lambda: twin.agenerate("hi"), "feedback": lambda: twin.afeedback(answered, score=1.0),
                 "drain": twin.adrain, "refresh": twin.arefresh, "promote": lambda: twin.apromote("t", "chat")}
        found = {}
        for name, call in calls.items():
            with pytest.raises(UsageError) as err:
                await call()
            found[name] = str(err.value)
        return found

    for name, call in sync_calls.items():
        with pytest.raises(UsageError, match="the router is closed"):
            call()
    # The async twins refuse as well: no feedback is written into the closed router's store.
    assert asyncio.run(async_errors()) == dict.fromkeys(sync_calls, "the router is closed")


def test_bench_refuses_a_closed_router_both_ways_and_writes_nothing(gemini_server, tmp_path: Path):
    data = [{"id": "r1", "input": "hi", "output": "echo: hi"}]
    with Router.from_config(gemini_config(gemini_server)) as router:
        pass
    with pytest.raises(UsageError, match="the router is closed"):
        harness.bench(router, data, backends=["chat"], out_dir=tmp_path / "sync", progress=False)
    with pytest.raises(UsageError, match="the router is closed"):  # it ran, every row a failure
        asyncio.run(harness.abench(router, data, backends=["chat"], out_dir=tmp_path / "async", progress=False))
    assert not (tmp_path / "sync").exists() and not (tmp_path / "async").exists()


# -- inside a running loop every sync twin refuses, names its twin and leaks nothing -------------------------


def test_health_and_ahealth_answer_alike(gemini_server):
    with Router.from_config(gemini_config(gemini_server)) as router:
        sync, async_ = router.health(), asyncio.run(router.ahealth())

    def shape(health: Any) -> Any:
        return health.ready, [(d.name, d.kind, d.ok, d.detail, d.error) for d in health.dependencies]

    assert shape(sync) == shape(async_) == (True, [("engines.gemini", "engine", True,
                                                    "countTokens for gemini-2.5-flash answered", None)])


async def test_sync_twins_refuse_a_running_loop_and_name_their_async_twin(gemini_server, tmp_path: Path):
    router = Router.from_config(gemini_config(gemini_server))
    store = build_store({"path": str(tmp_path / "chroma")}, engines={})
    calls = {
        "agenerate": lambda: router.generate("hi"),
        "astream": lambda: router.stream("hi"),
        "adecide": lambda: router.decide("hi"),
        "aclose": router.close,
        "afeedback": lambda: router.feedback("an-outcome-id", score=1.0),
        "adrain": router.drain,
        "arefresh": router.refresh,
        "apromote": lambda: router.promote("t", "chat"),
        "arollback": lambda: router.rollback("t"),
        "ahealth": router.health,
        "aingest": lambda: ingest(store, [tmp_path], collection="docs"),
        # LocalEmbedder.embed is CPU work that is safe anywhere; an engine's embeddings are not.
        "aembed": lambda: GeminiEmbedder(router.resources.engines["gemini"]).embed(["hi"]),
        "abench": lambda: harness.bench(router, [], backends=["chat"]),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a coroutine left unawaited would warn here
        for twin, call in calls.items():
            # A stream is not awaited: "await astream()" raised TypeError for whoever followed the advice.
            advice = "read astream() with `async for`" if twin == "astream" else f"await {twin}()"
            with pytest.raises(UsageError, match=rf"running event loop; {re.escape(advice)} instead"):
                call()
        with pytest.raises(UsageError, match=r"use `async with` \(or await aclose\(\)\) instead"):
            with router:  # a `with` block in async code: its exit cannot close the router here
                pass
    await router.aclose()
    assert not gemini_server.requests


def test_a_sync_stream_made_outside_a_loop_refuses_to_be_read_inside_one(gemini_server):
    """Made outside a running loop, a sync stream read inside one blocked that loop at every chunk, though
    ``stream()`` refuses to run there; it now refuses there at the read, and its budget hold is settled."""
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": 1.0, "costs": {"chat": 0.01}}

    async def read(chunks: Any) -> str:
        return next(chunks).text

    with Router.from_config(config) as router:
        chunks = router.stream("hello world")
        with pytest.raises(UsageError, match=r"running event loop; read astream\(\) with `async for` instead"):
            asyncio.run(read(chunks))
        assert budget_usage(router)["reserved"] == 0.0
        assert router.generate("still serving").text == "echo: still serving"


# -- knowledge -----------------------------------------------------------------------------------------------


def _docs(root: Path) -> list[Path]:
    root.mkdir()
    paths = []
    for i in range(3):
        path = root / f"doc{i}.md"
        path.write_text(f"# Doc {i}\n\nParagraph {i} about routing requests to techniques. " * 5)
        paths.append(path)
    return paths


def test_ingest_and_aingest_report_alike(tmp_path: Path):
    paths = _docs(tmp_path / "docs")
    sync = ingest(build_store({"path": str(tmp_path / "a")}, engines={}), paths, collection="docs",
                  chunk_tokens=64, overlap=8, progress=False)

    async def main() -> Any:
        store = build_store({"path": str(tmp_path / "b")}, engines={})
        return await aingest(store, paths, collection="docs", chunk_tokens=64, overlap=8, progress=False)

    async_ = asyncio.run(main())
    assert (sync.documents, sync.chunks, sync.added, sync.skipped) == \
        (async_.documents, async_.chunks, async_.added, async_.skipped)
    assert sync.added > 0


def test_embed_and_aembed_give_the_same_vectors(gemini_server):
    router = Router.from_config(gemini_config(gemini_server))
    embedder = GeminiEmbedder(router.resources.engines["gemini"])
    texts = ["route this request", "a second sentence"]
    sync = embedder.embed(texts)
    async_ = asyncio.run(embedder.aembed(texts))
    assert len(sync) == 2 and sync == async_
    assert len(gemini_server.requests) == 2  # each went over the wire
    router.close()


def test_local_embed_and_aembed_give_the_same_vectors():
    embedder = LocalEmbedder()
    texts = ["route this request", "a second, longer sentence to embed"]
    sync = embedder.embed(texts)
    async_ = asyncio.run(embedder.aembed(texts))
    assert len(sync) == 2 and np.allclose(sync, async_)
