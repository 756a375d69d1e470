"""A priced local model's streams are charged the token counts llama.cpp made, however the stream ends (the real
bundled Gemma 3 270M through the router, costs read from the spans)."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import pytest

from genroute.router.router import Router

from .conftest import Otel

pytest.importorskip("llama_cpp")

IN, OUT = 1.0, 2.0  # USD per 1M tokens: the config's price for the local model (its compute, say)


def _config(input_price: float = IN, output_price: float = OUT) -> dict[str, Any]:
    # Greedy (the engine's default temperature 0) and a reset context per request: the same request, the same tokens.
    return {"engines": {"local": {"kind": "local", "n_threads": 1, "prompt_format": "gemma"}},
            "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                  "generation": {"max_output_tokens": 12}}},
            "policy": {"kind": "static", "backend": "chat"},
            "pricing": {"gemma-3-270m": {"input": input_price, "output": output_price}}}


@pytest.mark.local
async def test_a_priced_local_stream_its_reader_abandons_is_charged_the_tokens_llama_cpp_counted(otel: Otel) -> None:
    # Would catch: the abandoned stream charged genroute's estimate (the prompt's characters and the text received at
    # four a token) although llama.cpp counted both; its chunks carried no usage, only the last (never read) did.
    prompt = "Write a long story about a dragon."
    async with Router.from_config(_config(), **otel.providers) as router:
        texts: list[str] = []
        async with aclosing(router.astream(prompt)) as chunks:
            async for chunk in chunks:
                if chunk.done:
                    result = chunk.result
                else:
                    texts.append(chunk.text)
        assert result is not None and len(texts) >= 2
        # The same request again, its reader gone after the last text chunk: every token was made and delivered,
        # the answer's closing chunk (with its usage) never read.
        received: list[str] = []
        async with aclosing(router.astream(prompt)) as chunks:
            async for chunk in chunks:
                received.append(chunk.text)
                if len(received) == len(texts):
                    break

    assert received == texts  # greedy: the same tokens, so the same counts
    usage = result.usage
    exact = (usage.input_tokens * IN + usage.output_tokens * OUT) / 1e6
    assert usage.output_tokens == 12 and result.cost_usd == pytest.approx(exact)
    whole, abandoned = otel.spans("generate_content")
    assert whole.attributes["gen_ai.usage.cost.amount"] == pytest.approx(exact)
    assert abandoned.attributes["gen_ai.usage.cost.amount"] == pytest.approx(exact)
    roots = otel.spans("genroute.generate")
    assert [root.attributes["gen_ai.usage.cost.amount"] for root in roots] == pytest.approx([exact, exact])


@pytest.mark.local
async def test_a_priced_local_stream_its_deadline_cuts_is_charged_the_prompt_tokens_llama_cpp_counted(
        otel: Otel) -> None:
    # Would catch: a stream the deadline cut charged the prompt at four characters a token (from the chunks received,
    # or billed by the engine when none had arrived) although llama.cpp had tokenized it. Whether the cut comes
    # before the first chunk or after some, the charge is the counted prompt plus the tokens generated (at least one
    # a text chunk received): priced $1 and $1,000 per 1M tokens, the cost's two parts read apart.
    from genroute import GenrouteError

    config = _config(1.0, 1000.0)
    config["backends"]["chat"]["generation"]["max_output_tokens"] = 1500  # the base model rambles on: never done
    async with Router.from_config(config, **otel.providers) as router:
        async with aclosing(router.astream("Say yes.")) as warm:  # the model loaded (its first chunk, then left):
            await anext(warm)  # the deadline below runs on tokenizing and decoding only
        received = 0
        with pytest.raises(GenrouteError):
            async with aclosing(router.astream("Write a very long story about a dragon.", timeout_s=3)) as chunks:
                async for chunk in chunks:
                    received += bool(chunk.text)
        prompt = len(router.resources.engines["local"].last_prompt_tokens)

    _, cut = otel.spans("generate_content")
    charged_output, charged_prompt = divmod(round(cut.attributes["gen_ai.usage.cost.amount"] * 1e6), 1000)
    assert charged_prompt == prompt < 1000
    assert received <= charged_output < 1500
