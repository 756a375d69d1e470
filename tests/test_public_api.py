"""The public API: everything in ``__all__`` resolves, and importing genroute stays light."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence

import genroute


def test_every_public_name_resolves():
    for name in genroute.__all__:
        assert getattr(genroute, name) is not None, name
    assert sorted(dir(genroute)) == sorted(genroute.__all__)


def test_a_public_name_means_one_thing_in_every_package():
    # genroute.bench.Pricing (an outcome matrix's candidate prices) was not genroute.Pricing (the router's table).
    import importlib
    import pkgutil

    clashes = []
    for info in pkgutil.iter_modules(genroute.__path__):
        if info.ispkg:
            package = importlib.import_module(f"genroute.{info.name}")
            shared = set(getattr(package, "__all__", ())) & set(genroute.__all__)
            clashes += [f"genroute.{info.name}.{name}" for name in shared
                        if getattr(package, name) is not getattr(genroute, name)]
    assert clashes == []


def test_errors_form_one_tree():
    for name in genroute.__all__:
        obj = getattr(genroute, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, genroute.GenrouteError), name
    assert issubclass(genroute.ConfigError, genroute.UsageError)
    assert not issubclass(genroute.UsageError, genroute.BackendError)
    # A deadline or a budget stops a request; neither is a backend failing.
    assert not issubclass(genroute.DeadlineExceeded, genroute.BackendError | genroute.UsageError)
    assert not issubclass(genroute.BudgetExceeded, genroute.BackendError | genroute.UsageError)


def test_usage_errors_keep_field_and_message_apart():
    import pickle

    err = genroute.ConfigError("must be positive", field="engines.g.timeout_s")
    assert (err.field, err.message, str(err)) == ("engines.g.timeout_s", "must be positive",
                                                 "engines.g.timeout_s: must be positive")
    assert str(genroute.UsageError("closed")) == "closed"
    again = pickle.loads(pickle.dumps(err))  # crosses process boundaries (bench workers) intact
    assert (type(again), again.field, again.message, str(again)) == (type(err), err.field, err.message, str(err))


def test_import_does_not_load_heavy_dependencies():
    probe = ("import sys, genroute; from genroute import Router, GenerateRequest; "
             "print(','.join(m for m in ('chromadb', 'llama_cpp', 'google.genai', 'onnxruntime', 'torch', "
             "'opentelemetry.sdk', 'jinja2', 'tenacity') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_building_a_router_imports_what_its_first_request_would_import_on_the_loop():
    # A local-only router's first request imported google.genai.types (~0.6 s, every backend writes its call as a
    # GenerateContentConfig) on the router's event loop, in no span: building imports it, in a worker thread.
    config = {"engines": {"local": {"kind": "local"}}, "backends": {"p": {
        "kind": "prompt_template", "engine": "local", "model": "gemma-3-270m", "template": "{{ input }}"}}}
    probe = (f"import sys, genroute; r = genroute.Router.from_config({config!r}); "
             "print('google.genai.types' in sys.modules); r.close()")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded.splitlines()[-1] == "True"


def test_runtime_needs_no_test_tools():
    # pytest and the other dev tools are the `dev` extra: the library and its CLI never import them.
    probe = ("import sys, genroute, genroute.cli, genroute.testing, genroute.knowledge.embedders; "
             "print(','.join(m for m in ('pytest', 'hypothesis', 'psutil', 'safetensors', 'onnx') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == ""


def test_package_is_typed():
    from pathlib import Path

    assert (Path(genroute.__file__).parent / "py.typed").is_file()


def _every_error() -> list[genroute.GenrouteError]:
    from genroute.types import RungAttempt, ToolCall, Usage

    g = genroute
    errors = [
        g.UsageError("bad", field="input"), g.ConfigError("bad", field="engines.g.api_key"),
        g.BackendError("boom", backend="chat", status=500),
        g.BackendUnavailable("503", backend="chat", status=503, retry_after_s=2.0),
        g.RateLimited("full", backend="chat", retry_after_s=1.0), g.CircuitOpen("open", backend="chat"),
        g.BackendRejected("400", backend="chat", status=400), g.NoRelevantContext("none", backend="rag"),
        g.ToolLoopExceeded("loop", backend="tools", tool_calls=(ToolCall(name="t"),)),
        g.ValidationFailed("rejected", backend="chat"), g.StreamInterrupted("cut", backend="chat"),
        g.DeadlineExceeded("late", backend="chat"), g.BudgetExceeded("no room"), g.StateUnavailable("down"),
        g.OutcomeStoreError("full", path="/srv/outcomes.db"),
        g.AllRungsFailed("all failed", attempts=[RungAttempt(backend="chat", outcome="error")]),
    ]
    for error in errors:  # what the router sets on the errors it raises
        error.cost_usd, error.usage, error.cost_estimated = 0.5, Usage(input_tokens=3), True
    return errors


def test_errors_cross_process_boundaries_with_their_fields():
    import copy
    import pickle

    errors = _every_error()
    assert {type(e) for e in errors} == {getattr(genroute, n) for n in genroute.__all__
                                         if isinstance(getattr(genroute, n), type)
                                         and issubclass(getattr(genroute, n), genroute.GenrouteError)} - {
        genroute.GenrouteError}
    for error in errors:
        for again in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
            assert (type(again), again.args, str(again)) == (type(error), error.args, str(error))
            assert again.__dict__ == error.__dict__, type(error).__name__


def test_astream_is_typed_as_a_stream_of_chunks():
    # Typed callers iterate ``async for chunk in router.astream(...)``: the chunk's type must reach them, not Any.
    import typing

    from genroute.router.inflight import RouterStream

    stream_type = typing.get_type_hints(genroute.Router.astream)["return"]
    assert typing.get_origin(stream_type) is RouterStream
    assert typing.get_args(stream_type) == (genroute.GenerateChunk,)
    (parameter,) = RouterStream.__parameters__
    assert typing.get_type_hints(RouterStream.__anext__)["return"] is parameter


def test_the_types_of_public_fields_are_exported():
    # A typed caller names the types it is handed (``result.decision`` is a DecisionRecord, its rungs RungAttempts).
    import typing

    from pydantic import BaseModel

    seen: set[type] = set()
    todo: list[type] = [genroute.GenerateResult, genroute.GenerateChunk, genroute.Decision, genroute.GenerateRequest]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            stack = [field.annotation]
            while stack:
                kind = stack.pop()
                stack += typing.get_args(kind)
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    todo.append(kind)
    exported = {getattr(genroute, name) for name in genroute.__all__}
    assert sorted(m.__name__ for m in seen - exported) == []


def test_error_attributes_and_router_admission_are_typed():
    # They were Any: a typed caller lost the Usage, ToolCall, RungAttempt and Admission types behind them.
    import typing

    from genroute import types
    from genroute.admission import Admission

    hints = typing.get_type_hints(genroute.GenrouteError, localns=vars(types))
    assert hints["usage"] == types.Usage | None
    assert typing.get_type_hints(genroute.BackendError, localns=vars(types))["tool_calls"] == tuple[types.ToolCall, ...]
    assert typing.get_type_hints(genroute.AllRungsFailed.__init__, localns=vars(types))["attempts"] == list[
        types.RungAttempt]
    assert typing.get_type_hints(genroute.Router.admission.fget)["return"] is Admission


def test_a_routers_budget_is_typed_as_a_budget_ledger(gemini_server):
    # Admission.budget() returned Any: a typed caller of router.admission.budget().usage(key) had no check at all.
    import asyncio
    import typing

    from genroute.admission import Admission, BudgetLedger

    from .conftest import gemini_config

    assert typing.get_type_hints(Admission.budget)["return"] is BudgetLedger
    policy = {"kind": "budget", "per": "global", "budget_usd": 1.0, "costs": {"chat": 0.01},
              "inner": {"kind": "static", "backend": "chat"}}
    with genroute.Router.from_config({**gemini_config(gemini_server), "policy": policy}) as router:
        budget = router.admission.budget()
    members = {name for name in vars(BudgetLedger) if not name.startswith("_")} | set(BudgetLedger.__annotations__)
    assert members == {"field", "ledger_name", "usage", "view"}
    assert (budget.field, budget.ledger_name) == ("policy", "policy")
    assert asyncio.run(budget.usage("*")) == {"spent": 0.0, "reserved": 0.0}


def test_frozen_values_hash_even_with_dict_fields():
    # Frozen models are hashable, but a dict field (request metadata, tool arguments) made hash() a TypeError.
    from genroute.types import DecisionRecord, RungAttempt, ToolCall

    one = genroute.GenerateRequest(input="hi", metadata={"tenant": "a"}, variables={"tone": "dry"})
    same = genroute.GenerateRequest(input="hi", metadata={"tenant": "a"}, variables={"tone": "dry"})
    assert hash(one) == hash(same) and len({one, same, genroute.GenerateRequest(input="other")}) == 2
    call = ToolCall(name="add", args={"a": 2}, result={"sum": 2}, call_id="c1")
    record = DecisionRecord(policy="static", reason="r", rungs_tried=(RungAttempt(backend="fc", outcome="error",
                                                                                  tool_calls=(call,)),))
    result = genroute.GenerateResult(text="2", backend="fc", model="m", decision=record, tool_calls=(call,))
    again = genroute.GenerateResult.model_validate_json(result.model_dump_json())
    assert again == result and hash(again) == hash(result) and len({result, again}) == 1


def test_request_keywords_are_typed_as_the_requests_fields():
    # ``**fields: Any`` let a type checker pass ``generate("x", tsk="t")`` or ``timeout_s="5"``.
    import typing

    from genroute.types import RequestFields

    router = genroute.Router
    for method in (router.generate, router.agenerate, router.stream, router.astream, router.decide,
                   router.adecide):
        assert typing.get_type_hints(method)["fields"] == typing.Unpack[RequestFields], method.__name__
    fields = genroute.GenerateRequest.model_fields
    # history and generation take what validates into them: {"role", "text"} mappings, a dict of settings
    wider = {"history": Sequence[genroute.Turn | Mapping[str, str]] | None,
             "generation": genroute.RequestGeneration | Mapping[str, typing.Any] | None}
    assert typing.get_type_hints(RequestFields) == {name: wider.get(name, field.annotation)
                                                    for name, field in fields.items()}


def test_an_errors_repr_shows_what_it_names() -> None:
    """A log line or a debugger shows an error's field (a ``UsageError``) or its backend and status (a backend
    error), not only its message."""
    from genroute.errors import BackendUnavailable, ConfigError, UsageError

    assert repr(UsageError("must be positive", field="timeout_s")) == "UsageError('must be positive', field='timeout_s')"
    assert repr(ConfigError("unknown engine")) == "ConfigError('unknown engine')"
    assert repr(BackendUnavailable("503 UNAVAILABLE", backend="chat", status=503)) == (
        "BackendUnavailable('503 UNAVAILABLE', backend='chat', status=503)")
