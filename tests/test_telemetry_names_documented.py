"""Every ``genroute.*`` telemetry name genroute's code holds (span, event and metric names, their attributes, and
the ``genroute.local`` provider), and every OpenTelemetry conventions' name it sets (``gen_ai.*``, ``db.*``,
``server.*``, ``http.*``, ``error.*``), is in docs/telemetry.md, so that the reference an on-call engineer reads
stays whole: a name added without its line there fails here."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "genroute"
DOCS = ROOT / "docs" / "telemetry.md"

#: ``genroute.*`` strings that are keys genroute writes in Chroma's metadata (of collections and records), not
#: telemetry. Each must still be in the code (so that the list does not outlive its keys).
METADATA_KEYS = frozenset({
    "genroute.digest", "genroute.digest_holds", "genroute.dimension", "genroute.dir.", "genroute.dir_keys",
    "genroute.embedder", "genroute.embedder_kind", "genroute.generation", "genroute.held.", "genroute.kind",
})


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of ``tree``'s module, classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


#: The conventions' namespaces genroute sets names in.
CONVENTIONS = ("gen_ai.", "db.", "server.", "http.", "error.")


def _literals(prefixes: tuple[str, ...] = ("genroute.",)) -> tuple[set[str], set[str]]:
    """Every string literal of the package outside docstrings that starts with one of ``prefixes``, and the logger
    names among them."""
    names: set[str] = set()
    loggers: set[str] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getLogger":
                loggers.update(a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                    and node.value.startswith(prefixes)):
                names.add(node.value)
    return names, loggers


def telemetry_names() -> set[str]:
    """The package's ``genroute.*`` literals less logger names, module paths (lazy imports, package data, built-in
    kinds' ``module:Class``) and Chroma metadata keys."""
    names, loggers = _literals()
    return {n for n in names if n not in loggers and n not in METADATA_KEYS
            and _module(n.partition(":")[0].rstrip(".")) is None}


def _module(name: str) -> object:
    """``name``'s module spec, or None if no module has that name."""
    try:
        return importlib.util.find_spec(name)
    except ModuleNotFoundError:  # a parent that is not a package
        return None


def documented(name: str, text: str) -> bool:
    """Whether ``name`` is in ``text`` as itself: not only as the start of a longer name (``genroute.breaker`` in
    ``genroute.breaker.opens``)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w|\.\w)", text) is not None


def test_every_genroute_telemetry_name_is_in_the_telemetry_docs() -> None:
    names = telemetry_names()
    assert {"genroute.generate", "genroute.rung", "genroute.breaker.state", "genroute.explore",
            "genroute.rag.chunk_ids", "genroute.icl.example_ids"} <= names  # the walk finds what it should
    text = DOCS.read_text(encoding="utf-8")
    assert sorted(n for n in names if not documented(n, text)) == []


def test_every_conventions_name_genroute_sets_is_in_the_telemetry_docs() -> None:
    names, _ = _literals(CONVENTIONS)
    assert {"gen_ai.operation.name", "gen_ai.usage.cost.amount", "error.type", "db.system.name"} <= names
    text = DOCS.read_text(encoding="utf-8")
    assert sorted(n for n in names if not documented(n, text)) == []


def test_the_metadata_keys_left_out_are_still_in_the_code() -> None:
    names, _ = _literals()
    assert METADATA_KEYS <= names


def test_documented_matches_a_name_only_as_itself() -> None:
    assert documented("genroute.breaker", "the `genroute.breaker` event")
    assert documented("genroute.state.fallback", "`genroute.state.fallback=true` on the root span.")
    assert not documented("genroute.breaker", "the counter `genroute.breaker.opens`")
    assert not documented("genroute.rung", "`genroute.rungs_tried`")
