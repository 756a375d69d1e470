"""A module run with ``python -m`` executes top to bottom: its ``if __name__ == "__main__"`` block must come last, or
what is defined below it does not exist yet when the command runs (``genroute ingest`` failed with NameError so)."""

from __future__ import annotations

import ast
from pathlib import Path

import genroute


def _is_main_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"'


def test_every_main_block_is_the_last_statement_of_its_module() -> None:
    root = Path(genroute.__file__).parent
    checked, late = 0, []
    for path in sorted(root.rglob("*.py")):
        body = ast.parse(path.read_text(encoding="utf-8")).body
        blocks = [i for i, node in enumerate(body) if _is_main_block(node)]
        checked += bool(blocks)
        if blocks and blocks[-1] != len(body) - 1:
            late.append(f"{path.relative_to(root.parent)}: {ast.unparse(body[blocks[-1] + 1])[:60]!r} comes after it")
    assert checked >= 2  # genroute.cli, genroute.demo, ...
    assert late == []
