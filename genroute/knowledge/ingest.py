"""Ingestion: files → documents → token-aware chunks → Chroma, idempotent and resumable.

Chunk ids are hashes of a chunk's source and text, and each batch is one Chroma upsert (written whole or not at
all), so a run killed half-way and run again ends with exactly one copy of every chunk. Chunks already stored are
skipped before embedding, which makes the re-run cheap as well as correct; chunks a re-ingested file no longer
produces are deleted after the new ones are in, and so are those of a file gone from a directory that is
re-ingested (deleted or renamed since).

A source is keyed by its resolved path (symlinks and ``..`` resolved, absolute), so one file is stored once
however it is spelled. Runs may overlap (two processes, or two machines on one ``chroma run`` server): each
chunk carries a generation stamp (``genroute.generation``: the wall-clock ns at which its file was read), and a
run deletes only stale chunks older than its own reading of that file. So a run that read the file before it
was edited can never delete the chunks of a run that read it after, whichever finishes first. A lock was the
other choice; Chroma has none, and a file lock would not reach other machines sharing a server, while stamped
deletes need nothing but Chroma. (If an older run's writes land after a newer run has finished, its leftover
chunks stay until the file is next ingested; nothing current is ever lost.)

A file whose chunks are stored just as this run reads them (every one there, none stale, metadata equal but for the
stamp) costs no write: a nightly re-ingest of a mostly unchanged corpus writes (and embeds) only for files that
changed. A changed file's kept chunks are restamped, as above. What an unchanged file skips is its stamp, so a run
that read the file before an edit could take chunks the unchanged run kept; such a run checks, before it deletes
anything of a file, that the file has not changed since it read it (modification time, size, inode), and leaves a
file that did to the next run (an edit landing in the instant between that check and the delete can still cost
chunks, which the file's next ingest puts back). A run stopped part-way leaves whole batches and stale chunks, never
records that look settled when they are not: the next run sees the difference and finishes the job.

A file settled as it is now (same bytes and settings, by its digest: ``file_digests``) is not even read: a re-run over
an unchanged corpus hashes its files and chunks and embeds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict

from genroute.errors import UsageError
from genroute.knowledge.chunking import Chunk, check_window, iter_chunks, stored_chunk_id, token_counter
from genroute.knowledge.collection_checks import check_collection_name
from genroute.knowledge.file_digests import (Settled, file_digest, mark_settled, settings_key, settled_files,
                                             unsettle)
from genroute.knowledge.records import (GENERATION, FileState, check_target, file_state, paid_writes,
                                        settle_sources, upsert_missing, withdraw_deleted)
from genroute.public_model import PublicModel

if TYPE_CHECKING:
    from genroute.knowledge.store import KnowledgeStore

_log = logging.getLogger(__name__)
#: Chunks cut between two looks at the event loop (a 6 MB file is ~10,000 chunks, cut in ~4 s).
_YIELD_EVERY = 64
TEXT_SUFFIXES = frozenset({".txt", ".text", ".rst"})
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PDF_SUFFIXES = frozenset({".pdf"})
SUFFIXES = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | JSONL_SUFFIXES | PDF_SUFFIXES
# Markdown lines end at \n, \r\n or a lone \r (CommonMark); a heading or fence is matched on a line without its end.
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)?")
_HEADING = re.compile(r"(#{1,6})[ \t]+(.+?)[ \t#]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


class IngestReport(PublicModel):
    """What an ingest run did."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    collection: str
    files: int
    documents: int
    chunks: int
    added: int
    skipped: int
    batches: int
    seconds: float
    removed: int = 0
    #: Files skipped as settled and unchanged since (same bytes, same settings): not chunked, not embedded.
    unchanged: int = 0
    #: What the run's embedding calls cost (0 for the offline embedder; Gemini embeddings are estimated).
    cost_usd: float = 0.0
    cost_estimated: bool = False

    @property
    def chunks_per_s(self) -> float:
        """Chunks handled per second (added and skipped)."""
        return self.chunks / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Document:
    """One document to chunk: its text (or a section of it) and metadata."""

    text: str
    source: str
    title: str | None = None
    doc_id: str | None = None
    section: str | None = None
    offset: int = 0


def expand_paths(paths: Sequence[str | Path], *, field: str = "paths", suffixes: frozenset[str] = SUFFIXES,
                 empty_dirs: bool = False) -> list[Path]:
    """Files named by ``paths`` (directories walked for ``suffixes``); missing, or a directory holding none of them
    unless ``empty_dirs`` (a re-ingest, which withdraws what the directory's files held), → ``UsageError``."""
    if isinstance(paths, str | Path):
        raise UsageError("pass a list of paths, not one path", field=field)
    if not isinstance(paths, Iterable):  # a number or None was a TypeError from `for`
        raise UsageError(f"pass a list of paths, not {type(paths).__name__}", field=field)
    if not paths:
        raise UsageError("no paths given", field=field)
    files: dict[Path, None] = {}  # resolved, each once, in the order given
    for raw in paths:
        if not isinstance(raw, str | os.PathLike):  # None or a number was a TypeError from pathlib
            raise UsageError(f"a path is text or a Path, not {type(raw).__name__}", field=field)
        path = Path(raw)
        if path.is_dir():
            found = _walk(path, suffixes)
            if not found and not empty_dirs:
                raise UsageError(f"{path} holds no {', '.join(sorted(suffixes))} files", field=field)
            files.update(dict.fromkeys(found))
        elif path.is_file():
            files[path.resolve()] = None
        else:
            raise UsageError(f"no such file or directory: {path}", field=field)
    return list(files)


def _walk(directory: Path, suffixes: frozenset[str]) -> list[Path]:
    """The ``suffixes`` files under ``directory``, resolved, sorted by the names found. The walk stays inside it:
    symbolic links to directories are not followed (no loops), and a link to a file outside it is skipped, with a
    warning (its records would name that file, which no re-ingest of the directory could withdraw once the link is
    gone); name such a file to ingest it."""
    root = directory.resolve()
    found = []
    for name in sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in suffixes):
        target = name.resolve()
        if target.is_relative_to(root):
            found.append(target)
        else:
            _log.warning("skipped %s: a link to %s, outside %s (name that file to ingest it)", name, target, directory)
    return found


def read_documents(path: Path, *, text_field: str = "text") -> Iterator[Document]:
    """The documents in one file: text, Markdown sections, JSONL records with ``text_field``, or PDF pages.

    Their ``source`` is the file's resolved path: however the file is named, it is one source. A text or Markdown
    document's ``offset`` (and its chunks' offsets) index the file's characters as they are: CRLF and BOM included; a
    JSONL record's and a PDF page's chunks index the record's text field and the page's extracted text.
    """
    path = path.resolve()
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        yield from _pdf_documents(path)
        return
    try:
        if suffix in JSONL_SUFFIXES:
            yield from _jsonl_documents(path, text_field)
            return
        # Bytes decoded as they are (no newline translation, BOM kept): chunk offsets index the file itself.
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text ({exc.reason})", field="paths") from None
    if suffix in MARKDOWN_SUFFIXES:
        yield from _markdown_documents(path, text)
    else:
        yield Document(text=text, source=str(path), title=path.stem)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[Document]:
    from genroute.jsonl import iter_records

    for lineno, record in iter_records(path, field="paths"):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise UsageError(f"{path}:{lineno}: record has no string field {text_field!r}", field="text_field")
        doc_id = record.get("id")
        title = record.get("title")
        yield Document(text=text, source=str(path), title=str(title) if title is not None else None,
                       doc_id=str(doc_id) if doc_id is not None else f"line {lineno}")


def _pdf_documents(path: Path) -> Iterator[Document]:
    """One document per page with text (``section`` = ``page N``); needs the ``pdf`` extra (pypdf)."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError:
        raise UsageError(f"{path}: reading PDF needs pypdf (pip install 'genroute[pdf]')", field="paths") from None
    try:
        reader = PdfReader(path)
        title = (reader.metadata.title if reader.metadata else None) or path.stem
        pages = [(n, page.extract_text() or "") for n, page in enumerate(reader.pages, start=1)]
    except (PdfReadError, ValueError, KeyError) as exc:
        raise UsageError(f"{path} is not a readable PDF ({exc})", field="paths") from None
    for n, text in pages:
        if text.strip():
            yield Document(text=text, source=str(path), title=str(title), section=f"page {n}")


def _markdown_documents(path: Path, text: str) -> Iterator[Document]:
    """One document per heading section, titled by the first level-1 heading (else the file name); a ``#`` line in
    a fenced code block is code, not a heading."""
    headings = _headings(text)
    title = next((name for _, level, name in headings if level == 1), None) or path.stem
    bounds = [(0, None)] + [(start, name) for start, _, name in headings] + [(len(text), None)]
    for (start, section), (end, _) in zip(bounds, bounds[1:]):
        section_text = text[start:end]
        if section_text.strip():
            yield Document(text=section_text, source=str(path), title=title, section=section, offset=start)


def _headings(text: str) -> list[tuple[int, int, str]]:
    """``(offset, level, name)`` of each ATX heading of ``text``, skipping lines inside fenced code blocks."""
    found: list[tuple[int, int, str]] = []
    fence: str | None = None  # the open fence's marker (``` or ~~~, at least that long), if inside one
    for line in _LINE.finditer(text):
        content = line.group().rstrip("\r\n")
        if line.start() == 0:
            content = content.removeprefix("\ufeff")  # a BOM is not part of the first line's text
        marker = _FENCE.match(content)
        if fence is None:
            if marker:
                fence = marker.group(1)
            elif heading := _HEADING.fullmatch(content):
                found.append((line.start(), len(heading.group(1)), heading.group(2)))
        elif (marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence)
              and not content[marker.end():].strip()):
            fence = None  # a closing fence: same character, at least as long, nothing after it
    return found


def chunk_documents(docs: Iterator[Document], *, chunk_tokens: int,
                    overlap: int) -> Iterator[tuple[Chunk, dict[str, Any]]]:
    """Chunks of ``docs`` with their metadata (source, title, doc id, section, offsets)."""
    counter = token_counter()
    for doc in docs:
        for chunk in iter_chunks(doc.text, chunk_tokens=chunk_tokens, overlap=overlap, counter=counter,
                                base_offset=doc.offset):
            yield chunk, {"source": doc.source, "title": doc.title, "doc_id": doc.doc_id,
                          "section": doc.section, "start": chunk.start, "end": chunk.end, "tokens": chunk.tokens}


async def aingest(
    store: KnowledgeStore,
    paths: Sequence[str | Path],
    *,
    collection: str,
    chunk_tokens: int = 200,
    overlap: int = 40,
    text_field: str = "text",
    batch_size: int | None = None,
    progress: bool = False,
    on_batch: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Chunk ``paths`` into ``collection``: skip chunks already stored, upsert the rest batch by batch.

    Then drop the chunks an earlier run stored for these same sources that the files no longer produce (an
    edited file leaves no stale text behind, an emptied one no text at all), and the chunks of files that were
    under a directory of ``paths`` and are gone from it (deleted, or renamed). New chunks are written before old ones
    are removed, so a run killed part-way loses nothing, and a re-run finishes the job. Files that hold no text,
    with no stored chunks of theirs to remove either, are a ``UsageError`` (nothing written, no collection made).
    """
    started = time.perf_counter()
    check_target(store, on_batch)
    check_collection_name(collection, "collection")  # a list was a TypeError from `in`; refused before any read
    check_window(chunk_tokens, overlap)
    if not isinstance(text_field, str):
        raise UsageError(f"must be the name of a record's text field, not {text_field!r:.40}", field="text_field")
    await asyncio.to_thread(store.check_writable)  # before any file is read, not at the first write
    # A directory emptied since it was ingested is read as holding nothing, so its files' chunks are withdrawn.
    files = expand_paths(paths, empty_dirs=collection in await store.collections())
    _check_chunk_size(store, chunk_tokens)
    settings = settings_key(store, chunk_tokens=chunk_tokens, overlap=overlap, text_field=text_field)
    states: dict[str, FileState] = {}
    digests: dict[str, str] = {}
    for n, path in enumerate(files):
        if n % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep(0)  # a Ctrl-C is taken between files, not after the last is hashed
        states[str(path)] = file_state(path)  # before reading: an edit during the read shows as a change
        digests[str(path)] = file_digest(path, settings)
    unchanged = await settled_files(store, collection, digests)  # settled as they are now: not read again
    await unsettle(store, collection, [source for source in digests if source not in unchanged])
    chunks: dict[str, tuple[str, dict[str, Any]]] = {}
    generations: dict[str, int] = {}
    documents: dict[str, int] = {}
    for path in files:
        if str(path) in unchanged:
            continue
        # Every file read is settled, chunks or not: an emptied file's old chunks must go too.
        generations[str(path)] = generation = time.time_ns()
        docs = list(read_documents(path, text_field=text_field))
        documents[str(path)] = len(docs)
        for n, (chunk, meta) in enumerate(chunk_documents(iter(docs), chunk_tokens=chunk_tokens, overlap=overlap)):
            if n % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)  # where a Ctrl-C (a cancellation) is taken, not after the last file is cut
            # identical text twice in one file: stored once
            chunks.setdefault(stored_chunk_id(meta["source"], chunk.text), (chunk.text, {**meta, GENERATION: generation}))
    if not chunks and collection not in await store.collections():
        raise _no_text()  # nothing stored to withdraw: refused, and no collection is made
    added = batches = 0
    with paid_writes() as charges:  # what embedding the new chunks costs
        if chunks:
            added, batches = await upsert_missing(store, collection, chunks, kind="documents",
                                                  batch_size=batch_size, progress=progress, on_batch=on_batch)
        removed = await settle_sources(store, collection, generations, chunks, kind="documents", states=states)
        removed += await withdraw_deleted(store, collection, paths, files, kind="documents")
        await mark_settled(store, collection, _heads(chunks, documents, digests, states))
    if not chunks and not removed and not unchanged:
        raise _no_text()  # the files were empty before too: nothing changed
    total = len(chunks) + sum(s.chunks for s in unchanged.values())
    return IngestReport(collection=collection, files=len(files),
                        documents=sum(documents.values()) + sum(s.documents for s in unchanged.values()),
                        chunks=total, added=added, skipped=total - added, batches=batches, removed=removed,
                        unchanged=len(unchanged), seconds=time.perf_counter() - started, cost_usd=charges.cost_usd,
                        cost_estimated=charges.estimated)


def _heads(chunks: Mapping[str, tuple[str, dict[str, Any]]], documents: Mapping[str, int],
           digests: Mapping[str, str], states: Mapping[str, FileState]) -> dict[str, tuple[str, Settled]]:
    """Head id -> (digest, holds) of each file this run settled: read, its chunks stored, and unchanged since."""
    held: dict[str, list[str]] = {}
    for rid, (_, meta) in chunks.items():
        held.setdefault(meta["source"], []).append(rid)
    return {min(ids): (digests[source], Settled(documents[source], len(ids))) for source, ids in held.items()
            if file_state(source) == states[source]}


def _no_text() -> UsageError:
    return UsageError("the files hold no text to ingest", field="paths")


def ingest(store: KnowledgeStore, paths: Sequence[str | Path], *, collection: str, **kwargs: Any) -> IngestReport:
    """Sync twin of ``aingest``; refuses to run inside a running event loop."""
    from genroute.runtime.portal import run_sync

    return run_sync(aingest(store, paths, collection=collection, **kwargs), "ingest")


def _check_chunk_size(store: KnowledgeStore, chunk_tokens: int) -> None:
    # The embedder reads max_length positions including [CLS]/[SEP]; a couple of tokens past that
    # only go unembedded (the stored text stays whole), anything longer would be a silent loss.
    limit = store.embedder.max_length
    if limit is not None and chunk_tokens > limit:
        raise UsageError(f"{chunk_tokens} exceeds what the embedder reads ({limit} tokens); "
                         "the rest of each chunk would be ignored", field="chunk_tokens")
