"""Files a re-ingest skips: a settled file's content digest, with the settings it was chunked and embedded with, kept
on one of its records, so a run over an unchanged corpus hashes each file and chunks and embeds none of it.

The digest covers the file's path and bytes, ``chunk_tokens``, ``overlap``, ``text_field``, the embedder's fingerprint
and genroute's version (a release may chunk or read a file differently). It is written on the file's *head* (its
least chunk id), with how many documents and chunks the file holds, only once the file is settled (every chunk
stored, none stale, the file unchanged since it was read), so a run stopped part-way leaves no digest to trust and
the next run chunks the file again. A record kept when its file changes is restamped without it
(``records._Settling``), so a digest never outlives the content it names: a file edited back to an earlier text is
chunked again, not skipped. A file whose head is deleted from outside genroute is chunked again too; one whose other
chunks are deleted from outside it is not (its digest still stands): ingest into a collection only with genroute.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from genroute.knowledge.record_dirs import PAGE

if TYPE_CHECKING:
    from genroute.knowledge.store import KnowledgeStore

#: Metadata key of a file's digest, on its head record only ("" on a record that held one for an earlier text).
DIGEST = "genroute.digest"
#: Metadata key, on the head, of the documents and chunks the file holds ("D C"): what a skipped file reports.
HOLDS = "genroute.digest_holds"


@dataclass(frozen=True)
class Settled:
    """What a settled file holds: its documents and chunks."""

    documents: int
    chunks: int


def settings_key(store: KnowledgeStore, *, chunk_tokens: int, overlap: int, text_field: str) -> str:
    """What a file's chunks depend on besides its bytes."""
    from genroute import __version__

    return json.dumps({"chunk_tokens": chunk_tokens, "overlap": overlap, "text_field": text_field,
                       "embedder": store.embedder.fingerprint(), "genroute": __version__}, sort_keys=True)


def file_digest(path: Path, settings: str) -> str:
    """The digest of the file ``path`` (resolved) as chunked with ``settings``."""
    digest = hashlib.sha256(f"{settings}\0{path}\0".encode())
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def settled_files(store: KnowledgeStore, collection: str, digests: Mapping[str, str]) -> dict[str, Settled]:
    """Of the files ``digests`` names (source -> digest), those stored as settled with that very digest, and what
    they hold. One Chroma read a ``PAGE`` of files, returning each unchanged file's head only."""
    if not digests or collection not in await store.collections():
        return {}
    sources = {digest: source for source, digest in digests.items()}
    wanted = sorted(sources)
    found: dict[str, Settled] = {}
    for start in range(0, len(wanted), PAGE):
        where = {DIGEST: {"$in": wanted[start:start + PAGE]}}
        async for page in store.metadata_pages(collection, where, kind="documents", size=PAGE):
            for meta in page.values():
                source = sources.get(str(meta.get(DIGEST)))
                holds = str(meta.get(HOLDS, "")).split()
                if source is not None and meta.get("source") == source and len(holds) == 2:
                    found[source] = Settled(int(holds[0]), int(holds[1]))
    return found


async def unsettle(store: KnowledgeStore, collection: str, sources: list[str]) -> None:
    """Clear the digest of each of ``sources`` (files about to be chunked again) before any of their chunks is
    written: a run stopped part-way, over a file then edited back to the text the digest names, must not leave the
    next run skipping a file whose records are not that text's."""
    if not sources or collection not in await store.collections():
        return
    marked: list[str] = []
    for start in range(0, len(sources), PAGE):
        # Records without the key match too (Chroma's $ne): those of files stored before digests, read once.
        where = {"$and": [{"source": {"$in": sources[start:start + PAGE]}}, {DIGEST: {"$ne": ""}}]}
        async for page in store.metadata_pages(collection, where, kind="documents", size=PAGE):
            marked += [i for i, meta in page.items() if meta.get(DIGEST)]
    await store.update_metadatas(collection, marked, [{DIGEST: ""}] * len(marked), kind="documents")


async def mark_settled(store: KnowledgeStore, collection: str,
                       heads: Mapping[str, tuple[str, Settled]]) -> None:
    """Write each settled file's digest and what it holds on its head (head id -> (digest, holds))."""
    ids = sorted(heads)
    await store.update_metadatas(collection, ids, [{DIGEST: heads[i][0], HOLDS: _holds(heads[i][1])} for i in ids],
                                 kind="documents")


def _holds(settled: Settled) -> str:
    return f"{settled.documents} {settled.chunks}"
