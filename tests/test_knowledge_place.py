"""Where an embedded store lives: a ``knowledge.path`` Chroma could not write is a ``ConfigError`` naming it when the
router (or ``genroute ingest``) is built, not a retryable ``BackendUnavailable`` at the first request; building
makes no directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genroute import ConfigError, Router
from genroute.knowledge import build_store

from .conftest import gemini_config


def _unwritable(tmp_path: Path, where: str) -> str:
    if where == "proc":
        return "/proc/genroute-kb"  # root may write anywhere by the permission bits, but not there
    (tmp_path / "afile").write_text("")
    return str(tmp_path / "afile" / "kb")  # a file where a directory is expected


@pytest.mark.parametrize("where", ["proc", "under a file"])
def test_an_unwritable_knowledge_path_is_a_config_error_when_the_router_is_built(gemini_server, tmp_path: Path,
                                                                                 where: str) -> None:
    config = gemini_config(gemini_server)
    config["knowledge"] = {"path": _unwritable(tmp_path, where)}
    with pytest.raises(ConfigError) as info:
        Router.from_config(config)  # before: built, and the first retrieval was BackendUnavailable
    assert info.value.field == "knowledge.path" and config["knowledge"]["path"] in str(info.value)


def test_genroute_ingest_into_an_unwritable_path_exits_2_naming_it(gemini_server, tmp_path: Path) -> None:
    (tmp_path / "doc.txt").write_text("Some text to store.")
    config = tmp_path / "router.yaml"
    config.write_text(yaml.safe_dump({**gemini_config(gemini_server), "knowledge": {"path": "/proc/genroute-kb"}}))
    run = subprocess.run([sys.executable, "-m", "genroute.cli", "ingest", str(tmp_path / "doc.txt"), "--collection",
                          "docs", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "knowledge.path" in run.stderr and "/proc/genroute-kb" in run.stderr


def test_a_store_that_is_not_there_yet_is_built_without_making_its_directory(tmp_path: Path) -> None:
    store = build_store({"path": str(tmp_path / "new" / "kb")}, engines={})
    assert store.config.path == str(tmp_path / "new" / "kb")
    assert list(tmp_path.iterdir()) == []  # Chroma makes it when first opened
