"""Knowledge layer: chunking, ingestion (idempotent, resumable after SIGKILL), store config and errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from genroute.errors import ConfigError, UsageError
from genroute.knowledge import aingest, build_store
from genroute.knowledge.chunking import chunk_id, chunk_text, stored_chunk_id, token_counter
from genroute.knowledge.ingest import chunk_documents, expand_paths, read_documents
from genroute.testing.replies import field_of

from .chroma_fixtures import ChromaFaultProxy, ChromaServer, Knowledge, chroma_proxy, chroma_server, knowledge  # noqa: F401

TOPICS = ["volcanoes", "sourdough bread", "chess openings", "jazz piano", "tide pools", "rust compilers"]


def write_corpus(root: Path, docs: int = 6, sentences: int = 12) -> list[Path]:
    """Plain text, Markdown and JSONL files whose sentences are all distinct."""
    root.mkdir(parents=True, exist_ok=True)

    def body(i: int) -> str:
        topic = TOPICS[i % len(TOPICS)]
        return " ".join(f"Note {i}.{j} is about {topic}, detail number {j * 7 + i}." for j in range(sentences))

    (root / "a.txt").write_text(body(0) + "\n\n" + body(1), encoding="utf-8")
    (root / "guide.md").write_text(f"# Field guide\n\nIntro {body(2)}\n\n## Tides\n\n{body(3)}\n", encoding="utf-8")
    with (root / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for i in range(4, docs):
            fh.write(json.dumps({"id": f"doc{i}", "title": f"Title {i}", "text": body(i)}) + "\n")
    return [root / "a.txt", root / "guide.md", root / "corpus.jsonl"]


def expected_ids(paths: list[Path], chunk_tokens: int, overlap: int) -> set[str]:
    ids = set()
    for path in paths:
        for chunk, meta in chunk_documents(read_documents(path), chunk_tokens=chunk_tokens, overlap=overlap):
            ids.add(stored_chunk_id(meta["source"], chunk.text))
    return ids


# -- chunking ----------------------------------------------------------------------------------


def test_chunks_cover_the_text_with_overlap_and_stable_ids() -> None:
    text = " ".join(f"Sentence {i} says something about topic {i % 5}." for i in range(60))
    chunks = chunk_text(text, chunk_tokens=40, overlap=10)
    assert len(chunks) > 3
    counter = token_counter()
    for chunk in chunks:
        assert chunk.tokens <= 40
        assert text[chunk.start:chunk.end].strip() == chunk.text
        assert counter.count(chunk.text) == chunk.tokens
    for left, right in zip(chunks, chunks[1:]):
        assert right.start < left.end  # consecutive windows overlap
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert [c.id for c in chunk_text(text, chunk_tokens=40, overlap=10)] == [c.id for c in chunks]
    assert chunk_id("a  b\nc") == chunk_id("a b c")  # whitespace does not change identity


def test_chunks_end_at_sentence_boundaries_when_possible() -> None:
    text = " ".join(f"This is sentence number {i} of the text." for i in range(40))
    for chunk in chunk_text(text, chunk_tokens=50, overlap=0)[:-1]:
        assert chunk.text.endswith(".")


@pytest.mark.parametrize(("tokens", "overlap", "field"), [(4, 0, "chunk_tokens"), (40, 40, "overlap"),
                                                          (40, -1, "overlap")])
def test_bad_chunk_settings_are_config_errors(tokens: int, overlap: int, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        chunk_text("some text here", chunk_tokens=tokens, overlap=overlap)
    assert err.value.field == field


def test_markdown_sections_and_jsonl_records_carry_metadata(tmp_path: Path) -> None:
    paths = write_corpus(tmp_path)
    md = list(read_documents(paths[1]))
    assert [d.section for d in md] == ["Field guide", "Tides"]
    assert all(d.title == "Field guide" for d in md)
    text = paths[1].read_text()
    for doc in md:
        assert text[doc.offset:doc.offset + len(doc.text)] == doc.text
    records = list(read_documents(paths[2]))
    assert [(d.doc_id, d.title) for d in records] == [("doc4", "Title 4"), ("doc5", "Title 5")]
    (chunk, meta), *_ = chunk_documents(iter(records), chunk_tokens=30, overlap=5)
    assert meta["source"] == str(paths[2]) and meta["doc_id"] == "doc4" and meta["title"] == "Title 4"
    assert records[0].text[meta["start"]:meta["end"]].strip() == chunk.text


def test_bad_input_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as err:
        expand_paths([tmp_path / "missing.txt"])
    assert err.value.field == "paths" and "missing.txt" in str(err.value)
    with pytest.raises(UsageError):
        expand_paths([])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(UsageError) as err:
        list(read_documents(bad))
    assert err.value.field == "text_field" and "bad.jsonl:1" in str(err.value)
    bad.write_text("{not json\n")
    with pytest.raises(UsageError) as err:
        list(read_documents(bad))
    assert err.value.field == "paths"


# -- store config ------------------------------------------------------------------------------


def test_store_config_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        build_store({"path": "/tmp/x", "host": "127.0.0.1"}, engines={})
    assert err.value.field == "knowledge"
    with pytest.raises(ConfigError) as err:
        build_store({"embedder": {"kind": "gemini", "engine": "nope"}}, engines={})
    assert err.value.field == "knowledge.embedder.engine"
    with pytest.raises(ConfigError) as err:
        build_store({"port": 0}, engines={})
    assert err.value.field == "knowledge.port"
    with pytest.raises(ConfigError) as err:
        build_store("/some/path", engines={})  # type: ignore[arg-type]
    assert err.value.field == "knowledge"
    with pytest.raises(ConfigError) as err:
        build_store({"embedder": {"kind": "bogus"}}, engines={})
    assert err.value.field.startswith("knowledge.embedder")


def test_import_does_not_load_chroma() -> None:
    code = "import sys, genroute.knowledge, genroute.backends.rag, genroute.backends.icl; " \
           "print('chromadb' in sys.modules, 'onnxruntime' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- ingestion, both modes ---------------------------------------------------------------------


async def test_reingest_is_idempotent(knowledge: Knowledge, tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "docs")
    want = expected_ids(paths, 30, 6)
    collection = knowledge.name("docs")
    store = knowledge.store()
    first = await aingest(store, paths, collection=collection, chunk_tokens=30, overlap=6, batch_size=7)
    assert (first.files, first.chunks, first.added, first.skipped) == (3, len(want), len(want), 0)
    assert first.batches == -(-len(want) // 7)
    again = await aingest(knowledge.store(), [tmp_path / "docs"], collection=collection, chunk_tokens=30,
                          overlap=6)
    assert (again.chunks, again.added, again.skipped) == (len(want), 0, len(want))
    assert await store.count(collection, kind="documents") == len(want)
    stored = {h.id for h in await store.get_all(collection, kind="documents")}
    assert stored == want


@pytest.mark.parametrize("batch_size", [0, -5, 2.5, True, "8"])
async def test_a_bad_batch_size_is_refused_before_anything_is_written(knowledge: Knowledge, tmp_path: Path,
                                                                       batch_size: object) -> None:
    paths = write_corpus(tmp_path / "docs")
    collection = knowledge.name("docs")
    store = knowledge.store()
    with pytest.raises(UsageError) as err:
        await aingest(store, paths, collection=collection, chunk_tokens=30, overlap=6,
                      batch_size=batch_size)  # type: ignore[arg-type]
    assert err.value.field == "batch_size"
    assert collection not in await store.collections()


async def test_reingesting_an_edited_file_replaces_its_chunks_only(knowledge: Knowledge, tmp_path: Path) -> None:
    shared = "The shared paragraph says the same thing in both files, word for word, to the letter."
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(f"Apples ripen in autumn.\n\n{shared}", encoding="utf-8")
    b.write_text(f"Bananas ripen in summer.\n\n{shared}", encoding="utf-8")
    store, collection = knowledge.store(), knowledge.name("edits")
    first = await aingest(store, [a, b], collection=collection, chunk_tokens=20, overlap=0)
    assert first.removed == 0
    a.write_text("Apples ripen in late autumn, after the first frost.", encoding="utf-8")  # edited: shared text gone
    again = await aingest(store, [a], collection=collection, chunk_tokens=20, overlap=0)
    assert again.removed >= 1 and again.added >= 1
    stored = await store.get_all(collection, kind="documents")
    texts = {(h.metadata["source"], " ".join(h.text.split())) for h in stored}
    assert not any(src == str(a) and ("in autumn." in t or "shared" in t) for src, t in texts)  # a's old text gone
    assert any(src == str(a) and "first frost" in t for src, t in texts)
    assert any(src == str(b) and "shared paragraph" in t for src, t in texts)  # b's copy of the shared text stays
    assert {h.id for h in stored} == expected_ids([a, b], 20, 0)


async def test_a_missing_or_bad_file_among_good_ones_writes_nothing(knowledge: Knowledge, tmp_path: Path) -> None:
    good = write_corpus(tmp_path / "docs", docs=5)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "a fine first record"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    store = knowledge.store()
    fresh = knowledge.name("fresh")
    for paths in (good + [tmp_path / "missing.txt"], good + [bad]):
        with pytest.raises(UsageError) as err:
            await aingest(store, paths, collection=fresh, chunk_tokens=30, overlap=6)
        assert err.value.field in ("paths", "text_field")
    assert fresh not in await store.collections()  # no collection, not even an empty one
    existing = knowledge.name("docs")
    first = await aingest(store, good[:1], collection=existing, chunk_tokens=30, overlap=6)
    with pytest.raises(UsageError) as err:
        await aingest(store, good[1:] + [bad], collection=existing, chunk_tokens=30, overlap=6)
    assert "bad.jsonl:2" in str(err.value)
    assert await store.count(existing, kind="documents") == first.added  # nothing from the good files either


async def test_query_returns_nearest_with_metadata(knowledge: Knowledge, tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "docs")
    collection = knowledge.name("docs")
    store = knowledge.store()
    await aingest(store, paths, collection=collection, chunk_tokens=30, overlap=6)
    hits = await store.query(collection, "Which note talks about jazz piano?", kind="documents", k=3)
    assert len(hits) == 3 and all("jazz piano" in h.text for h in hits)
    assert hits[0].distance <= hits[1].distance <= hits[2].distance
    assert hits[0].metadata["source"] == str(paths[1]) and hits[0].metadata["section"] == "Tides"
    filtered = await store.query(collection, "jazz piano", kind="documents", k=3,
                                 where={"source": str(paths[2])})
    assert filtered and all(h.metadata["source"] == str(paths[2]) for h in filtered)


async def test_unknown_collection_and_wrong_kind(knowledge: Knowledge, tmp_path: Path) -> None:
    store = knowledge.store()
    with pytest.raises(UsageError) as err:
        await store.query(knowledge.name("missing"), "anything", kind="documents", k=1,
                          field="backends.rag.collection")
    assert err.value.field == "backends.rag.collection" and "unknown collection" in str(err.value)
    collection = knowledge.name("docs")
    await aingest(store, write_corpus(tmp_path / "docs", docs=5), collection=collection)
    with pytest.raises(UsageError) as err:
        await knowledge.store().count(collection, kind="examples")
    assert "holds documents" in str(err.value)
    with pytest.raises(UsageError) as err:
        await aingest(store, write_corpus(tmp_path / "docs"), collection="ab")
    assert err.value.field == "collection"


async def test_chunks_longer_than_the_embedder_reads_are_refused(tmp_path: Path) -> None:
    store = build_store({"path": str(tmp_path / "c")}, engines={})
    with pytest.raises(UsageError) as err:
        await aingest(store, write_corpus(tmp_path / "docs"), collection="docs", chunk_tokens=400, overlap=10)
    assert err.value.field == "chunk_tokens"


async def test_gemini_embedder_store_and_mismatch(tmp_path: Path, gemini_server) -> None:  # noqa: ANN001
    from genroute.engines.gemini import GeminiEngine

    from .conftest import TEST_KEY

    engine = GeminiEngine("gemini", {"base_url": gemini_server.base_url, "api_key": TEST_KEY})
    config = {"path": str(tmp_path / "c"), "embedder": {"kind": "gemini", "engine": "gemini", "dimension": 768}}
    store = build_store(config, engines={"gemini": engine})
    report = await aingest(store, write_corpus(tmp_path / "docs", docs=5), collection="docs", chunk_tokens=60)
    assert report.added > 0
    assert any(r.action == "batchEmbedContents" for r in gemini_server.requests)
    hits = await store.query("docs", "tide pools", kind="documents", k=2)
    assert len(hits) == 2
    local = build_store({"path": str(tmp_path / "c")}, engines={})
    with pytest.raises(ConfigError) as err:
        await local.query("docs", "tide pools", kind="documents", k=2)
    assert err.value.field == "knowledge.embedder" and "gemini-embedding-001" in str(err.value)
    # What it says to do can be done: ingesting into this collection is refused the same way.
    assert "ingest into a new collection" in err.value.message
    with pytest.raises(ConfigError) as again:
        await aingest(local, write_corpus(tmp_path / "docs", docs=5), collection="docs", chunk_tokens=60)
    assert again.value.field == "knowledge.embedder"
    narrow = build_store({**config, "embedder": {**config["embedder"], "dimension": 256}},
                         engines={"gemini": engine})
    with pytest.raises(ConfigError) as err:  # Chroma's own dimension error would come from the query
        await narrow.query("docs", "tide pools", kind="documents", k=2)
    assert err.value.field == "knowledge.embedder.dimension" and "768" in str(err.value)
    assert "ingest into a new collection" in err.value.message
    sent = [field_of(r, "outputDimensionality") for q in gemini_server.requests
            if q.action == "batchEmbedContents" for r in field_of(q.body, "requests")]
    assert sent and set(sent) == {768}
    await engine.aclose()


# -- kill and resume ---------------------------------------------------------------------------

CHILD = """
import json, sys
from genroute.knowledge import build_store, ingest
cfg, paths, collection = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
def report(n, done):
    print(f"batch {n} {done}", flush=True)
ingest(build_store(cfg, engines={}), paths, collection=collection, chunk_tokens=24, overlap=4,
       batch_size=6, on_batch=report)
print("finished", flush=True)
"""


async def test_sigkill_mid_ingest_then_rerun_leaves_exactly_one_copy(knowledge: Knowledge, tmp_path: Path) -> None:
    paths = write_corpus(tmp_path / "docs", docs=8, sentences=16)
    want = expected_ids(paths, 24, 4)
    assert len(want) > 60  # many batches of 6: the kill lands mid-run
    collection = knowledge.name("resume")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(knowledge.config), json.dumps([str(p) for p in paths]), collection],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).parent.parent,
    )
    assert child.stdout is not None
    done = 0
    for line in child.stdout:
        if line.startswith("batch 3 "):
            done = int(line.split()[2])
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL and done == 18
    store = knowledge.store()
    partial = await store.count(collection, kind="documents")
    assert done <= partial < len(want)  # every reported batch is there; the run was cut short
    report = await aingest(store, paths, collection=collection, chunk_tokens=24, overlap=4, batch_size=6)
    assert report.skipped >= done and report.added + report.skipped == len(want)
    assert await store.count(collection, kind="documents") == len(want)
    assert {h.id for h in await store.get_all(collection, kind="documents")} == want


def test_ingest_paths_is_the_cli_entry_point(tmp_path: Path) -> None:
    from genroute.knowledge import ingest_paths

    config = {"path": str(tmp_path / "c")}
    paths = [str(p) for p in write_corpus(tmp_path / "docs", docs=5)]
    report = ingest_paths(paths, "docs", store_config=config, chunk_tokens=256, overlap=32, progress=True)
    assert report.added == report.chunks > 0 and report.chunks_per_s > 0
    examples = tmp_path / "ex.jsonl"
    examples.write_text('{"input": "hi", "output": "greeting"}\n{"input": "bye", "output": "farewell"}\n')
    report = ingest_paths([str(examples)], "examples", store_config=config, kind="examples", progress=False)
    assert (report.chunks, report.added) == (2, 2)
    with pytest.raises(UsageError) as err:
        ingest_paths([str(tmp_path / "nope.md")], "docs", store_config=config)
    assert err.value.field == "paths"


async def test_sync_ingest_refuses_a_running_loop(tmp_path: Path) -> None:
    from genroute.knowledge import ingest

    with pytest.raises(UsageError) as err:
        ingest(build_store({"path": str(tmp_path)}, engines={}), [tmp_path], collection="docs")
    assert "running event loop" in str(err.value)


async def test_unreachable_server_is_backend_unavailable() -> None:
    from genroute.errors import BackendUnavailable

    from .chroma_fixtures import free_port

    store = build_store({"host": "127.0.0.1", "port": free_port()}, engines={})
    with pytest.raises(BackendUnavailable) as err:
        await store.query("docs", "anything", kind="documents", k=1)
    assert "127.0.0.1" in str(err.value)


@pytest.mark.chroma_server
async def test_chroma_server_failures_are_typed(chroma_proxy: ChromaFaultProxy, tmp_path: Path) -> None:
    from genroute.errors import BackendUnavailable

    store = build_store({"host": "127.0.0.1", "port": chroma_proxy.port}, engines={})
    collection = f"failures-{os.getpid()}"
    await aingest(store, write_corpus(tmp_path / "docs", docs=4), collection=collection, chunk_tokens=30, overlap=6)
    cases = [
        (500, {"error": "InternalError", "message": "boom"}, BackendUnavailable),
        (502, b"<html><body>502 Bad Gateway</body></html>", BackendUnavailable),  # not Chroma's JSON
        (429, {"error": "RateLimitError", "message": "slow down"}, BackendUnavailable),
        (403, {"error": "AuthError", "message": "who are you"}, ConfigError),
        (400, {"error": "InvalidArgumentError", "message": "bad include"}, UsageError),
    ]
    for status, body, kind in cases:
        chroma_proxy.fail(status, body, path=r"/query$")
        with pytest.raises((UsageError, BackendUnavailable)) as err:
            await store.query(collection, "tide pools", kind="documents", k=2)
        assert type(err.value) is kind, (status, err.value)
        assert "127.0.0.1" in str(err.value)
    assert getattr(err.value, "field", None) is None
    hits = await store.query(collection, "tide pools", kind="documents", k=2)  # faults used up: works again
    assert len(hits) == 2


@pytest.mark.chroma_server
def test_a_stalled_chroma_server_is_backend_unavailable(chroma_server: ChromaServer, gemini_server: Any,
                                                        tmp_path: Path) -> None:
    from genroute import Router
    from genroute.errors import BackendUnavailable
    from genroute.knowledge import ingest
    from genroute.testing import Reply

    from .conftest import gemini_config

    gemini_server.default_reply = lambda request: Reply(parts=({"text": "ok"},), usage=(10, 2))
    collection = f"stalled-{os.getpid()}"
    docs = write_corpus(tmp_path / "docs", docs=4)
    # The bound each call gets: short, as the stalled calls below wait it out, but the calls made while the server
    # answers must come within it, which on a loaded machine (the server's process loaded too) they may not within
    # 1 s: then the case runs again with a longer one.
    for timeout_s in (1, 5, 20):
        config = gemini_config(gemini_server)
        config["knowledge"] = {"host": chroma_server.host, "port": chroma_server.port, "timeout_s": timeout_s}
        config["backends"]["rag"] = {**config["backends"]["chat"], "kind": "rag", "collection": collection,
                                     "max_distance": None}
        config["policy"] = {"kind": "cascade", "rungs": [{"backend": "rag"}, {"backend": "chat"}]}
        semantic = {**config, "policy": {"kind": "semantic", "routes": {"rag": ["tides"]}, "default": "chat"}}
        try:
            router = Router.from_config(config)
        except BackendUnavailable:
            continue
        with router:
            try:
                ingest(router.resources.knowledge, docs, collection=collection)
            except BackendUnavailable:
                continue
            if router.generate("what about tides?").backend != "rag":  # connected while the server answers
                continue
            chroma_server.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
            try:
                with pytest.raises(BackendUnavailable) as built:  # hung for good: the client's first request
                    Router.from_config(semantic)
                fell = router.generate("what about tides?")
                with pytest.raises(BackendUnavailable) as queried:
                    asyncio.run(router.resources.knowledge.query(collection, "tides", kind="documents", k=1))
            finally:
                chroma_server.process.send_signal(signal.SIGCONT)
        break
    else:
        pytest.fail("the Chroma server never answered within 20 s")
    assert f"no answer in {timeout_s} s" in str(built.value) and chroma_server.host in str(built.value)
    assert fell.backend == "chat"  # the cascade fell through instead of hanging (or DeadlineExceeded)
    assert [(r.backend, r.error_type) for r in fell.decision.rungs_tried][0] == ("rag", "BackendUnavailable")
    assert chroma_server.host in str(queried.value)


async def test_chroma_rejections_are_usage_errors(knowledge: Knowledge, tmp_path: Path) -> None:
    store = knowledge.store()
    collection = knowledge.name("docs")
    await aingest(store, write_corpus(tmp_path / "docs", docs=4), collection=collection, chunk_tokens=30, overlap=6)
    with pytest.raises(UsageError) as err:  # 3-wide vectors into a 384-wide collection
        await store.upsert(collection, ["x"], ["text"], [{"source": "x"}], kind="documents",
                           embeddings=[[0.1, 0.2, 0.3]])
    assert type(err.value) is UsageError and "dimension" in str(err.value).lower()
    assert await store.count(collection, kind="documents") > 0


def minimal_pdf(pages: list[str]) -> bytes:
    """A valid PDF with one line of Helvetica text per page (no PDF writer needed)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>",
               f"<< /Type /Pages /Kids [{' '.join(f'{3 + 2 * i} 0 R' for i in range(len(pages)))}] "
               f"/Count {len(pages)} >>"]
    font = 3 + 2 * len(pages)
    for i, text in enumerate(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
                       f"/Resources << /Font << /F1 {font} 0 R >> >> >>")
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET"
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    out = b"%PDF-1.4\n"
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{n} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def test_pdf_pages_become_documents(tmp_path: Path) -> None:
    pytest.importorskip("pypdf", reason="PDF ingestion needs the pdf extra")
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(minimal_pdf(["The boiler pressure must stay under two bar.", "", "Bleed the radiators yearly."]))
    docs = list(read_documents(pdf))
    assert [(d.section, d.title) for d in docs] == [("page 1", "manual"), ("page 3", "manual")]
    assert "boiler pressure" in docs[0].text and "radiators" in docs[1].text
    assert expand_paths([tmp_path]) == [pdf]
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(UsageError) as err:
        list(read_documents(broken))
    assert err.value.field == "paths"


def test_a_missing_chroma_cli_fails_server_tests_when_required(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    from . import chroma_fixtures

    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # no `chroma` beside it
    monkeypatch.setenv("PATH", str(tmp_path))  # nor on PATH
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GENROUTE_REQUIRE_CHROMA_SERVER", raising=False)
    with pytest.raises(pytest.skip.Exception):
        chroma_fixtures._chroma_cli()
    for var, value in (("CI", "true"), ("GENROUTE_REQUIRE_CHROMA_SERVER", "1")):
        with monkeypatch.context() as env:
            env.setenv(var, value)
            with pytest.raises(pytest.fail.Exception, match="server mode is untested"):
                chroma_fixtures._chroma_cli()


@pytest.mark.chroma_server
async def test_a_write_through_localhost_is_seen_by_a_store_of_127_0_0_1(chroma_server: ChromaServer,
                                                                          tmp_path: Path) -> None:
    # The write stamp was keyed by the host as spelt: a store of "localhost" and one of "127.0.0.1" in one process
    # did not see each other's writes, so an ICL pool read whole through one was never read again after the other
    # wrote.
    by_name = build_store({"host": "localhost", "port": chroma_server.port}, engines={})
    by_address = build_store({"host": "127.0.0.1", "port": chroma_server.port}, engines={})
    collection = f"spelt-{os.getpid()}"
    before = by_address.written(collection)
    await aingest(by_name, write_corpus(tmp_path / "docs", docs=1), collection=collection, chunk_tokens=30, overlap=6)
    assert by_address.written(collection) == by_name.written(collection) != before
    assert build_store({"host": "LOCALHOST.", "port": chroma_server.port + 1}, engines={}).written(collection) == 0


# -- overlapping runs and path spellings -------------------------------------------------------

PAUSED_CHILD = """
import json, pathlib, sys, time
from genroute.knowledge import build_store, ingest
cfg, path, collection, go = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
def pause(n, done):
    print("written", flush=True)  # its chunks are in; it has not yet deleted the stale ones
    while not go.exists():
        time.sleep(0.02)
ingest(build_store(cfg, engines={}), [path], collection=collection, chunk_tokens=20, overlap=0, on_batch=pause)
print("finished", flush=True)
"""


def _version(n: int) -> str:
    kept = " ".join(f"Kept sentence {j} stays the same in every version of the file." for j in range(6))
    changed = " ".join(f"Version {n} sentence {j} exists only in version {n}." for j in range(6))
    return f"{kept}\n\n{changed}"


async def test_an_older_overlapping_ingest_never_deletes_a_newer_ones_chunks(knowledge: Knowledge,
                                                                             tmp_path: Path) -> None:
    """Run A (another process) reads v1 and writes; the file becomes v2 and run B ingests it whole; then A
    finishes. A must not delete B's chunks as stale (it did: the current file lost its new chunks)."""
    doc, go = tmp_path / "doc.txt", tmp_path / "go"
    doc.write_text(_version(1), encoding="utf-8")
    collection = knowledge.name("overlap")
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED_CHILD, json.dumps(knowledge.config), str(doc), collection, str(go)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "written", child.stderr.read() if child.stderr else ""
    doc.write_text(_version(2), encoding="utf-8")
    store = knowledge.store()
    await aingest(store, [doc], collection=collection, chunk_tokens=20, overlap=0)
    go.touch()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0 and "finished" in out, err
    stored = {h.id for h in await store.get_all(collection, kind="documents")}
    assert stored == expected_ids([doc], 20, 0)  # v2's chunks all there; v1's own chunks gone


async def test_one_file_is_one_source_however_its_path_is_spelled(knowledge: Knowledge, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    doc = corpus / "doc01.md"
    doc.write_text("# Doc\n\n" + _version(1), encoding="utf-8")
    (tmp_path / "link.md").symlink_to(doc)
    monkeypatch.chdir(tmp_path)
    store, collection = knowledge.store(), knowledge.name("spell")
    spellings = [Path("corpus/doc01.md"), doc.absolute(), Path("corpus/../corpus/doc01.md"), Path("link.md")]
    for spelling in spellings:
        await aingest(store, [spelling], collection=collection, chunk_tokens=20, overlap=0)
    report = await aingest(store, spellings, collection=collection, chunk_tokens=20, overlap=0)
    assert report.files == 1
    want = expected_ids([doc], 20, 0)
    assert {h.id for h in await store.get_all(collection, kind="documents")} == want
    doc.write_text("# Doc\n\n" + _version(2), encoding="utf-8")  # an edit under one spelling replaces it for all
    await aingest(store, [Path("link.md")], collection=collection, chunk_tokens=20, overlap=0)
    stored = await store.get_all(collection, kind="documents")
    assert {h.id for h in stored} == expected_ids([doc], 20, 0) != want
    assert {h.metadata["source"] for h in stored} == {str(doc.resolve())}


@pytest.mark.parametrize("name", [123, "my docs!", "ab", "-docs", "docs-", "a..b"])
def test_a_collection_name_chroma_would_refuse_is_a_usage_error(tmp_path: Path, name: Any) -> None:
    import asyncio

    (tmp_path / "a.txt").write_text("hello")
    store = build_store({"path": str(tmp_path / "kb")}, engines={})
    with pytest.raises(UsageError) as err:
        asyncio.run(aingest(store, [tmp_path / "a.txt"], collection=name))
    assert err.value.field == "collection"


def test_a_knowledge_path_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "kb"
    blocker.write_text("")
    with pytest.raises(ConfigError) as err:
        build_store({"path": str(blocker)}, engines={})
    assert err.value.field == "knowledge.path"
