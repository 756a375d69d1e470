"""Bad input fuzzing: mutated configs and random requests fail only with typed errors that name the field.

Hypothesis mutates valid router configs (wrong types, missing keys, extra keys, unknown or swapped kinds,
nested junk) and sends requests with random fields and values. Whatever it finds, the caller sees either
a working router / an answer, or a ``UsageError``/``ConfigError`` whose ``field`` is set and leads its
message — never a bare ``KeyError``/``TypeError``/``AttributeError`` or a dependency's traceback.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genroute import BackendError, GenerateResult, Router, UsageError
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
SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
           | st.text(max_size=8) | st.sampled_from(KINDS))
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


def test_mutated_configs_fail_only_with_errors_naming_the_field(gemini_server: GeminiTestServer) -> None:
    bases = base_configs(gemini_server.base_url)
    for base in bases:  # the unmutated bases are valid
        Router.from_config(base, tools=TOOLS).close()

    @SETTINGS
    @given(index=st.integers(0, len(bases) - 1), data=st.data())
    def check(index: int, data: st.DataObject) -> None:
        config = _mutate(bases[index], data)
        try:
            router = Router.from_config(config, tools=TOOLS)
        except UsageError as exc:
            _check_error(exc)
            return
        except Exception as exc:  # noqa: BLE001 - the point: anything untyped fails the test
            raise AssertionError(f"untyped failure for {config!r}: {type(exc).__name__}: {exc}") from exc
        router.close()

    check()


REQUEST_FIELDS = ["input", "task", "backend", "variables", "metadata", "key", "timeout_s", "model", "stream", "x"]


def test_random_requests_get_an_answer_or_an_error_naming_the_field(gemini_server: GeminiTestServer) -> None:
    config = base_configs(gemini_server.base_url)[1]
    config["policy"]["rungs"][0]["validators"] = []
    fields = st.dictionaries(st.sampled_from(REQUEST_FIELDS), JUNK | st.sampled_from(["chat", "pro", "tone"]),
                             max_size=4)
    variables = st.dictionaries(st.sampled_from(["tone", "mood", ""]), JUNK, max_size=2)

    with Router.from_config(config, tools=TOOLS) as router:
        @SETTINGS
        @given(text=st.none() | st.text(max_size=30) | JUNK, extra=fields, variables=st.none() | variables,
               stream=st.booleans())
        def check(text: Any, extra: dict[str, Any], variables: Any, stream: bool) -> None:
            kwargs = dict(extra)
            if variables is not None:
                kwargs["variables"] = variables
            try:
                if stream:
                    result = list(router.stream(text, **kwargs))[-1].result
                else:
                    result = router.generate(text, **kwargs)
            except UsageError as exc:
                _check_error(exc)
                return
            except BackendError:  # a valid request whose run failed (e.g. a tiny deadline): typed, not a crash
                return
            except Exception as exc:  # noqa: BLE001
                raise AssertionError(f"untyped failure for {text!r}, {kwargs!r}: {type(exc).__name__}: {exc}") \
                    from exc
            assert isinstance(result, GenerateResult)

        check()


def test_random_config_files_fail_only_with_errors_naming_the_field(gemini_server: GeminiTestServer) -> None:
    import json

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
