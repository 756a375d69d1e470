"""The package's layering: no import cycles, and no module importing a layer above its own.

Every import statement counts (top level, ``TYPE_CHECKING`` blocks and imports inside functions alike): a
lazy import still ties the two modules together. The layers are drawn in ``genroute/runtime/__init__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import genroute

ROOT = Path(genroute.__file__).parent

#: Lowest first. A module may import its own layer and those below it. Longest prefix wins.
LAYERS: list[tuple[str, ...]] = [
    ("genroute.errors", "genroute.types", "genroute.construct", "genroute.jsonl", "genroute.cache", "genroute.tools",
     "genroute.config_errors", "genroute.public_model", "genroute.groups",
     "genroute.bounds", "genroute.log_every", "genroute.exact_sums",
     "genroute.config_parse", "genroute.config_location", "genroute.config_secrets",
     "genroute.registry", "genroute.testing"),
    # The engine interface imports nothing of genroute: the run context is written against it.
    ("genroute.runtime", "genroute.engines.base", "genroute.state", "genroute.admission"),
    # The commands' option naming reads the config's sections (RouterConfig's fields).
    ("genroute.config", "genroute.cli_options"),
    ("genroute.engines",),
    # Labeled data and scorers are leaves the outcome scoring shares with the benchmark.
    ("genroute.knowledge", "genroute.tuning", "genroute.bench.datasets", "genroute.bench.scorers",
     "genroute.bench.text_match", "genroute.bench.calls", "genroute.bench.stats", "genroute.bench.intervals",
     "genroute.bench.t_interval",
     "genroute.bench.clusters", "genroute.bench.exact_tests", "genroute.bench.score_checks", "genroute.bench.sequential"),
    ("genroute.backends", "genroute.policies"),
    ("genroute.router", "genroute.outcomes"),
    ("genroute.graduation",),
    ("genroute.bench",),
    ("genroute.demo", "genroute.cli", "genroute"),
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def _edges() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(module, path, node):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                # The package root only re-exports (lazily); reading its ``__version__`` ties nothing together.
                if target and target != module and target != "genroute" and not module.startswith(target + "."):
                    edges[module].add(target)
    return edges


def _layer(module: str) -> int:
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer: add it to LAYERS"
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert _cycles(_edges()) == []


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} -> {t}" for m, targets in sorted(_edges().items()) for t in sorted(targets)
              if _layer(t) > _layer(m)]
    assert upward == []


def test_the_walk_sees_lazy_and_type_checking_imports():
    edges = _edges()
    assert "genroute.runtime.context" in edges["genroute.backends.base"]  # a TYPE_CHECKING import
    assert "genroute.engines.llama_logs" in edges["genroute.engines.local"]  # an import inside a function
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
