"""Every `genroute <command>` reports a user error the same way: one line `genroute <command>: error: ...` on stderr
(as argparse reports a bad option), exit 2 for the caller's mistake and 1 for a failure at run time, no traceback and
no secret."""

from __future__ import annotations

import json
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from genroute.cli import main
from genroute.errors import ConfigError, UsageError

KEY = "AIzaSyTESTKEY0123456789abcdefghijklmnopq"
PASSWORD = "s3cret-state-pw"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _files(tmp: Path) -> dict[str, str]:
    """Config and data files the cases use: one that builds, one with a config error, one whose Redis is down."""
    port = _closed_port()
    good = {"engines": {"gemini": {"kind": "gemini", "base_url": f"http://127.0.0.1:{port}", "api_key": KEY,
                                   "retry": {"attempts": 1}}},
            "backends": {"chat": {"kind": "prompt_template", "engine": "gemini", "model": "gemini-2.5-flash"}},
            "policy": {"kind": "static", "backend": "chat"}}
    bad = {**good, "backends": {"chat": {**good["backends"]["chat"], "engine": "nosuch"}}}
    down = {**good, "breakers": {"failures": 5, "window_s": 60, "cooldown_s": 30},
            "state": {"kind": "redis", "url": f"redis://:{PASSWORD}@127.0.0.1:{port}/0", "on_error": "closed"}}
    files = {"good": good, "bad": bad, "down": down}
    for name, config in files.items():
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    (tmp / "data.jsonl").write_text('{"input": "q", "output": "a"}\n')
    (tmp / "afile").write_text("not a directory")
    return {name: str(tmp / f"{name}.yaml") for name in files} | {
        "data": str(tmp / "data.jsonl"), "missing": str(tmp / "missing.jsonl"), "afile": str(tmp / "afile"),
        "out": str(tmp / "out")}


# (command line, exit status, what follows "genroute <command>: error: "): every command, each kind of user error
# it can meet (a bad option value, argparse's or genroute's; a missing file; a config error; the state store down)
# and a failure at run time.
CASES: list[tuple[Callable[[dict[str, str]], list[str]], int, str]] = [
    (lambda f: ["demo", "--no-tune", "--cache-dir", f["afile"]], 2, "--cache-dir: "),
    (lambda f: ["generate", "hi", "--config", f["missing"]], 2, "--config: config file "),
    (lambda f: ["generate", "hi", "--config", f["bad"]], 2, "backends.chat.engine: unknown engine "),
    (lambda f: ["generate", "hi", "--config", f["good"], "--var", "novalue"], 2, "--var: "),
    (lambda f: ["generate", "hi", "--config", f["good"], "--nosuch"], 2, "unrecognized arguments: --nosuch"),
    (lambda f: ["generate", "hi", "--config", f["down"]], 1, "StateUnavailable: "),
    (lambda f: ["generate", "hi", "--config", f["good"]], 1, "BackendUnavailable: "),
    (lambda f: ["ingest", f["data"], "--collection", "docs", "--config", f["missing"]], 2, "--config: config file "),
    (lambda f: ["ingest", f["data"], "--collection", "docs", "--config", f["good"]], 2, "knowledge: "),
    (lambda f: ["ingest", f["data"], "--collection", "docs", "--config", f["good"], "--chunk-tokens", "x"], 2,
     "argument --chunk-tokens: invalid int value"),
    (lambda f: ["bench", f["missing"], "--config", f["good"], "--backends", "chat", "--out", f["out"]], 2, "data: "),
    (lambda f: ["bench", f["data"], "--config", f["bad"], "--backends", "chat", "--out", f["out"]], 2,
     "backends.chat.engine: "),
    (lambda f: ["bench", f["data"], "--config", f["good"], "--backends", "chat", "--limit", "x"], 2,
     "argument --limit: invalid int value"),
    (lambda f: ["bench", f["data"], "--config", f["down"], "--backends", "chat", "--out", f["out"], "--quiet",
                "--no-compile"], 1, "chat: no scored row: 1 failed with StateUnavailable: "),
    (lambda f: ["bench", "--outcomes", f["missing"], "--out", f["out"]], 2, "--outcomes: "),
    # A bad value of a flag the bench checks itself names the setting once (was "concurrency: concurrency must ...").
    (lambda f: ["bench", f["data"], "--config", f["good"], "--backends", "chat", "--out", f["out"], "--concurrency",
                "0"], 2, "--concurrency: must be an integer >= 1 (got 0)"),
    (lambda f: ["bench", f["data"], "--config", f["good"], "--backends", "chat", "--out", f["out"], "--limit", "0"],
     2, "--limit: must be a whole number >= 1 (got 0)"),
    (lambda f: ["bench", f["data"], "--config", f["good"], "--backends", "chat", "--out", f["out"], "--holdout",
                "2"], 2, "--holdout: must be between 0 and 1"),
    (lambda f: ["tune", f["missing"], "--config", f["good"], "--name", "t", "--local"], 2, "data: "),
    (lambda f: ["tune", f["data"], "--config", f["good"], "--name", "t", "--base-model", "gemini-2.5-flash",
                "--validation-fraction", "7", "--dry-run", f["out"]], 2, "--validation-fraction: "),
    (lambda f: ["tune", f["data"], "--config", f["good"], "--name", "t", "--seed", "x"], 2,
     "argument --seed: invalid int value"),
    (lambda f: ["compile", "--outcomes", f["missing"], "--out", f["out"]], 2, "--outcomes: "),
    (lambda f: ["compile", "--outcomes", f["data"], "--out", f["out"], "--min-n", "0"], 2, "argument --min-n: "),
    (lambda f: ["graduate", "--task", "t", "--config", f["missing"], "--out", f["out"]], 2, "--config: "),
    (lambda f: ["graduate", "--task", "t", "--config", f["good"], "--out", f["out"]], 2, "outcomes: "),
    (lambda f: ["graduate", "--task", "t", "--config", f["good"], "--out", f["out"], "--share", "x"], 2,
     "argument --share: invalid float value"),
]


_NAMES = {k: k for k in ("good", "bad", "down", "data", "missing", "afile", "out")}


@pytest.mark.parametrize(("argv", "status", "says"), CASES,
                         ids=[f"{argv(_NAMES)[0]}-{i}" for i, (argv, _, _) in enumerate(CASES)])
def test_every_command_reports_an_error_in_one_line_with_its_prefix_and_status(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: Callable[[dict[str, str]], list[str]], status: int,
        says: str) -> None:
    """Before, `generate`, `ingest`, `tune` and `demo` printed `genroute: ConfigError: ...` while `bench`, `compile`
    and `graduate` (and argparse, for every command) printed `genroute <command>: error: ...`."""
    args = argv(_files(tmp_path))
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own refusal of an option
        code = exc.code
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if not line.startswith(("genroute: warning: ", "usage: ", " "))]
    assert code == status, err
    assert len(lines) == 1, err
    prefix = f"genroute {args[0]}: error: "
    assert lines[0].startswith(prefix + says), err
    assert "Traceback" not in err and KEY not in out + err and PASSWORD not in out + err
    # A usage error is `<field>: <message>`, as argparse's `argument --x: ...`; a run-time failure names its type.
    typed = re.match(r"[A-Z][A-Za-z]*(Error|Unavailable|Exceeded|Rejected|Failed): ", lines[0][len(prefix):])
    assert (typed is not None) == (status == 1 and args[0] != "bench"), lines[0]


def _more_files(tmp: Path) -> dict[str, str]:
    """An outcome matrix of 20 records and two candidates, and a config with a knowledge store."""
    matrix, store = tmp / "matrix.jsonl", tmp / "store.yaml"
    matrix.write_text("".join(json.dumps({"input": f"q{i}", "metadata": {"id": f"q{i}"},
                                          "outcomes": {"a": {"score": 1.0, "cost_usd": 0.01},
                                                       "b": {"score": float(i % 2), "cost_usd": 0.001}}}) + "\n"
                              for i in range(20)))
    store.write_text(yaml.safe_dump({**yaml.safe_load((tmp / "good.yaml").read_text()), "knowledge": {}}))
    return {"matrix": str(matrix), "store": str(store)}


# (command line, the option the error must name): errors raised by the functions behind each command under their
# own argument names (`path`, `limit`, `out_dir`, `cache_dir`, `eval_source`), or under the option's dest.
FLAGS: list[tuple[Callable[[dict[str, str]], list[str]], str]] = [
    (lambda f: ["generate", "hi", "--config", f["missing"]], "--config"),
    (lambda f: ["generate", "hi", "--config", f["good"], "--backend", "nosuch"], "--backend"),
    (lambda f: ["ingest", f["data"], "--collection", "docs", "--config", f["missing"]], "--config"),
    (lambda f: ["ingest", f["data"], "--collection", "docs", "--config", f["store"], "--chunk-tokens", "0"],
     "--chunk-tokens"),
    (lambda f: ["bench", f["data"], "--config", f["missing"], "--backends", "chat"], "--config"),
    (lambda f: ["bench", f["data"], "--config", f["good"], "--backends", "chat", "--out", f["out"], "--limit", "0"],
     "--limit"),
    (lambda f: ["bench", f["data"], "--config", f["good"], "--backends", "chat", "--out", f["afile"]], "--out"),
    (lambda f: ["bench", "--outcomes", f["missing"], "--out", f["out"]], "--outcomes"),
    (lambda f: ["bench", "--outcomes", f["matrix"], "--out", f["afile"]], "--out"),
    (lambda f: ["bench", "--outcomes", f["matrix"], "--out", f["out"], "--embedding-cache", f["afile"]],
     "--embedding-cache"),
    (lambda f: ["bench", "--outcomes", f["matrix"], "--out", f["out"], "--eval-outcomes", f["missing"]],
     "--eval-outcomes"),
    (lambda f: ["bench", "--outcomes", f["matrix"], "--out", f["out"], "--prices", f["missing"]], "--prices"),
    (lambda f: ["bench", "--outcomes", f["matrix"], "--out", f["out"], "--candidates", "a,zz"], "--candidates"),
    (lambda f: ["compile", "--outcomes", f["missing"], "--out", f["out"]], "--outcomes"),
    (lambda f: ["compile", "--outcomes", f["matrix"], "--out", f["afile"]], "--out"),
    (lambda f: ["tune", f["data"], "--config", f["missing"], "--name", "t", "--local", "--min-examples", "1"],
     "--config"),
    (lambda f: ["graduate", "--task", "t", "--config", f["missing"], "--out", f["out"]], "--config"),
]


@pytest.mark.parametrize(("argv", "flag"), FLAGS, ids=[f"{argv(_NAMES | {'matrix': 'm', 'store': 's'})[0]}-{i}"
                                                       for i, (argv, _) in enumerate(FLAGS)])
def test_an_error_about_an_option_names_the_option_as_typed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: Callable[[dict[str, str]], list[str]],
        flag: str) -> None:
    """Before, the line named the library's argument: `genroute bench: error: path: config file ... does not exist`
    for `--config`, `limit:` for `--limit`, `out_dir:`, `cache_dir:`, `outcomes:` for `--eval-outcomes`."""
    files = _files(tmp_path)
    args = argv(files | _more_files(tmp_path))
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("genroute: warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"genroute {args[0]}: error: {flag}: "), lines


def test_a_config_error_naming_a_config_section_is_left_under_it_whatever_the_commands_options() -> None:
    # Every section of the router config (RouterConfig's fields, a new one included) is the file's, even where a
    # command has an option of that name (bench's --backends); an option's error is still renamed to the option.
    import argparse

    from genroute.cli_options import as_typed
    from genroute.config import RouterConfig

    parser = argparse.ArgumentParser(prog="genroute bench")
    for section in RouterConfig.model_fields:
        parser.add_argument(f"--{section.replace('_', '-')}", dest=section)
    parser.add_argument("--limit")
    for section in RouterConfig.model_fields:
        assert as_typed(ConfigError("bad", field=section), parser).field == section
        assert as_typed(UsageError("bad", field=section), parser).field == f"--{section.replace('_', '-')}"
    assert as_typed(ConfigError("bad", field="limit"), parser).field == "--limit"


ADVISOR_OPTIONS = [
    ("monthly_requests", "--monthly-requests", "0"), ("tuning_cost_usd", "--tuning-cost", "-5"),
    ("tuning_usd_per_1m_tokens", "--tuning-price", "-1"), ("training_examples", "--training-examples", "0"),
    ("training_tokens", "--training-tokens", "0"), ("epochs", "--epochs", "0"),
    ("tuning_cpu_seconds", "--tuning-cpu-seconds", "nan"), ("cpu_usd_per_hour", "--cpu-usd-per-hour", "inf"),
]


@pytest.mark.parametrize(("setting", "flag", "bad"), ADVISOR_OPTIONS)
def test_an_advisor_setting_is_named_as_bench_names_its_option(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                setting: str, flag: str, bad: str) -> None:
    """bench's advisor kept a table of its own (setting -> flag) beside as_typed's: an error naming a setting by its
    library name (``tuning_cost_usd``) was left unrenamed by as_typed. Now both read the one table."""
    from genroute.bench.cli import parser
    from genroute.cli_options import as_typed

    assert as_typed(UsageError("bad", field=setting), parser()).field == flag
    # The options are read before the router is built: neither the data nor the config need exist.
    assert main(["bench", str(tmp_path / "d.jsonl"), "--config", str(tmp_path / "r.yaml"), "--backends", "a",
                 flag, bad]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"genroute bench: error: {flag}: ")


def test_a_command_names_a_library_check_by_the_library_s_name_not_by_its_flag() -> None:
    """graduate passed ``field="--tuning-cost"`` by hand to ``check_amount`` (adecide names it ``tuning_cost_usd``):
    a second table of flags beside as_typed's (cli_options.LIBRARY_NAMES), left behind when a flag is renamed. A
    command calls the library's checks with the library's names; command_failed maps them to the typed option."""
    import ast

    import genroute

    checks = {"check_amount", "check_rule", "check_names"}
    by_hand = []
    for path in sorted(Path(genroute.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in checks):
                continue
            named = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            by_hand += [f"{path.name}:{node.lineno}: {name}" for name in named if name.startswith("--")]
    assert by_hand == []


def test_an_error_whose_message_spans_lines_is_still_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A tool whose parameter pydantic cannot describe (a `Callable`) was refused with pydantic's whole message: three
    lines on the command's stderr, ending with a documentation link and advice on `arbitrary_types_allowed`. The
    ConfigError now holds pydantic's first paragraph, and every command prints any error on one line."""
    (tmp_path / "cli_tools_mod.py").write_text(
        "from collections.abc import Callable\n\n\n"
        "def apply(f: Callable[[int], int]) -> str:\n    \"\"\"Apply f.\"\"\"\n    return ''\n")
    files = _files(tmp_path)
    config = yaml.safe_load(Path(files["good"]).read_text())
    config["backends"]["chat"] = {"kind": "function_calling", "engine": "gemini", "model": "gemini-2.5-flash",
                                  "tools": ["apply"]}
    config["tools"] = {"apply": "cli_tools_mod:apply"}
    path = tmp_path / "tools.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)  # the command finds the application's modules in its working directory
    monkeypatch.delitem(sys.modules, "cli_tools_mod", raising=False)
    assert main(["generate", "hi", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "For further information" not in err, err
    assert err.startswith("genroute generate: error: backends.chat.tools: tool 'apply': cannot build a JSON schema: ")
    assert err.rstrip().endswith(f"({path}, line 6)") and KEY not in err
