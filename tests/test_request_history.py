"""A request's ``history`` (the conversation's earlier turns) reaches the model before whatever the chosen backend
sends, whichever backend it is, as google-genai sends a chat's earlier turns in ``contents``: the loopback server,
real (embedded) Chroma, the local model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from genroute import GenerateRequest, Router, UsageError
from genroute.knowledge import aingest, aload_examples
from genroute.testing import GeminiTestServer

from .conftest import TEST_KEY, Otel, gemini_config

HISTORY = [{"role": "user", "text": "Hi, I am Ada."}, {"role": "model", "text": "Hello, Ada."}]
QUESTION = "When was the Zorblax fusion reactor commissioned?"


def sdk_turns(server: GeminiTestServer) -> list[dict[str, Any]]:
    """The ``contents`` google-genai itself sends for ``HISTORY`` (before a last user turn, left out)."""
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=TEST_KEY, http_options=types.HttpOptions(base_url=server.base_url))
    turns = [types.Content(role=t["role"], parts=[types.Part(text=t["text"])]) for t in HISTORY]
    client.models.generate_content(model="gemini-2.5-flash",
                                   contents=[*turns, types.Content(role="user", parts=[types.Part(text="x")])])
    contents = server.requests[-1].body["contents"]
    server.clear()
    return list(contents[:-1])


def bodies(server: GeminiTestServer) -> list[dict[str, Any]]:
    return [r.body for r in server.requests if r.action in ("generateContent", "streamGenerateContent")]


async def backend_config(kind: str, server: GeminiTestServer, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A router config whose one backend is of ``kind``, and the keywords ``Router.from_config`` needs for it."""
    knowledge = {"path": str(tmp_path / "chroma")}
    if kind == "prompt_template":
        return gemini_config(server, system="You are terse.", template="Q: {{ input }}"), {}
    if kind == "tuned":
        return gemini_config(server, kind="tuned", model="tunedModels/chat-1", base_model="gemini-2.5-flash"), {}
    if kind == "function_calling":
        def get_weather(city: str) -> dict[str, Any]:
            """Current weather for a city."""
            return {"city": city, "temp": 21}
        tools = {"get_weather": get_weather}
        return gemini_config(server, kind="function_calling", tools=["get_weather"]), {"tools": tools}
    from genroute.knowledge import build_store

    store = build_store(knowledge, engines={})
    if kind == "rag":
        doc = tmp_path / "reactor.txt"
        doc.write_text("The Zorblax fusion reactor was commissioned in 1987.", encoding="utf-8")
        await aingest(store, [doc], collection="docs")
        config = gemini_config(server, kind="rag", collection="docs")
    else:
        examples = tmp_path / "examples.jsonl"
        examples.write_text('{"input": "My card has not arrived.", "output": "card_arrival"}\n'
                            '{"input": "Top up with cash?", "output": "top_up"}\n', encoding="utf-8")
        await aload_examples(store, [examples], collection="examples")
        config = gemini_config(server, kind="icl", collection="examples", selector="fixed", k=2, format="turns")
    config["knowledge"] = knowledge
    return config, {}


KINDS = ["prompt_template", "tuned", "rag", "icl", "function_calling"]


@pytest.mark.parametrize("kind", KINDS)
async def test_every_backend_sends_the_history_before_its_own_turns_as_google_genai_does(
        kind: str, gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    history = sdk_turns(gemini_server)
    config, extra = await backend_config(kind, gemini_server, tmp_path)
    calls = 2 if kind == "function_calling" else 1  # a tool call, then the answer: the history before each

    def script() -> None:
        if kind == "function_calling":
            gemini_server.reply_function_call("get_weather", {"city": "Paris"}, call_id="c1")
        gemini_server.reply_text("Sunny.")

    async with Router.from_config(config, **extra) as router:
        script()
        alone = await router.agenerate(QUESTION)
        without = bodies(gemini_server)
        for run in ("agenerate", "astream"):
            gemini_server.clear()
            script()
            if run == "agenerate":
                result = await router.agenerate(QUESTION, history=HISTORY)
            else:
                result = [c async for c in router.astream(QUESTION, history=HISTORY)][-1].result
            assert result.text == alone.text == "Sunny."
            sent = bodies(gemini_server)
            assert len(sent) == len(without) == calls
            for before, after in zip(without, sent, strict=True):
                # The same request, the history's turns first, byte for byte google-genai's: RAG and ICL found the
                # same passage and examples (they retrieve on the current input only).
                assert after == {**before, "contents": [*history, *before["contents"]]}


@pytest.mark.parametrize("kind", ["tuned", "function_calling"])
def test_the_sync_entry_points_send_the_history_too(kind: str, gemini_server: GeminiTestServer,
                                                    tmp_path: Path) -> None:
    import asyncio

    history = sdk_turns(gemini_server)
    config, extra = asyncio.run(backend_config(kind, gemini_server, tmp_path))
    with Router.from_config(config, **extra) as router:
        for run in ("generate", "stream"):
            gemini_server.clear()
            if kind == "function_calling":
                gemini_server.reply_function_call("get_weather", {"city": "Paris"})
            gemini_server.reply_text("Sunny.")
            if run == "generate":
                assert router.generate("Weather?", history=HISTORY).text == "Sunny."
            else:
                assert "".join(c.text for c in router.stream(GenerateRequest(input="Weather?", history=HISTORY)))
            for body in bodies(gemini_server):
                assert body["contents"][:2] == history and body["contents"][2]["parts"] == [{"text": "Weather?"}]


def test_a_request_without_history_is_the_one_turn_it_was(gemini_server: GeminiTestServer) -> None:
    with Router.from_config(gemini_config(gemini_server)) as router:
        for history in (None, []):
            router.generate("Why?", history=history)
            assert gemini_server.requests[-1].body["contents"] == [{"parts": [{"text": "Why?"}], "role": "user"}]
    assert GenerateRequest(input="Why?", history=[]).history is None


@pytest.mark.parametrize(("history", "field"), [
    ([{"role": "assistant", "text": "Hello."}], "history.0.role"),
    ([{"role": "user", "text": "Hi"}, {"role": "model", "text": ""}], "history.1.text"),
    ([{"role": "user"}], "history.0.text"),
    ([{"role": "user", "text": "Hi", "name": "x"}], "history.0.name"),
    ([{"role": "user", "text": "bad \udc80"}], "history.0.text"),
    ("Hi", "history"),
    ({"role": "user", "text": "Hi"}, "history"),
])
def test_a_bad_history_is_refused_naming_the_turn(history: Any, field: str, gemini_server: GeminiTestServer) -> None:
    with Router.from_config(gemini_config(gemini_server)) as router:
        with pytest.raises(UsageError) as info:
            router.generate("Why?", history=history)
        assert info.value.field == field
        with pytest.raises(UsageError) as info:
            GenerateRequest(input="Why?", history=history)
        assert info.value.field == field
    assert not gemini_server.requests  # refused before any call


def test_a_template_history_variable_and_a_request_history_are_not_both_taken(gemini_server: GeminiTestServer
                                                                              ) -> None:
    opening = [{"role": "user", "text": "Opening."}, {"role": "model", "text": "Ready."}]
    chat = {"variables": {"turns": {"type": "list", "default": opening}}, "history": "turns"}
    with Router.from_config(gemini_config(gemini_server, **chat)) as router:
        with pytest.raises(UsageError) as info:
            router.generate("Why?", history=HISTORY, variables={"turns": HISTORY})
        assert info.value.field == "history"
        assert not gemini_server.requests
        # The request's history takes the variable's place, its default's too: one conversation, not two.
        router.generate("Why?", history=HISTORY)
        texts = [c["parts"][0]["text"] for c in gemini_server.requests[-1].body["contents"]]
        assert texts == ["Hi, I am Ada.", "Hello, Ada.", "Why?"]
        router.generate("Why?")  # no history: the variable's default, as before
        texts = [c["parts"][0]["text"] for c in gemini_server.requests[-1].body["contents"]]
        assert texts == ["Opening.", "Ready.", "Why?"]


@pytest.mark.local
def test_the_local_model_reads_a_requests_history() -> None:
    config = {"engines": {"local": {"kind": "local", "n_threads": 1, "prompt_format": "gemma"}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                    "generation": {"max_output_tokens": 4, "temperature": 0.0}}}}
    with Router.from_config(config) as router:
        alone = router.generate("Why?")
        with_history = router.generate("Why?", history=HISTORY)
    # The two earlier turns, each in its own <start_of_turn>...<end_of_turn> block: several tokens each.
    assert with_history.usage.input_tokens >= alone.usage.input_tokens + 8


def test_a_shadow_and_the_outcome_record_see_the_same_history(gemini_server: GeminiTestServer,
                                                              tmp_path: Path) -> None:
    config = gemini_config(gemini_server)
    config["backends"]["pro"] = {**config["backends"]["chat"], "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat"}], "shadow": ["pro"]}
    config["outcomes"] = {"path": str(tmp_path / "outcomes.db"), "scorer": "label_accuracy", "capture": True}

    def scrub(example: dict[str, Any]) -> dict[str, Any]:  # sees the conversation, to clean it as the input
        return {**example, "history": [{**t, "text": t["text"].replace("Ada", "<name>")} for t in example["history"]]}

    gemini_server.reply_text("positive")   # served (chat)
    gemini_server.reply_text("negative")   # shadow (pro)
    with Router.from_config(config, scrub=scrub) as router:
        result = router.generate("Loved it", task="sentiment", history=HISTORY)
        router.drain()
        record = router.feedback(result, label="positive")
    served, shadow = bodies(gemini_server)
    assert served["contents"] == shadow["contents"] and len(served["contents"]) == 3
    kept = [{"role": "user", "text": "Hi, I am <name>."}, {"role": "model", "text": "Hello, <name>."}]
    assert record.metadata["history"] == kept                      # the labeled example's conversation
    assert record.metadata["answers"] == {"chat": "positive", "pro": "negative"}
    assert record.metadata["answered_history"] == kept             # the shadow pair's
    assert record.metadata["features"]["history_turns"] == 2
    assert "Ada" not in str(record.line())


def test_a_budget_holds_the_input_tokens_of_the_history(gemini_server: GeminiTestServer) -> None:
    # The hold was the backend's estimate (`costs`) whatever the request's history: 40,000 tokens of earlier turns
    # ($0.012 at gemini-2.5-flash's $0.30 per 1M input tokens) went out against a $0.001 hold.
    from genroute import BudgetExceeded

    config = gemini_config(gemini_server)
    config["policy"] = {"kind": "budget", "inner": {"kind": "static", "backend": "chat"}, "per": "global",
                        "budget_usd": 0.01, "costs": {"chat": 0.001}}
    long = [{"role": "user", "text": "x" * 80_000}, {"role": "model", "text": "y" * 80_000}]  # 40,000 tokens
    with Router.from_config(config) as router:
        with pytest.raises(BudgetExceeded) as info:
            router.generate("Why?", history=long)  # $0.001 + $0.012 > $0.01
        assert "needs up to $0.013" in str(info.value), info.value
        assert not gemini_server.requests  # refused before anything was sent
        half = [{**turn, "text": turn["text"][:40_000]} for turn in long]  # $0.001 + $0.006: held, then settled
        assert router.generate("Why?", history=half).backend == "chat"
        router.generate("Why?")  # no history: the estimate alone
    assert [len(body["contents"]) for body in bodies(gemini_server)] == [3, 1]


def test_a_rate_limit_counts_the_historys_tokens(gemini_server: GeminiTestServer) -> None:
    from genroute import RateLimited

    config = gemini_config(gemini_server)
    config["rate_limits"] = [{"backend": "chat", "tpm": 1_000, "on_limit": "fall_through", "window_s": 3600}]
    with Router.from_config(config) as router:
        with pytest.raises(RateLimited):  # 2,000 tokens of earlier turns are more than a minute's 1,000
            router.generate("Why?", history=[{"role": "user", "text": "x" * 8_000}])
        assert router.generate("Why?").backend == "chat"


def test_a_judge_validators_call_is_its_own_not_the_conversations(gemini_server: GeminiTestServer) -> None:
    config = gemini_config(gemini_server)
    config["backends"]["judge"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["judge:judge"]}]}
    gemini_server.reply_text("Ada.")
    gemini_server.reply_text("PASS")
    with Router.from_config(config) as router:
        assert router.generate("Who am I?", history=HISTORY).text == "Ada."
    answered, judged = bodies(gemini_server)
    assert len(answered["contents"]) == 3
    (turn,) = judged["contents"]  # the judge's one prompt: the request's input and the answer, no earlier turns
    assert "Who am I?" in turn["parts"][0]["text"] and "Hi, I am Ada." not in turn["parts"][0]["text"]


def test_the_call_span_captures_the_turns_as_sent(gemini_server: GeminiTestServer, otel: Otel) -> None:
    import json

    config = gemini_config(gemini_server, template="Q: {{ input }}")
    config["telemetry"] = {"capture_content": True}
    with Router.from_config(config, **otel.providers) as router:
        router.generate("Who am I?", history=HISTORY)
    (call,) = otel.spans("generate_content")
    messages = json.loads(call.attributes["gen_ai.input.messages"])
    assert [(m["role"], m["parts"][0]["content"]) for m in messages] == [
        ("user", "Hi, I am Ada."), ("assistant", "Hello, Ada."), ("user", "Q: Who am I?")]


def test_a_judges_hold_counts_what_the_judge_sends_not_the_conversation(gemini_server: GeminiTestServer) -> None:
    # The judge's call sends its one prompt (no earlier turns, none of the request's generation settings), but its
    # budget hold added the request's history ($0.004 of 40,000 tokens at flash-lite's input rate) and the raise of
    # its max_output_tokens: money the judge never spends, held while it ran (and refusing it on a tight budget).
    from .conftest import budget_usage

    config = gemini_config(gemini_server)
    config["backends"]["judge"] = {**config["backends"]["chat"], "model": "gemini-2.5-flash-lite",
                                   "generation": {"max_output_tokens": 64}}
    config["policy"] = {"kind": "budget", "per": "global", "budget_usd": 1.0, "costs": {"chat": 0.001, "judge": 0.002},
                        "inner": {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["judge:judge"]}]}}
    held: list[float] = []

    def judge(server: GeminiTestServer, request: Any, match: Any) -> dict[str, Any]:
        held.append(budget_usage(router)["reserved"])  # while the judge's call is in flight: its hold alone
        return {"candidates": [{"content": {"role": "model", "parts": [{"text": "PASS"}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 30, "candidatesTokenCount": 1, "totalTokenCount": 31}}

    gemini_server.route("POST", r".*/models/gemini-2.5-flash-lite:generateContent", judge)
    gemini_server.reply_text("Ada.")
    long = [{"role": "user", "text": "x" * 80_000}, {"role": "model", "text": "y" * 80_000}]  # 40,000 tokens
    with Router.from_config(config) as router:
        result = router.generate("Who am I?", history=long, generation={"max_output_tokens": 8192})
        after = budget_usage(router)
    assert result.text == "Ada."
    assert held == [pytest.approx(0.002)]  # the judge backend's estimate: what its one prompt costs, nothing more
    (judged,) = [r.body for r in gemini_server.requests if r.model == "models/gemini-2.5-flash-lite"]
    (turn,) = judged["contents"]
    assert "x" * 100 not in turn["parts"][0]["text"]  # (what it sent: no earlier turns)
    assert after["reserved"] == 0.0 and after["spent"] == pytest.approx(result.cost_usd)


# -- the command line: `genroute generate --history FILE`, and bench datasets ------------------------------------


def _cli_config(server: GeminiTestServer, tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "genroute.yaml"
    path.write_text(yaml.safe_dump(gemini_config(server)), encoding="utf-8")
    return path


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "stream"])
def test_generate_sends_the_turns_of_a_history_file(gemini_server: GeminiTestServer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str], stream: bool) -> None:
    # `genroute generate` had no way to pass a conversation: every request from the command line was its first turn.
    import json

    from genroute.cli import main

    turns = sdk_turns(gemini_server)
    config = _cli_config(gemini_server, tmp_path)
    (tmp_path / "chat.json").write_text(json.dumps(HISTORY), encoding="utf-8")
    gemini_server.reply_text("You are Ada.")
    argv = ["generate", "Who am I?", "--config", str(config), "--history", str(tmp_path / "chat.json")]
    assert main([*argv, "--stream"] if stream else argv) == 0
    assert capsys.readouterr().out.strip() == "You are Ada."
    (body,) = bodies(gemini_server)
    assert body["contents"] == [*turns, {"role": "user", "parts": [{"text": "Who am I?"}]}]


@pytest.mark.parametrize(("text", "says"), [
    ('[{"role": "user", "text": "Hi"}, {"role": "assistant", "text": "Hello"}]',
     "chat.json: history.1.role: Input should be 'user' or 'model'"),
    ('[{"role": "user", "text": ""}]', "chat.json: history.0.text: String should have at least 1 character"),
    ('[{"role": "user", "text": "Hi", "name": "Ada"}]', "chat.json: history.0.name: Extra inputs are not permitted"),
    ('{"role": "user", "text": "Hi"}', "chat.json: history: Input should be a valid list (a JSON list of"),
    ('[{"role": "user", "text": "Hi"}', "chat.json: not JSON (Expecting ',' delimiter: line 1 column 32)"),
    (None, "history file 'chat.json' does not exist"),
], ids=["role", "empty text", "unknown key", "not a list", "not JSON", "missing"])
def test_a_bad_history_file_is_a_usage_error_naming_the_file_and_the_turn(
        gemini_server: GeminiTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any,
        text: str | None, says: str) -> None:
    from genroute.cli import main

    config = _cli_config(gemini_server, tmp_path)
    if text is not None:
        (tmp_path / "chat.json").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "Who am I?", "--config", str(config), "--history", "chat.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"genroute generate: error: --history: {says}" or \
        err.startswith(f"genroute generate: error: --history: {says}"), err
    assert not gemini_server.requests  # refused before anything was sent


def test_a_bench_record_sends_its_history_and_a_bad_turn_names_the_line(
        gemini_server: GeminiTestServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A dataset record could carry no conversation: a multi-turn set was benchmarked as first turns only (a
    # `history` key was read past as one of the dataset's own columns, with a warning).
    import json

    from genroute.bench.cli import bench_main

    turns = sdk_turns(gemini_server)
    config = _cli_config(gemini_server, tmp_path)
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"id": "first", "input": "Hi, I am Ada.", "output": "Hello."}) + "\n"
                    + json.dumps({"id": "second", "input": "Who am I?", "output": "Ada.", "history": HISTORY}) + "\n",
                    encoding="utf-8")
    argv = [str(data), "--config", str(config), "--backends", "chat", "--out", str(tmp_path / "run"), "--quiet",
            "--concurrency", "1", "--no-stream"]
    assert bench_main(argv) == 0
    sent = {body["contents"][-1]["parts"][0]["text"]: body["contents"] for body in bodies(gemini_server)}
    assert sent["Hi, I am Ada."] == [{"role": "user", "parts": [{"text": "Hi, I am Ada."}]}]
    assert sent["Who am I?"] == [*turns, {"role": "user", "parts": [{"text": "Who am I?"}]}]
    assert "ignored unknown keys" not in capsys.readouterr().err
    gemini_server.clear()
    assert bench_main(argv) == 0 and not gemini_server.requests  # a rerun resumes: every row is there
    changed = data.read_text(encoding="utf-8").replace("Hello, Ada.", "Hello, Bob.")
    data.write_text(changed, encoding="utf-8")  # the rows stored answered another conversation: refused, not reused
    assert bench_main(argv) == 2 and not gemini_server.requests
    assert "holds results made with a different data" in capsys.readouterr().err
    data.write_text(json.dumps({"input": "Hi", "output": "x"}) + "\n"
                    + json.dumps({"input": "Who?", "output": "x", "history": [{"role": "bot", "text": "Hi"}]}) + "\n",
                    encoding="utf-8")
    assert bench_main([*argv[:5], "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "chat.jsonl:2: history.0.role: Input should be 'user' or 'model' (got 'bot')" in capsys.readouterr().err
    assert not gemini_server.requests
