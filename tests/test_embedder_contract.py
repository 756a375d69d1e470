"""An embedder of one's own (an ``Embedder`` subclass given to a ``KnowledgeStore``) that answers other than one
``dimension``-wide vector per text, in order: a ``ConfigError`` naming ``knowledge.embedder`` and the embedder's class,
before Chroma sees the vectors (real embedded Chroma)."""

from __future__ import annotations

from pathlib import Path

import pytest

from genroute.errors import ConfigError
from genroute.knowledge import KnowledgeStore, StoreConfig, ingest
from genroute.knowledge.embedder_base import Embedder


class Sized(Embedder):
    """Claims ``dimension`` 4; answers ``count`` vectors (None: one per text), each ``width`` wide."""

    model = "sized-1"
    provider = "test"
    dimension = 4

    def __init__(self, width: int = 4, count: int | None = None) -> None:
        self.width, self.count = width, count

    @staticmethod
    def name() -> str:
        return "sized"

    async def aembed(self, texts: list[str], *, tracer: object = None) -> list[list[float]]:
        count = len(texts) if self.count is None else self.count
        return [[1.0 + n] * self.width for n in range(count)]


def _docs(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "a.md", tmp_path / "b.md"]
    paths[0].write_text("Paris is the capital of France.")
    paths[1].write_text("Berlin is the capital of Germany.")
    return paths


@pytest.mark.parametrize(("embedder", "says"), [
    # Taken, then recorded as 4 wide: its queries failed later with Chroma's "expecting embedding with dimension".
    (Sized(width=6), "answered text 0 with a vector 6 wide, not its dimension 4"),
    # Chroma's "Unequal lengths for fields", a UsageError naming no field.
    (Sized(count=1), "answered 2 texts with 1 vectors"),
])
def test_an_embedder_answering_other_vectors_than_it_declares_is_a_config_error(tmp_path, embedder, says) -> None:
    store = KnowledgeStore(StoreConfig(path=tmp_path / "chroma"), embedder=embedder)
    with pytest.raises(ConfigError) as err:
        ingest(store, _docs(tmp_path), collection="docs")
    assert err.value.field == "knowledge.embedder"
    assert says in err.value.message and "test_embedder_contract.Sized" in err.value.message


def test_a_query_embedded_other_than_declared_is_a_config_error_naming_the_embedder(tmp_path) -> None:
    import asyncio

    ingest(KnowledgeStore(StoreConfig(path=tmp_path / "chroma"), embedder=Sized()), _docs(tmp_path), collection="docs")
    wide = KnowledgeStore(StoreConfig(path=tmp_path / "chroma"), embedder=Sized(width=6))
    with pytest.raises(ConfigError) as err:  # was Chroma's InvalidArgument as a UsageError naming no field
        asyncio.run(wide.query("docs", "capital", kind="documents", k=1))
    assert err.value.field == "knowledge.embedder" and "vector 6 wide" in err.value.message
    assert Sized().embed(["a", "b"]) == [[1.0] * 4, [2.0] * 4]  # the sync twin answers as aembed does
    with pytest.raises(ConfigError, match="answered 2 texts with 1 vectors"):
        Sized(count=1).embed(["a", "b"])
