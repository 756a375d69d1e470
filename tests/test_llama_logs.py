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


def _native(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "genroute.llama_cpp" and r.levelno == level]


@pytest.mark.local
def test_benign_load_lines_go_out_at_debug_and_real_problems_keep_their_level(caplog):
    # Every load of the default model logged "using full-size SWA cache" and "control-looking token: 212 '</s>' was not
    # control-type; this is probably a bug in the model" at WARNING (and "n_ctx_seq (2048) < n_ctx_train (32768)" at
    # INFO): a user saw warnings each time a local engine started, with nothing wrong (llama.cpp fixes the token).
    import ctypes

    from google.genai import types

    from genroute.engines import llama_logs
    from genroute.engines.local import LocalEngine

    caplog.set_level(logging.DEBUG, logger="genroute.llama_cpp")
    engine = LocalEngine("logs", {"kind": "local", "n_ctx": 256})
    contents = [types.Content(role="user", parts=[types.Part(text="hi")])]
    asyncio.run(engine.generate("m", contents, types.GenerateContentConfig(max_output_tokens=2)))
    asyncio.run(engine.aclose())
    debug = _native(caplog, logging.DEBUG)
    assert any("using full-size SWA cache" in m for m in debug)
    assert any("n_ctx_seq (256) < n_ctx_train" in m for m in debug)
    assert any("control-looking token" in m for m in debug)
    assert _native(caplog, logging.WARNING) == [] and _native(caplog, logging.ERROR) == []
    # Any other warning keeps its level, and so do its continuation lines.
    caplog.clear()
    llama_logs._callback(3, b"llama_context: n_ctx_seq (65536) > n_ctx_train (32768) -- possible overflow\n", None)
    llama_logs._callback(5, b"  more of it\n", ctypes.c_void_p(0))
    assert _native(caplog, logging.WARNING) == ["llama_context: n_ctx_seq (65536) > n_ctx_train (32768) -- possible "
                                                "overflow", "  more of it"]


@pytest.mark.local
def test_a_lora_adapters_cpu_buffer_fallback_is_not_a_warning(caplog, tmp_path):
    # Loading an adapter logged one WARNING per tensor of an attention output ("lora for 'blk.0.attn_output.weight'
    # cannot use buft 'CPU_REPACK', fallback to CPU"): 18 warnings for the demo's adapter, on every load.
    pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")
    import numpy as np
    from google.genai import types

    from genroute.engines.local import LocalEngine
    from genroute.tuning.gguf_adapter import write_lora_adapter

    pairs = {"model.layers.0.self_attn.o_proj": (np.zeros((2, 1024)), np.zeros((640, 2)))}
    adapter = write_lora_adapter(tmp_path / "adapter.gguf", pairs, alpha=2.0)
    caplog.set_level(logging.DEBUG, logger="genroute.llama_cpp")
    engine = LocalEngine("logs", {"kind": "local", "n_ctx": 256, "lora_path": str(adapter), "prompt_format": "gemma"})
    contents = [types.Content(role="user", parts=[types.Part(text="hi")])]
    asyncio.run(engine.generate("m", contents, types.GenerateContentConfig(max_output_tokens=2)))
    asyncio.run(engine.aclose())
    assert any("cannot use buft 'CPU_REPACK', fallback to CPU" in m for m in _native(caplog, logging.DEBUG))
    assert _native(caplog, logging.WARNING) == []


@pytest.mark.local
def test_the_tuning_tokenizers_load_writes_nothing_to_the_terminal():
    # `genroute tune --local` loads the base model vocabulary-only before any local engine has routed llama.cpp's
    # lines: "llama_context: n_ctx_seq (512) > n_ctx_train (0) -- possible training context overflow" reached the
    # terminal (a vocabulary-only load reports a training length of 0). A fresh process: the callback is global.
    import subprocess
    import sys

    code = ("import logging\n"
            "logging.basicConfig(level=logging.DEBUG, format='%(levelname)s %(name)s %(message)s')\n"
            "from genroute.engines.local import default_model_path\n"
            "from genroute.tuning.local_lora import PromptEncoder\n"
            "PromptEncoder(default_model_path(), max_seq_len=256)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    lines = done.stderr.splitlines()
    overflow = [line for line in lines if "n_ctx_train (0)" in line]
    assert overflow and all(line.startswith("DEBUG genroute.llama_cpp ") for line in overflow)
    assert not [line for line in lines if line.startswith("llama_")]  # nothing printed past logging
