"""Configuration loading and the errors that name the field; nothing is sent on bad input."""

from __future__ import annotations

import json

import pytest

from genroute import ConfigError, GenerateRequest, Router, UsageError

from .conftest import TEST_KEY, gemini_config


def _error(config) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Router.from_config(config)
    return info.value


def test_yaml_toml_and_json_files_load(gemini_server, tmp_path):
    import yaml

    config = gemini_config(gemini_server)
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "g.json").write_text(json.dumps(config))
    toml = tmp_path / "g.toml"
    toml.write_text(
        f'[engines.gemini]\nkind = "gemini"\nbase_url = "{gemini_server.base_url}"\napi_key = "k"\n'
        '[backends.chat]\nkind = "prompt_template"\nengine = "gemini"\nmodel = "gemini-2.5-flash"\n'
        '[policy]\nkind = "static"\nbackend = "chat"\n'
    )
    for path in ("g.yaml", "g.json", "g.toml"):
        gemini_server.reply_text(path)
        with Router.from_config(tmp_path / path) as router:
            assert router.generate("hi").text == path


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda c: c["backends"]["chat"].update(kind="nope"), "backends.chat.kind"),
    (lambda c: c["backends"]["chat"].pop("kind"), "backends.chat.kind"),
    (lambda c: c["backends"]["chat"].update(engine="missing"), "backends.chat.engine"),
    (lambda c: c["backends"]["chat"].update(model="acme-llm-9"), "backends.chat.model"),
    (lambda c: c["backends"]["chat"].update(temperature=0.2), "backends.chat.temperature"),
    (lambda c: c["backends"]["chat"].update(modle=c["backends"]["chat"].pop("model")), "backends.chat.modle"),
    (lambda c: c["backends"]["chat"].update(generation={"temperature": 9}), "backends.chat.generation.temperature"),
    # An empty stop sequence matches at once: every answer came back empty.
    (lambda c: c["backends"]["chat"].update(generation={"stop_sequences": ["\n", ""]}),
     "backends.chat.generation.stop_sequences"),
    (lambda c: c["backends"]["chat"].update(generation={"temperature": float("nan")}),
     "backends.chat.generation.temperature"),
    (lambda c: c["backends"]["chat"].update(template="{{ nope }}"), "backends.chat.template"),
    (lambda c: c["backends"]["chat"].update(template="{% if %}"), "backends.chat.template"),
    (lambda c: c["backends"]["chat"].update(system="You are {{ nope }}."), "backends.chat.system"),
    (lambda c: c["backends"]["chat"].update(system="{{ unclosed"), "backends.chat.system"),
    (lambda c: c["backends"]["chat"].update(variables={"n": {"type": "int", "default": "many"}}),
     "backends.chat.variables.n"),
    (lambda c: c["backends"]["chat"].update(variables={"loud": {"type": "bool", "default": "yes"}}),
     "backends.chat.variables.loud"),
    (lambda c: c["engines"]["gemini"].update(timeout_s=-1), "engines.gemini.timeout_s"),
    (lambda c: c.update(backends={}), "backends"),
    (lambda c: c.update(surprise=1), "surprise"),
    (lambda c: c["policy"].update(backend="ghost"), "policy.backend"),
    (lambda c: c.update(pricing={"x": {"input": -1, "output": 0}}), "pricing.x.input"),
    (lambda c: c.update(tools={"t": "no_such_module:fn"}), "tools.t"),
    (lambda c: c.update(tools={"t": "os:sep"}), "tools.t"),  # not callable: built while no backend used it
    (lambda c: c.update(knowledge={"path": "k", "embedder": {"kind": "gemini"}}), "knowledge.embedder.engine"),
    (lambda c: c.update(knowledge={"path": ""}), "knowledge.path"),  # Chroma wrote into the working directory
    (lambda c: c["engines"]["gemini"].update(base_url="not a url"), "engines.gemini.base_url"),
    (lambda c: c["engines"]["gemini"].update(base_url="ftp://127.0.0.1/"), "engines.gemini.base_url"),
    (lambda c: c["engines"]["gemini"].update(base_url="http://"), "engines.gemini.base_url"),
    # a union tagged by kind: the tag is not a key of the config
    (lambda c: c.update(state={"kind": "redis", "url": "http://x"}), "state.url"),
    (lambda c: c.update(state={"kind": "memory", "zz": 1}), "state.zz"),
    (lambda c: c.update(backends={"": c["backends"]["chat"]}, policy=None), "backends"),  # was pydantic's own error
    (lambda c: c["engines"].update({"": c["engines"]["gemini"]}), "engines"),
    (lambda c: c.update(policy=None, backends={**c["backends"], "pro": c["backends"]["chat"]}), "policy"),
    # Timeouts and windows are finite (an infinite one never ends), and `true` is no number (pydantic reads 1).
    (lambda c: c.update(timeout_s=True), "timeout_s"),
    (lambda c: c.update(state={"kind": "redis", "timeout_s": float("inf")}), "state.timeout_s"),
    (lambda c: c.update(state={"kind": "redis", "retry_s": float("inf")}), "state.retry_s"),
    (lambda c: c.update(breakers={"cooldown_s": float("inf")}), "breakers.cooldown_s"),
    (lambda c: c.update(breakers={"failures": True}), "breakers.failures"),
    (lambda c: c.update(rate_limits=[{"engine": "gemini", "rpm": 5, "window_s": float("inf")}]),
     "rate_limits.0.window_s"),
    (lambda c: c.update(rate_limits=[{"engine": "gemini", "rpm": True}]), "rate_limits.0.rpm"),
    (lambda c: c.update(rate_limits=[{"engine": "gemini", "model": "gemini-2.5-flsh", "rpm": 5}]),
     "rate_limits.0.model"),  # a model no backend uses: the limit would never apply
    (lambda c: c.update(outcomes={"path": "o.db", "refresh_every_s": float("inf")}), "outcomes.refresh_every_s"),
    # A millisecond period kept a third of a core busy refreshing while the router was idle.
    (lambda c: c.update(outcomes={"path": "o.db", "refresh_every_s": 0.001}), "outcomes.refresh_every_s"),
    (lambda c: c.update(outcomes={"path": "o.db", "shared_max_age_s": float("inf")}), "outcomes.shared_max_age_s"),
])
def test_config_errors_name_the_field(gemini_server, mutate, field):
    config = gemini_config(gemini_server)
    mutate(config)
    assert _error(config).field == field
    assert gemini_server.requests == []


@pytest.mark.parametrize(("source", "target", "raised"), [
    ("def lookup(:\n", "{m}:lookup", "SyntaxError"),
    ("raise RuntimeError('no database configured')\n", "{m}:lookup", "RuntimeError: no database configured"),
    ("import sys\nsys.exit(2)\n", "{m}:lookup", "SystemExit: 2"),  # it ended the process
    ("", "..{m}:lookup", "TypeError"),  # a relative module path
])
def test_a_tool_module_that_fails_to_import_is_a_config_error(gemini_server, tmp_path, monkeypatch, source, target,
                                                              raised):
    module = f"tool_module_{tmp_path.name}"  # one per case: a module imported once stays in sys.modules
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(tmp_path)
    config = gemini_config(gemini_server, kind="function_calling", tools=["lookup"])
    config["tools"] = {"lookup": target.format(m=module)}
    error = _error(config)
    assert error.field == "tools.lookup" and raised in error.message
    assert gemini_server.requests == []


def test_a_validators_own_message_reads_without_pydantics_prefix(gemini_server):
    config = gemini_config(gemini_server)
    config["backends"]["chat"]["template"] = "{{ unclosed"
    assert _error(config).message.startswith("template does not compile")  # not "Value error, template ..."
    for section in ({"knowledge": {"path": "x", "host": "h"}}, {"breakers": {"failures": True}}):
        assert not _error({**gemini_config(gemini_server), **section}).message.startswith("Value error")


def test_a_yaml_name_read_as_a_boolean_says_to_quote_it(gemini_server, tmp_path):
    import yaml

    config = gemini_config(gemini_server)
    config["backends"] = {"on": config["backends"]["chat"]}  # YAML 1.1 reads `on:` as True, so `backends.1`
    config["policy"] = {"kind": "static", "backend": "on"}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(config).replace("'on'", "on"))
    error = _error(tmp_path / "g.yaml")
    assert error.field == "backends" and "not bool (True)" in error.message and "quote the name" in error.message


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1/"])
def test_a_bad_base_url_from_the_environment_is_refused_as_the_setting_is(gemini_server, monkeypatch, url):
    # It was retried on every request as BackendUnavailable (InvalidUrlClientError), after the retries' waits.
    config = gemini_config(gemini_server)
    del config["engines"]["gemini"]["base_url"]
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", url)
    error = _error(config)
    assert error.field == "GOOGLE_GEMINI_BASE_URL" and "http:// or https://" in error.message


@pytest.mark.parametrize(("code", "error"), [("def f(:\n", "SyntaxError"),
                                             ("raise RuntimeError('no db at redis://u:hunter2@db')\n", "RuntimeError")])
def test_an_import_path_whose_module_fails_to_import_names_the_field(gemini_server, tmp_path, monkeypatch, code,
                                                                     error):
    # Not only a missing module: one that fails as it is imported raised its own error with no field.
    (tmp_path / "broken_tools_pf.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = _error({**gemini_config(gemini_server), "tools": {"t": "broken_tools_pf:f"}})
    assert found.field == "tools.t" and f"cannot import 'broken_tools_pf:f': {error}" in found.message
    assert type(found.__cause__).__name__ == error  # kept for the traceback
    assert "hunter2" not in found.message


def test_an_environment_reference_in_a_config_file_is_refused(gemini_server, tmp_path):
    import yaml

    # `api_key: ${GEMINI_API_KEY}` was sent as the key itself, `path: $HOME/x` made a directory named `$HOME`.
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["api_key"] = "${GEMINI_API_KEY}"
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(config))
    error = _error(tmp_path / "env.yaml")
    assert error.field == "engines.gemini.api_key" and "api_key_env" in error.message
    assert gemini_server.requests == []
    config["engines"]["gemini"]["api_key"] = TEST_KEY
    config["state"] = {"kind": "memory"}
    config["backends"]["chat"]["system"] = "$app"  # lower case, unbraced: meant as it is
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(config))
    with Router.from_config(tmp_path / "plain.yaml"):
        pass


def test_a_dict_config_takes_pathlib_paths(gemini_server, tmp_path):
    # `{"knowledge": {"path": tmp_path / "chroma"}}` was "knowledge.path: Input should be a valid string".
    (tmp_path / "answer.json").write_text('{"type": "object"}')
    config = {**gemini_config(gemini_server), "knowledge": {"path": tmp_path / "chroma"},
              "outcomes": {"path": tmp_path / "outcomes.db"},
              "validators": {"shape": {"kind": "json_schema", "path": tmp_path / "answer.json"}}}
    with Router.from_config(config) as router:
        assert router.resources.knowledge.location == f"embedded chroma at {tmp_path / 'chroma'}"
    assert (tmp_path / "outcomes.db").is_file()


def test_a_router_config_object_takes_pathlib_paths(gemini_server, tmp_path):
    # A dict's Paths were taken as text, a RouterConfig's refused: "knowledge.path: Input should be a valid string".
    from genroute import RouterConfig

    (tmp_path / "answer.json").write_text('{"type": "object"}')
    config = RouterConfig(**gemini_config(gemini_server), knowledge={"path": tmp_path / "chroma"},
                          outcomes={"path": tmp_path / "outcomes.db"},
                          validators={"shape": {"kind": "json_schema", "path": tmp_path / "answer.json"}})
    with Router.from_config(config) as router:
        assert router.resources.knowledge.location == f"embedded chroma at {tmp_path / 'chroma'}"
    assert (tmp_path / "outcomes.db").is_file()


@pytest.mark.parametrize(("group", "raw", "name"), [
    ("engines", {"kind": "local", "model_path": "m.gguf", "lora_path": "a.gguf"}, "lora_path"),
    ("engines", {"kind": "local", "model_path": "m.gguf"}, "model_path"),
    ("policies", {"kind": "semantic", "routes_file": "r.jsonl", "default": "chat"}, "routes_file"),
    ("policies", {"kind": "cost_aware", "stats_path": "s.json", "default": "chat"}, "stats_path"),
    ("policies", {"kind": "learned", "model_path": "m.json", "default": "chat"}, "model_path"),
    ("policies", {"kind": "budget", "stats_path": "s.json", "budget_usd": 1.0,
                  "inner": {"kind": "static", "backend": "chat"}}, "stats_path"),
])
def test_every_path_setting_takes_a_pathlib_path(tmp_path, group, raw, name):
    # Each section's file settings take a Path as its text, however the section is handed over.
    from pathlib import Path

    from genroute.config import validate_kind

    _, config = validate_kind(group, {**raw, name: tmp_path / raw[name]}, field="x")
    assert getattr(config, name) == str(tmp_path / raw[name])
    assert not isinstance(getattr(config, name), Path)


def test_section_settings_built_in_code_take_pathlib_paths(tmp_path):
    from genroute.knowledge import build_store
    from genroute.outcomes.settings import settings_from

    assert settings_from({"path": tmp_path / "o.db"}).path == str(tmp_path / "o.db")
    assert build_store({"path": tmp_path / "chroma"}, engines={}).location == f"embedded chroma at {tmp_path / 'chroma'}"


def test_a_configs_text_given_as_its_path_is_refused_without_echoing_it(gemini_server):
    import yaml

    # The error quoted the whole text as a file name that does not exist, inline key included.
    text = yaml.safe_dump(gemini_config(gemini_server)).replace(TEST_KEY, "AIzaSyA1234567890abcdefghijklmnopqrstuv")
    for source in (text, json.dumps(gemini_config(gemini_server))):
        error = _error(source)
        assert error.field == "path" and "config's text" in error.message and "AIza" not in str(error)
    assert "does not exist" in _error("{project}/genroute.yaml").message  # a path, however it starts


def test_a_missing_config_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    # "config file 'genroute.yaml' does not exist" left a newcomer who ran from another directory guessing why.
    monkeypatch.chdir(tmp_path)
    error = _error("genroute.yaml")
    assert (error.field, error.message) == (
        "path", f"config file 'genroute.yaml' does not exist (in the working directory, {tmp_path})")
    assert _error(str(tmp_path / "missing.yaml")).message == f"config file '{tmp_path / 'missing.yaml'}' does not exist"


@pytest.mark.parametrize("source", [None, 42, ["x"]])
def test_a_source_of_the_wrong_type_is_a_usage_error(source):
    with pytest.raises(UsageError) as info:
        Router.from_config(source)
    assert info.value.field == "source"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"timeout_s": "5"}, "timeout_s"),
    ({"timeout_s": True}, "timeout_s"),
    ({"tracer_provider": 5}, "tracer_provider"),
    ({"meter_provider": object()}, "meter_provider"),
    ({"tools": [print]}, "tools"),
    ({"tools": {"t": "not callable"}}, "tools"),
    ({"validators": ["v"]}, "validators"),
    ({"engine_options": {"gemni": {"credentials": None}}}, "engine_options.gemni"),  # was silently unused
    ({"engine_options": {"gemini": {"credentails": None}}}, "engine_options.gemini"),  # was a bare TypeError
])
def test_bad_keyword_arguments_name_themselves(gemini_server, kwargs, field):
    with pytest.raises(UsageError) as info:
        Router.from_config(gemini_config(gemini_server), **kwargs)
    assert info.value.field == field


def test_a_state_of_the_wrong_type_names_state(gemini_server):
    with pytest.raises(ConfigError) as info:
        Router.from_config(gemini_config(gemini_server), state=5)
    assert info.value.field == "state"


def test_missing_and_unparsable_files(tmp_path):
    assert _error(tmp_path / "absent.yaml").field == "path"
    (tmp_path / "bad.yaml").write_text("backends: [unclosed")
    assert _error(tmp_path / "bad.yaml").field == "path"
    (tmp_path / "x.ini").write_text("")
    assert _error(tmp_path / "x.ini").field == "path"


def test_a_number_with_an_exponent_means_the_same_in_yaml_json_and_toml(tmp_path):
    from genroute.config import load_config

    # PyYAML (YAML 1.1) read `tpm: 1e6` as the text '1e6', refused for an integer; JSON and TOML read a number.
    backend = {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}
    config = {"engines": {"g": {"kind": "gemini", "api_key": "k"}}, "backends": {"chat": backend},
              "timeout_s": 1e3, "rate_limits": [{"engine": "g", "rpm": 1000, "tpm": 1000000}]}
    (tmp_path / "g.json").write_text(json.dumps(config).replace("1000.0", "1e3").replace("1000000", "1e6"))
    (tmp_path / "g.yaml").write_text("engines: {g: {kind: gemini, api_key: k}}\n"
                                     "backends: {chat: {kind: prompt_template, engine: g, model: gemini-2.5-flash}}\n"
                                     "timeout_s: 1e3\nrate_limits: [{engine: g, rpm: 1e3, tpm: 1E+6}]\n")
    (tmp_path / "g.toml").write_text('timeout_s = 1e3\n[engines.g]\nkind = "gemini"\napi_key = "k"\n'
                                     '[backends.chat]\nkind = "prompt_template"\nengine = "g"\n'
                                     'model = "gemini-2.5-flash"\n[[rate_limits]]\nengine = "g"\nrpm = 1e3\n'
                                     'tpm = 1e6\n')
    loaded = [load_config(tmp_path / name) for name in ("g.json", "g.yaml", "g.toml")]
    assert all(c.timeout_s == 1000 and c.rate_limits == config["rate_limits"] for c in loaded), loaded


def test_a_config_file_read_as_written(gemini_server, tmp_path, monkeypatch):
    # A byte-order mark reads the same in every format, `~` is the home directory, a directory is no file.
    config = gemini_config(gemini_server)
    for name in ("g.json", "g.yaml"):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + json.dumps(config).encode())
        with Router.from_config(tmp_path / name):
            pass
    (tmp_path / "g.toml").write_bytes(b"\xef\xbb\xbf" + f'[engines.gemini]\nkind = "gemini"\napi_key = "k"\n'
                                      f'base_url = "{gemini_server.base_url}"\n[backends.chat]\n'
                                      'kind = "prompt_template"\nengine = "gemini"\nmodel = "gemini-2.5-flash"\n'
                                      .encode())
    with Router.from_config(tmp_path / "g.toml"):
        pass
    monkeypatch.setenv("HOME", str(tmp_path))
    with Router.from_config("~/g.json"):
        pass
    error = _error(tmp_path)
    assert error.field == "path" and "is a directory" in error.message
    for empty in ("",):  # was "'.' is a directory, not a config file" (Path("") is the working directory)
        error = _error(empty)
        assert error.field == "source" and error.message.startswith("the config file's path is empty")
    (tmp_path / "empty-path.yaml").write_text(json.dumps({**config, "knowledge": {"path": ""}}))
    assert _error(tmp_path / "empty-path.yaml").field == "knowledge.path"  # not the config's own directory
    (tmp_path / "latin1.yaml").write_bytes("backends: {caf\xe9: {}}\n".encode("latin-1"))
    message = _error(tmp_path / "latin1.yaml").message
    assert message == "latin1.yaml is not UTF-8 text (invalid continuation byte at byte 14)"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"input": ""}, "input"),
    ({"input": "   "}, "input"),
    ({"input": "hi", "timeout_s": 0}, "timeout_s"),
    ({"input": "hi", "colour": "red"}, "colour"),
    ({"input": "hi", "variables": {"tone": 3}}, "variables.tone"),
    ({"input": "hi", "variables": {"extra": "x", "tone": "dry"}}, "variables.extra"),
    ({"input": "hi"}, "variables.tone"),
    ({"input": "hi \ud800"}, "input"),  # a lone surrogate: would fail at the provider or the exporter
    ({"input": "hi", "metadata": {1: "a"}}, "metadata.1"),  # a bad key: the entry, not pydantic's "[key]"
])
def test_bad_requests_name_the_field_and_send_nothing(gemini_server, kwargs, field):
    config = gemini_config(gemini_server, template="{{ tone }}: {{ input }}", variables={"tone": {"type": "str"}})
    with Router.from_config(config) as router:
        with pytest.raises(UsageError) as info:
            router.generate(**kwargs)
    assert info.value.field == field
    assert gemini_server.requests == []


def test_a_float_variable_that_is_not_finite_is_refused_naming_it(gemini_server):
    # NaN and infinity were floats to pydantic and went into the prompt as "nan"/"inf": a float variable is a finite
    # number, as text ("nan", "-inf") or as a float, and a default is held to the same.
    config = gemini_config(gemini_server, template="{{ input }} at {{ t }}", variables={"t": {"type": "float"}})
    with Router.from_config(config) as router:
        for value in ("nan", "inf", "-Infinity", float("nan"), float("inf")):
            with pytest.raises(UsageError) as info:
                router.generate(input="hi", variables={"t": value})
            assert (info.value.field, info.value.message) == (
                "variables.t", "Input should be a finite number (backend 'chat')"), value
        assert gemini_server.requests == []
        gemini_server.reply_text("ok")
        router.generate(input="hi", variables={"t": "0.5"})
    assert gemini_server.requests[-1].body["contents"][0]["parts"][0]["text"] == "hi at 0.5"
    nan_default = gemini_config(gemini_server, variables={"t": {"type": "float", "default": float("nan")}})
    assert _error(nan_default).field == "backends.chat.variables.t"


def test_template_renders_declared_variables_and_defaults(gemini_server):
    config = gemini_config(gemini_server, system="You are {{ persona }}.", template="[{{ lang }}] {{ input }}",
                           variables={"persona": {"type": "str"},
                                      "lang": {"type": "str", "required": False, "default": "en"}})
    with Router.from_config(config) as router:
        router.generate(GenerateRequest(input="hello", variables={"persona": "terse"}))
    body = gemini_server.requests[-1].body
    assert body["contents"][0]["parts"][0]["text"] == "[en] hello"
    system = body.get("systemInstruction") or body.get("system_instruction")
    assert system["parts"][0]["text"] == "You are terse."


def test_a_variable_with_a_default_is_optional(gemini_server):
    config = gemini_config(gemini_server, system="Tone: {{ tone }}.", variables={"tone": {"type": "str",
                                                                                          "default": "plain"}})
    with Router.from_config(config) as router:
        router.generate("hello")
    system = gemini_server.requests[-1].body["systemInstruction"]
    assert system["parts"][0]["text"] == "Tone: plain."
    contradiction = gemini_config(gemini_server, variables={"tone": {"default": "plain", "required": True}})
    with pytest.raises(ConfigError) as info:
        Router.from_config(contradiction)
    assert info.value.field == "backends.chat.variables.tone"


def test_optional_variable_without_a_value_renders_empty(gemini_server):
    config = gemini_config(gemini_server, template="{{ input }}[{{ note }}]{% if note %} noted{% endif %}"
                                                   "{% if note is defined %} defined{% endif %}",
                           variables={"note": {"type": "str", "required": False}})
    with Router.from_config(config) as router:
        router.generate("hello")
        router.generate(GenerateRequest(input="hi", variables={"note": "n"}))
    first, second = (r.body["contents"][0]["parts"][0]["text"] for r in gemini_server.requests)
    assert first == "hello[]"
    assert second == "hi[n] noted defined"


def test_sandbox_blocks_unsafe_template_access(gemini_server):
    config = gemini_config(gemini_server, template="{{ input.__class__.__mro__ }}")
    with Router.from_config(config) as router, pytest.raises(UsageError):
        router.generate("x")
    assert gemini_server.requests == []


@pytest.mark.parametrize("engine", ["gemini", "local"])
@pytest.mark.parametrize("mime", ["text/plain", "text/html"])
def test_a_response_schema_with_a_plain_text_answer_is_a_config_error(gemini_server, engine, mime):
    # Gemini takes a schema only with application/json or text/x.enum; the local engine answered JSON all the same.
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    config = gemini_config(gemini_server, generation={"response_mime_type": mime, "response_schema": schema})
    if engine == "local":
        config["engines"] = {"gemini": {"kind": "local"}}  # not loaded: the config is refused first
    with pytest.raises(ConfigError) as info:
        Router.from_config(config)
    assert info.value.field == "backends.chat.generation.response_schema" and repr(mime) in info.value.message
    for fine in ("application/json", "text/x.enum", None):
        generation = {"response_schema": {"type": "string", "enum": ["a"]}, "response_mime_type": fine}
        Router.from_config(gemini_config(gemini_server, generation=generation)).close()


def test_generation_settings_reach_the_wire(gemini_server):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    config = gemini_config(gemini_server, generation={"temperature": 0.1, "max_output_tokens": 20,
                                                      "stop_sequences": ["END"], "response_schema": schema})
    with Router.from_config(config) as router:
        router.generate("x")
    gen = gemini_server.requests[-1].body["generationConfig"]
    assert gen["temperature"] == 0.1 and gen["maxOutputTokens"] == 20 and gen["stopSequences"] == ["END"]
    assert gen["responseMimeType"] == "application/json"
    assert (gen.get("responseJsonSchema") or gen.get("response_json_schema")) == schema


def test_every_section_reports_errors_alike(gemini_server):
    """One conversion for every section: a misspelt key is named before the other errors, which are counted."""
    sections = {
        "state": ({"kind": "memory", "prefx": "a", "prefix": 3}, "state.prefx", "state.prefix"),
        "rate_limits": ([{"backnd": "chat", "requests_per_minute": -1}], "rate_limits.0.backnd",
                        "rate_limits.0.requests_per_minute"),
        "breakers": ({"failurs": 3, "failures": -1}, "breakers.failurs", "breakers.failures"),
        "knowledge": ({"pth": "x", "host": 3}, "knowledge.pth", "knowledge.host"),
    }
    for name, (section, field, other) in sections.items():
        error = _error({**gemini_config(gemini_server), name: section})
        assert error.field == field, name
        assert error.message.startswith("Extra inputs are not permitted; did you mean "), (name, error.message)
        # The other error is named, so that one attempt can fix both (it was only counted).
        assert error.message.endswith(f"(and 1 more error(s): {other})"), (name, error.message)


@pytest.mark.parametrize(("where", "key", "meant"), [
    ("backend", "tempalte", "template"), ("backend", "sytem", "system"), ("top", "knowlege", "knowledge"),
    ("top", "polcy", "policy"), ("engine", "api_key_evn", "api_key_env")])
def test_a_misspelt_key_names_the_setting_it_is_near(gemini_server, where, key, meant):
    # A newcomer's typo read only "Extra inputs are not permitted", leaving them to find the right name.
    config = gemini_config(gemini_server)
    section = {"backend": config["backends"]["chat"], "engine": config["engines"]["gemini"], "top": config}[where]
    section[key] = "x"
    error = _error(config)
    assert error.field.endswith(key)
    assert error.message == f"Extra inputs are not permitted; did you mean {meant!r}?"


@pytest.mark.parametrize("key", ["temperature", "max_output_tokens"])
def test_a_generation_setting_written_on_the_backend_names_generation(gemini_server, key):
    # `temperature: 0.2` beside `model:` read "Extra inputs are not permitted" (and max_output_tokens was then guessed
    # to be a typo of an unrelated `output_tokens`): it goes under the backend's `generation:`.
    config = gemini_config(gemini_server)
    config["backends"]["chat"][key] = 1
    error = _error(config)
    assert (error.field, error.message) == (
        f"backends.chat.{key}", "Extra inputs are not permitted; it is a setting of 'generation', not of this section")


def test_a_key_near_no_setting_gets_no_guess(gemini_server):
    error = _error({**gemini_config(gemini_server), "zzzz": 1})
    assert (error.field, error.message) == ("zzzz", "Extra inputs are not permitted")


@pytest.mark.parametrize(("engine", "field", "message"), [
    # An empty variable name read "no API key: set  (or GOOGLE_API_KEY)", naming no variable.
    ({"api_key_env": ""}, "engines.gemini.api_key_env", "must name an environment variable (default GEMINI_API_KEY)"),
    ({"api_key_env": "  "}, "engines.gemini.api_key_env", "must name an environment variable (default GEMINI_API_KEY)"),
    # An empty inline key read "Value should have at least 1 item after validation, not 0" (a secret's wording).
    ({"api_key": ""}, "engines.gemini.api_key", "String should have at least 1 character"),
])
def test_an_empty_key_setting_is_named_plainly(gemini_server, monkeypatch, engine, field, message):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    config = gemini_config(gemini_server)
    config["engines"]["gemini"].pop("api_key", None)
    config["engines"]["gemini"].update(engine)
    error = _error(config)
    assert (error.field, error.message) == (field, message)
    assert not gemini_server.requests


def test_a_value_that_fits_no_member_of_a_union_names_the_key_not_the_member(gemini_server):
    # pydantic names each member of a plain union in the error's location: `when: {task: 5}` was reported as
    # policy.rules.0.when.task.str, a key no config has, with "(and 1 more error(s))" for the tuple member.
    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "rules", "rules": [{"when": {"task": 5}, "backend": "chat"}], "default": "chat"}
    error = _error(config)
    assert (error.field, error.message) == ("policy.rules.0.when.task", "Input should be a valid string")
    # A list the config writes is a tuple to pydantic: the message says list.
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": "nonempty"}]}
    error = _error(config)
    assert error.field == "policy.rungs.0.validators"
    assert error.message.startswith("Input should be a valid list") and "uple" not in error.message


def test_safety_settings_reach_the_wire_and_unknown_names_are_refused(gemini_server):
    # A google-genai app passed safety_settings in its GenerateContentConfig; genroute had no place for them.
    safety = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"},
              {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "OFF"}]
    with Router.from_config(gemini_config(gemini_server, generation={"safety_settings": safety})) as router:
        router.generate("x")
    assert gemini_server.requests[-1].body["safetySettings"] == safety
    bad = [{"category": "HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    with pytest.raises(ConfigError) as info:
        Router.from_config(gemini_config(gemini_server, generation={"safety_settings": bad}))
    assert info.value.field == "backends.chat.generation.safety_settings.0.category"
    assert "HARM_CATEGORY_HARASSMENT" in info.value.message


def test_google_genais_own_safety_setting_objects_are_taken_as_a_ported_app_has_them(gemini_server):
    # A google-genai app builds safety_settings=[types.SafetySetting(category=..., threshold=...)]; genroute refused
    # that list ("safety_settings.0: Input should be a valid dictionary or instance of SafetySetting", of the very
    # class given), taking only dicts. The SDK's objects are read as their fields; an unknown field is still named.
    from google.genai import types

    safety = [types.SafetySetting(category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                                  threshold=types.HarmBlockThreshold.BLOCK_ONLY_HIGH),
              types.SafetySetting(category="HARM_CATEGORY_DANGEROUS_CONTENT", threshold="OFF")]
    with Router.from_config(gemini_config(gemini_server, generation={"safety_settings": safety})) as router:
        router.generate("x")
    assert gemini_server.requests[-1].body["safetySettings"] == [
        {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"},
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "OFF"}]
    vertex = [types.SafetySetting(category="HARM_CATEGORY_HARASSMENT", threshold="OFF", method="SEVERITY")]
    with pytest.raises(ConfigError) as info:
        Router.from_config(gemini_config(gemini_server, generation={"safety_settings": vertex}))
    assert info.value.field == "backends.chat.generation.safety_settings.0.method"


def test_a_pydantic_model_is_a_response_schema_as_google_genai_takes_one(gemini_server):
    # google-genai apps pass response_schema=Answer; genroute refused it ("Input should be a valid dictionary").
    from pydantic import BaseModel

    class Answer(BaseModel):
        city: str
        temp_c: float

    generation = {"response_mime_type": "application/json", "response_schema": Answer}
    with Router.from_config(gemini_config(gemini_server, generation=generation)) as router:
        gemini_server.reply_text('{"city": "Paris", "temp_c": 21}')
        assert Answer.model_validate_json(router.generate("x").text) == Answer(city="Paris", temp_c=21)
    assert gemini_server.requests[-1].body["generationConfig"]["responseJsonSchema"] == Answer.model_json_schema()


def test_a_config_built_with_python_objects_dumps_and_loads_back_to_the_same_wire_request(gemini_server, monkeypatch):
    # A pydantic class as response_schema made model_dump_json() raise PydanticSerializationError; google-genai's
    # SafetySetting dumped its unset `method: None`, refused when loaded back; and a schema property named like a
    # secret (`token_count`) was masked, so the saved schema was no longer the one sent.
    from google.genai import types
    from pydantic import BaseModel

    from genroute import RouterConfig

    class Answer(BaseModel):
        city: str
        token_count: int

    monkeypatch.setenv("GENROUTE_TEST_GEMINI_KEY", TEST_KEY)
    config = gemini_config(gemini_server, generation={
        "response_mime_type": "application/json", "response_schema": Answer, "stop_sequences": ("\n\n",),
        "safety_settings": [types.SafetySetting(category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                                                threshold=types.HarmBlockThreshold.BLOCK_ONLY_HIGH)]})
    config["engines"]["gemini"] = {"kind": "gemini", "base_url": gemini_server.base_url,
                                   "api_key_env": "GENROUTE_TEST_GEMINI_KEY"}
    config["validators"] = {"shape": {"kind": "json_schema", "schema": Answer.model_json_schema()}}
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["shape"]}]}
    built = RouterConfig.model_validate(config)
    bodies = []
    for source in (built, RouterConfig.model_validate_json(built.model_dump_json()),
                   RouterConfig.model_validate(json.loads(json.dumps(built.model_dump(mode="json")))),
                   built.model_dump()):
        with Router.from_config(source) as router:
            gemini_server.reply_text('{"city": "Paris", "token_count": 3}')
            assert router.generate("x").text == '{"city": "Paris", "token_count": 3}'
        bodies.append(gemini_server.requests[-1].body)
    assert bodies[0]["generationConfig"]["responseJsonSchema"] == Answer.model_json_schema()
    assert bodies[0]["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}]
    assert bodies[1:] == [bodies[0]] * 3
    assert json.loads(built.model_dump_json())["validators"]["shape"]["schema"] == Answer.model_json_schema()


def test_a_thinking_budget_reaches_the_wire_as_google_genai_sends_it_and_thoughts_bill_as_output(gemini_server):
    # generation.thinking_config was "Extra inputs are not permitted": a ported app had to drop its thinking_budget.
    from google import genai
    from google.genai import types

    from genroute.testing import Reply

    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=gemini_server.base_url))
    thinking = types.ThinkingConfig(thinking_budget=512, include_thoughts=True)
    client.models.generate_content(model="gemini-2.5-flash", contents="x",
                                   config=types.GenerateContentConfig(thinking_config=thinking))
    before = gemini_server.requests[-1].body
    usage = {"promptTokenCount": 10, "candidatesTokenCount": 4, "thoughtsTokenCount": 300, "totalTokenCount": 314}
    answer = {"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
        {"text": "Counting the letters first.", "thought": True}, {"text": "Three."}]}}],
        "usageMetadata": usage, "modelVersion": "gemini-2.5-flash"}
    for given in (thinking, {"thinking_budget": 512, "include_thoughts": True}):
        with Router.from_config(gemini_config(gemini_server, generation={"thinking_config": given})) as router:
            gemini_server.reply(Reply(raw=answer))
            result = router.generate("x")
        assert gemini_server.requests[-1].body == before
        assert result.text == "Three." and result.usage.thinking_tokens == 300
        # Gemini bills thought tokens at the output rate ("Output price (including thinking tokens)").
        assert result.cost_usd == pytest.approx(10 * 0.30 / 1e6 + (4 + 300) * 2.50 / 1e6)
    error = _error(gemini_config(gemini_server, generation={"thinking_config": {"thinking_level": "LOW"}}))
    assert error.field == "backends.chat.generation.thinking_config.thinking_level"
