"""Rich renderings for the demo: the results table and the span tree."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

#: Characters of model text shown per row; tool calls and citations are shown in full after it.
ANSWER_CHARS = 120


class DemoConsole(Console):
    """The demo's console on stdout."""

    def on_broken_pipe(self) -> None:
        # rich's own exits with 1; `genroute demo | head` ends as the other commands do (141, quietly).
        self.quiet = True
        raise BrokenPipeError


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:.6f}"


def _clip(text: str) -> str:
    return text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS - 1] + "…"


def results_table(rows: Sequence[tuple[dict[str, Any], str, Any]]) -> Table:
    """One row per request: decision, reason, answer, latency, tokens, cost and cloud-equivalent cost."""
    table = Table(title="One request per backend", show_lines=True)
    for column in ("request", "backend", "policy's reason", "answer", "latency", "tokens in/out", "cost",
                   "on gemini"):
        table.add_column(column, overflow="fold")
    for fields, shows, result in rows:
        # Model output, tool arguments and reasons are data, not markup: a stray "[/x]" in an answer would
        # otherwise be parsed as a closing tag (MarkupError) and "[tools: ...]" eaten as a style.
        answer = Text(_clip(result.text.strip().replace("\n", " ")))
        if result.tool_calls:
            calls = ", ".join(f"{c.name}({c.args}) → {c.outcome}" for c in result.tool_calls)
            answer = Text.assemble((f"[tools: {calls}] ", "magenta"), answer)
        if result.citations:
            answer.append(" [cited: " + ", ".join(c.chunk_id[:8] for c in result.citations) + "]", style="green")
        request = Text.assemble(fields["input"], "\n", (f"({shows})", "dim"))
        table.add_row(
            request, Text(result.backend), Text(result.decision.reason), answer,
            f"{result.latency_s * 1000:.0f} ms",
            f"{result.usage.input_tokens}/{result.usage.output_tokens}",
            _usd(result.cost_usd), _usd(result.cloud_equivalent_cost_usd),
        )
    return table


#: Span attributes shown in the tree, and their labels (each says what its value is: `cost_usd=`, not the attribute's
#: last word, `amount=`): a local model's cost is 0, so what the same tokens would cost on the reference cloud model
#: is shown beside it.
_SHOWN = {"genroute.backend": "backend", "genroute.policy": "policy", "gen_ai.provider.name": "provider",
          "gen_ai.usage.input_tokens": "input_tokens", "gen_ai.usage.output_tokens": "output_tokens",
          "gen_ai.usage.cost.amount": "cost_usd", "genroute.cloud_equivalent.cost.amount": "cloud_equivalent_usd",
          "genroute.cloud_equivalent.model": "cloud_model", "error.type": "error"}


def _shown(value: Any) -> str:
    """An attribute as the tree prints it: a float (a cost in USD) in plain decimals, to 10 places, without binary
    noise (``0.0000232``, not ``2.3199999999999998e-05``)."""
    if isinstance(value, float):
        return f"{value:.10f}".rstrip("0").rstrip(".") or "0"
    return str(value)


#: Span events shown under their span (a rung tried, a retried attempt), with the attributes each shows.
_EVENTS = {
    "genroute.rung": {"genroute.backend": "backend", "genroute.rung.outcome": "outcome",
                      "genroute.validator": "validator", "error.type": "error",
                      "gen_ai.usage.cost.amount": "cost_usd"},
    "genroute.retry": {"genroute.retry.attempt": "attempt", "error.type": "error",
                       "http.response.status_code": "status", "genroute.retry.wait_s": "wait_s"},
}


def _labelled(attributes: Any, shown: dict[str, str]) -> str:
    return " ".join(f"{label}={_shown(attributes[k])}" for k, label in shown.items() if k in attributes)


def span_tree(spans: Sequence[Any]) -> Tree:
    """The exported spans as a tree per trace, with durations and the key attributes."""
    children: dict[int | None, list[Any]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)
    root = Tree("[bold]trace[/]")

    def add(node: Tree, span: Any) -> None:
        ms = (span.end_time - span.start_time) / 1e6
        attrs = _labelled(span.attributes, _SHOWN)
        branch = node.add(f"{escape(span.name)} [cyan]{ms:.1f} ms[/] [dim]{escape(attrs)}[/]")
        if "genroute.reason" in span.attributes:  # why the policy chose: on its own line, it may be long
            branch.add(f"[dim]reason: {escape(str(span.attributes['genroute.reason']))}[/]")
        for event in span.events:  # each rung tried after the first, each retried attempt
            shown = _EVENTS.get(event.name)
            if shown is not None:
                branch.add(f"[yellow]{escape(event.name)}[/] [dim]{escape(_labelled(event.attributes, shown))}[/]")
        for child in sorted(children.get(span.context.span_id, []), key=lambda s: s.start_time):
            add(branch, child)

    for span in sorted(children.get(None, []), key=lambda s: s.start_time):
        add(root, span)
    return root
