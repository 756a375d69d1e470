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


def test_another_librarys_log_callback_is_left_in_place():
    import ctypes

    import llama_cpp

    from genroute.engines.llama_logs import _installed, route_llama_logs

    seen: list[bytes] = []

    @llama_cpp.llama_log_callback
    def theirs(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        seen.append(text)

    before = llama_cpp.llama_log_callback()
    before_data = ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(before), ctypes.byref(before_data))
    llama_cpp.llama_log_set(theirs, ctypes.c_void_p(0))
    try:
        assert route_llama_logs() is False  # another library's callback: not ours to remove
        assert _installed(llama_cpp) == ctypes.cast(theirs, ctypes.c_void_p).value
        assert route_llama_logs(replace=True) is True  # unless asked
        assert _installed(llama_cpp) != ctypes.cast(theirs, ctypes.c_void_p).value
    finally:
        llama_cpp.llama_log_set(before, before_data)
