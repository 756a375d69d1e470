"""A ``chroma run`` server killed in the middle of an ingest and started again on its data: the run fails as
``BackendUnavailable``, and the re-run completes the collection, every chunk once, none lost."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from genroute.errors import BackendUnavailable
from genroute.knowledge import aingest, build_store

from .chroma_fixtures import free_port, start_chroma, stop_chroma
from .test_knowledge import expected_ids

pytestmark = pytest.mark.chroma_server


async def test_a_server_killed_mid_ingest_and_restarted_is_completed_by_the_rerun(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = [corpus / f"f{n}.txt" for n in range(4)]
    for n, f in enumerate(files):
        f.write_text(" ".join(f"Sentence {i} of file {n} says part {i * 7919 % 10007} is blue." for i in range(60)),
                     encoding="utf-8")
    data, port, log = tmp_path / "data", free_port(), tmp_path / "chroma.log"
    process = start_chroma(data, port, log)
    try:
        config = {"host": "127.0.0.1", "port": port, "timeout_s": 10}

        def kill(batches: int, done: int) -> None:
            if batches == 2:  # two batches stored, then the server dies unflushed (SIGKILL)
                process.send_signal(signal.SIGKILL)
                process.wait()

        with pytest.raises(BackendUnavailable):
            await aingest(build_store(config, engines={}), [corpus], collection="docs", chunk_tokens=16, overlap=0,
                          batch_size=8, on_batch=kill)
        process = start_chroma(data, port, log)
        store = build_store(config, engines={})
        assert await store.count("docs", kind="documents") == 16  # both batches kept whole, nothing of the third
        report = await aingest(store, [corpus], collection="docs", chunk_tokens=16, overlap=0, batch_size=8)
        expected = expected_ids(files, 16, 0)
        assert (report.chunks, report.added, report.skipped) == (len(expected), len(expected) - 16, 16)
        ids = store.client().get_collection("docs").get(include=[])["ids"]
        assert len(ids) == len(expected) and set(ids) == expected  # every chunk once, none lost
        again = await aingest(store, [corpus], collection="docs", chunk_tokens=16, overlap=0, batch_size=8)
        assert (again.unchanged, again.added, again.removed) == (len(files), 0, 0)
    finally:
        stop_chroma(process)
