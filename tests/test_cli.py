"""The `genroute` command: generate against the loopback wire, ingest into embedded Chroma, typed errors."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from genroute.cli import main
from genroute.testing import Fault

from .conftest import gemini_config


def _write_config(tmp_path, server, **extra):
    config = {**gemini_config(server), **extra}
    path = tmp_path / "genroute.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_generate_prints_the_answer_and_json(tmp_path, gemini_server, capsys):
    path = _write_config(tmp_path, gemini_server)
    gemini_server.reply_text("Paris.", usage=(5, 2))
    assert main(["generate", "Capital of France?", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "Paris."
    gemini_server.reply_text("Lyon.", usage=(5, 2))
    assert main(["generate", "Second city?", "--config", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["text"] == "Lyon." and result["backend"] == "chat" and result["cost_usd"] > 0


@pytest.mark.parametrize("stream", [False, True])
def test_generate_trace_prints_the_spans_to_stderr(tmp_path, gemini_server, capsys, stream):
    # The command line configured no tracer provider: a user could not see a request's trace or where its cost
    # came from (the JSON's trace_id was null).
    path = _write_config(tmp_path, gemini_server)
    gemini_server.reply_text("Paris.", usage=(5, 2))
    argv = ["generate", "Capital of France?", "--config", str(path), "--json", "--trace"]
    assert main(argv + (["--stream"] if stream else [])) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)  # stdout stays one JSON document
    assert result["trace_id"] is not None
    assert "genroute.generate" in err and "generate_content gemini-2.5-flash" in err
    assert "input_tokens=5" in err and "output_tokens=2" in err
    # Each label says what it shows: it was the attribute's last word, `name=gcp.gemini amount=0.0000065`.
    assert "provider=gcp.gemini" in err and " name=" not in err and "amount=" not in err
    # gemini-2.5-flash: 5 x $0.30 + 2 x $2.50 a million tokens, in plain decimals (it read 6.5e-06, or with binary
    # noise such as 2.3199999999999998e-05)
    assert result["cost_usd"] == pytest.approx(6.5e-06) and err.count("cost_usd=0.0000065") == 2 and "e-0" not in err
    gemini_server.fault(Fault.status(400, message="bad request"))
    assert main(["generate", "x", "--config", str(path), "--trace"]) == 1
    err = capsys.readouterr().err  # a failed request's spans are printed too
    assert "genroute.generate" in err and "error=BackendRejected" in err


def test_generate_trace_shows_a_local_models_cloud_equivalent_cost(tmp_path, capsys):
    # The tree showed the provider's cost only, 0 for the local model: not what the same tokens cost on the cloud.
    config = {"engines": {"local": {"kind": "local", "n_threads": 1}},
              "backends": {"chat": {"kind": "prompt_template", "engine": "local", "model": "gemma-3-270m",
                                    "generation": {"max_output_tokens": 4}}},
              "policy": {"kind": "static", "backend": "chat"}}
    path = tmp_path / "genroute.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["generate", "Capital of France?", "--config", str(path), "--json", "--trace"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["cost_usd"] == 0 and result["cloud_equivalent_cost_usd"] > 0
    shown = f"{result['cloud_equivalent_cost_usd']:.10f}".rstrip("0")
    assert f"cloud_equivalent_usd={shown}" in err and "e-0" not in err and "cloud_model=" in err


def test_generate_stream(tmp_path, gemini_server, capsys):
    path = _write_config(tmp_path, gemini_server)
    gemini_server.reply_text("one two three", chunks=3)
    assert main(["generate", "count", "--config", str(path), "--stream"]) == 0
    assert capsys.readouterr().out.strip() == "one two three"


def test_generate_stream_json_prints_one_json_document(tmp_path, gemini_server, capsys):
    path = _write_config(tmp_path, gemini_server)
    gemini_server.reply_text("one two three", chunks=3)
    assert main(["generate", "count", "--config", str(path), "--stream", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # the streamed text came first, then the JSON
    assert result["text"] == "one two three" and result["time_to_first_token_s"] is not None


def test_errors_exit_2_with_the_field(tmp_path, gemini_server, capsys):
    path = _write_config(tmp_path, gemini_server)
    assert main(["generate", "hi", "--config", str(path), "--backend", "ghost"]) == 2
    assert "backend" in capsys.readouterr().err
    assert main(["generate", "hi", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "--config: config file" in capsys.readouterr().err
    assert main(["generate", "hi", "--config", str(path), "--var", "=x"]) == 2  # a variable needs a name
    assert "--var: expected NAME=VALUE, got '=x'" in capsys.readouterr().err
    assert main(["generate", "hi", "--config", str(path), "--backend", ""]) == 2  # it went to the policy
    assert "backend: unknown backend ''" in capsys.readouterr().err
    assert gemini_server.requests == []


def test_a_float_var_that_is_not_finite_exits_2_naming_it(tmp_path, gemini_server, capsys):
    # `--var t=nan` read as a float went into the prompt as "nan".
    config = gemini_config(gemini_server, template="{{ input }} {{ t }}", variables={"t": {"type": "float"}})
    path = _write_config(tmp_path, gemini_server, backends=config["backends"])
    for value in ("nan", "inf"):
        assert main(["generate", "hi", "--config", str(path), "--var", f"t={value}"]) == 2
        assert "variables.t: Input should be a finite number" in capsys.readouterr().err
    assert gemini_server.requests == []


def test_a_failure_at_run_time_exits_1_not_2(tmp_path, gemini_server, capsys):
    # 2 is for the caller's mistakes (nothing sent); a provider that keeps failing is no usage error.
    path = _write_config(tmp_path, gemini_server)
    gemini_server.fault(Fault.status(503), times=10)
    assert main(["generate", "hi", "--config", str(path)]) == 1
    assert "BackendUnavailable" in capsys.readouterr().err


def test_a_failed_generate_says_what_its_billed_attempts_cost(tmp_path, gemini_server, capsys):
    # Attempts that timed out were billed their input; the error line was all a user saw, and it said no cost.
    path = _write_config(tmp_path, gemini_server)
    config = yaml.safe_load(path.read_text())
    # 2 s: time for the attempt to be sent on a loaded machine (one cut before it was sent is rightly not billed).
    config["engines"]["gemini"].update(timeout_s=2.0, retry={"attempts": 1})
    path.write_text(yaml.safe_dump(config))
    gemini_server.fault(Fault.delay(5))
    assert main(["generate", "x" * 400, "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("genroute generate: error: BackendUnavailable: ")
    assert err.rstrip().endswith(f" (cost ${100 * 0.30 / 1e6:.6f}, estimated)")  # 400 characters: 100 tokens


def test_ingest_is_idempotent(tmp_path, gemini_server, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("# Title\n\nThe Nimbus Kettle has a warranty of 3 years.\n\n## Care\n\nDescale monthly.\n")
    path = _write_config(tmp_path, gemini_server, knowledge={"path": str(tmp_path / "chroma")})
    assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(path)]) == 0
    first = capsys.readouterr().out
    assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(path)]) == 0
    second = capsys.readouterr().out
    assert "added=2" in first and "added=0" in second and "skipped=2" in second


def test_a_commands_warnings_reach_stderr(tmp_path, gemini_server, capsys):
    # The library's logger has only a NullHandler: `genroute ingest` skipped a link to a file outside the directory
    # without the warning the README promises, and the same went for every other warning of a command.
    docs, outside = tmp_path / "docs", tmp_path / "outside"
    docs.mkdir()
    outside.mkdir()
    (docs / "a.md").write_text("# A\n\nThe Nimbus Kettle has a warranty of 3 years.\n")
    (outside / "secret.txt").write_text("not for this collection")
    (docs / "secret.txt").symlink_to(outside / "secret.txt")
    path = _write_config(tmp_path, gemini_server, knowledge={"path": str(tmp_path / "chroma")})
    assert main(["ingest", str(docs), "--collection", "handbook", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "added=1" in out
    assert f"genroute: warning: skipped {docs / 'secret.txt'}: a link to {(outside / 'secret.txt').resolve()}" in err
    import logging

    assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger("genroute").handlers)  # none left


def test_ingest_prints_its_report_alone_on_stdout_and_refuses_a_bad_name_before_making_a_store(
        tmp_path, gemini_server, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("The Nimbus Kettle has a warranty of 3 years.\n")
    store = tmp_path / "chroma"
    path = _write_config(tmp_path, gemini_server, knowledge={"path": str(store)})
    assert main(["ingest", str(doc), "--collection", "c", "--config", str(path)]) == 2
    assert "genroute ingest: error: --collection: " in capsys.readouterr().err  # the option, not ingest_paths' argument
    assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(path), "--chunk-tokens", "0"]) == 2
    assert "--chunk-tokens: must be at least 8" in capsys.readouterr().err
    examples = tmp_path / "shots.jsonl"
    examples.write_text('{"input": "hi", "output": "greeting"}\n')
    for option, value in (("--text-field", "question"), ("--chunk-tokens", "50"), ("--overlap", "0")):
        # Examples are stored whole: the option was ignored without a word.
        assert main(["ingest", str(examples), "--kind", "examples", "--collection", "shots", "--config", str(path),
                     option, value]) == 2
        assert f"genroute ingest: error: {option}: is for documents" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    bare = _write_config(tmp_path / "bare", gemini_server)  # no knowledge section at all
    assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(bare)]) == 2
    assert "knowledge: " in (err := capsys.readouterr().err) and "has no `knowledge` section" in err, err
    assert not store.exists()  # refused before the store was made
    assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(path)]) == 0
    out = capsys.readouterr().out  # `genroute ingest ... > report.txt`: the progress bar is not part of it
    assert out.startswith("collection='handbook' ") and out.count("\n") == 1, out
    seconds = re.search(r" seconds=(\S+) ", out)  # it read seconds=1.4413623190048384
    assert seconds and re.fullmatch(r"\d+\.\d{1,2}", seconds.group(1)), out


def test_ingest_draws_its_bar_on_a_terminal_only_and_not_with_quiet(tmp_path, gemini_server, monkeypatch):
    # `genroute ingest` had no --quiet (bench has one), and into a file or pipe printed its bar's final frame.
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    doc = tmp_path / "doc.md"
    doc.write_text("The Nimbus Kettle has a warranty of 3 years.\n")
    path = _write_config(tmp_path, gemini_server, knowledge={"path": str(tmp_path / "chroma")})
    for stderr, quiet, drawn in ((Terminal(), [], True), (Terminal(), ["--quiet"], False),
                                 (io.StringIO(), [], False)):
        monkeypatch.setattr(sys, "stderr", stderr)
        assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(path), *quiet]) == 0
        assert ("ingest handbook" in stderr.getvalue()) is drawn, (quiet, stderr.getvalue())


def test_a_store_path_under_home_is_in_the_home_directory(tmp_path, gemini_server, capsys, monkeypatch):
    # `knowledge: {path: ~/chroma}` made a directory named `~` in the working directory.
    doc = tmp_path / "doc.md"
    doc.write_text("The Nimbus Kettle has a warranty of 3 years.\n")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for config in (_write_config(tmp_path, gemini_server, knowledge={"path": "~/chroma"}),  # a file, and a dict
                   {**gemini_config(gemini_server), "knowledge": {"path": "~/chroma-dict"}}):
        if isinstance(config, dict):
            from genroute.knowledge.ingest_command import ingest_paths

            ingest_paths([str(doc)], "handbook", store_config=config["knowledge"], progress=False)
        else:
            assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(config)]) == 0
    assert (home / "chroma" / "chroma.sqlite3").is_file() and (home / "chroma-dict" / "chroma.sqlite3").is_file()
    assert list(work.iterdir()) == []


def test_ingest_builds_only_the_engine_its_embedder_uses(tmp_path, gemini_server, capsys, monkeypatch):
    # A Vertex engine without its project (a ConfigError when built) failed an ingest that uses no engine.
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    doc = tmp_path / "doc.md"
    doc.write_text("The Nimbus Kettle has a warranty of 3 years.\n")
    engines = {**gemini_config(gemini_server)["engines"], "vx": {"kind": "gemini", "vertex": {"location": "l"}}}
    path = _write_config(tmp_path, gemini_server, engines=engines, knowledge={"path": str(tmp_path / "chroma")})
    assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(path)]) == 0, capsys.readouterr().err
    typo = _write_config(tmp_path, gemini_server, knowledge={"path": str(tmp_path / "chroma"),
                                                             "embedder": {"kind": "gemini", "engine": "gemni"}})
    assert main(["ingest", str(doc), "--collection", "handbook", "--config", str(typo)]) == 2
    assert "knowledge.embedder.engine: unknown engine 'gemni' (known: gemini)" in capsys.readouterr().err


def test_ctrl_c_ends_the_command_with_one_line_not_a_traceback(tmp_path, gemini_server):
    path = _write_config(tmp_path, gemini_server)
    gemini_server.fault(Fault.delay(30))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    # A command inherits an ignored SIGINT (pytest started as a background job of a script: `pytest ... &`), and
    # Python then leaves Ctrl-C ignored, so the command answered after the delay with 0. A handled signal is reset
    # to the default across exec, so the command starts as it does at a terminal.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "genroute.cli", "generate", "hi", "--config", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    finally:
        signal.signal(signal.SIGINT, before)
    deadline = time.monotonic() + 120
    while not any(r.action == "generateContent" for r in gemini_server.requests):  # the command is waiting
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=60)
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines()[-1] == "genroute: interrupted" and "Traceback" not in err


def test_the_installed_command_imports_the_applications_tools_from_the_working_directory(tmp_path, gemini_server):
    # The console script's own directory, not the working directory, is first on sys.path: the README's
    # `tools: {get_weather: "myapp.tools:get_weather"}` failed with `genroute` and worked with `python -m`.
    app = tmp_path / "app"
    (app / "myapp_pf").mkdir(parents=True)
    (app / "myapp_pf" / "__init__.py").write_text("")
    (app / "myapp_pf" / "tools.py").write_text("def get_weather(city: str) -> str:\n    return 'sunny'\n")
    path = _write_config(app, gemini_server, tools={"get_weather": "myapp_pf.tools:get_weather"})
    script = tmp_path / "bin" / "genroute"  # what pip writes for the console script
    script.parent.mkdir()
    script.write_text("import sys\nfrom genroute_cli import main\nsys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    gemini_server.reply_text("Sunny.")
    proc = subprocess.run([sys.executable, str(script), "generate", "weather?", "--config", str(path)],
                          cwd=app, capture_output=True, text=True, env=env, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, "Sunny."), proc.stderr


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, gemini_server):
    # `genroute generate ... | head -1`: the pipe closes under a long answer; no BrokenPipeError traceback.
    path = _write_config(tmp_path, gemini_server)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    for options in ([], ["--stream"], ["--json"]):
        gemini_server.reply_text("many words " * 20_000, chunks=3)  # well past a pipe's 64 KiB buffer
        proc = subprocess.Popen([sys.executable, "-m", "genroute.cli", "generate", "hi", "--config", str(path),
                                 *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        proc.stdout.close()  # the reader is gone before the answer is written
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 141, (options, err)
        assert err == "", (options, err)


@pytest.mark.parametrize("command", [[], ["tune"], ["compile"], ["graduate"]])
def test_help_reads_without_rest_quoting(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exited.value.code == 0 and "usage: genroute" in out and "``" not in out


def test_demo_refuses_an_unusable_cache_dir_in_one_line(tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "afile"
    a_file.write_text("keep me")
    for bad in (a_file, a_file / "sub", Path("/sys/genroute-demo")):  # sysfs refuses new directories, even root's
        assert main(["demo", "--no-tune", "--cache-dir", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"genroute demo: error: --cache-dir: cannot use {bad} as a cache directory: ")
        assert err.count("\n") == 1
    assert a_file.read_text() == "keep me"
    monkeypatch.setenv("GENROUTE_CACHE_DIR", "/sys/genroute-cache")
    assert main(["demo", "--no-tune"]) == 2
    assert capsys.readouterr().err.startswith("genroute demo: error: GENROUTE_CACHE_DIR: cannot use /sys/")


# Run first in the command's process: the first import of the genroute package says so on stdout and waits there
# (for a Ctrl-C), so the signal arrives while the command is still loading, whatever the machine's speed.
_PARK_IN_FIRST_IMPORT = '''
import os, sys, time
class _Park:
    def find_spec(self, name, path=None, target=None):
        if name == "genroute":
            sys.meta_path.remove(self)
            os.write(1, b"loading\\n")
            end = time.monotonic() + 60
            while time.monotonic() < end:
                time.sleep(0.01)
        return None
sys.meta_path.insert(0, _Park())
'''


def test_ctrl_c_while_the_command_loads_ends_it_with_one_line_not_a_traceback(tmp_path, gemini_server):
    # What pip writes for the console script, from pyproject.toml's entry point: a Ctrl-C while it imported the
    # command's modules (the first ~30 ms) printed a KeyboardInterrupt traceback. (One during the interpreter's own
    # start-up or the script's first line, before any of genroute runs, is Python's to report.)
    import tomllib

    root = Path(__file__).resolve().parent.parent
    entry = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]["genroute"]
    module, function = entry.split(":")
    script = tmp_path / "genroute"
    script.write_text(_PARK_IN_FIRST_IMPORT + f"import sys\nfrom {module} import {function}\nsys.exit({function}())\n")
    path = _write_config(tmp_path, gemini_server)
    gemini_server.fault(Fault.delay(30))
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # not an inherited ignored SIGINT (see above)
    try:
        proc = subprocess.Popen([sys.executable, str(script), "generate", "hi", "--config", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(root)})
    finally:
        signal.signal(signal.SIGINT, before)
    assert proc.stdout is not None and proc.stdout.readline() == "loading\n", proc.communicate(timeout=60)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "genroute: interrupted", (out, err)


def test_bench_without_matplotlib_says_it_wrote_no_chart_instead_of_printing_none(tmp_path, gemini_server):
    """Without the bench extra (no matplotlib) `genroute bench` printed `Reports: .../report.md, .../report.html,
    None`; it now lists the reports it wrote and says why no pareto.png is among them."""
    path = _write_config(tmp_path, gemini_server)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"input": f"q{i}", "output": f"echo: q{i}"}) + "\n" for i in range(3)))
    out = tmp_path / "out"
    no_matplotlib = ("import sys; sys.modules['matplotlib'] = None; from genroute.cli import main; "
                     "raise SystemExit(main(sys.argv[1:]))")
    proc = subprocess.run(
        [sys.executable, "-c", no_matplotlib, "bench", str(data), "--config", str(path), "--backends", "chat",
         "--out", str(out), "--quiet", "--no-compile"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("Reports: "))
    assert "None" not in line and 'no pareto.png: charts need pip install "genroute[bench]"' in line, line
    assert (out / "report.md").is_file() and not (out / "pareto.png").exists()
    assert f"{out / 'report.md'}, {out / 'report.html'} (no pareto.png" in line


def test_ctrl_c_another_thread_takes_during_bench_ends_it_at_once(tmp_path, gemini_server):
    # `genroute bench` ran its loop with asyncio.run, which sets no wakeup fd: a Ctrl-C the kernel handed to another
    # thread (an embedding's, Chroma's) was handled only once the loop woke for something else, here the held
    # answer 60 s later. bench now runs through run_sync, as ingest and generate do. The signal is sent to a thread
    # of the command's own once the command waits for its first answer.
    path = _write_config(tmp_path, gemini_server)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"input": f"q{i}", "output": f"echo: q{i}"}) + "\n" for i in range(3)))
    go = tmp_path / "go"
    command = ("import signal, sys, threading, time\n"
               "from pathlib import Path\n"
               "from genroute.cli import main\n"
               "def elsewhere():\n"
               f"    while not Path({str(go)!r}).exists():\n"
               "        time.sleep(0.05)\n"
               "    signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # this thread, not the main one\n"
               "threading.Thread(target=elsewhere, daemon=True).start()\n"
               "raise SystemExit(main(sys.argv[1:]))\n")
    gemini_server.fault(Fault.delay(60))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # not an inherited ignored SIGINT (see above)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", command, "bench", str(data), "--config", str(path), "--backends", "chat", "--out",
             str(tmp_path / "out"), "--quiet", "--no-compile", "--concurrency", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    finally:
        signal.signal(signal.SIGINT, before)
    deadline = time.monotonic() + 120
    while not any("enerateContent" in r.action for r in gemini_server.requests):  # the command waits
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=60)
        time.sleep(0.05)
    go.touch()
    out, err = proc.communicate(timeout=50)  # the held answer comes at 60 s: ending before it is the Ctrl-C's doing
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "genroute: interrupted", (out, err)


async def test_bench_and_the_demo_inside_a_running_loop_say_what_to_do_there(tmp_path, gemini_server, capsys):
    # Through run_sync (e49dc26), both named an API that does not exist ("await agenroute bench() instead"), and
    # only after the router was built (bench left it open) or the demo's adapter trained and its model loaded.
    from genroute.demo import run_demo
    from genroute.errors import UsageError

    path = _write_config(tmp_path, gemini_server)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"input": "q", "output": "a"}) + "\n")
    assert main(["bench", str(data), "--config", str(path), "--backends", "chat", "--out", str(tmp_path / "out"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "run_bench_cli() is synchronous" in err and "await genroute.bench.abench(router, data, ...)" in err, err
    with pytest.raises(UsageError, match=r"run_demo\(\) is synchronous .* run `genroute demo` in a terminal"):
        run_demo(cache_dir=str(tmp_path / "demo"), tune=False)
    assert not (tmp_path / "demo").exists()  # refused before anything was made


def test_version_prints_the_installed_packages_version(capsys):
    # There was no --version: "genroute: error: the following arguments are required: command".
    from importlib.metadata import version

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"genroute {version('genroute')}\n"


def test_generate_trace_shows_the_policy_s_reason_each_rung_tried_and_each_retry(tmp_path, gemini_server, capsys,
                                                                                 monkeypatch):
    # The tree showed the backend and the policy only: not why, nor the rung a validator refused, nor the 503 that
    # was retried (the call's span just took longer).
    config = gemini_config(gemini_server)
    config["backends"]["pro"] = {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-pro"}
    config["policy"] = {"kind": "cascade", "rungs": [{"backend": "chat", "validators": ["regex:^(yes|no)$"]},
                                                     {"backend": "pro"}]}
    path = tmp_path / "genroute.yaml"
    path.write_text(yaml.safe_dump(config))
    gemini_server.fault(Fault.status(503))
    gemini_server.reply_text("maybe")
    gemini_server.reply_text("yes")
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps a line wider than the terminal
    assert main(["generate", "Is Paris in France?", "--config", str(path), "--trace"]) == 0
    err = capsys.readouterr().err
    assert "reason: cascade: chat[regex:^(yes|no)$] -> pro" in err
    assert ("genroute.rung backend=chat outcome=rejected_by_validator validator=regex:^(yes|no)$ "
            "error=ValidationFailed") in err
    assert "genroute.rung backend=pro outcome=ok" in err
    assert "genroute.retry attempt=1 error=BackendUnavailable status=503 wait_s=" in err
