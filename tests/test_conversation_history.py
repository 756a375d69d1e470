"""A conversation's earlier turns (a ``prompt_template`` backend's ``history`` variable) reach the model as turns,
as a google-genai app sent them in ``contents``."""

from __future__ import annotations

import pytest

from genroute import ConfigError, GenerateRequest, Router, UsageError

from .conftest import TEST_KEY, gemini_config

HISTORY = [{"role": "user", "text": "Hi"}, {"role": "model", "text": "Hello."}]
CHAT = {"system": "You are terse.", "variables": {"history": {"type": "list", "default": []}}, "history": "history"}


def test_history_turns_reach_the_wire_as_google_genai_sends_them(gemini_server):
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=gemini_server.base_url))
    contents = [types.Content(role=t["role"], parts=[types.Part(text=t["text"])]) for t in HISTORY]
    client.models.generate_content(model="gemini-2.5-flash", config={"system_instruction": "You are terse."},
                                   contents=[*contents, types.Content(role="user", parts=[types.Part(text="Why?")])])
    before = gemini_server.requests[-1].body
    with Router.from_config(gemini_config(gemini_server, **CHAT)) as router:
        router.generate("Why?", variables={"history": HISTORY})
        assert gemini_server.requests[-1].body == before
        assert [c.text for c in router.stream("Why?", variables={"history": HISTORY}) if not c.done]
        assert gemini_server.requests[-1].body == before
        router.generate("Why?")  # no history: the one turn, as before
        assert gemini_server.requests[-1].body["contents"] == [{"parts": [{"text": "Why?"}], "role": "user"}]
        with pytest.raises(UsageError) as info:
            router.generate("Why?", variables={"history": [{"role": "assistant", "text": "Hello."}]})
        assert info.value.field == "variables.history.0.role"


def test_history_must_name_a_list_variable(gemini_server):
    for variables in ({}, {"history": {"type": "str", "default": ""}}):
        with pytest.raises(ConfigError) as info:
            Router.from_config(gemini_config(gemini_server, **{**CHAT, "variables": variables}))
        assert info.value.field == "backends.chat.history"


def test_a_declared_default_history_is_sent_when_the_request_gives_none(gemini_server):
    """The history variable's declared default (a fixed opening conversation, few-shot turns) reached the template
    but not the model: the turns came from the request's variables only, so a request without one was sent as one
    turn. The default is the history then, as it is every other variable's value; a default whose turns are not
    {role, text} is refused when the config is read (ConfigError naming backends.chat.history)."""
    chat = {**CHAT, "variables": {"history": {"type": "list", "default": HISTORY}}}
    with Router.from_config(gemini_config(gemini_server, **chat)) as router:
        router.generate("Why?")
        assert gemini_server.requests[-1].body["contents"] == [
            {"parts": [{"text": "Hi"}], "role": "user"}, {"parts": [{"text": "Hello."}], "role": "model"},
            {"parts": [{"text": "Why?"}], "role": "user"}]
        router.generate("Why?", variables={"history": []})  # the request's own, empty, wins
        assert gemini_server.requests[-1].body["contents"] == [{"parts": [{"text": "Why?"}], "role": "user"}]
    bad = {**CHAT, "variables": {"history": {"type": "list", "default": [{"role": "assistant", "text": "Hi"}]}}}
    with pytest.raises(ConfigError) as info:
        Router.from_config(gemini_config(gemini_server, **bad))
    assert info.value.field == "backends.chat.history" and "default turn 0.role" in str(info.value), info.value


@pytest.mark.local
def test_the_local_model_reads_the_history_turns():
    config = {"engines": {"local": {"kind": "local", "n_threads": 1, "prompt_format": "gemma"}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                    "generation": {"max_output_tokens": 4, "temperature": 0.0}, **CHAT}}}
    with Router.from_config(config) as router:
        alone = router.generate("Why?")
        with_history = router.generate("Why?", variables={"history": HISTORY})
    # The two earlier turns, each in its own <start_of_turn>...<end_of_turn> block: several tokens each.
    assert with_history.usage.input_tokens >= alone.usage.input_tokens + 8


def test_the_migrating_guides_routing_config_serves_a_chat_request_with_its_history_on_every_backend(gemini_server):
    """docs/migrating.md's routing config sends smalltalk, and every request past the budget, to `cheap`, which
    declared no history variable: a chat request with its history (as the guide's chat example sends it) was refused
    there, 'unexpected variable' (UsageError), once the budget ran out. Every backend a chat request can reach takes
    the history (the request's own, which the guide now passes). Run here with both backends on the loopback server."""
    import re
    from pathlib import Path

    import yaml

    guide = (Path(__file__).resolve().parent.parent / "docs" / "migrating.md").read_text(encoding="utf-8")
    block = re.search(r"## Then: routing and a budget.*?```yaml\n(.*?)```", guide, re.DOTALL)
    assert block is not None
    config = yaml.safe_load(block.group(1))
    config["engines"] = gemini_config(gemini_server)["engines"]
    for backend in config["backends"].values():
        backend.update(engine="gemini", model="gemini-2.5-flash")
    with Router.from_config(config) as router:
        for name in config["backends"]:
            result = router.generate(GenerateRequest(input="And?", backend=name, history=HISTORY))
            assert gemini_server.requests[-1].body["contents"][:2] == [
                {"parts": [{"text": "Hi"}], "role": "user"}, {"parts": [{"text": "Hello."}], "role": "model"}], name
            assert result.backend == name
