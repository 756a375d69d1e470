"""Files genroute writes: captured text stays its owner's, and a link planted where a file is about to be written
(a shared output directory) makes genroute overwrite nothing else."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from genroute.graduation import export_tuning_set
from genroute.outcomes import OutcomeRecord, OutcomeStore, Side
from genroute.jsonl import write_jsonl as write_tuning_rows


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which a file made without a mode of its own is readable by everyone."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _records(n: int = 12) -> list[OutcomeRecord]:
    return [OutcomeRecord(input=f"customer {i} wrote: my card number is 4111-{i:04d}", output="positive",
                          metadata={"id": f"r{i}", "task": "t"}, outcomes={"icl": Side(score=1.0)})
            for i in range(n)]


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def test_exports_of_captured_text_are_readable_by_their_owner_only(tmp_path: Path, umask_022: None) -> None:
    # The store is 0600 because it holds what users typed; its exports were 0644, readable by every local user.
    store = OutcomeStore(tmp_path / "store" / "outcomes.db")
    store.upsert_many_sync(_records())
    assert _mode(tmp_path / "store" / "outcomes.db") == 0o600
    assert store.export_jsonl(tmp_path / "out" / "outcomes.jsonl") == 12
    tuning = export_tuning_set(_records(), "t", tmp_path / "tuning", min_examples=5)
    rows = write_tuning_rows(tmp_path / "tune" / "rows.jsonl",
                             [{"contents": [{"role": "user", "parts": [{"text": "my card number"}]}]}])
    for path in (tmp_path / "out" / "outcomes.jsonl", tuning.train_path, tuning.eval_path, rows):
        assert _mode(path) == 0o600, path
    store.close()


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    # The temporary file beside an export had a guessable name (.NAME.PID.tmp) and was opened following links: anyone
    # able to write in the output directory could point it at another of the user's files, which the export replaced.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("outcomes.jsonl", "rows.jsonl", "train.jsonl", "eval.jsonl"):
        (shared / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    store = OutcomeStore(tmp_path / "outcomes.db")
    store.upsert_many_sync(_records())
    store.export_jsonl(shared / "outcomes.jsonl")
    write_tuning_rows(shared / "rows.jsonl", [{"contents": []}])
    export_tuning_set(_records(), "t", shared, min_examples=5)
    store.close()
    assert victim.read_text() == "precious\n"
    lines = (shared / "outcomes.jsonl").read_text().splitlines()
    assert [json.loads(line)["metadata"]["id"] for line in lines] == [f"r{i}" for i in range(12)]
    assert not (shared / "rows.jsonl").is_symlink() and (shared / "rows.jsonl").read_text() == '{"contents": []}\n'


def test_a_learned_router_model_is_saved_past_a_planted_link(tmp_path: Path) -> None:
    import numpy as np

    from genroute.policies.router_models import RouterModel, fit

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / f".m.npz.{os.getpid()}.tmp").symlink_to(victim)
    x = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4, dtype=np.float32)
    scores = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    path = fit(x, scores, ["a", "b"], method="knn", k=2, cost=[0.01, 0.001]).save(tmp_path / "m.npz")
    assert victim.read_text() == "precious\n"
    assert RouterModel.load(path).backends == ["a", "b"]


def test_a_bench_rewriting_its_results_follows_no_planted_link(tmp_path: Path, umask_022: None) -> None:
    # A retried failure makes the results file be rewritten through results.jsonl.tmp, a fixed name: a link planted
    # there in a shared output directory made the rewrite land in another of the user's files.
    from genroute.bench.runner import Outcome, ResultsLog

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.jsonl.tmp").symlink_to(victim)
    log = ResultsLog(out)
    log.append(Outcome(backend="b", record_id="r1", ok=False, error_type="BackendRejected", scorer="exact"))
    log.append(Outcome(backend="b", record_id="r1", ok=True, score=1.0, scorer="exact"), replace=True)
    log.close()
    assert victim.read_text() == "precious\n"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["record_id"], r["ok"]) for r in rows] == [("r1", True)]
    assert _mode(out / "results.jsonl") == 0o600  # the mode it had (owner-only, as the appends made it)


def _bench_report(out: Path, request: pytest.FixtureRequest) -> list[str]:
    from genroute.bench import summarize, write_report
    from genroute.bench.runner import Outcome

    rows = [Outcome(backend="b", record_id=f"r{i}", ok=True, score=float(i % 2), cost_usd=0.001, latency_s=0.1,
                    scorer="exact") for i in range(4)]
    write_report(out, summarize(rows, n_boot=50))
    return ["report.md", "report.html", "summary.json", "pareto.png"]


def _bench_manifest(out: Path, request: pytest.FixtureRequest) -> list[str]:
    from genroute.bench.manifest import MANIFEST_FILE, RunManifest, check_and_write

    check_and_write(out, RunManifest(data="d.jsonl", data_sha256="0" * 16, scorer="exact", seed=0),
                    results=out / "results.jsonl")
    return [MANIFEST_FILE]


class _Embedder:
    """An embedder as CachedEmbedder takes one (``model``, ``embed_array``): a text's length and its vowels."""

    model = "lengths"

    def embed_array(self, texts: list[str]) -> Any:
        import numpy as np

        return np.array([[len(t), sum(c in "aeiou" for c in t)] for t in texts], dtype=np.float32)


def _embedding_cache(out: Path, request: pytest.FixtureRequest) -> list[str]:
    from genroute.bench.embedding_cache import CachedEmbedder

    cache = CachedEmbedder(_Embedder(), out)
    assert CachedEmbedder(_Embedder(), out).embed_array(["card lost"]).tolist() == [[9.0, 2.0]]
    return [cache.path.name]


def _graduation_decision(out: Path, request: pytest.FixtureRequest) -> list[str]:
    import yaml

    from genroute.cli import main as cli

    from .conftest import gemini_config

    cfg = gemini_config(request.getfixturevalue("gemini_server"))
    cfg["backends"]["lora"] = {**cfg["backends"]["chat"], "model": "gemini-2.5-flash-lite"}
    cfg["outcomes"] = {"path": str(out.parent / "outcomes.db")}
    (out.parent / "app.yaml").write_text(yaml.safe_dump(cfg))
    store = OutcomeStore(out.parent / "outcomes.db")
    store.upsert_many_sync([OutcomeRecord(input=f"q{i}", metadata={"id": f"r{i}", "task": "t", "served": "chat"},
                                          outcomes={"chat": Side(score=1.0, role="served"),
                                                    "lora": Side(score=float(i % 2), role="shadow")})
                            for i in range(6)])
    store.close()
    assert cli(["graduate", "--task", "t", "--config", str(out.parent / "app.yaml"), "--out", str(out), "--decide",
                "--challenger", "lora"]) == 0
    return ["decision.json"]


def _lora_adapter(out: Path, request: pytest.FixtureRequest) -> list[str]:
    import numpy as np

    pytest.importorskip("gguf", reason="the gguf package comes with the tune-local extra")
    from genroute.tuning.gguf_adapter import read_lora_adapter, write_lora_adapter

    pairs = {"model.layers.0.self_attn.q_proj": (np.ones((2, 8)), np.zeros((4, 2)))}
    path = write_lora_adapter(out / "adapter.gguf", pairs, alpha=4.0)
    assert len(read_lora_adapter(path)[1]) == 2
    return ["adapter.gguf"]


WRITERS = {"bench report": _bench_report, "bench manifest": _bench_manifest, "embedding cache": _embedding_cache,
           "graduation decision": _graduation_decision, "LoRA adapter": _lora_adapter}


@pytest.mark.parametrize("writer", WRITERS)
def test_writers_into_a_chosen_directory_follow_no_planted_link(writer: str, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    # These wrote their file by name (write_text, matplotlib's savefig, gguf's writer), or through a temporary file
    # of a guessable name (.NAME.PID.tmp) opened following links: a link planted at either name in a shared output
    # directory made genroute overwrite another of the user's files. A link at the file itself is now replaced.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "shared"
    out.mkdir()
    planted = ["report.md", "report.html", "summary.json", "pareto.png", "run.json", "decision.json", "adapter.gguf",
               ".adapter.gguf.{pid}.tmp", ".embeddings-lengths-{digest}.v2.tsv.{pid}.tmp"]
    from genroute.bench.embedding_cache import CachedEmbedder

    digest = CachedEmbedder(_Embedder(), out).path.name.split("-")[2].split(".")[0]
    for name in planted:
        (out / name.format(pid=os.getpid(), digest=digest)).symlink_to(victim)
    # A link to a file not there yet: made where it points (a manifest is read first, so an existing one is refused).
    (out / "run.json").unlink()
    (out / "run.json").symlink_to(tmp_path / "bashrc")
    written = WRITERS[writer](out, request)
    assert victim.read_text() == "precious\n" and not (tmp_path / "bashrc").exists()
    for name in written:
        assert (out / name).is_file() and not (out / name).is_symlink(), name
        assert (out / name).stat().st_size > 0, name
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert leftovers == []


def test_a_rewritten_config_keeps_its_mode_and_its_commented_copy_is_the_owners(tmp_path: Path,
                                                                                umask_022: None) -> None:
    # genroute graduate rewrites the user's config through the one atomic write: the mode the user gave it stays (a
    # 0640 config is not made 0644), and the commented copy it keeps, a new file, may hold a key: owner only.
    from genroute.tuning.config_file import write_config

    config = tmp_path / "app.yaml"
    config.write_text("# why: the 2025 eval\npolicy: {kind: static, backend: chat}\n")
    config.chmod(0o640)
    (tmp_path / f".app.yaml.{os.getpid()}.tmp").symlink_to(tmp_path / "victim.txt")
    write_config(config, {"policy": {"kind": "static", "backend": "pro"}})
    assert "pro" in config.read_text() and _mode(config) == 0o640
    assert _mode(tmp_path / "app.yaml.bak") == 0o600 and "why" in (tmp_path / "app.yaml.bak").read_text()
    assert not (tmp_path / "victim.txt").exists()


@pytest.mark.parametrize("name", ["app.yaml", "app.json"])
def test_a_config_rewritten_in_place_of_a_planted_link_is_the_owners_only_as_a_new_one(name: str, tmp_path: Path,
                                                                                      umask_022: None) -> None:
    # A new config is written 0600 (it may hold a key); one written where a link stood, planted in a shared directory
    # to a file all may read (the user's ~/.bashrc), came out 0644: path.exists() followed the link, so the write was
    # not taken as a new file, and the mode to keep was read through the link from its target.
    from genroute.tuning.config_file import write_config

    raw = {"policy": {"kind": "static", "backend": "pro"}}
    bashrc = tmp_path / "bashrc"
    bashrc.write_text("export PATH\n")
    bashrc.chmod(0o644)
    new, planted = tmp_path / "new" / name, tmp_path / "shared" / name
    new.parent.mkdir()
    planted.parent.mkdir()
    planted.symlink_to(bashrc)
    write_config(new, raw)
    write_config(planted, raw)
    assert not planted.is_symlink() and "pro" in planted.read_text() and bashrc.read_text() == "export PATH\n"
    assert (oct(_mode(planted)), oct(_mode(new))) == (oct(0o600), oct(0o600))


@pytest.mark.parametrize("writer", ["atomic_write_bytes", "atomic_write_via"])
def test_a_private_file_written_in_place_of_a_planted_hard_link_is_the_owners_only(writer: str, tmp_path: Path,
                                                                                  umask_022: None) -> None:
    # The mode to keep is read with lstat since 98adba9, so a symbolic link planted at the name gives none; a hard
    # link planted there (where fs.protected_hardlinks is 0) to one of the user's own files that all may read
    # (~/.bashrc) is a regular file of theirs to lstat, and a private write kept its 0644.
    from genroute.cache import atomic_write_bytes, atomic_write_via

    bashrc = tmp_path / "bashrc"
    bashrc.write_text("export PATH\n")
    bashrc.chmod(0o644)
    planted = tmp_path / "shared" / "app.yaml"
    planted.parent.mkdir()
    os.link(bashrc, planted)
    if writer == "atomic_write_bytes":
        atomic_write_bytes(planted, b"key: secret\n", private=True, same_mode=True)
    else:
        atomic_write_via(planted, lambda tmp: tmp.write_bytes(b"key: secret\n"), private=True, same_mode=True)
    assert planted.read_text() == "key: secret\n" and bashrc.read_text() == "export PATH\n"
    assert (oct(_mode(planted)), oct(_mode(bashrc))) == (oct(0o600), oct(0o644))


def test_a_kept_mode_is_the_replaced_files_own_permission_bits(tmp_path: Path, umask_022: None) -> None:
    # same_mode copied every mode bit of whatever stood at the path, following a link: a set-id bit came along (the
    # mkstemp it replaced kept rwx only), and a link planted at results.jsonl (or a config) to a file of another
    # user's that anyone may write made the file genroute wrote there 0666, its captured rows open to every user.
    from genroute.cache import atomic_write_bytes

    own = tmp_path / "results.jsonl"
    own.write_text("{}\n")
    own.chmod(0o4750)
    atomic_write_bytes(own, b"new\n", same_mode=True)
    assert own.read_text() == "new\n" and _mode(own) == 0o750
    if os.geteuid() != 0:
        pytest.skip("a file of another user's is made by root here")
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("x\n")
    theirs.chmod(0o666)
    os.chown(theirs, 65534, 65534)
    planted = tmp_path / "shared" / "results.jsonl"
    planted.parent.mkdir()
    planted.symlink_to(theirs)
    atomic_write_bytes(planted, b"rows\n", same_mode=True)
    assert not planted.is_symlink() and _mode(planted) == 0o644 and theirs.read_text() == "x\n"


def test_a_rerun_keeps_the_mode_the_user_gave_its_report_files(tmp_path: Path, umask_022: None,
                                                               request: pytest.FixtureRequest) -> None:
    # write_text rewrote report.md, report.html, summary.json, run.json and the chart in place, so a report the user
    # made 0600 (it quotes answers to their records) stayed so on a rerun; the link-safe writes of 3d74681 replaced
    # each with a new file under the umask: 0644, readable by every local user. They keep the mode, as a rerun's
    # results.jsonl does.
    out = tmp_path / "out"
    out.mkdir()
    names = _bench_report(out, request) + _bench_manifest(out, request)
    for name in names:
        (out / name).chmod(0o600)
    _bench_report(out, request)
    _bench_manifest(out, request)
    assert {name: oct(_mode(out / name)) for name in names} == {name: oct(0o600) for name in names}
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _bench_report(fresh, request)
    # New files: the reports, which may quote records, their owner's only; the figures the umask's, as before.
    assert {name: oct(_mode(fresh / name)) for name in ("report.md", "report.html", "summary.json")} == {
        "report.md": oct(0o600), "report.html": oct(0o600), "summary.json": oct(0o644)}


@pytest.mark.parametrize("target", ["missing", "existing"])
def test_a_link_planted_at_results_jsonl_is_refused_not_written_through(target: str, tmp_path: Path) -> None:
    # The rewrite of results.jsonl went past a planted link (9839b2c), but a bench's own appends did not: a link at
    # results.jsonl to a file not there yet made the run's rows (answers to the user's records) a file wherever
    # the link pointed, and one to an existing file without a final newline had that file's last line cut off.
    from genroute.bench.runner import Outcome, ResultsLog
    from genroute.errors import UsageError

    out = tmp_path / "shared"
    out.mkdir()
    victim = tmp_path / ("stolen.jsonl" if target == "missing" else "notes.txt")
    if target == "existing":
        victim.write_text("keep\nthis last line")
    (out / "results.jsonl").symlink_to(victim)
    with pytest.raises(UsageError) as refused:
        log = ResultsLog(out)
        log.append(Outcome(backend="b", record_id="r1", ok=True, score=1.0, scorer="exact"))
        log.close()
    assert refused.value.field == "out_dir" and "symbolic link" in refused.value.message
    assert not victim.exists() if target == "missing" else victim.read_text() == "keep\nthis last line"


def test_a_rerun_keeps_the_mode_the_user_gave_every_file_beside_its_report(tmp_path: Path, umask_022: None) -> None:
    # A rerun kept a 0600 report.md/report.html/summary.json 0600 (6eef08c), but the files beside them that hold the
    # same records were replaced under the umask, 0644 again: the bench's outcomes.jsonl (every record's input and
    # gold answer), and bench --outcomes' compiled.json, stats.json and cost_aware.json.
    from genroute.bench.datasets import BenchRecord
    from genroute.bench.matrix_export import export_matrix
    from genroute.bench.offline import compile_outcomes
    from genroute.bench.runner import Outcome

    from .test_bench_outcomes import synthetic, write_jsonl

    source = write_jsonl(tmp_path / "export.jsonl", synthetic(30))
    records = [BenchRecord(id=f"r{i}", input=f"customer {i} wrote: my card number is 4111-{i:04d}", output="yes")
               for i in range(3)]
    rows = [Outcome(backend="b", record_id=r.id, ok=True, score=1.0, cost_usd=0.001, latency_s=0.1, scorer="exact")
            for r in records]
    out = tmp_path / "out"
    out.mkdir()

    def run() -> None:
        compile_outcomes(source, out_dir=out, learned=False, min_n=10)
        export_matrix(rows, records, out)

    run()
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    assert {"outcomes.jsonl", "compiled.json", "stats.json", "cost_aware.json", "report.html"} <= set(written)
    for name in written:
        (out / name).chmod(0o600)
    run()
    assert {name: oct(_mode(out / name)) for name in written} == {name: oct(0o600) for name in written}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("reader", [False, True])
def test_a_fifo_planted_at_results_jsonl_is_refused_not_read_forever(reader: bool, tmp_path: Path) -> None:
    # open_unlinked refused a link at results.jsonl but opened whatever else was there: a named pipe planted in a
    # shared output directory made ResultsLog's first read block forever (no writer ever comes). With a reader
    # holding the pipe open (an attacker collecting the rows), the appends went into it.
    from genroute.bench.runner import Outcome, ResultsLog
    from genroute.errors import UsageError

    out = tmp_path / "shared"
    out.mkdir()
    fifo = out / "results.jsonl"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader else None
    try:
        with pytest.raises(UsageError) as refused:
            log = ResultsLog(out)
            log.append(Outcome(backend="b", record_id="r1", ok=True, score=1.0, scorer="exact"))
            log.close()
        assert refused.value.field == "out_dir" and "not a regular file" in refused.value.message
        if held is not None:
            assert os.read(held, 4096) == b""  # nothing reached whoever held the pipe
    finally:
        if held is not None:
            os.close(held)
