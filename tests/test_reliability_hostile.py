"""What a hostile or careless config or request found (issue 17), each refused with a typed error naming the field.

An alias bomb in a response schema (the SDK would write it out on the event loop at the first request, past
any deadline), duplicate keys in YAML/JSON configs (silently overriding), infinite timeouts (a bare
``OverflowError`` per request), and values that cannot be written out into a prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from genroute import ConfigError, Router, UsageError

from .conftest import gemini_config

BOMB_LEVELS = 9


def _alias_bomb_yaml(base_url: str) -> str:
    """~1 KB of YAML: 9 levels of 9 aliases, anchors and all, inside generation.response_schema."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from hostile_probe import alias_bomb_yaml

    return alias_bomb_yaml(base_url, "AIzaSy-test-key-0123456789-secret", BOMB_LEVELS)


def test_a_yaml_alias_bomb_in_a_response_schema_is_refused_at_build(gemini_server, tmp_path: Path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb_yaml(gemini_server.base_url), encoding="utf-8")
    assert len(path.read_bytes()) < 1500
    with pytest.raises(ConfigError) as err:
        Router.from_config(path)
    assert err.value.field is not None and err.value.field.startswith("backends.chat.generation.response_schema")
    assert "too large" in str(err.value)
    assert not gemini_server.requests


def _bomb(levels: int = BOMB_LEVELS) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        node = {"type": "object", "properties": {f"p{i}": node for i in range(9)}}
    return node


def test_a_shared_reference_bomb_given_in_code_is_refused_too(gemini_server):
    from genroute.backends.base import GenerationSettings

    from genroute.config import RouterConfig

    config = gemini_config(gemini_server, generation={"response_schema": _bomb()})
    with pytest.raises(ConfigError) as err:
        Router.from_config(config)
    assert err.value.field.startswith("backends.chat.generation.response_schema")
    with pytest.raises(ConfigError) as err:  # a RouterConfig built in code (its sections stay raw mappings)
        Router.from_config(RouterConfig.model_validate(config))
    assert err.value.field.startswith("backends.chat.generation.response_schema")
    with pytest.raises(ConfigError, match="too large") as err:  # a model built in code: pydantic's ValueError before
        GenerationSettings(response_schema=_bomb())
    assert err.value.field == "response_schema"
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"p": deep}}
    with pytest.raises(ConfigError, match="nested more than 32 deep"):
        GenerationSettings(response_schema=deep)
    GenerationSettings(response_schema=_bomb(3))  # 9**3 values written out: a big but fair schema


def test_a_json_schema_validator_file_is_bounded_too(gemini_server, tmp_path: Path):
    path = tmp_path / "schema.yaml"
    schema = _alias_bomb_yaml("x").split("      response_schema:\n")[1]
    path.write_text("\n".join(line[8:] for line in schema.splitlines()) + "\n", encoding="utf-8")
    config = gemini_config(gemini_server)
    config["validators"] = {"shape": {"kind": "json_schema", "path": str(path)}}
    with pytest.raises(ConfigError, match="too large") as err:
        Router.from_config(config)
    assert err.value.field == "validators.shape.path"


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_duplicate_keys_in_a_config_file_are_refused(gemini_server, tmp_path: Path, suffix: str):
    config = gemini_config(gemini_server)
    other = {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-pro"}
    if suffix == ".yaml":
        text = yaml.safe_dump(config, sort_keys=False) + yaml.safe_dump({"backends": {"other": other}})
    else:
        body = json.dumps(config)[:-1]
        text = body + ', "backends": ' + json.dumps({"other": other}) + "}"
    path = tmp_path / f"dup{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate key 'backends'") as err:
        Router.from_config(path)
    assert err.value.field == "backends"


@pytest.mark.parametrize(("suffix", "text"), [
    (".yaml", "backends:\n  chat: {kind: prompt_template, engine: g, model: a, model: b}\n"),
    (".yaml", "backends:\n  chat:\n    kind: prompt_template\n    model: a\n    model: b\n"),
    (".json", '{"backends": {"chat": {"kind": "prompt_template", "model": "a", "model": "b"}}}'),
    (".json", '{"rate_limits": [{"per": "x"}, {"per": "y", "per": "z"}]}'),
])
def test_a_nested_duplicate_key_is_named_by_its_path(tmp_path: Path, suffix: str, text: str):
    path = tmp_path / f"dup{suffix}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate key") as err:
        Router.from_config(path)
    assert err.value.field == ("rate_limits.1.per" if "rate_limits" in text else "backends.chat.model")


def test_yaml_merge_keys_may_still_be_overridden(gemini_server, tmp_path: Path):
    path = tmp_path / "merge.yaml"
    path.write_text(
        "engines:\n"
        f"  gemini: {{kind: gemini, base_url: '{gemini_server.base_url}', api_key: AIzaSy-test-key-0123456789-x}}\n"
        "backends:\n"
        "  chat: &chat {kind: prompt_template, engine: gemini, model: gemini-2.5-flash}\n"
        "  pro:\n    <<: *chat\n    model: gemini-2.5-pro\n"
        "policy: {kind: static, backend: chat}\n", encoding="utf-8")
    router = Router.from_config(path)
    assert router.backends["pro"].config.model == "gemini-2.5-pro"
    router.close()


@pytest.mark.parametrize("where", ["router", "engine", "retry"])
def test_infinite_timeouts_in_config_are_refused(gemini_server, where: str):
    config = gemini_config(gemini_server)
    if where == "router":
        config["timeout_s"], field = float("inf"), "timeout_s"
    elif where == "engine":
        config["engines"]["gemini"]["timeout_s"], field = float("inf"), "engines.gemini.timeout_s"
    else:
        config["engines"]["gemini"]["retry"]["deadline_s"], field = float("nan"), "engines.gemini.retry.deadline_s"
    with pytest.raises(ConfigError) as err:
        Router.from_config(config)
    assert err.value.field == field


def test_infinite_timeouts_in_code_and_requests_are_refused(gemini_server):
    with Router.from_config(gemini_config(gemini_server)) as router:
        for bad in (float("inf"), float("nan")):
            with pytest.raises(UsageError) as err:
                router.generate("hi", timeout_s=bad)
            assert err.value.field == "timeout_s"
        with pytest.raises(UsageError) as err:
            Router(router.backends, timeout_s=float("inf"))
        assert err.value.field == "timeout_s"
    assert not gemini_server.requests


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    __repr__ = __str__


def test_values_that_cannot_be_written_into_a_prompt_are_usage_errors_naming_them(gemini_server):
    config = gemini_config(gemini_server, template="{{ input }} {{ opts }} {{ metadata }}",
                           variables={"opts": {"type": "dict", "required": False}})
    with Router.from_config(config) as router:
        with pytest.raises(UsageError) as err:
            router.generate("hi", variables={"opts": {"x": _Unprintable()}})
        assert err.value.field == "variables.opts" and "RuntimeError" in str(err.value)
        with pytest.raises(UsageError) as err:
            router.generate("hi", metadata={"who": _Unprintable()})
        assert err.value.field == "metadata"
        deep: dict[str, Any] = {}
        node = deep
        for _ in range(5000):
            node["d"] = {}
            node = node["d"]
        with pytest.raises(UsageError) as err:
            router.generate("hi", metadata=deep)
        assert err.value.field == "metadata" and "deep" in str(err.value)
        with pytest.raises(UsageError) as err:  # shared references that multiply when written out
            router.generate("hi", metadata={"bomb": _bomb()})
        assert err.value.field == "metadata" and err.value.message.startswith("too large")  # no "Value error, "
        with pytest.raises(UsageError) as err:
            router.generate(" \n\t")
        assert (err.value.field, err.value.message) == ("input", "input must not be blank")
    assert not gemini_server.requests


def test_a_template_nested_thousands_deep_is_a_config_error(gemini_server):
    template = "{% if input %}" * 3000 + "x" + "{% endif %}" * 3000
    with pytest.raises(ConfigError) as err:
        Router.from_config(gemini_config(gemini_server, template=template))
    assert err.value.field == "backends.chat.template"
    with pytest.raises(ConfigError, match="too large") as err:
        Router.from_config(gemini_config(gemini_server, template="x" * 300_000))
    assert err.value.field == "backends.chat.template"
