"""llama.cpp's native log lines reach Python logging, not the terminal."""

from __future__ import annotations

import asyncio
import logging

import pytest


@pytest.mark.local
def test_native_llama_lines_go_to_the_genroute_logger(caplog, capfd):
    from google.genai import types

    from genroute.engines.local import LocalEngine

    caplog.set_level(logging.DEBUG, logger="genroute.llama_cpp")
    engine = LocalEngine("logs", {"kind": "local", "n_ctx": 256})
    contents = [types.Content(role="user", parts=[types.Part(text="hi")])]
    asyncio.run(engine.generate("m", contents, types.GenerateContentConfig(max_output_tokens=2)))
    asyncio.run(engine.aclose())
    native = [r for r in caplog.records if r.name == "genroute.llama_cpp"]
    assert any("llama_context" in r.getMessage() for r in native)
    assert "llama_context" not in capfd.readouterr().err
