"""Every Python and YAML block of README.md and of each page in docs/ runs here, so they cannot drift from the code.

README.md is what a newcomer reads first; docs/*.md hold the reference it links to. Everything below holds for
every one of these pages alike ("the README" below means all of them); every relative link and anchor between
them must resolve (``test_every_relative_link_resolves``), and every docs page is linked from README.md.

How blocks are run:

- A ```python block is executed as a script in a fresh temporary working directory. It passes when it raises nothing, twice: a reader runs a
  block again, so what its first run left behind (files, spend in a Redis budget) must not break the second.
  A comment line right below a ``print(...)`` line shows what that print writes: it must be a line the block
  printed (``# {'large': 14, 'small': 10}``); explain an output in a comment on the print line itself.
- A ```yaml (or ```yml) block is a router configuration: it is loaded and a router is built from it
  (``Router.from_config``), so every section is validated exactly as an application's config would be, and
  then closed. Nothing is sent to a model.

A block that needs something around it says so in an HTML comment on the line just above its fence (it does
not show on the rendered page)::

    <!-- readme-test: setup=gemini,app file=genroute.yaml -->

with any of these space-separated directives:

- ``setup=NAME[,NAME...]``: run the block inside the named setups of ``SETUPS`` below —
  ``gemini`` (a loopback Gemini server; ``GOOGLE_GEMINI_BASE_URL`` and ``GEMINI_API_KEY`` point at it; any
  request gets a default answer), ``app`` (the application files the README's configuration names:
  ``myapp/tools.py`` with ``get_weather`` and ``schemas/answer.json``, importable from the working directory),
  ``redis`` (a real ``redis-server`` on a free loopback port, its URL in ``REDIS_URL``; missing is a failure)
  and ``local`` (marks the block ``local``: it uses the real local model). Add a setup here when a new README
  section needs one.
- ``file=PATH``: the block is also written to ``PATH`` (relative) in the working directory of every block, of
  every page (before or after it: a page may use ``genroute.yaml``, which README.md shows), so a block can load
  the configuration or import a module another block showed.
- ``continue``: a Python block that runs right after the Python block before it on the same page, in the same
  namespace and working directory (for a section that goes on with the objects the previous block made).
- ``not-config``: a YAML block that is data, not a router configuration (it is only parsed).
- ``jupyter``: a Python block that is a notebook cell, as the page says: top-level ``await`` is allowed (the block
  runs under ``asyncio.run``). Any other block must be a script ``python`` runs as written (a top-level ``await``
  or ``async with`` copied into a file is a SyntaxError).

There is no "skip": a block that cannot run as written is a README bug. Blocks in other languages (bash,
plain text) are not run here; the commands in the Quickstart are what ``.ci/run`` itself runs, every flag the
plain ``genroute ...`` command blocks show is checked against that command's own parser (and every flag a command
takes must be shown in one of them, on some page: docs/cli.md lists them all), the error tree against
``genroute.errors`` and the outcome-matrix line against the matrix reader.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*readme-test:(?P<body>.*?)-->\s*$")
_KNOWN = {"setup", "file", "continue", "not-config", "jupyter"}


@dataclass
class Block:
    """One fenced code block of the README and the directives above it."""

    line: int
    lang: str
    code: str
    page: str = "README.md"
    setups: tuple[str, ...] = ()
    file: str | None = None
    cont: bool = False
    config: bool = True
    jupyter: bool = False
    previous: Block | None = field(default=None, repr=False)


def readme_blocks(text: str, page: str = "README.md") -> list[Block]:
    """The Python and YAML blocks of ``text`` (the page ``page``), in order, with their directives (bad directives
    raise)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    last_python: Block | None = None
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        lang, start = match.group(1).lower(), i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            raise ValueError(f"{page}:{i + 1}: unclosed code fence")
        i = end + 1
        directives = _directives(lines, start, page)
        if lang not in {"python", "py", "yaml", "yml"}:
            if directives:
                raise ValueError(f"{page}:{start + 1}: readme-test directive above a {lang or 'plain'} block")
            continue
        block = Block(line=start + 1, lang="python" if lang in {"python", "py"} else "yaml",
                      code="\n".join(lines[start + 1:end]) + "\n", page=page)
        for name, value in directives:
            if name == "setup":
                block.setups = tuple(s for s in value.split(",") if s)
                unknown = set(block.setups) - set(SETUPS)
                if unknown:
                    raise ValueError(f"{page}:{block.line}: unknown setup {sorted(unknown)} (see {__file__})")
            elif name == "file":
                block.file = value
            elif name == "continue":
                if block.lang != "python" or last_python is None:
                    raise ValueError(f"{page}:{block.line}: `continue` needs a Python block before it")
                block.cont, block.previous = True, last_python
            elif name == "not-config":
                block.config = False
            elif name == "jupyter":
                if block.lang != "python":
                    raise ValueError(f"{page}:{block.line}: `jupyter` marks a Python block")
                block.jupyter = True
        if block.lang == "python":
            last_python = block
        blocks.append(block)
    return blocks


def _directives(lines: list[str], fence: int, page: str = "README.md") -> list[tuple[str, str]]:
    """The directives of the comment right above line ``fence`` (blank lines between are allowed)."""
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    match = _DIRECTIVE.match(lines[j].strip()) if j >= 0 else None
    if match is None:
        return []
    found = []
    for item in match["body"].split():
        name, _, value = item.partition("=")
        if name not in _KNOWN:
            raise ValueError(f"{page}:{j + 1}: unknown readme-test directive {name!r} (known: {sorted(_KNOWN)})")
        found.append((name, value))
    return found


# -- setups ---------------------------------------------------------------------------------------------

Setup = Callable[[Path, pytest.MonkeyPatch], contextlib.AbstractContextManager[Any]]


@contextlib.contextmanager
def _gemini(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from genroute.testing import GeminiTestServer

    with GeminiTestServer() as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", "readme-test-key")
        yield server


_APP_TOOLS = '''\
def get_weather(city: str) -> str:
    """The weather in ``city``."""
    return f"Sunny in {city}"
'''


@contextlib.contextmanager
def _app(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (workdir / "myapp").mkdir(exist_ok=True)
    (workdir / "myapp" / "__init__.py").write_text("")
    (workdir / "myapp" / "tools.py").write_text(_APP_TOOLS)
    (workdir / "schemas").mkdir(exist_ok=True)
    (workdir / "schemas" / "answer.json").write_text('{"type": "object", "required": ["answer"]}\n')
    monkeypatch.syspath_prepend(str(workdir))
    try:
        yield
    finally:
        for name in [m for m in sys.modules if m == "myapp" or m.startswith("myapp.")]:
            del sys.modules[name]


@contextlib.contextmanager
def _redis(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed, and a README block needs it (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not start within 10 s")
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        monkeypatch.setenv("REDIS_URL", url)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def _local(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield  # the block is marked `local`; the model itself comes from the installed weights package


SETUPS: dict[str, Setup] = {"gemini": _gemini, "app": _app, "redis": _redis, "local": _local}


# -- the tests ------------------------------------------------------------------------------------------

def _page_name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


TEXTS = {_page_name(path): path.read_text(encoding="utf-8") for path in PAGES}
TEXT = "\n".join(TEXTS.values())  # every page, for the checks that hold over README and docs together
BLOCKS = [block for name, text in TEXTS.items() for block in readme_blocks(text, name)]


def _params() -> list[Any]:
    return [pytest.param(b, id=f"{b.page}-line{b.line}-{b.lang}",
                         marks=[pytest.mark.local] if "local" in b.setups else []) for b in BLOCKS]


def test_the_readme_has_python_and_yaml_blocks() -> None:
    langs = {b.lang for b in BLOCKS}
    assert langs == {"python", "yaml"}, langs


@pytest.mark.parametrize("block", _params())
def test_readme_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for other in BLOCKS:
        if other.file:
            target = tmp_path / other.file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(other.code)
    chain = [block]
    while chain[0].cont:
        assert chain[0].previous is not None
        chain.insert(0, chain[0].previous)
    setups = list(dict.fromkeys(s for b in chain for s in b.setups))
    with contextlib.ExitStack() as stack:
        for name in setups:
            stack.enter_context(SETUPS[name](tmp_path, monkeypatch))
        if block.lang == "yaml":
            _check_yaml(block)
            return
        for _ in range(2):  # the second run in the same directory and setups, as a reader's second try
            namespace: dict[str, Any] = {"__name__": "__readme__"}
            for b in chain:
                _run_python(b, namespace)


def _check_yaml(block: Block) -> None:
    data = yaml.safe_load(block.code)
    if not block.config:
        return
    from genroute import Router

    # A file-backed block is built from its file, so relative paths resolve as they would for the user.
    source: Any = Path(block.file) if block.file and block.file.endswith((".yaml", ".yml")) else data
    router = Router.from_config(source)
    router.close()


def _run_python(block: Block, namespace: dict[str, Any]) -> None:
    filename = f"{block.page}:{block.line}"
    # Line numbers in tracebacks point into the page.
    source = "\n" * block.line + block.code
    # Top-level await only in a notebook cell: elsewhere a reader's `python script.py` would refuse it.
    code = compile(source, filename, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if block.jupyter else 0)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            result = eval(code, namespace)  # noqa: S307 - the README's own code
            if inspect.iscoroutine(result):
                asyncio.run(result)
    finally:
        sys.stdout.write(out.getvalue())  # shown with a failure, as a plain run would show it
    printed = [line.rstrip() for line in out.getvalue().splitlines()]
    wrong = [line for line in shown_outputs(block.code) if line not in printed]
    assert not wrong, f"{filename}: shows output the block does not print: {wrong} (what it printed is above)"


def shown_outputs(code: str) -> list[str]:
    """The outputs ``code`` shows: each comment line right below a ``print(...)`` line, without its ``#``."""
    shown, below_print = [], False
    for line in code.splitlines():
        stripped = line.strip()
        if below_print and stripped.startswith("#"):
            shown.append(stripped[1:].strip())
        below_print = stripped.startswith("print(")
    return shown


def test_directives_are_parsed() -> None:
    text = ("<!-- readme-test: setup=gemini,app file=cfg.yaml -->\n```yaml\na: 1\n```\n\n"
            "```python\nx = 1\n```\n<!-- readme-test: continue -->\n```python\nassert x == 1\n```\n"
            "```bash\nls\n```\n")
    first, second, third = readme_blocks(text)
    assert (first.lang, first.setups, first.file, first.config) == ("yaml", ("gemini", "app"), "cfg.yaml", True)
    assert third.cont and third.previous is second
    with pytest.raises(ValueError, match="unknown readme-test directive"):
        readme_blocks("<!-- readme-test: skip -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match="unknown setup"):
        readme_blocks("<!-- readme-test: setup=nope -->\n```python\npass\n```\n")
    (cell,) = readme_blocks("<!-- readme-test: jupyter -->\n```python\nawait x\n```\n")
    assert cell.jupyter
    with pytest.raises(ValueError, match="`jupyter` marks a Python block"):
        readme_blocks("<!-- readme-test: jupyter -->\n```yaml\na: 1\n```\n")


def test_only_a_notebook_cell_may_await_at_the_top() -> None:
    """A block a reader copies into a script must run as one: top-level ``await`` fails to compile there."""
    script = "import asyncio\nasync def f():\n    return 1\nprint(await f())\n# 1\n"
    with pytest.raises(SyntaxError):
        _run_python(Block(line=1, lang="python", code=script), {})
    _run_python(Block(line=1, lang="python", code=script, jupyter=True), {})


def test_shown_outputs_must_be_printed() -> None:
    code = "print(1)  # why\n# 1\nx = 2\n# a comment, not an output\nprint(x)\n\n# after a blank line: a comment\n"
    assert shown_outputs(code) == ["1"]
    _run_python(Block(line=1, lang="python", code=code), {})
    with pytest.raises(AssertionError, match="shows output the block does not print"):
        _run_python(Block(line=1, lang="python", code="print({'a': 2})\n# {'a': 1}\n"), {})


def test_every_file_a_block_is_saved_as_is_named_to_the_reader() -> None:
    """A ``file=PATH`` block is one later blocks load or import: the prose right above it (since the block before)
    must name ``PATH`` (README.md: "Save this as `genroute.yaml`"), or a reader copying the next block has no such
    file (docs/extending.md's `from mykinds import ...` named a file the page never told the reader to save)."""
    unnamed = []
    for name, text in TEXTS.items():
        lines = text.splitlines()
        for block in (b for b in readme_blocks(text, name) if b.file):
            start = block.line - 2
            while start > 0 and not lines[start - 1].startswith("```"):
                start -= 1
            if f"`{block.file}`" not in "\n".join(lines[start:block.line - 1]):
                unnamed.append(f"{name}:{block.line}: {block.file}")
    assert not unnamed, f"blocks saved as a file the text above them does not name: {unnamed}"


def test_environment_is_restored() -> None:
    # The setups use monkeypatch, so nothing of one block leaks into the next test.
    assert "GOOGLE_GEMINI_BASE_URL" not in os.environ


def _plain_blocks(text: str) -> list[list[str]]:
    """The lines of each plain (no language) fenced block."""
    blocks: list[list[str]] = []
    fenced, current = False, None
    for line in text.splitlines():
        if line.startswith("```"):
            if fenced and current is not None:
                blocks.append(current)
            fenced = not fenced
            current = [] if fenced and line.strip() == "```" else None
        elif current is not None:
            current.append(line)
    return blocks


def _command_lines(text: str) -> dict[str, set[str]]:
    """Every ``--flag`` the README's plain command blocks show, per ``genroute`` subcommand (continuation lines,
    indented, belong to the command above them; ``# comments`` are left out)."""
    flags: dict[str, set[str]] = {}
    for block in _plain_blocks(text):
        command = None
        for line in block:
            code = line.split("#", 1)[0]
            match = re.match(r"genroute (\w+)", code)
            if match:
                command = match.group(1)
            elif not code.startswith(" "):
                command = None
            if command is not None:
                flags.setdefault(command, set()).update(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", code))
    return flags


def test_every_backend_a_command_line_names_is_in_the_config_it_names() -> None:
    """A command line that names backends (``--backends a,b`` or ``--backend a``) and a config a block of the pages
    is saved as runs on that config: README's bench line named the `Every backend kind` backends with
    ``--config genroute.yaml``, the first request's file, which has only `chat` ("unknown backend 'fewshot'")."""
    saved = {b.file: yaml.safe_load(b.code) for b in BLOCKS if b.file and b.file.endswith((".yaml", ".yml"))}
    checked, wrong = 0, []
    for block in _plain_blocks(TEXT):
        for line in block:
            code = line.split("#", 1)[0]
            config = re.search(r"--config (\S+)", code)
            names = re.search(r"--backends? ([\w,-]+)", code)
            synopsis = "[" in code  # docs/cli.md's grammar lines (`--backends a,b,c [--policy]`) are no commands
            if synopsis or not (code.startswith("genroute ") and config and names and config.group(1) in saved):
                continue
            checked += 1
            unknown = sorted(set(names.group(1).split(",")) - set(saved[config.group(1)]["backends"]))
            if unknown:
                wrong.append(f"{code.strip()}: {unknown} not in {config.group(1)}")
    assert checked and not wrong, wrong


def test_every_collection_name_the_readme_shows_is_one_chroma_takes() -> None:
    from genroute.knowledge.collection_checks import check_collection_name

    names = re.findall(r"--collection ([a-z][\w.-]*)", TEXT)  # METAVARS are upper
    assert names
    for name in names:
        check_collection_name(name, "collection")  # UsageError for a name Chroma refuses (too short, say)


def _cli_commands(capsys: pytest.CaptureFixture[str]) -> set[str]:
    """Every subcommand ``genroute --help`` lists (a list written here left ``genroute health`` out of both checks
    below)."""
    from genroute.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = re.search(r"\{([\w,-]+)\}", capsys.readouterr().out)
    assert listed, "no subcommands in `genroute --help`"
    return set(listed.group(1).split(","))


def test_the_cli_commands_are_read_from_its_parser(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"demo", "generate", "ingest", "health", "bench", "tune", "compile", "graduate"} <= _cli_commands(capsys)


def test_every_command_line_flag_the_readme_shows_exists(capsys: pytest.CaptureFixture[str]) -> None:
    """The plain ``genroute ...`` blocks are not run (they need data and models), but every flag they show must be
    one the command takes."""
    from genroute.cli import main

    shown = _command_lines(TEXT)
    assert _cli_commands(capsys) <= set(shown), "a command no page's command lines show"
    for command, flags in sorted(shown.items()):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        usage = capsys.readouterr().out
        missing = sorted(flag for flag in flags if not re.search(rf"{re.escape(flag)}(?![\w-])", usage))
        assert not missing, f"README shows `genroute {command}` with {missing}, which it does not take"


def test_every_flag_a_command_takes_is_in_the_readme(capsys: pytest.CaptureFixture[str]) -> None:
    """The other way round: docs/cli.md is where a reader looks for a command's flags, so every flag a command
    takes is shown in a ``genroute <command>`` line of the plain command blocks of README.md and docs/ (a flag added
    to a parser and not to the docs fails here)."""
    from genroute.cli import main

    shown = _command_lines(TEXT)
    commands = _cli_commands(capsys)
    for command in sorted(commands):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
        usage = capsys.readouterr().out.split("\n\n", 1)[0]  # the usage line lists every option
        takes = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", usage)) - {"--help"}
        assert takes, f"no flags parsed from `genroute {command} --help`"
        unshown = sorted(takes - shown.get(command, set()))
        assert not unshown, f"`genroute {command}` takes {unshown}, which no page's command lines show"


def test_the_readme_config_builds_without_the_application_files(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """*Use it* tells a reader without ``myapp/tools.py`` and ``schemas/answer.json`` to delete the config lines
    that name them: what is left must build."""
    from genroute import Router

    config = next(b for b in BLOCKS if b.file == "genroute.yaml")
    kept = [line for line in config.code.splitlines() if not line.startswith(("tools:", "validators:"))]
    assert len(kept) == len(config.code.splitlines()) - 2
    (tmp_path / "genroute.yaml").write_text("\n".join(kept) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEMINI_API_KEY", "readme-test-key")
    Router.from_config("genroute.yaml").close()


def test_every_built_in_setting_is_in_the_readme() -> None:
    """Each setting of the config's sections and of every built-in engine, backend and policy is named in README.md or
    docs/ (as code: `name`), so a setting added to a config model without a word for its users fails here. (The README
    lacked, among others, icl's `example_template`, the ladder's `climb`, knowledge's `ef_search`.)"""
    import importlib

    from genroute.admission.breaker import BreakerConfig
    from genroute.admission.ratelimit import RateLimitConfig
    from genroute.config import RouterConfig, TelemetryConfig
    from genroute.engines.retry import RetryConfig
    from genroute.knowledge.store_config import GeminiEmbedderSpec, StoreConfig
    from genroute.outcomes.settings import OutcomeSettings
    from genroute.registry import BUILTIN
    from genroute.state import RedisStateConfig

    models: list[Any] = [RouterConfig, TelemetryConfig, StoreConfig, GeminiEmbedderSpec, RedisStateConfig,
                         OutcomeSettings, RateLimitConfig, BreakerConfig, RetryConfig]
    for kinds in BUILTIN.values():
        for target in kinds.values():
            module, _, name = target.partition(":")
            models.append(getattr(importlib.import_module(module), name).Config)
    text = TEXT
    fenced = re.findall(r"^```\w*\n(.*?)^```\n", text, flags=re.S | re.M)  # the examples name settings too
    prose = re.sub(r"^```\w*\n.*?^```\n", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`]+)`", prose.replace("```", ""))  # a fence written in the text, as ``` is
    shown = {word for span in spans + fenced for word in re.findall(r"\w+", span)}
    unnamed = sorted(f"{model.__name__}.{field}" for model in models for field in model.model_fields
                     if field not in shown)
    assert not unnamed, f"settings the README does not name: {unnamed}"


def _section_settings() -> dict[str, set[str]]:
    """The settings each config section (and each settings group a dotted path goes through) takes: for
    ``engines``, ``backends`` and ``policy`` those of any built-in kind."""
    import importlib

    from genroute.admission.breaker import BreakerConfig
    from genroute.admission.ratelimit import RateLimitConfig
    from genroute.backends.base import GenerationSettings
    from genroute.config import TelemetryConfig
    from genroute.engines.gemini_config import VertexConfig
    from genroute.engines.retry import RetryConfig
    from genroute.knowledge.store_config import StoreConfig
    from genroute.outcomes.settings import OutcomeSettings
    from genroute.registry import BUILTIN
    from genroute.state import MemoryStateConfig, RedisStateConfig

    settings = {"telemetry": set(TelemetryConfig.model_fields), "knowledge": set(StoreConfig.model_fields),
                "outcomes": set(OutcomeSettings.model_fields), "breakers": set(BreakerConfig.model_fields),
                "state": set(RedisStateConfig.model_fields) | set(MemoryStateConfig.model_fields),
                "rate_limits": set(RateLimitConfig.model_fields), "retry": set(RetryConfig.model_fields),
                "generation": set(GenerationSettings.model_fields), "vertex": set(VertexConfig.model_fields)}
    for group, kinds in BUILTIN.items():
        section = {"engines": "engines", "backends": "backends", "policies": "policy"}[group]
        for target in kinds.values():
            module, _, name = target.partition(":")
            config = getattr(importlib.import_module(module), name).Config
            settings.setdefault(section, set()).update(config.model_fields)
    return settings


def unknown_dotted_settings(text: str, settings: dict[str, set[str]]) -> list[str]:
    """The `section.setting` spans of ``text`` (`engines.<name>.setting` and `backends.<name>.setting` skip the
    name) whose setting the section does not take."""
    unknown = []
    for span in re.findall(r"`([a-z_]+(?:\.[\w<>*-]+)+)`", text):
        parts = span.split(".")
        if parts[0] in ("engines", "backends"):
            parts = parts[:1] + parts[2:]
        if parts[0] in settings and len(parts) > 1 and not parts[1].startswith("<") \
                and parts[1] not in settings[parts[0]]:
            unknown.append(span)
    return unknown


# Dotted names that are not settings: files, and what a router or policy object reports at run time.
_NOT_SETTINGS = {"outcomes.jsonl", "policy.last_sync"}


def test_every_dotted_setting_the_docs_name_is_one_the_config_takes() -> None:
    """The other way round from the test above: a `outcomes.refresh_every_s` or `backends.chat.generation.seed` the
    prose names must be a setting of that section (a renamed setting whose old name stayed in the docs fails here;
    the YAML and Python blocks are checked by building them)."""
    settings = _section_settings()
    assert unknown_dotted_settings("`outcomes.refresh_every_s` `backends.c.generation.seed` `knowledge.hosts`",
                                   settings) == ["knowledge.hosts"]
    unknown = sorted(set(unknown_dotted_settings(TEXT, settings)) - _NOT_SETTINGS)
    assert not unknown, f"the docs name settings the config does not take: {unknown}"


def test_the_readme_error_tree_is_genroute_errors() -> None:
    """The tree in docs/errors.md names every error class with its parent, as ``genroute.errors`` defines them."""
    import genroute.errors

    tree = next(b for b in _plain_blocks(TEXT) if b and b[0] == "GenrouteError")
    parents: dict[str, str] = {}
    stack = ["GenrouteError"]  # stack[d] is the class whose children sit at depth d + 1
    for line in tree[1:]:
        branch = line.index("── ")
        depth = branch // 4  # each level indents four columns
        del stack[depth + 1:]
        names = re.sub(r"\(.*?\)", "", line[branch + 3:].split("  ")[0])
        for name in (n.strip() for n in names.split(",")):
            parents[name] = stack[depth]
        stack.append(name)  # a line that names several classes has no children
    actual = {name: cls.__bases__[0].__name__ for name, cls in vars(genroute.errors).items()
              if isinstance(cls, type) and issubclass(cls, genroute.errors.GenrouteError)
              and cls is not genroute.errors.GenrouteError}
    assert parents == actual


def test_the_outcome_matrix_line_the_readme_shows_loads(tmp_path: Path) -> None:
    """The one-line outcome matrix is what ``genroute bench --outcomes`` reads: id and task from metadata."""
    from genroute.bench.outcomes import load_matrix

    lines = [line for b in _plain_blocks(TEXT) for line in b if line.startswith("{")]
    assert lines
    (tmp_path / "matrix.jsonl").write_text("\n".join(lines) + "\n")
    matrix = load_matrix(tmp_path / "matrix.jsonl")
    assert matrix.candidates == ("large", "small") and matrix.ids == ["q1"] and matrix.tasks == ["math"]


def test_the_install_script_refuses_an_old_python_at_once(tmp_path: Path) -> None:
    """The Quickstart's first command on a machine whose ``python3`` is older than genroute needs: one clear line
    before anything is made (it failed in ``pip install -e .`` after compiling llama.cpp for minutes)."""
    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\nexit 1\n")  # asked whether it is 3.11 or later, it says no (as 3.10 would)
    old.chmod(0o755)
    venv = tmp_path / "venv"
    done = subprocess.run(["bash", str(README.parent / "scripts" / "install.sh")], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(old), "GENROUTE_VENV": str(venv)}, timeout=60)
    assert done.returncode == 1 and "Python 3.11 or later" in done.stderr, done.stderr
    assert not venv.exists()


def test_the_install_script_installs_a_compiler_and_venv_on_a_fresh_debian(tmp_path: Path) -> None:
    """On a fresh Debian the Quickstart's first command failed: its python3 has no venv module (`python3 -m venv`:
    "ensurepip is not available") and nothing compiles llama-cpp-python (no C/C++ compiler). Run as root with
    apt-get, the script installs them with the servers the tests use. Here PATH holds only stubs: a python3 that is
    3.11 but has no ensurepip, and an apt-get that records what it is asked for and fails the install (ending the
    script there)."""
    if os.getuid() != 0:
        pytest.skip("the script installs system packages only as root (CI runs as root)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "id"):
        found = shutil.which(tool)
        assert found
        (bin_dir / tool).symlink_to(found)
    asked = tmp_path / "apt-get.args"
    stubs = {"python3": "#!/bin/sh\ncase \"$*\" in *ensurepip*) exit 1;; esac\nexit 0\n",
             "apt-get": f"#!/bin/sh\necho \"$*\" >> {asked}\n[ \"$1\" = update ]\n"}
    for name, script in stubs.items():
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    done = subprocess.run(["/bin/bash", str(README.parent / "scripts" / "install.sh")], capture_output=True,
                          text=True, timeout=60, env={"PATH": str(bin_dir), "HOME": str(tmp_path),
                                                      "GENROUTE_VENV": str(tmp_path / "venv")})
    assert done.returncode != 0 and asked.exists(), done.stderr
    update, install = asked.read_text().splitlines()
    assert update == "update -qq"
    assert {"build-essential", "python3-venv", "redis-server", "chromium"} <= set(install.split()), install


# -- links between the pages ----------------------------------------------------------------------------

_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^()\s]+)\)")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower-case, punctuation dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def page_anchors(text: str) -> set[str]:
    """The anchors of ``text``'s headings (outside code fences; a repeated heading's gets ``-1``, ``-2``...)."""
    anchors: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6} (.+?)\s*#*\s*$", line)
        if match:
            anchor = heading_anchor(match.group(1))
            n, unique = 0, anchor
            while unique in anchors:
                n += 1
                unique = f"{anchor}-{n}"
            anchors.add(unique)
    return anchors


def relative_links(text: str) -> list[tuple[int, str]]:
    """``(line, target)`` of each Markdown link in ``text`` that is not to a URL (outside code fences and spans; a
    link whose text wraps onto the next line counts, at the line its target is on)."""
    kept, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            kept.append("")
            continue
        kept.append("" if fenced else line)
    # Code spans may wrap too (within a paragraph; a run of n backticks closes at the next run of n, and one that
    # does not close is text, as a ``` written in a sentence): blanked with their newlines kept, so lines stay.
    prose = _CODE_SPAN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), "\n".join(kept))
    found = []
    for match in _LINK.finditer(prose):
        target = match.group(1)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            found.append((prose.count("\n", 0, match.start(1)) + 1, target))
    return found


def broken_links(path: Path) -> list[str]:
    """The relative links of the page ``path`` whose file or heading anchor does not exist."""
    broken = []
    for line, target in relative_links(path.read_text(encoding="utf-8")):
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(f"{path.name}:{line}: {target} (no such file)")
        elif anchor and (linked.suffix != ".md" or anchor not in page_anchors(linked.read_text(encoding="utf-8"))):
            broken.append(f"{path.name}:{line}: {target} (no heading with that anchor)")
    return broken


def test_heading_anchors_are_githubs() -> None:
    text = ("# Testing your application: `genroute.testing`\n## Shared state: budgets, rate limits\n"
            "```\n# not a heading\n```\n## Use it\n## Use it\n### What `DIR` receives\n")
    assert page_anchors(text) == {"testing-your-application-genroutetesting", "shared-state-budgets-rate-limits",
                                  "use-it", "use-it-1", "what-dir-receives"}


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A\n## Use it\n[ok](#use-it) [ok](b.md#b) [ok](https://x.org/#y)\n"
                                   "`[code](nope.md)` [bad](nope.md) [bad](b.md#nope) [bad](#b)\n"
                                   "a link whose text wraps: [See\nB](b.md#gone), `a code span\n[wrapping](x.md)`, a ``` in text\n"
                                   "```\n[in a fence](x.md)\n```\n")
    (tmp_path / "b.md").write_text("# B\n")
    assert broken_links(tmp_path / "a.md") == ["a.md:4: nope.md (no such file)",
                                               "a.md:4: b.md#nope (no heading with that anchor)",
                                               "a.md:4: #b (no heading with that anchor)",
                                               "a.md:6: b.md#gone (no heading with that anchor)"]


@pytest.mark.parametrize("page", PAGES, ids=_page_name)
def test_every_relative_link_resolves(page: Path) -> None:
    """Each relative link of README.md and docs/ names a file of the checkout and, with ``#anchor``, a heading of
    it (a section renamed or moved to another page without its links fails here)."""
    assert relative_links(page.read_text(encoding="utf-8")) or page != README
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme() -> None:
    """README.md's map names every page of docs/, so no reference page is out of a newcomer's reach."""
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in relative_links(TEXTS["README.md"])}
    assert len(PAGES) > 1
    assert [_page_name(page) for page in PAGES[1:] if page.resolve() not in linked] == []
