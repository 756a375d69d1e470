"""Model and LoRA files the local engine is given: the GGUF header reader, and files llama.cpp cannot use
refused as a ConfigError naming the field (a bad adapter used to crash the process at the first decode)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from google.genai import types

from genroute.engines.gguf_header import GGUFError, read_fields
from genroute.errors import ConfigError

gguf = pytest.importorskip("gguf", reason="the reference GGUF writer comes with the tune-local extra")

#: One value of every GGUF type, written before the keys a reader looks for.
EVERY_TYPE = [("add_uint8", 7), ("add_int8", -7), ("add_uint16", 700), ("add_int16", -700), ("add_uint32", 70_000),
              ("add_int32", -70_000), ("add_float32", 0.5), ("add_bool", True), ("add_uint64", 2**40),
              ("add_int64", -(2**40)), ("add_float64", 0.25), ("add_string", "héllo")]


def write_header(path: Path, general_type: str = "adapter", architecture: str = "gemma3") -> Path:
    """A GGUF file (header and metadata only) by the reference writer, every value type in it."""
    writer = gguf.GGUFWriter(str(path), architecture)
    for i, (method, value) in enumerate(EVERY_TYPE):
        getattr(writer, method)(f"test.{i}", value)
    writer.add_array("test.ints", [1, 2, 3])
    writer.add_array("test.strings", ["a", "bc", ""])
    writer.add_type(general_type)
    writer.add_string("adapter.type", "lora")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path


def test_reader_reads_what_the_reference_writer_wrote(tmp_path: Path) -> None:
    path = write_header(tmp_path / "a.gguf")
    keys = [f"test.{i}" for i in range(len(EVERY_TYPE))] + ["general.type", "adapter.type", "test.ints", "nope"]
    found = read_fields(path, keys)
    expected = {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if k in keys}
    del expected["test.ints"]  # arrays are skipped, not returned
    assert found == expected
    assert found["test.11"] == "héllo" and found["general.type"] == "adapter" and found["test.6"] == 0.5


def test_reader_stops_at_the_last_key_asked_for(tmp_path: Path) -> None:
    path = write_header(tmp_path / "a.gguf")
    data = path.read_bytes()
    # general.architecture is the first key: the rest of the file may be anything.
    (tmp_path / "cut.gguf").write_bytes(data[: data.index(b"gemma3") + 6])
    assert read_fields(tmp_path / "cut.gguf", ["general.architecture"]) == {"general.architecture": "gemma3"}


def test_every_truncation_and_random_bytes_are_a_gguf_error(tmp_path: Path) -> None:
    data = write_header(tmp_path / "a.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in range(len(data.rstrip(b"\0"))):  # the writer pads the metadata with zeros to its alignment
        cut.write_bytes(data[:n])
        with pytest.raises(GGUFError):
            read_fields(cut, ["missing.key"])
    for seed in range(20):
        noise = np.random.default_rng(seed).bytes(1000)
        cut.write_bytes(noise if seed % 2 else b"GGUF\x03\0\0\0" + noise)  # half of them past the magic
        with pytest.raises(GGUFError):
            read_fields(cut, ["missing.key"])


def test_lengths_past_the_end_allocate_nothing(tmp_path: Path) -> None:
    path = tmp_path / "huge.gguf"
    header = b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
    for body in ((2**63).to_bytes(8, "little"),  # a key of 2**63 bytes
                 (3).to_bytes(8, "little") + b"key" + (8).to_bytes(4, "little") + (2**62).to_bytes(8, "little"),
                 (3).to_bytes(8, "little") + b"key" + (9).to_bytes(4, "little") + (4).to_bytes(4, "little")
                 + (2**61).to_bytes(8, "little")):  # a string, an array of u32, each of an absurd length
        path.write_bytes(header + body)
        with pytest.raises(GGUFError, match="truncated|key of"):
            read_fields(path, ["key"])
    path.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    with pytest.raises(GGUFError, match="version 1"):
        read_fields(path, ["key"])


# -- the engine, with the real model ---------------------------------------------------------------


def generate(**config: object) -> types.GenerateContentResponse:
    """One short answer from a fresh one-thread engine with ``config``, closed afterwards."""
    from genroute.engines.local import LocalEngine

    async def run() -> types.GenerateContentResponse:
        engine = LocalEngine("loc", {"n_threads": 1, "n_ctx": 128, "prompt_format": "gemma", **config})
        try:
            return await engine.generate("m", [types.Content(role="user", parts=[types.Part(text="Hi")])],
                                         types.GenerateContentConfig(max_output_tokens=2))
        finally:
            await engine.aclose()

    return asyncio.run(run())


def base_model() -> Path:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python comes with the local extra")
    from genroute.engines.local import default_model_path

    return default_model_path()


@pytest.mark.local
def test_a_lora_path_that_is_no_adapter_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    base = base_model()
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(np.random.default_rng(0).bytes(1000))
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(write_header(tmp_path / "whole.gguf").read_bytes()[:40])
    other_arch = write_header(tmp_path / "llama.gguf", architecture="llama")
    for lora, says in ((noise, "no GGUF magic"), (truncated, "truncated"), (base, "general.type 'model'"),
                       (other_arch, "for 'llama' models")):
        before = os.listdir(tmp_path)
        with pytest.raises(ConfigError, match=says) as info:
            generate(lora_path=str(lora))
        assert info.value.field == "engines.loc.lora_path"
        assert os.listdir(tmp_path) == before


@pytest.mark.local
def test_an_adapter_llama_cpp_refuses_is_a_config_error(tmp_path: Path) -> None:
    # A well-formed gemma3 adapter whose shapes fit another model: llama.cpp returns a NULL adapter.
    base_model()
    from genroute.tuning.gguf_adapter import write_lora_adapter

    wrong = {"model.layers.0.self_attn.q_proj": (np.zeros((2, 64)), np.zeros((64, 2)))}
    adapter = write_lora_adapter(tmp_path / "wrong.gguf", wrong, alpha=1.0)
    with pytest.raises(ConfigError, match="refused") as info:
        generate(lora_path=str(adapter))
    assert info.value.field == "engines.loc.lora_path"


@pytest.mark.local
def test_a_real_adapter_still_loads(tmp_path: Path) -> None:
    base_model()
    from genroute.tuning.gguf_adapter import write_lora_adapter

    rng = np.random.default_rng(0)
    pairs = {"model.layers.0.self_attn.q_proj": (rng.normal(size=(2, 640)) * 0.01, np.zeros((1024, 2)))}
    adapter = write_lora_adapter(tmp_path / "real.gguf", pairs, alpha=2.0)
    response = generate(lora_path=str(adapter))
    assert response.usage_metadata.candidates_token_count >= 1
    assert response.model_version == "gemma-3-270m-q4_k_m+real"


@pytest.mark.local
@pytest.mark.parametrize("content", [b"", b"GGUF\x03\0\0\0garbage", b"\x00" * 1000])
def test_a_corrupt_model_file_is_a_config_error(tmp_path: Path, content: bytes) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python comes with the local extra")
    model = tmp_path / "model.gguf"
    model.write_bytes(content)
    with pytest.raises(ConfigError, match="cannot load") as info:
        generate(model_path=str(model))
    assert info.value.field == "engines.loc.model_path"
