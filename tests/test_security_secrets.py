"""Secrets: the API key never appears in anything genroute exports, logs, raises or prints.

Each scenario runs real requests over the loopback wire with content capture ON (the most that is ever
recorded) and every logger at DEBUG (genroute, google-genai, httpx, aiohttp, asyncio...). Then all of it is
scanned for the key: span attributes, span events, resources, metric points and their attributes, every log
record with its traceback, every exception's message, repr and cause chain, and the reprs of the router,
its engines, backends and the loaded config.

Prompt and completion text is exported only when capture is opted in (config or the standard env var).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from genroute import ConfigError, GenrouteError, Router
from genroute.config import load_config
from genroute.testing import Fault

from .conftest import TEST_KEY, Otel, gemini_config

LOGGERS = ("", "genroute", "google_genai", "google", "httpx", "httpcore", "aiohttp", "asyncio", "urllib3")
PROMPT = "PROMPT-MARKER-7d1e what is the capital of France?"
COMPLETION = "COMPLETION-MARKER-93af Paris."


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # format() appends the traceback of exc_info; the raw args are kept too (a formatter could drop them)
        self.lines.append(self.format(record) + " " + repr(record.args) + " " + repr(getattr(record, "__dict__", {})))


@pytest.fixture
def logs() -> Iterator[_Collect]:
    """Every log record of every logger at DEBUG, for the duration of the test."""
    handler = _Collect()
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _errors_text(errors: list[BaseException]) -> str:
    parts = []
    for exc in errors:
        parts += [str(exc), repr(exc), *traceback.format_exception(exc)]
        cause = exc.__cause__ or exc.__context__
        while cause is not None:
            parts += [str(cause), repr(cause)]
            cause = cause.__cause__ or cause.__context__
    return "\n".join(parts)


def _exported(otel: Otel) -> str:
    spans = "\n".join(s.to_json() for s in otel.exporter.get_finished_spans())
    metrics = otel.reader.get_metrics_data()
    return spans + "\n" + (metrics.to_json() if metrics is not None else "")


def _scenarios(router: Router, server: Any) -> list[BaseException]:
    """Success, 4xx, 5xx-then-retry, persistent 5xx, stream, cut stream; sync and async. Returns the errors."""
    errors: list[BaseException] = []

    def attempt(fn: Any) -> None:
        try:
            fn()
        except GenrouteError as exc:
            errors.append(exc)

    server.reply_text(COMPLETION, usage=(10, 4))
    attempt(lambda: router.generate(PROMPT))                                      # success
    server.fault(Fault.status(400, message="bad request"))
    attempt(lambda: router.generate(PROMPT))                                      # 4xx
    server.fault(Fault.status(500))
    server.reply_text(COMPLETION, usage=(10, 4))
    attempt(lambda: router.generate(PROMPT))                                      # 5xx, retried, ok
    server.fault(Fault.status(503, retry_after=0.01), times=10)
    attempt(lambda: router.generate(PROMPT, timeout_s=5))                         # 5xx until retries end
    server.reply_text(COMPLETION, usage=(10, 4), chunks=3)
    attempt(lambda: list(router.stream(PROMPT)))                                  # stream
    server.fault(Fault.cut_stream(after_chunks=1))
    server.reply_text(COMPLETION, usage=(10, 4), chunks=3)
    attempt(lambda: list(router.stream(PROMPT)))                                  # stream cut mid-way
    server.fault(Fault.reset(), times=10)
    attempt(lambda: router.generate(PROMPT, timeout_s=5))                         # connection resets

    async def async_paths() -> None:
        server.reply_text(COMPLETION, usage=(10, 4))
        try:
            await router.agenerate(PROMPT)
        except GenrouteError as exc:
            errors.append(exc)
        server.fault(Fault.status(500, after_chunks=1))
        server.reply_text(COMPLETION, usage=(10, 4), chunks=3)
        try:
            [c async for c in router.astream(PROMPT)]
        except GenrouteError as exc:
            errors.append(exc)

    asyncio.run(async_paths())
    return errors


@pytest.mark.parametrize("key_from", ["inline", "env"])
def test_the_api_key_appears_nowhere_exported_logged_raised_or_printed(gemini_server, logs, monkeypatch, key_from):
    otel = Otel()
    config = gemini_config(gemini_server, system="Be terse.")
    config["telemetry"] = {"capture_content": True}
    if key_from == "env":
        del config["engines"]["gemini"]["api_key"]
        monkeypatch.setenv("GEMINI_API_KEY", TEST_KEY)
    router = Router.from_config(config, **otel.providers)
    errors = _scenarios(router, gemini_server)
    reprs = [repr(router), repr(router.resources), repr(load_config(config)), str(load_config(config)),
             *(repr(e) for e in router.resources.engines.values()),
             *(repr(e.config) for e in router.resources.engines.values()),
             *(repr(b) + repr(b.config) for b in router.backends.values())]
    router.close()

    assert len(errors) >= 4  # the failure paths really failed (4xx, persistent 5xx, cut stream, resets...)
    assert all(r.headers.get("x-goog-api-key") == TEST_KEY for r in gemini_server.requests)  # it was sent...
    exported = _exported(otel)
    assert PROMPT in exported and COMPLETION in exported  # ...capture was on, so content was recorded...
    assert logs.lines  # ...and debug logging really ran
    for where, text in [("spans and metrics", exported), ("log records", "\n".join(logs.lines)),
                        ("exceptions", _errors_text(errors)), ("reprs", "\n".join(reprs))]:
        assert TEST_KEY not in text, f"the API key leaked into {where}"


@pytest.mark.parametrize("opt_in", ["off", "config", "env"])
def test_prompts_and_completions_are_exported_only_when_capture_is_opted_in(gemini_server, monkeypatch, opt_in):
    otel = Otel()
    config = gemini_config(gemini_server)
    if opt_in == "config":
        config["telemetry"] = {"capture_content": True}
    elif opt_in == "env":
        monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    gemini_server.reply_text(COMPLETION, usage=(10, 4))
    gemini_server.reply_text(COMPLETION, usage=(10, 4), chunks=2)
    with Router.from_config(config, **otel.providers) as router:
        assert router.generate(PROMPT).text == COMPLETION
        assert "".join(c.text for c in router.stream(PROMPT)) == COMPLETION
    exported = _exported(otel)
    assert otel.spans("generate_content")  # telemetry was recorded either way
    captured = PROMPT in exported or COMPLETION in exported
    assert captured is (opt_in != "off")
    if opt_in != "off":
        assert PROMPT in exported and COMPLETION in exported


def test_an_explicit_false_in_config_beats_the_env_var(gemini_server, monkeypatch):
    otel = Otel()
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    config = gemini_config(gemini_server)
    config["telemetry"] = {"capture_content": False}
    gemini_server.reply_text(COMPLETION, usage=(10, 4))
    with Router.from_config(config, **otel.providers) as router:
        router.generate(PROMPT)
    exported = _exported(otel)
    assert PROMPT not in exported and COMPLETION not in exported


def test_a_key_echoed_by_the_server_is_scrubbed_from_the_whole_exception_chain(gemini_server, logs):
    """A provider (or proxy) that quotes the key in its error body: the chained SDK exception held it too."""
    config = gemini_config(gemini_server)
    errors: list[BaseException] = []
    with Router.from_config(config) as router:
        for status in (400, 500):
            gemini_server.fault(Fault.status(status, message=f"API key {TEST_KEY} not valid"), times=5)
            try:
                router.generate(PROMPT, timeout_s=5)
            except GenrouteError as exc:
                errors.append(exc)
                logging.getLogger("app").exception("request failed")
    assert len(errors) == 2 and all(e.__cause__ is not None for e in errors)  # the chain is kept...
    assert "not valid" in _errors_text(errors)  # ...with the provider's words
    text = _errors_text(errors) + "\n".join(logs.lines)
    for exc in errors:  # the SDK's own fields, not only its message
        cause = exc.__cause__
        text += repr(vars(cause)) + repr(cause.args)
    assert TEST_KEY not in text


def test_no_serialisation_of_the_config_prints_an_inline_key():
    config = load_config({
        "engines": {"gemini": {"kind": "gemini", "api_key": TEST_KEY}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
        "knowledge": {"host": "127.0.0.1", "port": 8000, "headers": {"Authorization": f"Bearer {TEST_KEY}"}},
    })
    dumps = [config.model_dump_json(), repr(config.model_dump()), str(config.model_dump(mode="json")),
             repr(config), str(config)]
    for text in dumps:
        assert TEST_KEY not in text
    assert config.engines["gemini"]["api_key"] == TEST_KEY  # the loaded config still works


@pytest.mark.parametrize("line", [f'api_key: "{TEST_KEY}', f"api_key: {TEST_KEY} : x", f"api_key: [{TEST_KEY}"])
def test_a_yaml_syntax_error_does_not_quote_the_key(tmp_path, line):
    # PyYAML's own message quotes the offending line, which here holds the key.
    path = tmp_path / "router.yaml"
    path.write_text(f"engines:\n  gemini:\n    kind: gemini\n    {line}\nbackends: {{}}\n")
    with pytest.raises(GenrouteError) as info:
        Router.from_config(path)
    assert info.value.field == "path"
    assert "line" in str(info.value)  # it still says where
    assert TEST_KEY not in str(info.value) and TEST_KEY not in repr(info.value)


def test_passwords_in_urls_appear_in_no_repr_or_dump(gemini_server):
    password = "PW-MARKER-51c2"
    config = load_config({
        "engines": {"gemini": {"kind": "gemini", "api_key": TEST_KEY,
                               "base_url": gemini_server.base_url.replace("://", f"://user:{password}@")}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
        "state": {"kind": "redis", "url": f"redis://:{password}@127.0.0.1:6379/0"},
    })
    texts = [config.model_dump_json(), repr(config.model_dump()), repr(config), str(config), repr(config.state)]
    router = Router.from_config({**config.model_dump(exclude={"state", "engines"}), "engines": {"gemini": {
        "kind": "gemini", "api_key": TEST_KEY, "base_url": config.engines["gemini"]["base_url"]}}})
    try:
        texts.append(repr(router.resources.engines["gemini"]))
    finally:
        router.close()
    for text in texts:
        assert password not in text and TEST_KEY not in text
    assert password in config.state.url  # the loaded config still connects


PRIVATE_KEY = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC-PK-MARKER-0b7e\n"
               "-----END PRIVATE KEY-----\n")


def _reachable(exc: BaseException) -> str:
    """Every text reachable from ``exc``: its chain (``__cause__``/``__context__``) and the arguments and attributes
    of each error in it, nested containers and errors included (what an error reporter may serialise)."""
    texts, seen, stack = [], set(), [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, BaseException):
            texts += [str(item), repr(item)]
            stack += [item.__cause__, item.__context__, *item.args, *getattr(item, "__dict__", {}).values()]
        elif isinstance(item, dict):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple | set):
            stack += list(item)
        else:
            texts.append(item if isinstance(item, str) else repr(item))
    return "\n".join(texts)


@pytest.fixture
def malformed_credentials(tmp_path, monkeypatch):
    """GOOGLE_APPLICATION_CREDENTIALS names a service-account file with a private key and a trailing comma."""
    import json

    path = tmp_path / "adc.json"
    path.write_text('{"type": "service_account", "private_key": %s, "client_email": "a@p.iam", "project_id": "p",}'
                    % json.dumps(PRIVATE_KEY))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud user credentials either


def test_a_malformed_credentials_file_leaves_its_private_key_nowhere_in_the_error(gemini_server, logs,
                                                                                  malformed_credentials):
    config = {"engines": {"vx": {"kind": "gemini", "base_url": gemini_server.base_url,
                                 "vertex": {"project": "p", "location": "us-central1"}}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "vx", "model": "gemini-2.5-flash"}}}
    with Router.from_config(config) as router:
        with pytest.raises(GenrouteError) as info:
            router.generate(PROMPT)
        logging.getLogger("app").exception("request failed", exc_info=info.value)
    assert info.value.field == "engines.vx.vertex" and "not a valid json file" in str(info.value)
    text = _reachable(info.value) + "".join(traceback.format_exception(info.value)) + "\n".join(logs.lines)
    assert "PK-MARKER" not in text and "BEGIN PRIVATE KEY" not in text


async def test_a_malformed_credentials_file_leaves_its_private_key_out_of_a_tuning_error(gemini_server, tmp_path,
                                                                                         malformed_credentials):
    import json

    from genroute.tuning.vertex import VertexTuningSettings, tune_vertex

    config_path = tmp_path / "genroute.json"
    config_path.write_text(json.dumps({
        "engines": {"vx": {"kind": "gemini", "base_url": gemini_server.base_url,
                           "vertex": {"project": "p", "location": "us-central1"}}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "vx", "model": "gemini-2.5-flash"}}}))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"input": f"review {i}", "output": "positive"}) + "\n" for i in range(12)))
    settings = VertexTuningSettings(base_model="gemini-2.5-flash", name="sentiment", staging_uri="gs://b/runs",
                                    min_examples=10)
    with pytest.raises(GenrouteError) as info:
        await tune_vertex(data, settings, config_path=config_path)
    assert info.value.field == "credentials"
    assert "PK-MARKER" not in _reachable(info.value) and gemini_server.requests == []


def test_engine_errors_redact_tokens_and_private_keys():
    from genroute.engines.errors import redact

    text = (f"token ya29.a0AfH6SMBxQw-xyzxyzxyz, github_pat_11AAAAAAA0aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbb, "
            f"aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, key {PRIVATE_KEY}, "
            f"redis://:pa/ss@cache:6379/0, commit 9fceb02d0ae598e95dc970b74767f19372d61af8")
    assert redact(text) == "token ***, ***, ***, key ***\n, redis://***@cache:6379/0, " \
                           "commit 9fceb02d0ae598e95dc970b74767f19372d61af8"


@pytest.mark.parametrize(("dumped", "field"), [
    ({"engines": {"gemini": {"kind": "gemini", "api_key": TEST_KEY}}}, "engines.gemini.api_key"),
    ({"engines": {"gemini": {"kind": "gemini", "base_url": "https://u:PW-7@h/"}}}, "engines.gemini.base_url"),
    ({"state": {"kind": "redis", "url": "redis://:PW-7@127.0.0.1:6379/0"}}, "state.url"),
    ({"state": {"kind": "redis", "url": "redis://127.0.0.1:6379/0?password=PW-7"}}, "state.url"),
])
def test_a_dumped_config_loaded_again_names_the_secret_it_lost(dumped, field):
    # Its masks were accepted: "**********" was sent as the key (400 at the first request), and a Redis URL lost its
    # password (with on_error: open the router then went on from memory alone, one warning a minute).
    from genroute.config import RouterConfig

    config = load_config({"engines": {"gemini": {"kind": "gemini", "api_key_env": "GEMINI_API_KEY"}},
                          "backends": {"chat": {"kind": "prompt_template", "engine": "gemini",
                                                "model": "gemini-2.5-flash"}}, **dumped})
    for load in (lambda: load_config(config.model_dump()),
                 lambda: RouterConfig.model_validate_json(config.model_dump_json())):
        with pytest.raises(ConfigError) as err:
            load()
        assert err.value.field == field and "mask" in err.value.message
    assert load_config(config.model_dump(exclude={"engines", "state"}) | {"engines": {}}).state.kind == "memory"


def test_a_secret_looking_key_is_masked_in_every_section_of_the_config():
    """Sections stay raw mappings until built, and a plugin kind may take a key in any of them."""
    from genroute.config import RouterConfig

    config = RouterConfig.model_validate({
        "engines": {"token": {"kind": "gemini", "api_key": "ENGINE-SECRET", "max_output_tokens": 64}},
        "backends": {"b": {"kind": "plugin_rag", "engine": "token", "accessToken": "BACKEND-SECRET",
                           "generation": {"max_output_tokens": 32}, "X-Api-Key": "HEADER-SECRET"}},
        "policy": {"kind": "plugin", "backend": "b", "api_key": "POLICY-SECRET", "url": "https://u:POLICY-PW@h/x"},
        "outcomes": {"url": "redis://:OUTCOMES-PW@localhost:6379/0", "token": "OUTCOMES-SECRET"},
        "validators": {"j": {"kind": "plugin_judge", "client_secret": "VALIDATOR-SECRET"}},
        "breakers": {"github_pat": "BREAKER-SECRET"},
        "rate_limits": [{"password": "LIMIT-SECRET", "api_key_env": "LIMIT_KEY"}],
    })
    texts = [repr(config), str(config), config.model_dump_json(), repr(config.model_dump()),
             str(config.model_dump(mode="json"))]
    for text in texts:
        assert "SECRET" not in text and "-PW" not in text, text
    dumped = config.model_dump()
    assert list(dumped["engines"]) == ["token"] and dumped["engines"]["token"]["max_output_tokens"] == 64
    assert dumped["backends"]["b"]["generation"] == {"max_output_tokens": 32}  # not secrets: shown
    assert dumped["rate_limits"] == [{"password": "**********", "api_key_env": "LIMIT_KEY"}]
    assert config.policy["api_key"] == "POLICY-SECRET"  # the loaded config still works


def test_every_header_value_is_masked_in_the_config_and_a_dump_of_it_is_refused():
    # An engine's (or Chroma's) headers are credentials whatever their names: Cookie and X-Gateway-Auth were shown
    # in the router config's repr and dumps, though the engine's own config masked them.
    from genroute.config import RouterConfig

    config = RouterConfig.model_validate({
        "engines": {"g": {"kind": "gemini", "api_key_env": "GEMINI_API_KEY",
                          "headers": {"Cookie": "sid=COOKIE-SECRET", "X-Gateway-Auth": "GATEWAY-SECRET"}}},
        "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}},
        "knowledge": {"host": "127.0.0.1", "port": 8000, "headers": {"X-Tenant-Auth": "CHROMA-SECRET"}},
    })
    for text in (repr(config), str(config), config.model_dump_json(), repr(config.model_dump())):
        assert "SECRET" not in text, text
    assert config.engines["g"]["headers"]["Cookie"] == "sid=COOKIE-SECRET"  # the loaded config still works
    with pytest.raises(ConfigError) as err:
        RouterConfig.model_validate_json(config.model_dump_json())
    assert err.value.field.startswith(("engines.g.headers.", "knowledge.headers.")) and "mask" in err.value.message
