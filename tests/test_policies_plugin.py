"""Policy, backend and engine kinds from an installed third-party package, named in config through their
entry points (``genroute.policies``, ``genroute.backends``, ``genroute.engines``) and run by a Router.

The package lives in ``tests/plugin_pkg``; ``scripts/install.sh`` installs it with
``pip install --no-deps -e tests/plugin_pkg`` (re-run that after changing its entry points).
"""

from __future__ import annotations

import logging

from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from genroute import Router, registry
from genroute.errors import ConfigError, UsageError
from genroute.policies import build_policy
from genroute.policies.base import BackendInfo, PolicyContext
from genroute.registry import kinds, plugin_failures
from genroute.types import GenerateRequest

from .conftest import gemini_config

INSTALL = "pip install --no-deps -e tests/plugin_pkg"


@pytest.fixture(autouse=True)
def _installed() -> None:
    for group, name in (("policies", "shortest_name"), ("backends", "shout"), ("engines", "echo")):
        names = {ep.name for ep in entry_points(group=f"genroute.{group}")}
        assert name in names, f"the example plugin (0.2+) is not installed; run: {INSTALL}"


def test_plugin_kind_is_listed_and_builds_from_config() -> None:
    assert "shortest_name" in kinds("policies")
    policy = build_policy({"kind": "shortest_name", "prefix": "b"})
    catalogue = {n: BackendInfo(n, "prompt_template") for n in ("alpha", "beta", "bz", "c")}
    decision = policy.decide(GenerateRequest(input="hi"), PolicyContext(catalogue=catalogue))
    assert decision.rungs[0].backend == "bz" and decision.policy == "shortest_name"


def test_plugin_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        build_policy({"kind": "shortest_name", "prefx": "b"}, field="policy.arms.0.policy")
    assert err.value.field == "policy.arms.0.policy.prefx"


def test_plugin_kind_nests_inside_builtin_policies() -> None:
    split = build_policy({"kind": "split", "arms": [{"weight": 1, "policy": {"kind": "shortest_name"}}]})
    catalogue = {n: BackendInfo(n, "prompt_template") for n in ("long-name", "x")}
    decision = split.decide(GenerateRequest(input="hi", key="k"), PolicyContext(catalogue=catalogue))
    assert decision.rungs[0].backend == "x"


# -- backend and engine kinds ---------------------------------------------------------------------------

def plugin_config(server: Any) -> dict[str, Any]:
    """The plugin's engine and backend next to built-in ones, each combination once."""
    config = gemini_config(server)
    config["engines"]["echo"] = {"kind": "echo", "prefix": "echo: "}
    config["backends"].update({
        "loud": {"kind": "shout", "engine": "echo", "model": "echo-1", "suffix": "!!"},   # plugin on plugin
        "plain": {"kind": "prompt_template", "engine": "echo", "model": "echo-1",          # built-in on plugin
                  "system": "be brief"},
        "loud_gemini": {"kind": "shout", "engine": "gemini", "model": "gemini-2.5-flash"},  # plugin on built-in
    })
    config["policy"] = {"kind": "rules", "rules": [{"when": {"task": "shout"}, "backend": "loud"}],
                        "default": "plain"}
    return config


def test_plugin_backend_and_engine_run_through_a_router(gemini_server, otel) -> None:
    assert {"shout"} <= set(kinds("backends")) and {"echo"} <= set(kinds("engines"))
    gemini_server.reply_text("heard you", usage=(3, 2))
    with Router.from_config(plugin_config(gemini_server), **otel.providers) as router:
        loud = router.generate("hello there", task="shout")
        plain = router.generate("hello there")
        via_gemini = router.generate("hello there", backend="loud_gemini")
        chunks = list(router.stream("one two three", task="shout"))
        facts = router.catalogue["loud"].facts
    assert loud.backend == "loud" and loud.text == "echo: HELLO THERE!!" and loud.cost_usd == 0.0
    assert loud.usage.input_tokens == 2 and loud.usage.output_tokens == 3  # words, the engine's own count
    assert plain.backend == "plain" and plain.text == "echo: [be brief] hello there"
    assert via_gemini.text == "heard you" and via_gemini.cost_usd > 0
    sent = gemini_server.requests[-1].body["contents"][-1]["parts"][0]["text"]
    assert sent == "HELLO THERE!"  # the plugin backend built the call the built-in engine sent
    assert [c.text for c in chunks[:-1]] == ["echo:", " ONE", " TWO", " THREE!!"]
    assert chunks[-1].done and chunks[-1].result.text == "echo: ONE TWO THREE!!"
    assert facts == {"suffix": "!!"}
    providers = {s.attributes.get("gen_ai.provider.name") for s in otel.spans("generate_content")}
    assert "example.echo" in providers


def test_plugin_backend_config_errors_name_the_field(gemini_server) -> None:
    config = plugin_config(gemini_server)
    config["backends"]["loud"]["sufix"] = "?"
    with pytest.raises(ConfigError) as err:
        Router.from_config(config)
    assert err.value.field == "backends.loud.sufix"
    config = plugin_config(gemini_server)
    config["engines"]["echo"]["prefix"] = 3
    with pytest.raises(ConfigError) as err:
        Router.from_config(config)
    assert err.value.field == "engines.echo.prefix"


def test_a_plugin_that_fails_to_import_is_a_config_error(gemini_server) -> None:
    config = plugin_config(gemini_server)
    config["backends"]["loud"]["kind"] = "needs_missing"
    with pytest.raises(ConfigError) as err:
        Router.from_config(config)
    assert err.value.field == "backends.loud.kind"
    message = str(err.value)
    assert "needs_missing" in message and "genroute-plugin-example" in message
    assert "ModuleNotFoundError" in message and "genroute_plugin_example_missing_dependency" in message
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


def test_a_plugin_that_is_not_the_right_class_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a Policy subclass") as err:
        build_policy({"kind": "not_a_policy"}, field="policy.inner")
    assert err.value.field == "policy.inner.kind"


# -- plugins that misbehave -----------------------------------------------------------------------------

MISBEHAVING = "genroute-misbehaving-plugins"


def _install(path: Path, monkeypatch: pytest.MonkeyPatch, entry_points_text: str) -> Iterator[None]:
    """``entry_points_text`` as the entry points of package MISBEHAVING installed under ``path`` (a dist-info
    on ``sys.path``, what pip writes), for one test."""
    dist = path / "genroute_misbehaving_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {MISBEHAVING}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points_text)
    monkeypatch.syspath_prepend(str(path))
    registry._plugins.cache_clear()
    yield
    registry._plugins.cache_clear()


@pytest.fixture
def misbehaving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The plugins of ``tests/misbehaving_plugins.py`` and ``tests/kindless_plugins.py``, installed."""
    yield from _install(tmp_path, monkeypatch, (
        "[genroute.policies]\n"
        "dataclass_config = tests.misbehaving_plugins:DataclassConfigPolicy\n"
        "validator_type_error = tests.misbehaving_plugins:TypeErrorPolicy\n"
        "init_fails = tests.misbehaving_plugins:InitFailsPolicy\n"
        "wrong_kind = genroute_plugin_example:ShortestNamePolicy\n"
        "first_name = tests.kindless_plugins:FirstNamePolicy\n"
        "any_kind = tests.kindless_plugins:AnyKindPolicy\n"
        "no_decision = tests.misbehaving_plugins:NoDecisionPolicy\n"
        "[genroute.engines]\n"
        "exploding_engine = tests.misbehaving_plugins:ExplodingEngine\n"
        "text_answer = tests.misbehaving_plugins:TextAnswerEngine\n"
        "[genroute.backends]\n"
        "exploding_backend = tests.misbehaving_plugins:ExplodingBackend\n"
        "whisper = tests.kindless_plugins:WhisperBackend\n"
        "text_output = tests.misbehaving_plugins:TextOutputBackend\n"
    ))


@pytest.fixture
def shadowing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plugins installed under built-in kind names (warned about once per kind in a process: from this test on)."""
    registry._shadowed.cache_clear()
    yield from _install(tmp_path, monkeypatch, (
        "[genroute.policies]\nladder = genroute_plugin_example:ShortestNamePolicy\n"
        "[genroute.engines]\ngemini = genroute_plugin_example.engine:EchoEngine\n"
    ))


def _plugin_error(raw: dict[str, Any], field: str) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        build_policy(raw)
    assert err.value.field == field
    assert f"'{raw['kind']}'" in err.value.message and MISBEHAVING in err.value.message
    return err.value


def test_a_plugin_config_that_is_not_a_pydantic_model_is_a_config_error(misbehaving) -> None:
    error = _plugin_error({"kind": "dataclass_config"}, "policy.kind")
    assert "pydantic" in error.message


def test_a_plugin_failing_in_its_validator_or_init_is_a_config_error_naming_it(misbehaving) -> None:
    error = _plugin_error({"kind": "validator_type_error", "prefix": "b"}, "policy")
    assert "TypeError: prefix checker crashed" in error.message and isinstance(error.__cause__, TypeError)
    error = _plugin_error({"kind": "init_fails"}, "policy")
    assert "RuntimeError: policy init exploded" in error.message


def test_a_plugin_whose_config_refuses_its_own_kind_name_is_named(misbehaving) -> None:
    error = _plugin_error({"kind": "wrong_kind"}, "policy.kind")
    assert "shortest_name" in error.message  # what its Config accepts instead


@pytest.mark.parametrize(("section", "name", "kind", "error"), [
    ("engines", "echo", "exploding_engine", "OSError: no such device"),
    ("backends", "loud", "exploding_backend", "ValueError: backend init exploded"),
])
def test_plugin_engine_and_backend_failing_to_build_name_the_section(misbehaving, gemini_server, section, name,
                                                                     kind, error) -> None:
    config = plugin_config(gemini_server)
    config[section][name]["kind"] = kind
    with pytest.raises(ConfigError) as err:
        Router.from_config(config)
    assert err.value.field == f"{section}.{name}"
    assert error in err.value.message and MISBEHAVING in err.value.message


def test_a_plugin_policy_that_decides_no_decision_is_a_config_error_naming_it(misbehaving, gemini_server) -> None:
    # Its decide() returned None: an AttributeError ('NoneType' object has no attribute 'rungs') from inside the
    # executor reached the caller, naming neither the policy nor its package.
    # Inside a split arm (or a budget, explore, challenger) it came from the wrapper's code instead.
    config = gemini_config(gemini_server)
    split = {"kind": "split", "arms": [{"weight": 1, "policy": {"kind": "no_decision"}}]}
    for config["policy"], field in (({"kind": "no_decision"}, "policy"), (split, "policy.arms.0.policy")):
        with Router.from_config(config) as router:
            for call in (router.generate, router.decide, lambda text: list(router.stream(text))):
                with pytest.raises(ConfigError) as err:
                    call("hello")
                assert err.value.field == field
                assert "'no_decision'" in err.value.message and MISBEHAVING in err.value.message
                assert "returned NoneType from decide(), not a genroute.types.Decision" in err.value.message
    assert not gemini_server.requests


def _answers_a_str(part: str, gemini_server: Any) -> dict[str, Any]:
    """A config whose policy sends requests to a plugin ``part`` (a backend, an engine) that answers a str."""
    if part == "backend":
        config = gemini_config(gemini_server)
        config["backends"]["loud"] = {"kind": "text_output", "engine": "gemini", "model": "gemini-2.5-flash"}
        config["policy"] = {"kind": "static", "backend": "loud"}
    else:
        config = plugin_config(gemini_server)
        config["engines"]["echo"] = {"kind": "text_answer"}
        config["policy"] = {"kind": "static", "backend": "plain"}
    return config


@pytest.mark.parametrize(("part", "field", "kind", "said"), [
    # Its run() returned a str: an AttributeError ('str' object has no attribute 'text') from inside the router's
    # ledger reached the caller, naming neither the backend nor its package.
    pytest.param("backend", "backends.loud", "text_output",
                 "returned str from run(), not a genroute.backends.base.BackendOutput", id="backend"),
    # Named by its class alone ("engine 'echo' (tests.misbehaving_plugins.TextAnswerEngine) answered str"), where a
    # backend or a policy that answers what genroute cannot read is named by its kind, entry point and package.
    pytest.param("engine", "engines.echo", "text_answer",
                 "answered str from generate(), not a google.genai.types.GenerateContentResponse", id="engine"),
])
def test_a_plugin_answering_what_genroute_cannot_read_is_a_config_error_naming_its_entry_point(
        part, field, kind, said, misbehaving, gemini_server) -> None:
    with Router.from_config(_answers_a_str(part, gemini_server)) as router:
        with pytest.raises(ConfigError) as err:
            router.generate("hello")
    assert err.value.field == field
    assert f"'{kind}'" in err.value.message and MISBEHAVING in err.value.message
    assert said in err.value.message


def test_a_backend_in_code_answering_what_a_result_cannot_hold_is_a_config_error_naming_it() -> None:
    # A run() returning None reached a stream as an AttributeError from Backend.stream; a BackendOutput (a plain
    # dataclass) whose text is None was a UsageError naming `text`, a field the caller never set.
    from genroute.backends.base import Backend, BackendConfig, BackendOutput
    from genroute.runtime.resources import Resources

    class Careless(Backend):
        kind = "careless"
        Config = BackendConfig

        async def run(self, request: Any, ctx: Any) -> Any:
            return None if request.task == "none" else BackendOutput(text=None, model="m")  # type: ignore[arg-type]

    from genroute_plugin_example.engine import EchoEngine, EchoEngineConfig

    resources = Resources({"e": EchoEngine("e", EchoEngineConfig())})
    backend = Careless("careless", BackendConfig(kind="careless", engine="e", model="echo-1"), resources)
    with Router({"careless": backend}, resources=resources) as router:
        for call, task, says in ((router.stream, "none", "Careless returned NoneType from run()"),
                                 (router.generate, "none", "Careless returned NoneType from run()"),
                                 (router.generate, None, "whose text cannot be a result's")):
            with pytest.raises(ConfigError) as err:
                list(call("hello", task=task)) if call == router.stream else call("hello", task=task)
            assert err.value.field == "backends.careless" and says in err.value.message


def test_a_plugin_cannot_take_a_built_in_kind_name(shadowing, gemini_server, caplog) -> None:
    from genroute.policies.ladder import LadderPolicy

    with caplog.at_level(logging.WARNING, logger="genroute.registry"):
        policy = build_policy({"kind": "ladder"})
        build_policy({"kind": "ladder"})
        with Router.from_config(gemini_config(gemini_server)) as router:  # its engine is kind "gemini"
            gemini_server.reply_text("from the built-in engine")
            assert router.generate("hi").text == "from the built-in engine"
    assert type(policy) is LadderPolicy  # the built-in runs: an installed package cannot break a config
    warnings = [r.getMessage() for r in caplog.records if "is built in" in r.getMessage()]
    assert len(warnings) == 2 and all(MISBEHAVING in w for w in warnings)  # once per kind, naming the plugin
    assert kinds("policies").count("ladder") == 1


def test_built_in_kinds_failures_pass_through_unchanged() -> None:
    from genroute.policies.ladder import LadderPolicy

    with pytest.raises(RuntimeError, match="not wrapped"), plugin_failures(LadderPolicy, field="policy"):
        raise RuntimeError("not wrapped")


def test_an_engine_that_takes_bounded_in_generate_only_still_streams() -> None:
    """``caller_bounded`` promises ``bounded=`` to ``generate`` only; ``stream`` gets it only from an engine that sets
    ``caller_bounded_stream`` too (a plugin written to the first contract kept working)."""
    from genroute.backends.prompt_template import PromptTemplateBackend, PromptTemplateConfig
    from genroute.runtime.resources import Resources
    from genroute_plugin_example.engine import EchoEngine, EchoEngineConfig

    class BoundedEcho(EchoEngine):
        caller_bounded = True

        async def generate(self, model, contents, config=None, *, timeout_s=None, bounded=False):
            self.bounded_seen = bounded
            return await super().generate(model, contents, config, timeout_s=timeout_s)

    engine = BoundedEcho("e", EchoEngineConfig())
    resources = Resources({"e": engine})
    backend = PromptTemplateBackend("chat", PromptTemplateConfig(engine="e", model="echo-1"), resources)
    with Router({"chat": backend}, resources=resources, timeout_s=30) as router:
        assert router.generate("hello there").text == "echo: hello there" and engine.bounded_seen
        chunks = list(router.stream("hello there"))
    assert chunks[-1].result.text == "echo: hello there"


# -- plugins that name their kind in their Config only ------------------------------------------------------


def test_a_plugin_that_names_its_kind_in_its_config_alone_runs(misbehaving, gemini_server) -> None:
    config = gemini_config(gemini_server)
    config["backends"] = {"quiet": {"kind": "whisper", "engine": "gemini", "model": "gemini-2.5-flash"},
                          "zzz": config["backends"]["chat"]}
    config["policy"] = {"kind": "first_name"}
    with Router.from_config(config) as router:
        result = router.generate("HELLO There")
        assert router.catalogue["quiet"].kind == "whisper"
    assert (result.backend, result.text, result.decision.policy) == ("quiet", "echo: hello there", "first_name")


def test_a_plugin_that_names_no_kind_is_a_config_error(misbehaving) -> None:
    with pytest.raises(ConfigError) as err:
        build_policy({"kind": "any_kind"})
    assert err.value.field == "policy.kind"
    assert "names no kind" in err.value.message and MISBEHAVING in err.value.message


def test_a_backend_or_policy_in_code_that_names_no_kind_is_a_usage_error_naming_it() -> None:
    # Their Config's kind was a plain `str` (BackendConfig, PolicyConfig themselves): building the router raised an
    # AttributeError from its catalogue (a backend), or the first request one from Policy.name (a policy).
    from genroute.backends.base import Backend, BackendConfig, BackendOutput
    from genroute.policies.base import Policy, PolicyConfig
    from genroute.runtime.resources import Resources
    from genroute.types import Decision
    from genroute_plugin_example.engine import EchoEngine, EchoEngineConfig

    class Plain(Backend):
        Config = BackendConfig

        async def run(self, request: Any, ctx: Any) -> BackendOutput:
            return BackendOutput(text="plain", model="echo-1")

    class Named(Plain):
        kind = "named"

    class First(Policy):
        Config = PolicyConfig

        def decide(self, request: Any, context: Any) -> Decision:
            return Decision.single(self.name, "a", "the first")

    resources = Resources({"e": EchoEngine("e", EchoEngineConfig())})
    config = BackendConfig(kind="plain", engine="e", model="echo-1")
    for backends, policy, field in (({"a": Plain("a", config, resources)}, None, "backends.a"),
                                    ({"a": Named("a", config, resources)}, First(PolicyConfig(kind="first")),
                                     "policy")):
        with pytest.raises(UsageError) as err:
            Router(backends, policy, resources=resources)
        assert err.value.field == field and "names no kind" in err.value.message


def test_a_subclass_of_a_kind_keeps_that_kind_whatever_its_own_config_names() -> None:
    # A user's RagBackend subclass with a Config of its own (another kind name, or a default one) was given a new
    # kind: the catalogue, decisions and the ladder no longer saw a RAG backend. Only a class with no kind, its own
    # or inherited, takes its Config's.
    from typing import Literal

    from genroute.backends.base import Backend, BackendConfig
    from genroute.backends.rag import RagBackend, RagConfig

    class TeamRagConfig(RagConfig):
        kind: Literal["team_rag"] = "team_rag"  # type: ignore[assignment]

    class TeamRag(RagBackend):
        Config = TeamRagConfig

    class DefaultKindConfig(BackendConfig):
        kind: str = "by_default"

    class Kindless(Backend):  # no kind of its own or inherited: its Config names it
        Config = TeamRagConfig

    class ByDefault(Backend):
        Config = DefaultKindConfig

    assert (TeamRag.kind, Kindless.kind, ByDefault.kind) == ("rag", "team_rag", "by_default")
