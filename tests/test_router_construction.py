"""Building a router: ``acreate`` keeps a running event loop free; paths in a config file resolve against the
file; the knowledge store lives where the config says (never a shared home-cache directory); a router's loop
thread ends with the router."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from genroute import ConfigError, Router
from genroute.knowledge import aload_examples, build_store
from genroute.policies.semantic import SemanticPolicy

from .conftest import TEST_KEY, gemini_config

EXAMPLES = [("I love it", "positive"), ("Terrible, broke at once", "negative"), ("Works fine", "positive")]


class ProbingSemantic(SemanticPolicy):
    """The semantic policy (it embeds its routes when bound), plus a probe: does ``loop`` run meanwhile?"""

    def __init__(self, config: Any, loop: asyncio.AbstractEventLoop, wait_s: float) -> None:
        super().__init__(config)
        self.loop, self.wait_s = loop, wait_s
        self.loop_ran: bool | None = None

    def bind(self, resources: Any) -> None:
        ran = threading.Event()
        self.loop.call_soon_threadsafe(ran.set)
        self.loop_ran = ran.wait(self.wait_s)
        super().bind(resources)


async def _examples(path: Path) -> None:
    data = path / "examples.jsonl"
    data.write_text("".join(json.dumps({"input": t, "output": label, "metadata": {"task": "sentiment"}}) + "\n"
                            for t, label in EXAMPLES))
    await aload_examples(build_store({"path": str(path / "kb")}, engines={}), [data], collection="shots")


def _config(gemini_server: Any, path: Path) -> dict[str, Any]:
    vertex = {"kind": "gemini", "vertex": {"project": "proj", "location": "europe-west4"},
              "base_url": gemini_server.base_url}
    return {
        "engines": {"vertex": vertex},
        "knowledge": {"path": str(path / "kb")},
        "backends": {
            "chat": {"kind": "prompt_template", "engine": "vertex", "model": "gemini-2.5-flash"},
            "shots": {"kind": "icl", "engine": "vertex", "model": "gemini-2.5-flash", "collection": "shots",
                      "tasks": ["sentiment"]},
        },
    }


def _policy(loop: asyncio.AbstractEventLoop, wait_s: float) -> ProbingSemantic:
    routes = {"shots": ("Is this review positive or negative?", "Classify the sentiment of this text"),
              "chat": ("What is the capital of France?", "Tell me a story")}
    return ProbingSemantic(SemanticPolicy.Config(kind="semantic", routes=routes, default="chat"), loop, wait_s)


async def _build_measuring_ticks(build: Any) -> tuple[Any, float, int]:
    """Run ``build()`` while a ticker sleeps 5 ms at a time; the router, the longest gap between ticks, ticks."""
    loop = asyncio.get_running_loop()
    done = False
    gaps: list[float] = []

    async def ticker() -> None:
        while not done:
            start = loop.time()
            await asyncio.sleep(0.005)
            gaps.append(loop.time() - start - 0.005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    try:
        router = await build()
    finally:
        done = True
        await task
    return router, max(gaps, default=0.0), len(gaps)


async def test_acreate_keeps_the_event_loop_running(gemini_server, tmp_path, monkeypatch, capsys):
    from google.oauth2.credentials import Credentials

    monkeypatch.setenv("NO_GCE_CHECK", "true")
    await _examples(tmp_path)
    loop = asyncio.get_running_loop()
    options = {"engine_options": {"vertex": {"credentials": Credentials(token="test")}}}
    # A router with semantic routes (embedded as it is built), an ICL backend (its examples counted from the
    # store) and a Vertex engine. While the policy binds, the loop must get to run a callback.
    policy = _policy(loop, wait_s=10.0)
    router, gap, ticks = await _build_measuring_ticks(
        lambda: Router.acreate(_config(gemini_server, tmp_path), policy=policy, **options))
    async with router:
        assert policy.loop_ran is True
        assert router.catalogue["shots"].facts["example_count"] == len(EXAMPLES)
        assert (await router.adecide("Classify the sentiment: I love it")).rungs[0].backend == "shots"
    # The same construction run by the blocking from_config inside the loop holds the loop the whole time.
    blocked = _policy(loop, wait_s=1.0)

    async def blocking() -> Router:
        return Router.from_config(_config(gemini_server, tmp_path), policy=blocked, **options)

    sync_router, sync_gap, sync_ticks = await _build_measuring_ticks(blocking)
    await sync_router.aclose()
    assert blocked.loop_ran is False
    # Once imports are warm (first-import CPU work holds the GIL, which no thread hides), acreate again.
    again, warm_gap, warm_ticks = await _build_measuring_ticks(
        lambda: Router.acreate(_config(gemini_server, tmp_path), policy=_policy(loop, wait_s=10.0), **options))
    await again.aclose()
    with capsys.disabled():
        print(f"\nconstruction, longest loop gap: acreate (cold imports) {gap * 1000:.0f} ms over {ticks} ticks; "
              f"from_config inside the loop {sync_gap * 1000:.0f} ms ({sync_ticks} ticks); "
              f"acreate again {warm_gap * 1000:.0f} ms ({warm_ticks} ticks)")


def test_from_config_inside_a_loop_and_outside_build_the_same_router(gemini_server):
    with Router.from_config(gemini_config(gemini_server)) as router:
        assert router.generate("hi").text

    async def inside() -> str:
        async with await Router.acreate(gemini_config(gemini_server)) as router:
            return (await router.agenerate("hi")).text

    assert asyncio.run(inside())


# -- paths -----------------------------------------------------------------------------------------


def _write(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_relative_paths_resolve_against_the_config_file(gemini_server, tmp_path, monkeypatch):
    app = tmp_path / "app"
    (app / "schemas").mkdir(parents=True)
    (app / "schemas" / "answer.json").write_text('{"type": "object"}')
    config = gemini_config(gemini_server)
    config["knowledge"] = {"path": "data/chroma"}
    config["validators"] = {"shape": {"kind": "json_schema", "path": "schemas/answer.json"}}
    config["engines"]["local"] = {"kind": "local", "model_path": "models/m.gguf", "lora_path": "/abs/l.gguf"}
    config["tools"] = {"read_file": "json:loads"}  # an import path, not a file: left alone
    path = _write(app / "genroute.yaml", config)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with Router.from_config("../app/genroute.yaml") as router:
        assert router.resources.knowledge.config.path == str(app / "data" / "chroma")
        assert router.resources.engines["local"].config.model_path == str(app / "models" / "m.gguf")
        assert router.resources.engines["local"].config.lora_path == "/abs/l.gguf"
        assert router.resources.tools["read_file"] is json.loads
    assert path.exists()


CITY = {"type": "object", "properties": {"population": {"type": "integer"}}, "required": ["population"]}


def schema_cascade(gemini_server: Any, validator: str) -> dict[str, Any]:
    config = gemini_config(gemini_server)
    config["backends"]["pro"] = {**config["backends"]["chat"], "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["nonempty", validator]},
                                                     {"backend": "pro"}]}
    return config


def test_a_json_schema_validator_name_resolves_against_the_config_file(gemini_server, tmp_path, monkeypatch):
    app = tmp_path / "app"
    (app / "schemas").mkdir(parents=True)
    (app / "schemas" / "city.yaml").write_text(yaml.safe_dump(CITY))
    path = _write(app / "genroute.yaml", schema_cascade(gemini_server, "json_schema:schemas/city.yaml"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    gemini_server.reply_text('{"population": "lots"}')
    gemini_server.reply_text('{"population": 2100000}')
    with Router.from_config("../app/genroute.yaml") as router:   # the schema is beside the file, not the CWD
        result = router.generate("Paris as JSON")
    assert result.backend == "pro"
    first = result.decision.rungs_tried[0]
    assert first.outcome == "rejected_by_validator" and "population" in first.error
    assert yaml.safe_load(path.read_text())["policy"]["rungs"][0]["validators"][1] == "json_schema:schemas/city.yaml"

    # A config given as a dict has no file: its relative paths are the working directory's.
    monkeypatch.chdir(app)
    gemini_server.reply_text('{"population": 2100000}')
    with Router.from_config(schema_cascade(gemini_server, "json_schema:schemas/city.yaml")) as router:
        assert router.generate("Paris as JSON").backend == "chat"


def test_a_missing_json_schema_file_is_named_where_it_was_looked_for(gemini_server, tmp_path, monkeypatch):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "city.yaml").write_text(yaml.safe_dump(CITY))   # in the CWD, not beside the file
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "conf" / "genroute.yaml", schema_cascade(gemini_server, "json_schema:schemas/city.yaml"))
    with pytest.raises(ConfigError) as err:
        Router.from_config("conf/genroute.yaml")
    assert err.value.field == "policy.rungs.0.validators"
    assert str(tmp_path / "conf" / "schemas" / "city.yaml") in err.value.message
    assert "cannot read JSON schema" in err.value.message
    assert gemini_server.requests == []


def test_a_knowledge_section_without_a_place_gets_a_store_beside_the_file(gemini_server, tmp_path):
    config = gemini_config(gemini_server)
    config["knowledge"] = {"embedder": {"kind": "local"}}
    path = _write(tmp_path / "conf" / "shop.yaml", config)
    with Router.from_config(path) as router:
        assert router.resources.knowledge.config.path == str(tmp_path / "conf" / "shop-chroma")


def test_a_store_with_no_place_and_no_file_is_a_config_error(gemini_server, tmp_path):
    config = gemini_config(gemini_server)
    config["knowledge"] = {}
    with pytest.raises(ConfigError) as info:
        Router.from_config(config)
    assert info.value.field == "knowledge.path"
    assert "beside it" in str(info.value)


# -- the loop thread ---------------------------------------------------------------------------------


def _loop_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "genroute-loop" and t.is_alive()}


def _wait_for(predicate: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_loop_thread_ends_with_the_router(gemini_server):
    # Sets, not counts: a loop thread of an earlier test's router (collected here, say) may end meanwhile.
    before = _loop_threads()
    router = Router.from_config(gemini_config(gemini_server))
    router.generate("hi")
    assert len(_loop_threads() - before) == 1
    router.close()
    assert _wait_for(lambda: not _loop_threads() - before)

    async def used_async() -> None:
        built = Router.from_config(gemini_config(gemini_server))  # built on its own loop thread
        await built.agenerate("hi")
        await built.aclose()

    asyncio.run(used_async())
    assert _wait_for(lambda: not _loop_threads() - before)

    forgotten = Router.from_config(gemini_config(gemini_server))
    forgotten.generate("hi")
    assert len(_loop_threads() - before) == 1
    del forgotten
    gc.collect()
    assert _wait_for(lambda: not _loop_threads() - before)


def test_the_loop_thread_ends_at_interpreter_exit(gemini_server, tmp_path):
    import subprocess
    import sys

    # weakref finalizers run newest first at exit: this report, made before the router, runs after its finalizer.
    script = (
        "import sys, threading, weakref\n"
        "class Sentinel: pass\n"
        "keep = Sentinel()\n"
        "def report():\n"
        "    alive = [t for t in threading.enumerate() if t.name == 'genroute-loop' and t.is_alive()]\n"
        "    sys.stdout.write('loop threads at exit: %d\\n' % len(alive))\n"
        "weakref.finalize(keep, report)\n"
        "from genroute import Router\n"
        f"router = Router.from_config({json.dumps(gemini_config(gemini_server))})\n"
        "router.generate('hi')\n"
        "sys.stdout.write('loop threads before exit: %d\\n' % sum(t.name == 'genroute-loop' for t in threading.enumerate()))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "loop threads before exit: 1" in out.stdout and "loop threads at exit: 0" in out.stdout, out.stdout
    assert "Task was destroyed" not in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.parametrize(("options", "field"), [
    ({"timeuot_s": 5}, "timeuot_s"),              # misspelt: was a TypeError once everything was built
    ({"resources": None}, "resources"),           # the config makes it
    ({"scrub": "not a hook"}, "scrub"),            # was a TypeError at the first feedback
    ({"policy": {"kind": "static", "backend": "chat"}}, "policy"),  # a mapping, not a Policy
    ({"capture_content": "false"}, "capture_content"),  # was truthy: prompts went into spans
    ({"stats": "stats.json"}, "stats"),                 # was ignored: cost_aware decided with no statistics
    ({"engine_options": 5}, "engine_options"),          # a TypeError ('int' object is not iterable)
    ({"engine_options": {"gemini": "key"}}, "engine_options"),
])
def test_a_router_option_it_cannot_take_is_a_usage_error_naming_it(gemini_server, options, field):
    from genroute import UsageError

    with pytest.raises(UsageError) as sync:
        Router.from_config(gemini_config(gemini_server), **options)
    with pytest.raises(UsageError) as async_:
        asyncio.run(Router.acreate(gemini_config(gemini_server), **options))
    assert sync.value.field == async_.value.field == field and sync.value.message == async_.value.message
    assert not gemini_server.requests


def test_a_router_built_in_code_names_a_part_of_the_wrong_kind(gemini_server):
    from genroute import UsageError

    with Router.from_config(gemini_config(gemini_server)) as built:
        parts = {"backends": built.backends, "policy": built.policy, "resources": built.resources}
        for wrong, field in [({"backends": {"chat": "chat"}}, "backends.chat"), ({"backends": ["chat"]}, "backends"),
                             ({"policy": "static"}, "policy"), ({"resources": {"gemini": None}}, "resources")]:
            given = {**parts, **wrong}
            with pytest.raises(UsageError) as err:
                Router(given["backends"], given["policy"], resources=given["resources"])
            assert err.value.field == field, wrong


def test_replacing_names_a_backend_of_the_wrong_kind(gemini_server):
    from genroute import UsageError

    with Router.from_config(gemini_config(gemini_server)) as router:
        for wrong, field in [({"chat": "chat"}, "backends.chat"), ({"chat": None}, "backends.chat"),
                             (["chat"], "backends")]:
            with pytest.raises(UsageError) as err:  # was an AttributeError or a TypeError
                router.replacing(wrong)
            assert err.value.field == field, wrong


def test_a_router_is_not_pickled_or_copied_and_its_replacing_copy_still_works(gemini_server):
    """``copy.copy(router)`` shared its loop thread, so closing the copy closed the router under its caller;
    pickling one (a multiprocessing pool's argument) failed on a lock deep inside."""
    import copy
    import pickle

    from genroute import UsageError

    with Router.from_config(gemini_config(gemini_server)) as router:
        for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
            with pytest.raises(UsageError) as err:
                attempt(router)
            assert err.value.field == "router" and "build one in each process" in err.value.message
        assert router.replacing({}).generate("hi").text == "echo: hi"
        assert router.generate("hi").text == "echo: hi"


def test_an_engine_given_its_settings_for_a_name_is_refused_without_showing_them():
    """``GeminiEngine({"api_key": ...})`` (the name forgotten) wrote the settings into the error's field name, the
    API key in plain text; a name of another type was taken as it was."""
    from genroute import UsageError
    from genroute.engines.gemini import GeminiEngine
    from genroute.engines.local import LocalEngine

    key = "AIzaSyNOT-A-NAME-0123456789abcdefghijkl"
    for make in (lambda: GeminiEngine({"api_key": key}), lambda: GeminiEngine(3, {"api_key": key}),
                 lambda: LocalEngine({"n_threads": 1})):
        with pytest.raises(UsageError) as err:
            make()
        assert err.value.field == "name" and "takes its name, then its settings" in err.value.message
        assert key not in str(err.value) and key not in repr(err.value)
    assert GeminiEngine("gemini", {"api_key": key}).name == "gemini"


def test_resources_and_prices_built_in_code_are_checked_when_made(gemini_server):
    # A mapping of prices was kept as it was and the first request it priced failed with AttributeError (after the
    # call was sent); an engine or a price table of the wrong kind failed later, deep inside.
    from genroute import ModelPrice, Pricing, UsageError
    from genroute.runtime.resources import Resources

    with Router.from_config(gemini_config(gemini_server)) as built:
        engine = built.resources.engines["gemini"]
        priced = Router({"chat": built.backends["chat"]}, resources=Resources(
            {"gemini": engine}, pricing=Pricing({"gemini-2.5-flash": {"input": 1.0, "output": 2.0}})))
        with priced:
            assert priced.generate("hi").cost_usd > 0
    assert Pricing({"m": {"input": 1, "output": 2}}).lookup("m") == ModelPrice(input=1, output=2)
    with pytest.raises(ConfigError) as err:
        Pricing({"m": {"input": -1, "output": 2}})
    assert err.value.field == "pricing.m.input"
    for wrong, field in [({"engines": {"gemini": "gemini"}}, "engines.gemini"), ({"engines": ["gemini"]}, "engines"),
                         ({"engines": {}, "pricing": {"m": {"input": 1, "output": 2}}}, "pricing")]:
        with pytest.raises(UsageError) as err:
            Resources(**wrong)
        assert err.value.field == field, wrong


@pytest.mark.parametrize(("options", "field"), [
    ({"outcomes": 5}, "outcomes"), ({"outcomes": "outcomes.db"}, "outcomes"),
    ({"outcomes": {"min_n": -1}}, "outcomes.min_n"),
    ({"rate_limits": 5}, "rate_limits"), ({"rate_limits": [5]}, "rate_limits.0"),
    ({"rate_limits": "rpm"}, "rate_limits"),
    ({"breakers": 5}, "breakers"), ({"breakers": ["chat"]}, "breakers"),
])
def test_settings_given_in_code_are_refused_by_name_before_anything_is_built(gemini_server, tmp_path, options, field):
    # Each was a bare TypeError/ValueError ('int' object is not iterable) from Router.__init__, and from_config
    # only got there once engines, the store and the policy were built (its semantic routes embedded: billed calls).
    config = {**gemini_config(gemini_server),
              "knowledge": {"path": str(tmp_path / "chroma"),
                            "embedder": {"kind": "gemini", "engine": "gemini", "dimension": 64}},
              "policy": {"kind": "semantic", "routes": {"chat": ["bake rye bread"]}, "default": "chat"}}
    with pytest.raises(ConfigError) as sync:
        Router.from_config(config, **options)
    with pytest.raises(ConfigError) as async_:
        asyncio.run(Router.acreate(config, **options))
    assert sync.value.field == async_.value.field == field and sync.value.message == async_.value.message
    assert not gemini_server.requests
    with Router.from_config(gemini_config(gemini_server)) as built, pytest.raises(ConfigError) as direct:
        Router(built.backends, **options)
    assert direct.value.field == field


def test_validators_of_the_wrong_shape_are_named_in_code_too(gemini_server):
    from genroute import UsageError

    with Router.from_config(gemini_config(gemini_server)) as built:
        for wrong in (5, ["check"], {1: lambda request, output: None}):
            with pytest.raises(UsageError) as err:  # was a TypeError from the executor
                Router(built.backends, validators=wrong)
            assert err.value.field == "validators", wrong


def test_from_config_inside_a_running_loop_warns_once_naming_acreate(gemini_server, caplog, monkeypatch) -> None:
    """It works there, but blocks the loop while it builds: one warning per process says so and names acreate."""
    from genroute.router import build

    monkeypatch.setattr(build, "_warned_in_loop", threading.Event())  # as in a fresh process

    async def twice() -> list[str]:
        for _ in range(2):
            async with Router.from_config(gemini_config(gemini_server)) as router:
                assert (await router.agenerate("hi")).backend == "chat"
        return [r.getMessage() for r in caplog.records if r.name.startswith("genroute")]

    with caplog.at_level(logging.WARNING, logger="genroute"):
        Router.from_config(gemini_config(gemini_server)).close()  # from sync code: nothing to say
        assert [r for r in caplog.records if r.name.startswith("genroute")] == []
        (warning,) = asyncio.run(twice())
    assert "inside a running event loop" in warning and "await Router.acreate(...)" in warning
