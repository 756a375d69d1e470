"""``genroute ingest`` in a process of its own that tells the Ctrl-C tests where it is (the chunker and the embedder
themselves are the real ones).

    python -m tests.ingest_worker MARKS_DIR embedding|embedding-thread|chunking ingest PATH --collection NAME ...
    embedding -> MARKS_DIR/started once the second batch is being embedded; MARKS_DIR/ended: "finished" or "stopped"
    embedding-thread -> as embedding, but the Ctrl-C is taken by the thread embedding the second batch, after its
                 first pass, with the loop idle (the kernel gives a process's SIGINT to any of its threads)
    chunking  -> MARKS_DIR/started once the first chunk is cut; MARKS_DIR/chunks: how many were cut in all
"""

from __future__ import annotations

import asyncio
import importlib
import signal
import sys
import threading
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


class _AfterFirstPass:
    """The embedder's stop event, read so that the batch's first pass runs and the second waits until the Ctrl-C has
    set it: on loaded cores the batch cannot end before the signal is handled, so the test does not race it, and the
    stop still lands between two passes of one batch. The wait ends after 120 s only so that a Ctrl-C the command
    never took shows as "finished" rather than as a hang. ``interrupt``: this thread takes the Ctrl-C before it
    waits."""

    def __init__(self, stop: threading.Event, *, interrupt: bool) -> None:
        self.stop, self.checks, self.interrupt = stop, 0, interrupt

    def is_set(self) -> bool:
        self.checks += 1
        if self.checks == 2:
            if self.interrupt:  # here, not on the main thread: only the loop's wakeup can get it handled
                signal.pthread_kill(threading.get_ident(), signal.SIGINT)
            self.stop.wait(120)
        return self.stop.is_set()

    def set(self) -> None:
        self.stop.set()


def watch(marks: Path, *, interrupt: bool = False) -> None:
    """Mark the second ``embed_array`` call's start and end on files in ``marks``; ``interrupt``: its thread takes a
    Ctrl-C (SIGINT) after its first pass."""
    embed_array = LocalEmbedder.embed_array
    calls = 0

    def watched(self: LocalEmbedder, texts: list[str], **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        second = calls == 2
        if second:
            (marks / "started").write_text("")
        outcome = "finished"
        if second and kwargs.get("stop") is not None:
            kwargs["stop"] = _AfterFirstPass(kwargs["stop"], interrupt=interrupt)
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
    if sys.argv[2].startswith("embedding"):
        watch(marks, interrupt=sys.argv[2] == "embedding-thread")
        sys.exit(main(sys.argv[3:]))
    cut = count_chunks(marks)
    try:
        sys.exit(main(sys.argv[3:]))
    finally:
        (marks / "chunks").write_text(str(cut[0]))
