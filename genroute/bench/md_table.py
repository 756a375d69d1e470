"""A row of a Markdown table, as every bench report writes one."""

from __future__ import annotations

from collections.abc import Iterable


def markdown_row(cells: Iterable[object]) -> str:
    """One row of a Markdown table: a "|" in a cell (a backend or task named "a|b") is escaped, and a line break
    is a space, so that neither starts a column or a row of its own."""
    return "| " + " | ".join(" ".join(str(c).replace("|", "\\|").splitlines()) for c in cells) + " |"
