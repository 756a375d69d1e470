"""Data safety: config files are replaced atomically, never rewritten in place.

genroute writes router configs in two places, both when a tuned model is registered:
``genroute.tuning.config_file.register_tuned_backend`` (Vertex / Developer API tuning) and
``genroute.tuning.local_lora.register_tuned_backend`` (local LoRA). For each we show that a reader
holding the old file still sees all of it (an in-place rewrite would truncate it under the reader),
that the path now names a new, complete file, and that a write failing at the last step leaves the old
file byte for byte and no temporary files behind. (SIGKILL mid-ingest is covered in test_knowledge.py.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from genroute.config import load_config

ORIGINAL = {
    "engines": {"g": {"kind": "gemini", "api_key_env": "GEMINI_API_KEY"}},
    "backends": {"chat": {"kind": "prompt_template", "engine": "g", "model": "gemini-2.5-flash"}},
    "policy": {"kind": "static", "backend": "chat"},
}


def _vertex_writer(path: Path, tmp_path: Path) -> Callable[[], Any]:
    from genroute.tuning.config_file import register_tuned_backend

    return lambda: register_tuned_backend(path, "tuned", engine="g", model="projects/p/locations/l/endpoints/1",
                                          base_model="gemini-2.5-flash")


def _lora_writer(path: Path, tmp_path: Path) -> Callable[[], Any]:
    from genroute.tuning.local_lora import register_tuned_backend

    adapter = tmp_path / "adapter.gguf"
    adapter.write_bytes(b"GGUF adapter stand-in")
    return lambda: register_tuned_backend(path, "mine", adapter)


WRITERS = [pytest.param(_vertex_writer, id="tuning.config_file"), pytest.param(_lora_writer, id="tuning.local_lora")]


def _config_file(tmp_path: Path) -> Path:
    path = tmp_path / "genroute.yaml"
    path.write_text("# my router\n" + yaml.safe_dump(ORIGINAL, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("writer", WRITERS)
def test_a_reader_of_the_old_config_never_sees_a_half_written_file(tmp_path, writer):
    path = _config_file(tmp_path)
    before = path.read_bytes()
    inode = path.stat().st_ino
    with path.open("rb") as reader:  # opened before the write, read after it
        writer(path, tmp_path)()
        assert reader.read() == before  # the old file is intact under its reader: not truncated in place
    assert path.stat().st_ino != inode  # the path names a new file, swapped in by rename
    new = load_config(path)  # ... and the new file is complete and valid
    assert "chat" in new.backends and len(new.backends) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("writer", WRITERS)
def test_a_write_that_fails_at_the_last_step_leaves_the_old_config_untouched(tmp_path, writer, monkeypatch):
    path = _config_file(tmp_path)
    before = path.read_bytes()
    write = writer(path, tmp_path)

    def crash(src: Any, dst: Any) -> None:
        raise OSError("disk full (simulated at the rename)")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p for p in ("genroute.yaml", "adapter.gguf") if (tmp_path / p).exists())



def test_a_config_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path):
    from genroute.errors import ConfigError
    from genroute.tuning.config_file import register_tuned_backend

    path = tmp_path / "genroute.yaml"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError) as info:
        register_tuned_backend(path, "tuned", engine="g", model="m", base_model="gemini-2.5-flash")
    assert info.value.field == "config" and path.read_bytes() == b"\xff\xfe not utf-8"
