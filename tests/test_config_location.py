"""A ``ConfigError`` about a config file says where the file writes the setting: its file and line."""

from __future__ import annotations

import pytest

from genroute import ConfigError, Router


def _error(path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Router.from_config(path)
    return info.value


YAML = """\
engines:
  gemini: {{kind: gemini, api_key: k, base_url: "{url}"}}
backends:
  chat:
    kind: prompt_template
    engine: {engine}
    model: gemini-2.5-flash
    generation:
      temperature: {temperature}
pricing:
  gemini-2.5-flash: {{input: {price}, output: 1}}
policy: {{kind: static, backend: chat}}
"""


def _yaml(tmp_path, url, **changes):
    values = {"url": url, "engine": "gemini", "temperature": 0.2, "price": 1, **changes}
    path = tmp_path / "app.yaml"
    path.write_text(YAML.format(**values), encoding="utf-8")
    return path


@pytest.mark.parametrize(("changes", "field", "line"), [
    ({"temperature": 9}, "backends.chat.generation.temperature", 9),   # validated when the backend is built
    ({"engine": "nope"}, "backends.chat.engine", 6),                   # a reference checked when built
    ({"price": -1}, "pricing.gemini-2.5-flash.input", 11),             # a key holding dots
])
def test_a_yaml_files_error_names_the_line_that_writes_the_field(gemini_server, tmp_path, changes, field, line):
    path = _yaml(tmp_path, gemini_server.base_url, **changes)
    error = _error(path)
    assert (error.field, error.file, error.line) == (field, str(path), line)
    assert str(error).endswith(f" ({path}, line {line})")
    assert not gemini_server.requests


def test_an_unknown_or_missing_key_names_its_own_line_or_its_sections(gemini_server, tmp_path):
    path = _yaml(tmp_path, gemini_server.base_url)
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "timeout: 3\n", encoding="utf-8")   # a misspelt timeout_s, on line 13
    assert (_error(path).field, _error(path).line) == ("timeout", 13)
    path.write_text(text.replace("    model: gemini-2.5-flash\n", ""), encoding="utf-8")
    error = _error(path)   # backends.chat.model is missing: the line of its backend
    assert (error.field, error.line) == ("backends.chat.model", 4)


def test_a_kind_that_is_not_text_is_named_as_such(gemini_server, tmp_path):
    path = _yaml(tmp_path, gemini_server.base_url)
    path.write_text(path.read_text(encoding="utf-8").replace("kind: static", "kind: 3"), encoding="utf-8")
    error = _error(path)
    assert (error.field, error.line) == ("policy.kind", 12)
    assert "`kind` names a kind as text, not int (3)" in str(error)


def test_a_duplicate_key_names_its_second_writing(gemini_server, tmp_path):
    path = _yaml(tmp_path, gemini_server.base_url)
    path.write_text(path.read_text(encoding="utf-8") + "policy: {kind: static, backend: chat}\n", encoding="utf-8")
    error = _error(path)
    assert (error.field, error.line) == ("policy", 13)
    assert str(error) == f"policy: duplicate key 'policy' ({path}, line 13)"


def test_toml_and_json_files_name_the_line_too(gemini_server, tmp_path):
    toml = tmp_path / "app.toml"
    toml.write_text(
        f'timeout_s = 5\n\n[engines.gemini]\nkind = "gemini"\napi_key = "k"\nbase_url = "{gemini_server.base_url}"\n\n'
        '[backends.chat]\nkind = "prompt_template"\nengine = "gemini"\nmodel = "gemini-2.5-flash"\n'
        'generation = {temperature = 9}\n', encoding="utf-8")
    error = _error(toml)
    assert (error.field, error.file, error.line) == ("backends.chat.generation.temperature", str(toml), 12)
    js = tmp_path / "app.json"
    js.write_text(
        f'{{"engines": {{"gemini": {{"kind": "gemini", "api_key": "k", "base_url": "{gemini_server.base_url}"}}}},\n'
        ' "backends": {\n'
        '   "chat": {"kind": "prompt_template", "engine": "gemini",\n'
        '            "model": "gemini-2.5-flash", "timeout": 3}}}\n', encoding="utf-8")
    error = _error(js)
    assert (error.field, error.line) == ("backends.chat.timeout", 4)


def test_a_mapping_config_has_no_file_to_name(gemini_server):
    config = {"engines": {"gemini": {"kind": "gemini", "api_key": "k", "base_url": gemini_server.base_url}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "nope", "model": "gemini-2.5-flash"}}}
    error = _error(config)
    assert (error.field, error.file, error.line) == ("backends.chat.engine", None, None)
    assert str(error) == "backends.chat.engine: unknown engine 'nope' (known: gemini)"


def test_a_command_locates_a_config_error_found_at_the_first_request(tmp_path, capsys):
    # A local engine's model file is checked when it first loads, after the router was built: the command still
    # says where its config names the file.
    from genroute.cli import main

    path = tmp_path / "app.yaml"
    path.write_text("engines:\n  local:\n    kind: local\n    model_path: models/missing.gguf\n"
                    "backends:\n  small: {kind: prompt_template, engine: local, model: gemma-3-270m}\n",
                    encoding="utf-8")
    assert main(["generate", "hi", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genroute generate: error: engines.local.model_path: no model file at ")
    assert err.rstrip().endswith(f" ({path}, line 4)")


def test_bench_locates_config_errors_as_generate_does(gemini_server, tmp_path, capsys):
    # genroute bench named the file and line of a config error found as the router was built, but not of one found
    # at the first request (a local engine's model file): each target's "no scored row" line and results.jsonl
    # gave the field alone, where `genroute generate` gave "(app.yaml, line 4)".
    import json

    from genroute.cli import main

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"input": f"q{i}", "output": "a"}) + "\n" for i in range(3)), encoding="utf-8")
    path = _yaml(tmp_path, gemini_server.base_url, temperature='"hot"')  # a text where a number goes, on line 9
    assert main(["bench", str(data), "--config", str(path), "--backends", "chat", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genroute bench: error: backends.chat.generation.temperature: ")
    assert err.rstrip().endswith(f" ({path}, line 9)")
    late = tmp_path / "late.yaml"
    late.write_text("engines:\n  local:\n    kind: local\n    model_path: models/missing.gguf\n"
                    "backends:\n  small: {kind: prompt_template, engine: local, model: gemma-3-270m}\n",
                    encoding="utf-8")
    out = tmp_path / "b"
    assert main(["bench", str(data), "--config", str(late), "--backends", "small", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "genroute bench: error: small: no scored row: 3 failed with ConfigError: engines.local.model_path: no " \
           "model file at " in err and err.rstrip().endswith(f" ({late}, line 4)")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows and all(row["error"].endswith(f" ({late}, line 4)") for row in rows)
    assert not gemini_server.requests


def test_a_config_with_no_backend_says_what_is_missing_where(tmp_path):
    # A config only used to ingest, with `backends: {}`, read pydantic's "Dictionary should have at least 1 item
    # after validation, not 0": genroute's words say what is missing, at the line that writes it.
    path = tmp_path / "ingest.yaml"
    path.write_text("knowledge:\n  embedder: {kind: local}\nbackends: {}\n", encoding="utf-8")
    error = _error(path)
    assert (error.field, error.file, error.line) == ("backends", str(path), 3)
    assert error.message.startswith("no backend is configured: a router needs at least one (backends: {NAME: ")
    assert "Dictionary" not in str(error)


@pytest.mark.parametrize("text", ["policy:\n  kind: fixed\n  backend: a\n", "backends:\n"],
                         ids=["no-backends-key", "backends-with-nothing-under-it"])
def test_a_config_without_backends_gets_the_same_words(tmp_path, text):
    # A missing `backends:` key read pydantic's "Field required", and `backends:` with nothing under it (YAML's None)
    # "Input should be a valid dictionary", while `backends: {}` had genroute's words.
    path = tmp_path / "no-backends.yaml"
    path.write_text(text, encoding="utf-8")
    error = _error(path)
    assert error.field == "backends"
    assert error.message.startswith("no backend is configured: a router needs at least one (backends: {NAME: ")
    assert "Field required" not in str(error) and "dictionary" not in str(error)
