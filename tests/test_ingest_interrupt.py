"""Ctrl-C during ``genroute ingest``: the command ends with one line and status 130 once the embedding under way
stops (at its next forward pass, not after the whole batch), or the chunking under way (not after the last file is
cut), nothing half-written, and a re-run finishes the job."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from genroute.knowledge import build_store
from genroute.testing import Fault, GeminiTestServer

from .conftest import gemini_config

REPO = Path(__file__).resolve().parent.parent
BATCH = 256  # the ingest's default batch: one Chroma upsert each


def _command(args: list[str]) -> list[str]:
    return [sys.executable, *args]


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "genroute.yaml"
    config.write_text(yaml.safe_dump({"engines": {}, "knowledge": {"path": str(tmp_path / "kb")},
                                      "backends": {"chat": {"kind": "prompt_template", "engine": "none",
                                                            "model": "m"}}}))
    return config


def _interrupted(marks: Path, mode: str, ingest: list[str]) -> tuple[str, str]:
    """Run the ingest (``tests.ingest_worker`` in ``mode``), Ctrl-C it once ``marks``/started appears (unless the
    worker takes one itself: ``embedding-thread``); its out, err."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # An inherited ignored SIGINT would stay ignored in the child (see test_cli's Ctrl-C test): start it handled.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(_command(["-m", "tests.ingest_worker", str(marks), mode, *ingest]), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, before)
    deadline = time.monotonic() + 300
    while mode != "embedding-thread" and not (marks / "started").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=60)
        time.sleep(0.01)
    if mode != "embedding-thread":
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "genroute: interrupted" and "Traceback" not in err, err
    return out, err


def _catalogue(tmp_path: Path) -> tuple[list[str], Path]:
    """The ingest of 2 batches and a bit, of chunks each one distinct (identical chunks are stored once), long enough
    that embedding a batch takes seconds (a batch embedded before the Ctrl-C was taken would be no test); and an
    empty directory for the worker's marks."""
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(f"Item {i} of the catalogue is the part numbered {i * 7919 % 10007}." for i in range(2300)))
    marks = tmp_path / "marks"
    marks.mkdir()
    return ["ingest", str(doc), "--collection", "docs", "--config", str(_config(tmp_path)), "--chunk-tokens", "64",
            "--overlap", "0"], marks


def test_ctrl_c_while_embedding_stops_the_batch_and_a_rerun_completes_the_collection(tmp_path: Path) -> None:
    kb = tmp_path / "kb"
    ingest, marks = _catalogue(tmp_path)
    _interrupted(marks, "embedding", ingest)  # once the first batch is written and the second is being embedded
    # Before, the worker thread embedded the whole batch of 256 (10-28 s on loaded cores) while the command waited.
    assert (marks / "ended").read_text() == "stopped"
    store = build_store({"path": str(kb)}, engines={})
    assert store.count_sync("docs", kind="documents") == BATCH  # the first batch whole, nothing of the second

    rerun = subprocess.run(_command(["-m", "genroute.cli", *ingest]), cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    report = dict(re.findall(r"(\w+)=(\d+)", rerun.stdout))
    chunks, added, skipped = int(report["chunks"]), int(report["added"]), int(report["skipped"])
    assert chunks > 2 * BATCH and (added, skipped) == (chunks - BATCH, BATCH)
    assert build_store({"path": str(kb)}, engines={}).count_sync("docs", kind="documents") == chunks


def test_ctrl_c_taken_by_the_embedding_thread_stops_the_batch_at_once(tmp_path: Path) -> None:
    # The kernel hands a process's SIGINT to any of its threads. Taken by the worker embedding the batch (or one of
    # Chroma's), Python ran asyncio's Ctrl-C handler only once the main thread ran again, and nothing woke its loop,
    # idle until the batch was embedded: the command stopped after the batch (here, the worker's 120 s wait), not at
    # the next pass.
    ingest, marks = _catalogue(tmp_path)
    _interrupted(marks, "embedding-thread", ingest)
    assert (marks / "ended").read_text() == "stopped"
    assert build_store({"path": str(tmp_path / "kb")}, engines={}).count_sync("docs", kind="documents") == BATCH


def test_ctrl_c_while_a_large_file_is_chunked_ends_the_command_there(tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(f"Item {i} of the catalogue is the part numbered {i * 7919 % 10007}." for i in range(60000)))
    marks = tmp_path / "marks"
    marks.mkdir()
    _interrupted(marks, "chunking", ["ingest", str(doc), "--collection", "docs", "--config", str(_config(tmp_path)),
                                     "--chunk-tokens", "16", "--overlap", "0"])
    # Before, every chunk of the file was cut (~70,000, some seconds) before the cancellation was taken.
    assert 0 < int((marks / "chunks").read_text()) < 10_000
    assert "docs" not in asyncio.run(build_store({"path": str(tmp_path / "kb")}, engines={}).collections())


def test_ctrl_c_while_gemini_embeds_a_batch_ends_the_command_without_waiting_for_the_answer(
        gemini_server: GeminiTestServer, tmp_path: Path) -> None:
    # The Gemini embedder's request is awaited, not run in a worker thread: a Ctrl-C cancels it where it is, so the
    # command ends without the answer (here held back 600 s, past the wait below), as the offline embedder stops
    # at its next forward pass.
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(f"Item {i} of the catalogue is the part numbered {i * 7919 % 10007}." for i in range(300)))
    config = tmp_path / "genroute.yaml"
    config.write_text(yaml.safe_dump({**gemini_config(gemini_server), "knowledge": {
        "path": str(tmp_path / "kb"), "embedder": {"kind": "gemini", "engine": "gemini", "dimension": 8}}}))
    ingest = ["-m", "genroute.cli", "ingest", str(doc), "--collection", "docs", "--config", str(config),
              "--chunk-tokens", "64", "--overlap", "0"]
    gemini_server.fault(Fault.delay(600))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in _interrupted
    try:
        proc = subprocess.Popen(_command(ingest), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, before)
    deadline = time.monotonic() + 300
    while not any(r.action == "batchEmbedContents" for r in gemini_server.requests):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=60)
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)  # well before the held answer
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "genroute: interrupted", (out, err)
    client = build_store({"path": str(tmp_path / "kb")}, engines={}).client()  # Chroma's own count: no embedder
    assert all(c.count() == 0 for c in client.list_collections())  # nothing of the batch written

    rerun = subprocess.run(_command(ingest), cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert int(dict(re.findall(r"(\w+)=(\d+)", rerun.stdout))["added"]) > 0
