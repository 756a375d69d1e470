"""The benchmark's embedding cache on disk: appended to, not rewritten; torn lines, two writers, older and newer
formats."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from genroute.bench.embedding_cache import CachedEmbedder
from genroute.errors import UsageError


class Hashed:
    """A fixed vector per text (the cache's behaviour, not a model's, is under test); counts what it embeds."""

    model = "hashed-8"
    dimension = 8

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed_array(self, texts: list[str]) -> NDArray[Any]:
        self.embedded += texts
        return np.stack([vector(t) for t in texts])


def vector(text: str) -> NDArray[Any]:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).standard_normal(8).astype(np.float32)


def texts(n: int, prefix: str = "text") -> list[str]:
    return [f"{prefix} {i}" for i in range(n)]


def test_each_chunk_is_appended_not_the_whole_cache_rewritten(tmp_path: Path) -> None:
    # Each chunk rewrote the whole cache into a new file (os.replace): filling a cache of n texts wrote ~n²/2chunk
    # vectors. The file is now appended to: what an earlier chunk wrote stays where it was, in the same file.
    cache = CachedEmbedder(Hashed(), tmp_path, chunk=4)
    cache.embed_array(texts(4))
    before, inode = cache.path.read_bytes(), cache.path.stat().st_ino
    cache.embed_array(texts(12))
    after = cache.path.read_bytes()
    assert cache.path.stat().st_ino == inode and after.startswith(before) and len(after.splitlines()) == 1 + 12
    again = Hashed()
    assert np.array_equal(CachedEmbedder(again, tmp_path).embed_array(texts(12)), np.stack([vector(t) for t in
                                                                                            texts(12)]))
    assert again.embedded == []


def test_a_torn_last_line_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    cache = CachedEmbedder(Hashed(), tmp_path, chunk=3)
    cache.embed_array(texts(6))
    whole = cache.path.read_bytes()
    with cache.path.open("ab") as fh:  # a process killed in the middle of its next chunk's write
        fh.write(whole.splitlines(keepends=True)[-1][:40])
    reader = Hashed()
    reopened = CachedEmbedder(reader, tmp_path, chunk=3)
    assert np.array_equal(reopened.embed_array(texts(6)), np.stack([vector(t) for t in texts(6)]))
    assert reader.embedded == []
    # The next chunk goes on a line of its own: the torn one stays one line, skipped; nothing else is lost.
    reopened.embed_array(texts(8))
    third = Hashed()
    assert np.array_equal(CachedEmbedder(third, tmp_path).embed_array(texts(8)),
                          np.stack([vector(t) for t in texts(8)]))
    assert third.embedded == []


def test_two_processes_filling_one_cache_do_not_corrupt_it(tmp_path: Path) -> None:
    script = tmp_path / "fill.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_embedding_cache import Hashed, texts
        from genroute.bench.embedding_cache import CachedEmbedder
        cache = CachedEmbedder(Hashed(), sys.argv[1], chunk=7)
        for start in range(0, 400, 20):  # many small appends, overlapping the other process's texts
            cache.embed_array(texts(400)[start:start + 20] + texts(60, sys.argv[2])[start // 20::20])
    """), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"), name], env=env)
             for name in ("a", "b")]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    reader = Hashed()
    cache = CachedEmbedder(reader, tmp_path / "cache")
    wanted = texts(400) + texts(60, "a") + texts(60, "b")
    assert np.array_equal(cache.embed_array(wanted), np.stack([vector(t) for t in wanted])) and reader.embedded == []
    lines = cache.path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(len(line.split(b"\t")) == 3 for line in lines[1:-1])  # every line whole


def test_a_format_1_cache_is_carried_over_and_a_later_format_refused(tmp_path: Path) -> None:
    old = CachedEmbedder(Hashed(), tmp_path).legacy_path
    np.savez(old, keys=np.array([CachedEmbedder.key(t) for t in texts(3)]),
             vectors=np.stack([vector(t) for t in texts(3)]))
    embedder = Hashed()
    assert np.array_equal(CachedEmbedder(embedder, tmp_path).embed_array(texts(3)),
                          np.stack([vector(t) for t in texts(3)]))
    assert embedder.embedded == [] and CachedEmbedder(Hashed(), tmp_path).path.exists()
    path = CachedEmbedder(Hashed(), tmp_path).path
    path.write_text(json.dumps({"genroute_embedding_cache": 3}) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as err:
        CachedEmbedder(Hashed(), tmp_path)
    assert err.value.field == "cache_dir" and "format 3" in err.value.message and str(path) in err.value.message
    for content in (b"", b"garbage\n", b'{"other": 2}\n'):
        path.write_bytes(content)
        with pytest.raises(UsageError) as err:
            CachedEmbedder(Hashed(), tmp_path)
        assert "is not an embedding cache genroute wrote" in err.value.message


def test_vectors_of_another_width_are_refused(tmp_path: Path) -> None:
    path = CachedEmbedder(Hashed(), tmp_path).path
    narrow = Hashed()
    narrow.dimension = 4  # type: ignore[misc]
    CachedEmbedder(Hashed(), tmp_path).embed_array(["x"])
    with pytest.raises(UsageError) as err:
        CachedEmbedder(narrow, tmp_path)
    assert "8 wide, not hashed-8's 4-wide" in err.value.message and str(path) in err.value.message


class Wide(Hashed):
    """``Hashed`` at another width: 6 floats encode to base64 with no padding, 7 with "==", 8 with "="."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dimension = width  # type: ignore[misc]
        self.model = f"hashed-{width}"  # type: ignore[misc]

    def embed_array(self, texts: list[str]) -> NDArray[Any]:
        self.embedded += texts
        return np.stack([np.resize(vector(t), self.dimension) for t in texts])


@pytest.mark.parametrize("width", [6, 7, 8, 384])
def test_a_warm_read_decodes_every_whole_line_and_skips_the_rest(tmp_path: Path, width: int) -> None:
    # The warm read decodes the lines together (an array of lines of one length), and reads the others one by
    # one: a torn line between two chunks, a line of the right length that is not base64 or has no tab where the
    # width goes, and a line whose key has a tab in it are skipped; every vector written is read back exactly.
    cache = CachedEmbedder(Wide(width), tmp_path, chunk=5)
    cache.embed_array(texts(12))
    lines = cache.path.read_bytes().splitlines(keepends=True)
    whole = lines[-1]
    with cache.path.open("ab") as fh:
        fh.write(whole[:len(whole) // 2])  # killed mid-write
    cache.embed_array(texts(20))  # fenced off by a newline, then the next chunk
    with cache.path.open("ab") as fh:
        fh.write(whole[:-6] + b"!" + whole[-5:])  # the right length, not base64
        fh.write(whole[:32] + b" " + whole[33:])  # the right length, no tab after the key
        fh.write(b"\t" + whole[1:])  # a tab in the key
    cache.embed_array(texts(26))
    reader = Wide(width)
    again = CachedEmbedder(reader, tmp_path, chunk=5)
    assert np.array_equal(again.embed_array(texts(26)), Wide(width).embed_array(texts(26)))
    assert reader.embedded == [] and len(again._vectors) == 26
    assert np.array_equal(again.embed_array(texts(27)), Wide(width).embed_array(texts(27)))
    assert reader.embedded == ["text 26"]


def test_a_link_planted_at_the_cache_file_is_refused_not_appended_through(tmp_path: Path) -> None:
    # The cache's reads and appends opened its file following a link at its own name: a link planted in a shared
    # cache directory to another embedding cache (someone else's, or any file with a genroute header) had this run's
    # vectors appended to that file.
    elsewhere = tmp_path / "elsewhere"
    victim = CachedEmbedder(Hashed(), elsewhere)
    victim.embed_array(texts(2))
    before = victim.path.read_bytes()
    shared = tmp_path / "shared"
    shared.mkdir()
    planted = shared / victim.path.name
    planted.symlink_to(victim.path)
    with pytest.raises(UsageError) as refused:
        CachedEmbedder(Hashed(), shared).embed_array(texts(4, "new"))
    assert refused.value.field == "cache_dir" and "symbolic link" in refused.value.message
    assert victim.path.read_bytes() == before
