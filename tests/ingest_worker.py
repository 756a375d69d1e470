"""``genroute ingest`` in a process of its own that tells the test when its second embedding batch starts and how that
batch's embedding ended (for the Ctrl-C test; the embedder itself is the real one).

    python -m tests.ingest_worker MARKS_DIR ingest PATH --collection NAME --config FILE ...
    -> MARKS_DIR/started once the second batch is being embedded; MARKS_DIR/ended: "finished" or "stopped"
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from genroute.cli import main
from genroute.knowledge.local_embedder import LocalEmbedder


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
    watch(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
