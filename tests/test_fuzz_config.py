"""Bad input fuzzing: mutated configs and random requests fail only with typed errors that name the field.

Hypothesis mutates valid router configs (wrong types, missing keys, extra keys, unknown or swapped kinds,
nested junk) and sends requests with random fields and values (invalid Unicode included) through all four
entry points. A mutated config that still builds a router is used: one request runs through it. Whatever
it finds, the caller sees either a working router / an answer, or a ``UsageError``/``ConfigError`` whose
``field`` is set and leads its message, or a run-time ``BackendError`` that really happened at run time —
never a bare ``KeyError``/``TypeError``/``AttributeError``, and never a dependency's own exception
dressed up as a ``BackendRejected`` the provider never sent.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from genroute import (
    AllRungsFailed, BackendError, BackendRejected, BackendUnavailable, DeadlineExceeded, GenerateResult, GenrouteError,
    Router, UsageError,
)
from genroute.testing import GeminiTestServer

from .conftest import TEST_KEY

# Moderate and repeatable in CI; GENROUTE_FUZZ_EXAMPLES=5000 explores further with fresh random draws.
_EXAMPLES = int(os.environ.get("GENROUTE_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, derandomize="GENROUTE_FUZZ_EXAMPLES" not in os.environ,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
KNOWLEDGE_DIR = tempfile.mkdtemp(prefix="genroute-fuzz-")  # never opened unless a request runs RAG


def get_weather(city: str, unit: str = "celsius") -> dict[str, Any]:
    """Weather for a city."""
    return {"city": city, "unit": unit}


TOOLS = {"get_weather": get_weather}

KINDS = ["gemini", "local", "prompt_template", "icl", "rag", "function_calling", "tuned", "static", "rules",
         "ladder", "semantic", "cost_aware", "split", "budget", "learned", "cascade", "", "nope", "Gemini"]
# Any code point, lone surrogates included: text that is not valid Unicode must be refused by name too.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
           | st.text(max_size=8) | ANY_TEXT | st.sampled_from(KINDS))
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6) | st.sampled_from(["kind", "engine", "model", "backend"]),
                                      inner, max_size=3), max_leaves=6)


def base_configs(url: str) -> list[dict[str, Any]]:
    """Valid configs covering the engines, backends and policies a mutation can break."""
    engine = {"kind": "gemini", "base_url": url, "api_key": TEST_KEY, "timeout_s": 5,
              "retry": {"attempts": 2, "initial_backoff_s": 0.01, "max_backoff_s": 0.02, "jitter_s": 0.0}}
    chat = {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash", "system": "Be terse.",
            "template": "{{ input }} ({{ tone }})", "generation": {"temperature": 0.2, "max_output_tokens": 64},
            "variables": {"tone": {"type": "str", "required": False, "default": "dry"}}, "tasks": ["chat"]}
    pro = {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-pro"}
    return [
        {"engines": {"g": engine}, "backends": {"chat": chat}, "policy": {"kind": "static", "backend": "chat"},
         "pricing": {"my-model": {"input": 1.0, "output": 2.0}}, "telemetry": {"capture_content": False},
         "timeout_s": 10},
        {"engines": {"g": engine}, "backends": {"chat": chat, "pro": pro},
         "policy": {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["regex:^ok"]},
                                                 {"backend": "pro"}], "shadow": ["pro"], "shadow_rate": 0.5}},
        {"engines": {"g": engine}, "backends": {"chat": chat, "pro": pro},
         "policy": {"kind": "budget", "inner": {"kind": "static", "backend": "pro"}, "budget_usd": 1.0,
                    "costs": {"pro": 0.01, "chat": 0.001}, "on_exhausted": "downgrade", "downgrade_to": "chat"}},
        {"engines": {"g": engine}, "backends": {"chat": chat, "pro": pro},
         "policy": {"kind": "rules", "rules": [{"when": {"task": "chat"}, "backend": "chat"}], "default": "pro"}},
        {"engines": {"g": engine}, "tools": {"weather": "tests.test_fuzz_config:get_weather"},
         "backends": {"agent": {"kind": "function_calling", "engine": "g", "model": "gemini-2.5-flash",
                                "tools": ["get_weather", "weather"], "max_steps": 3}},
         "policy": {"kind": "static", "backend": "agent"}},
        {"engines": {"g": engine}, "knowledge": {"path": KNOWLEDGE_DIR},
         "backends": {"rag": {"kind": "rag", "engine": "g", "model": "gemini-2.5-flash", "collection": "docs",
                              "k": 3}, "chat": chat},
         "policy": {"kind": "split", "arms": [{"backend": "rag", "weight": 1}, {"backend": "chat", "weight": 3}]}},
    ]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _paths(value, (*prefix, index))


def _mutate(config: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """One to three mutations of a copy of ``config``."""
    config = copy.deepcopy(config)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = [p for p in _paths(config) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent: Any = config
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        op = data.draw(st.sampled_from(["junk", "delete", "extra", "kind", "wrap", "empty"]), label="op")
        if op == "junk":
            parent[key] = data.draw(JUNK, label="value")
        elif op == "delete":
            del parent[key]
        elif op == "extra" and isinstance(parent[key], dict):
            parent[key][data.draw(st.text(min_size=1, max_size=8), label="extra key")] = data.draw(JUNK)
        elif op == "kind" and isinstance(parent[key], dict):
            parent[key]["kind"] = data.draw(st.sampled_from(KINDS), label="kind")
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "empty":
            parent[key] = type(parent[key])() if isinstance(parent[key], dict | list | str) else None
    return config


def _check_error(exc: BaseException) -> None:
    assert isinstance(exc, UsageError), f"untyped failure: {type(exc).__name__}: {exc}"
    assert exc.field, f"no field named: {exc!r}"
    assert str(exc).startswith(exc.field), f"the message does not lead with the field: {exc}"


def _dependency_error(exc: BaseException) -> BaseException | None:
    """A dependency's own exception surfacing in ``exc``'s chain as a ``BackendRejected``, if any.

    A ``BackendRejected`` the provider sent carries its HTTP status. One without a status that wraps a
    non-genroute exception (say the SDK's ``ValueError``) is a caller mistake that was not refused by name
    at the entry, or a bug: the failure this fuzzing exists to find.
    """
    seen: BaseException | None = exc
    chain: list[BaseException] = []
    while seen is not None:
        assert all(seen is not e for e in chain), f"a cycle in the cause chain: {[type(e).__name__ for e in chain]}"
        chain.append(seen)
        cause = seen.__cause__
        if isinstance(seen, BackendRejected) and seen.status is None and cause is not None \
                and not isinstance(cause, GenrouteError):
            return cause
        seen = cause
    return None


def _check_run_failure(exc: BaseException, what: str) -> None:
    """A request failed: a caller mistake named by field, or a genuine run-time error (never a dependency's own exception)."""
    if isinstance(exc, UsageError):
        _check_error(exc)
        return
    assert isinstance(exc, BackendError | DeadlineExceeded), f"{what}: untyped failure {type(exc).__name__}: {exc}"
    cause = _dependency_error(exc)
    assert cause is None, f"{what}: a dependency's {type(cause).__name__} surfaced as {type(exc).__name__}: {exc}"


def _each_mode(**fixed: Any) -> Any:
    """Hypothesis ``@example`` of ``fixed`` in every mode: these run on every test run, before the search."""
    def decorate(test: Any) -> Any:
        for mode in MODES:
            test = example(**fixed, mode=mode)(test)
        return test
    return decorate


def _valid_unicode(body: Any, what: str) -> None:
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AssertionError(f"{what}: invalid Unicode was sent instead of refused by name: {exc}") from None


MODES = ("generate", "agenerate", "stream", "astream")


def _final(chunks: list[Any]) -> GenerateResult:
    """The result a complete stream ends with; its text is what the chunks before it carried."""
    assert chunks and chunks[-1].done and not any(c.done for c in chunks[:-1])
    result = chunks[-1].result
    assert "".join(c.text for c in chunks[:-1]) == result.text
    return result


async def _acall(router: Router, mode: str, text: Any, kwargs: dict[str, Any]) -> GenerateResult:
    if mode == "agenerate":
        return await router.agenerate(text, **kwargs)
    return _final([chunk async for chunk in router.astream(text, **kwargs)])


class Caller:
    """Sends a request in any of the four modes.

    Sync calls go to one router; async calls go to a second router on a private loop, reused for every
    example, because a router's async HTTP clients belong to the loop they first ran on.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.sync = Router.from_config(config, tools=TOOLS)
        self.aio = Router.from_config(config, tools=TOOLS)
        self.loop = asyncio.new_event_loop()

    def __call__(self, mode: str, text: Any, kwargs: dict[str, Any]) -> GenerateResult:
        if mode == "generate":
            return self.sync.generate(text, **kwargs)
        if mode == "stream":
            return _final(list(self.sync.stream(text, **kwargs)))
        return self.loop.run_until_complete(_acall(self.aio, mode, text, kwargs))

    def close(self) -> None:
        self.sync.close()
        self.loop.run_until_complete(self.aio.aclose())
        self.aio.close()
        self.loop.close()


def _run_once(router: Router, mode: str) -> GenerateResult:
    """One request through a freshly built ``router`` in ``mode`` (async modes on a throwaway loop)."""
    if mode == "generate":
        return router.generate("What is the weather in Paris?", timeout_s=5)
    if mode == "stream":
        return _final(list(router.stream("What is the weather in Paris?", timeout_s=5)))

    async def main() -> GenerateResult:
        try:
            return await _acall(router, mode, "What is the weather in Paris?", {"timeout_s": 5})
        finally:
            await router.aclose()
    return asyncio.run(main())


def test_mutated_configs_fail_only_with_errors_naming_the_field(gemini_server: GeminiTestServer) -> None:
    bases = base_configs(gemini_server.base_url)
    for base in bases:  # the unmutated bases are valid
        Router.from_config(base, tools=TOOLS).close()
    built = {mode: 0 for mode in MODES}

    @SETTINGS
    @given(index=st.integers(0, len(bases) - 1), data=st.data(), mode=st.sampled_from(MODES))
    def check(index: int, data: st.DataObject, mode: str) -> None:
        config = _mutate(bases[index], data)
        try:
            router = Router.from_config(config, tools=TOOLS)
        except UsageError as exc:
            _check_error(exc)
            return
        except Exception as exc:  # noqa: BLE001 - the point: anything untyped fails the test
            raise AssertionError(f"untyped failure for {config!r}: {type(exc).__name__}: {exc}") from exc
        built[mode] += 1
        try:  # a config that builds must also run: its mistakes may only show on the first request
            result = _run_once(router, mode)
        except Exception as exc:  # noqa: BLE001
            _check_run_failure(exc, f"{mode} on {config!r}")
        else:
            assert isinstance(result, GenerateResult) and result.text
        finally:
            router.close()

    check()
    assert all(built.values()), f"some mode never ran a request on a mutated config: {built}"


REQUEST_FIELDS = ["input", "task", "backend", "variables", "metadata", "key", "timeout_s", "model", "stream", "x"]


def test_random_requests_get_an_answer_or_an_error_naming_the_field(gemini_server: GeminiTestServer) -> None:
    config = base_configs(gemini_server.base_url)[1]
    config["policy"]["rungs"][0]["validators"] = []
    fields = st.dictionaries(st.sampled_from(REQUEST_FIELDS), JUNK | st.sampled_from(["chat", "pro", "tone"]),
                             max_size=4)
    # Mostly well-formed requests too, so that many reach the wire rather than failing on the first field.
    plausible = st.fixed_dictionaries({}, optional={
        "task": st.sampled_from(["chat", "summarize"]) | ANY_TEXT, "key": st.text(max_size=8) | ANY_TEXT,
        "backend": st.sampled_from(["chat", "pro"]), "timeout_s": st.floats(0.001, 30),
        "metadata": st.dictionaries(st.text(max_size=5), JUNK, max_size=2)})
    variables = st.dictionaries(st.sampled_from(["tone", "mood", ""]), JUNK, max_size=2)
    caller = Caller(config)
    outcomes = {mode: {"answered": 0, "refused": 0} for mode in MODES}

    @SETTINGS
    @given(text=st.none() | st.text(min_size=1, max_size=30) | ANY_TEXT | JUNK, extra=fields | plausible,
           variables=st.none() | variables | st.fixed_dictionaries({"tone": ANY_TEXT}), mode=st.sampled_from(MODES))
    @_each_mode(text="Capital of France?", extra={"task": "chat"}, variables={"tone": "dry"})
    @_each_mode(text="Capital of France?", extra={}, variables={"tone": "dry \udcff"})  # a lone surrogate
    @_each_mode(text="Capital of France?", extra={"metadata": {"user": "\ud800"}}, variables=None)
    def check(text: Any, extra: dict[str, Any], variables: Any, mode: str) -> None:
        kwargs = dict(extra)
        if variables is not None:
            kwargs["variables"] = variables
        what = f"{mode}({text!r}, **{kwargs!r})"
        sent = len(gemini_server.requests)
        try:
            result = caller(mode, text, kwargs)
        except UsageError as exc:
            _check_error(exc)
            assert len(gemini_server.requests) == sent, f"{what}: refused only after sending it"
            outcomes[mode]["refused"] += 1
            return
        except Exception as exc:  # noqa: BLE001
            _check_run_failure(exc, what)
            # The loopback answers every valid request: only a deadline too short for it can fail one.
            assert kwargs.get("timeout_s") is not None, f"{what}: a valid request failed: {exc!r}"
            tried = exc.attempts if isinstance(exc, AllRungsFailed) else []
            assert isinstance(exc, BackendUnavailable | DeadlineExceeded) or all(
                a.error_type == "BackendUnavailable" for a in tried), f"{what}: {exc!r}"
            return
        assert isinstance(result, GenerateResult) and result.text, what
        for request in gemini_server.requests[sent:]:  # the real API refuses invalid Unicode with a bare 400
            _valid_unicode(request.body, what)
        outcomes[mode]["answered"] += 1

    try:
        check()
    finally:
        caller.close()
    # every mode both answered valid requests and refused invalid ones, by name
    assert all(o["answered"] and o["refused"] for o in outcomes.values()), outcomes


def test_random_config_files_fail_only_with_errors_naming_the_field(gemini_server: GeminiTestServer) -> None:
    import yaml

    root = tempfile.mkdtemp(prefix="genroute-fuzz-files-")
    valid = base_configs(gemini_server.base_url)[0]
    renderings = {".yaml": lambda c: yaml.safe_dump(c), ".json": lambda c: json.dumps(c)}

    @SETTINGS
    @given(suffix=st.sampled_from([".yaml", ".yml", ".json", ".toml", ".ini", ""]),
           body=st.text(max_size=200) | st.binary(max_size=200), data=st.data())
    def check(suffix: str, body: str | bytes, data: st.DataObject) -> None:
        path = os.path.join(root, "genroute" + suffix)
        if data.draw(st.booleans(), label="mutate a valid file") and suffix in renderings:
            cut = data.draw(st.integers(0, 400), label="cut")  # a valid file truncated or with junk appended
            body = renderings[suffix](_mutate(valid, data))[:cut] + (body if isinstance(body, str) else "")
        with open(path, "wb") as handle:
            handle.write(body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body)
        try:
            Router.from_config(path, tools=TOOLS).close()
        except UsageError as exc:
            _check_error(exc)
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"untyped failure for {body!r}: {type(exc).__name__}: {exc}") from exc

    check()


def test_an_empty_inline_key_is_refused_by_name_before_any_request(gemini_server: GeminiTestServer) -> None:
    config = base_configs(gemini_server.base_url)[0]
    config["engines"]["g"]["api_key"] = ""  # the SDK would raise a bare ValueError on the first request
    try:
        Router.from_config(config, tools=TOOLS).close()
    except UsageError as exc:
        _check_error(exc)
        assert exc.field == "engines.g.api_key"
    else:
        raise AssertionError("an empty api_key was accepted")
    assert not gemini_server.requests


def test_a_dependency_error_never_passes_for_the_providers_refusal() -> None:
    from google import genai

    from genroute.engines.errors import map_error

    try:
        genai.Client(api_key="")
    except ValueError as exc:
        cause = exc
        mapped = map_error(exc, backend="g")
    assert isinstance(mapped, BackendRejected) and mapped.status is None  # no provider answered
    assert str(mapped).startswith("unexpected ValueError raised in google.genai"), str(mapped)
    mapped.__cause__ = cause  # as the engine raises it: ``raise mapped from exc``
    assert _dependency_error(mapped) is cause  # and the fuzzing above would report it
