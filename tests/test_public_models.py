"""Every public pydantic model a user builds in code refuses bad input with a genroute error naming the field.

``GenerateRequest(prompt=123)``, ``RouterConfig(backends={})``, ``Rung(backend=5)`` (a custom policy builds rungs)
raised pydantic's ``ValidationError``, a ``ValueError`` outside genroute's error tree: now a configuration model
raises ``ConfigError`` and any other public model ``UsageError``, with ``field`` the dotted path of the first
invalid field from the model the user built and pydantic's error as ``__cause__`` (``genroute.public_model``).
The models are found, not listed: ``genroute.__all__``, each public package's ``__all__``, every built-in kind's
``Config`` and the settings the docs build in code, so a model added to any of them is covered.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import genroute
from genroute import ConfigError, UsageError
from genroute.public_model import ConfigModel, PublicModel
from genroute.registry import BUILTIN

#: Settings the docs build in code that no package exports (``tune=LocalTuneConfig(...)``, ``vertex=...``).
_README_MODELS = ("genroute.tuning.local_lora:LocalTuneConfig", "genroute.tuning.vertex:VertexTuningSettings",
                  "genroute.engines.local:LocalEngineConfig")

#: Modules whose models genroute alone builds (a config's validator specs, through a TypeAdapter that words the
#: error under the config's path): pydantic's errors stay inside.
_INTERNAL = ("genroute.router.validators",)


def _public_models() -> dict[str, type[BaseModel]]:
    spaces = [genroute] + [importlib.import_module(f"genroute.{info.name}")
                           for info in pkgutil.iter_modules(genroute.__path__) if info.ispkg]
    found: list[type[BaseModel]] = [obj for space in spaces for obj in map(lambda n: getattr(space, n),
                                                                           getattr(space, "__all__", ()))
                                    if isinstance(obj, type) and issubclass(obj, BaseModel)]
    for target in [*_README_MODELS, *(t for group in BUILTIN.values() for t in group.values())]:
        module, name = target.split(":")
        cls = getattr(importlib.import_module(module), name)
        found.append(getattr(cls, "Config", cls))
    return {f"{cls.__module__}.{cls.__qualname__}": cls for cls in found}


MODELS = _public_models()


def _scalar_field(model: type[BaseModel]) -> str:
    """A field of ``model`` holding a number, text or flag (a list of lists is none of them)."""
    scalars = (str, int, float, bool, str | None, int | None, float | None, bool | None)
    return next(name for name, info in model.model_fields.items() if info.annotation in scalars)


def _bad_input(model: type[BaseModel]) -> tuple[dict[str, Any], str]:
    """Input ``model`` refuses, and the field the error must name: an unknown key, or a list for a scalar where
    unknown keys are allowed."""
    if model.model_config.get("extra") == "forbid":
        return {"no_such_setting": 1}, "no_such_setting"
    field = _scalar_field(model)
    return {field: [[1]]}, field


def test_the_walk_finds_the_models_users_build() -> None:
    for name in ("genroute.types.GenerateRequest", "genroute.types.Rung", "genroute.types.Decision",
                 "genroute.config.RouterConfig", "genroute.runtime.pricing.ModelPrice",
                 "genroute.outcomes.settings.OutcomeSettings", "genroute.knowledge.store_config.StoreConfig",
                 "genroute.state.RedisStateConfig", "genroute.engines.gemini_config.GeminiEngineConfig",
                 "genroute.policies.rules.RulesConfig", "genroute.backends.rag.RagConfig",
                 "genroute.tuning.local_lora.LocalTuneConfig"):
        assert name in MODELS, name


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bad_input_to_a_public_model_is_a_genroute_error_naming_the_field(name: str) -> None:
    model = MODELS[name]
    assert issubclass(model, PublicModel), f"{name} does not derive from genroute.public_model.PublicModel"
    bad, field = _bad_input(model)
    expected = ConfigError if issubclass(model, ConfigModel) else UsageError
    builds = [lambda: model(**bad), lambda: model.model_validate(bad),
              lambda: model.model_validate_json(json.dumps(bad))]
    for build in builds:
        with pytest.raises(UsageError) as err:
            build()
        assert type(err.value) is expected, (name, err.value)
        assert not isinstance(err.value, ValueError)  # one tree: `except ValueError` no longer catches it
        assert err.value.field == field, (name, err.value)
        assert err.value.message and str(err.value).startswith(f"{field}: ")
        assert isinstance(err.value.__cause__, ValidationError)


@pytest.mark.parametrize("name", sorted(n for n, m in MODELS.items() if all(
    not f.is_required() for f in m.model_fields.values())))
def test_a_public_model_of_defaults_builds_every_way(name: str) -> None:
    model = MODELS[name]
    built = model()
    assert model.model_validate({}) == built == model.model_validate_json("{}")
    assert model.model_validate(built.model_dump()) == built


#: Good input of the models that have required fields (the rest build from their defaults, above).
GOOD: list[tuple[str, dict[str, Any]]] = [
    ("genroute.types.GenerateRequest", {"input": "hi", "task": "t", "metadata": {"k": 1}, "timeout_s": 2}),
    ("genroute.types.Rung", {"backend": "chat", "validators": ["v"]}),
    ("genroute.types.Decision", {"policy": "mine", "rungs": [{"backend": "a"}, {"backend": "b"}], "reason": "r"}),
    ("genroute.types.ToolCall", {"name": "f", "args": {"x": 1}}),
    ("genroute.runtime.pricing.ModelPrice", {"input": 0.3, "output": 2.5}),
    ("genroute.state.RedisStateConfig", {"kind": "redis", "url": "redis://localhost:6379/0"}),
    ("genroute.policies.rules.RulesConfig", {"kind": "rules", "default": "chat"}),
    ("genroute.config.RouterConfig", {"engines": {"g": {"kind": "gemini", "api_key": "k"}},
                                      "backends": {"chat": {"kind": "prompt_template", "engine": "g",
                                                            "model": "gemini-2.5-flash"}},
                                      "telemetry": {"capture_max_chars": 10}}),
]


@pytest.mark.parametrize(("name", "good"), GOOD, ids=[name for name, _ in GOOD])
def test_good_input_still_builds(name: str, good: dict[str, Any]) -> None:
    model = MODELS[name]
    built = model(**good)
    assert model.model_validate(good) == built == model.model_validate_json(json.dumps(good))


def test_a_nested_models_error_names_the_path_from_the_model_built() -> None:
    from genroute import Decision, GenerateResult, RouterConfig

    config = dict(GOOD[-1][1], telemetry={"capture_max_chars": 0})
    for build in (lambda: RouterConfig(**config), lambda: RouterConfig.model_validate(config)):
        with pytest.raises(ConfigError) as err:
            build()
        assert err.value.field == "telemetry.capture_max_chars"
    with pytest.raises(UsageError) as usage:
        Decision(policy="mine", rungs=[{"backend": "a"}, {"backend": 5}], reason="r")
    assert usage.value.field == "rungs.1.backend" and type(usage.value) is UsageError
    with pytest.raises(UsageError) as usage:
        GenerateResult.model_validate({"text": "t", "backend": "b", "model": "m", "latency_s": 0.1,
                                       "decision": {"policy": "p", "reason": "r", "rungs_tried": [{"backend": 1}]}})
    assert usage.value.field == "decision.rungs_tried.0.backend"


def test_every_error_is_named_and_counted() -> None:
    from genroute import GenerateRequest

    with pytest.raises(UsageError) as err:
        GenerateRequest(prompt=123)  # type: ignore[call-arg]
    # The unknown key first (it is often the missing one misspelt), with the setting it is near.
    assert err.value.field == "prompt" and err.value.message.endswith("(and 1 more error(s): input)")
    with pytest.raises(ConfigError) as config:
        genroute.RouterConfig(backends={})
    assert config.value.field == "backends"


def test_a_refused_secret_is_not_quoted() -> None:
    from genroute.engines.gemini_config import GeminiEngineConfig
    from genroute.state import RedisStateConfig

    key = "AIza" + "Sy0123456789abcdefghijklmnopqrstu"
    for build in (lambda: GeminiEngineConfig(api_key=key, timeout_s=0),
                  lambda: GeminiEngineConfig(api_key=[key]),  # type: ignore[arg-type]
                  lambda: RedisStateConfig(kind="redis", url="redis://:PASSWORD-1@h:6379/0", prefix=5)):
        with pytest.raises(ConfigError) as err:
            build()
        cause = err.value.__cause__
        for text in (str(err.value), repr(err.value), str(cause), repr(cause)):
            assert key not in text and "PASSWORD-1" not in text, text


def test_model_copy_validates_nothing() -> None:
    # pydantic's model_copy(update=...) and model_construct check nothing: nothing to convert (docs/errors.md says so).
    from genroute import Rung

    assert Rung(backend="a").model_copy(update={"backend": 5}).backend == 5


def test_a_rung_with_an_empty_backend_name_is_refused() -> None:
    # A backend is never named "" (a config's names are not empty): a custom policy's Rung(backend="") built and
    # failed later, at the router, far from the policy that wrote it.
    from genroute import Decision, Rung

    for build in (lambda: Rung(backend=""), lambda: Rung.model_validate({"backend": ""}),
                  lambda: Decision.single("mine", "", "why")):
        with pytest.raises(UsageError) as err:
            build()
        assert err.value.field in ("backend", "rungs.0.backend"), err.value
        assert isinstance(err.value.__cause__, ValidationError)
    assert Rung(backend="c").backend == "c"


def test_genroutes_own_readers_keep_their_wording() -> None:
    # A config file's section, a request's fields: each names its own field, as before (pydantic_validated).
    from genroute.router.scope import parse_request

    with pytest.raises(UsageError) as err:
        parse_request(None, {"input": "hi", "timeout_s": -1}, SimpleNamespace(backends={}, _gated=None))
    assert (err.value.field, err.value.message) == ("timeout_s", "Input should be greater than 0")
    with pytest.raises(ConfigError) as config:
        genroute.load_config({"backends": {"chat": {"kind": "prompt_template"}}, "telemetry": {"x": 1}})
    assert config.value.field == "telemetry.x"


def test_every_genroute_model_loaded_derives_from_the_public_base() -> None:
    # A model added anywhere (exported or not) converts its errors too, unless genroute alone builds it.
    seen: list[type[BaseModel]] = []
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in seen:
                seen.append(sub)
                stack.append(sub)
    plain = [f"{cls.__module__}.{cls.__qualname__}" for cls in seen
             if cls.__module__.startswith("genroute.") and "genroute.testing" not in cls.__module__
             and not issubclass(cls, PublicModel) and cls.__module__ not in _INTERNAL
             and sys.modules.get(cls.__module__) is not None and hasattr(sys.modules[cls.__module__], cls.__name__)]
    assert plain == []
