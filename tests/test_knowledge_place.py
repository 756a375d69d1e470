"""Where an embedded store lives: a ``knowledge.path`` Chroma could not write is a ``ConfigError`` naming it when the
router (or ``genroute ingest``) is built, not a retryable ``BackendUnavailable`` at the first request; building
makes no directory. A store read-only in its collection directories still serves a router that only reads, and
refuses (the same way) an ingest, an example load or a route sync that would write."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from genroute import ConfigError, Router
from genroute.knowledge import build_store, ingest
from genroute.knowledge.examples import aload_examples
from genroute.testing import GeminiTestServer

from .conftest import gemini_config
from .read_only_files import read_only  # noqa: F401


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


def _stored(tmp_path: Path) -> Path:
    """A store holding collection ``docs`` (one small file ingested with the offline embedder)."""
    (tmp_path / "doc.txt").write_text("Marta's bakery in Porto bakes rye sourdough every morning at four.")
    ingest(build_store({"path": str(tmp_path / "kb")}, engines={}), [tmp_path / "doc.txt"], collection="docs")
    return tmp_path / "kb"


def _rag(server: GeminiTestServer, kb: Path, **policy: object) -> dict[str, object]:
    config = gemini_config(server, kind="rag", collection="docs", max_distance=None)
    config["knowledge"] = {"path": str(kb)}
    if policy:
        flash = {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}
        config["backends"] = {**config["backends"], "plain": flash}
        config["policy"] = policy
    return config


def test_a_read_only_chroma_sqlite3_is_a_config_error_naming_knowledge_path_when_built(
        gemini_server: GeminiTestServer, tmp_path: Path, read_only: Callable[..., None]) -> None:
    kb = _stored(tmp_path)
    read_only(kb / "chroma.sqlite3")  # the directory stays writable
    with pytest.raises(ConfigError) as info:
        Router.from_config(_rag(gemini_server, kb))  # before: built, and the first request failed in Chroma
    assert info.value.field == "knowledge.path" and "chroma.sqlite3" in str(info.value)
    with pytest.raises(ConfigError, match="chroma.sqlite3"):
        build_store({"path": str(kb)}, engines={})  # what `genroute ingest` builds


def test_a_store_read_only_in_its_collections_serves_reads_and_refuses_ingests_naming_knowledge_path(
        gemini_server: GeminiTestServer, tmp_path: Path, read_only: Callable[..., None]) -> None:
    kb = _stored(tmp_path)
    collections = [p for p in kb.iterdir() if p.is_dir()]
    read_only(*[f for d in collections for f in d.iterdir()], *collections)
    with Router.from_config(_rag(gemini_server, kb)) as router:  # it only reads
        result = router.generate("When does the bakery bake?")
    assert result.backend == "chat" and "rye sourdough" in gemini_server.requests[-1].raw_body.decode()

    store = build_store({"path": str(kb)}, engines={})
    (tmp_path / "more.txt").write_text("The glacier covers about eight percent of Iceland.")
    with pytest.raises(ConfigError) as info:  # before: taken into Chroma's log, failing a later write at compaction
        ingest(store, [tmp_path / "more.txt"], collection="docs")
    assert info.value.field == "knowledge.path" and collections[0].name in str(info.value)
    (tmp_path / "shots.jsonl").write_text('{"input": "hi", "output": "hello"}\n')
    with pytest.raises(ConfigError, match="collection directory"):
        asyncio.run(aload_examples(store, [tmp_path / "shots.jsonl"], collection="shots"))
    assert store.count_sync("docs", kind="documents") == 1


def test_routes_a_read_only_store_holds_are_served_and_new_ones_refused_naming_knowledge_path(
        gemini_server: GeminiTestServer, tmp_path: Path, read_only: Callable[..., None]) -> None:
    kb = _stored(tmp_path)
    routes = {"chat": ["when does the bakery open?"], "plain": ["hello there"]}
    policy = {"kind": "semantic", "routes": routes, "default": "plain"}
    Router.from_config(_rag(gemini_server, kb, **policy)).close()  # the routes are stored
    collections = [p for p in kb.iterdir() if p.is_dir()]
    read_only(*[f for d in collections for f in d.iterdir()], *collections)
    Router.from_config(_rag(gemini_server, kb, **policy)).close()  # stored already: nothing to write
    more = {**policy, "routes": {**routes, "plain": ["hello there", "good morning"]}}
    with pytest.raises(ConfigError) as info:  # before: taken into Chroma's log, failing a later write
        Router.from_config(_rag(gemini_server, kb, **more))
    assert info.value.field == "knowledge.path"


def test_a_store_built_in_code_checks_its_place_as_one_built_from_a_config(
        tmp_path: Path, read_only: Callable[..., None]) -> None:
    from genroute.knowledge import KnowledgeStore, StoreConfig

    kb = _stored(tmp_path)
    collections = [p for p in kb.iterdir() if p.is_dir()]
    read_only(*[f for d in collections for f in d.iterdir()], *collections)
    store = KnowledgeStore(StoreConfig(path=str(kb)))  # read-only where records are written: it still reads
    (hit,) = asyncio.run(store.query("docs", "When does the bakery bake?", kind="documents", k=1))
    assert hit.text.startswith("Marta's")
    (tmp_path / "more.txt").write_text("The glacier covers about eight percent of Iceland.")
    with pytest.raises(ConfigError) as info:
        ingest(store, [tmp_path / "more.txt"], collection="docs")
    assert info.value.field == "knowledge.path" and collections[0].name in str(info.value)

    read_only(kb / "chroma.sqlite3")  # Chroma cannot open it even to read
    with pytest.raises(ConfigError) as info:  # before: built, and its first use failed in Chroma
        KnowledgeStore(StoreConfig(path=str(kb)))
    assert info.value.field == "knowledge.path" and "chroma.sqlite3" in str(info.value)
    with pytest.raises(ConfigError, match="is not a directory"):
        KnowledgeStore(StoreConfig(path=str(tmp_path / "more.txt")))


def test_a_relative_path_is_anchored_where_the_store_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Chroma keeps one client per path string: two dict-configured stores at ./kb under different working directories
    # in one process shared the first one's client (the second's ingest failed "no such table: embeddings" once the
    # first directory was gone), and a chdir after building moved the store.
    stores = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "doc.txt").write_text(f"The {name} file says the bakery opens at four.")
        monkeypatch.chdir(tmp_path / name)
        store = build_store({"path": "./kb"}, engines={})
        assert store.config.path == str(tmp_path / name / "kb")
        stores.append(store)
    monkeypatch.chdir(tmp_path)
    for name, store in zip(("one", "two"), stores, strict=True):
        ingest(store, [tmp_path / name / "doc.txt"], collection="docs")
        assert (tmp_path / name / "kb" / "chroma.sqlite3").is_file()
    assert not (tmp_path / "kb").exists()
