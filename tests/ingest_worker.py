"""``genroute ingest`` in a process of its own that tells the Ctrl-C tests where it is (the chunker and the embedder
themselves are the real ones).

    python -m tests.ingest_worker MARKS_DIR embedding|chunking ingest PATH --collection NAME --config FILE ...
    embedding -> MARKS_DIR/started once the second batch is being embedded; MARKS_DIR/ended: "finished" or "stopped"
    chunking  -> MARKS_DIR/started once the first chunk is cut; MARKS_DIR/chunks: how many were cut in all
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Any

from genroute.cli import main
from genroute.knowledge.local_embedder import LocalEmbedder

ingest = importlib.import_module("genroute.knowledge.ingest")  # the package's ``ingest`` is the function


def count_chunks(marks: Path) -> list[int]:
    """Mark the first chunk the ingest cuts on ``marks``/started; the returned list counts them."""
    chunk_documents = ingest.chunk_documents
    cut = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        for item in chunk_documents(*args, **kwargs):
            cut[0] += 1
            if cut[0] == 1:
                (marks / "started").write_text("")
            yield item

    ingest.chunk_documents = counted  # type: ignore[assignment]
    return cut


def watch(marks: Path) -> None:
    """Mark the second ``embed_array`` call's start and end on files in ``marks``."""
    embed_array = LocalEmbedder.embed_array
    calls = 0

    def watched(self: LocalEmbedder, texts: list[str], **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        second = calls == 2
        if second:
            (marks / "started").write_text("")
        outcome = "finished"
        try:
            return embed_array(self, texts, **kwargs)
        except asyncio.CancelledError:
            outcome = "stopped"
            raise
        finally:
            if second:
                (marks / "ended").write_text(outcome)

    LocalEmbedder.embed_array = watched  # type: ignore[method-assign]


if __name__ == "__main__":
    marks = Path(sys.argv[1])
    if sys.argv[2] == "embedding":
        watch(marks)
        sys.exit(main(sys.argv[3:]))
    cut = count_chunks(marks)
    try:
        sys.exit(main(sys.argv[3:]))
    finally:
        (marks / "chunks").write_text(str(cut[0]))
