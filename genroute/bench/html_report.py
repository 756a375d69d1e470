"""The HTML report a person opens: one self-contained page (charts embedded, no network, no CDN).

Every section's Markdown is rendered with markdown-it (tables as real ``<table>``s; images of the output
directory embedded as data URIs), and the page ends with a per-record view that a small inline script filters
by task (``#task=NAME`` in the address preselects one): for a live benchmark, where backends disagree (input,
gold, each backend's answer and score); for an outcome matrix, each candidate's score and the candidate each
compiled policy routed to (``#differ=1``: only the records where the policies' outcomes differ).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from genroute.bench.datasets import BenchRecord
    from genroute.bench.outcomes import OutcomeMatrix
    from genroute.bench.runner import Outcome

#: Records shown in the per-record view at most (the page stays small enough to open).
MAX_RECORDS = 500
_SNIPPET = 160

STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
         "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}th{background:#f3f3f3}"
         "td{text-align:right}td:first-child,td.text{text-align:left}img{max-width:100%}"
         "pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}.score{font-weight:bold}"
         ".s1{color:#176117}.s0{color:#a11}.answer{white-space:pre-wrap;max-width:28em}"
         "details summary{cursor:pointer}")

SCRIPT = """
(function (tableId, selectId, countId, onlyId) {
  var select = document.getElementById(selectId);
  var only = onlyId ? document.getElementById(onlyId) : null;
  var rows = document.querySelectorAll('#' + tableId + ' tbody tr');
  function apply() {
    var task = select.value, shown = 0;
    rows.forEach(function (row) {
      var on = (task === '' || row.getAttribute('data-task') === task) &&
               (!only || !only.checked || row.getAttribute('data-differ') === '1');
      row.style.display = on ? '' : 'none';
      if (on) { shown += 1; }
    });
    document.getElementById(countId).textContent = String(shown);
  }
  var wanted = decodeURIComponent((location.hash.match(/task=([^&]*)/) || [])[1] || '');
  if (wanted && Array.prototype.some.call(select.options, function (o) { return o.value === wanted; })) {
    select.value = wanted;
  }
  if (only && /(^#|&)differ=1/.test(location.hash)) { only.checked = true; }
  select.addEventListener('change', apply);
  if (only) { only.addEventListener('change', apply); }
  apply();
})(%s);
"""


def _filter_script(table_id: str, select_id: str, count_id: str, only_id: str | None = None) -> str:
    """The inline script filtering ``table_id``'s rows by task (and, with ``only_id``, by ``data-differ``)."""
    args = ", ".join(f"'{a}'" if a else "null" for a in (table_id, select_id, count_id, only_id))
    return f"<script>{SCRIPT % args}</script>"


def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table")


def render_markdown(text: str, out_dir: Path | None = None) -> str:
    """Markdown as HTML: tables as tables; ``![alt](file.png)`` of ``out_dir`` embedded as a data URI."""
    md = _markdown()
    default_image = md.renderer.rules.get("image")

    def image(_renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        src = token.attrGet("src") or ""
        path = (out_dir / src) if out_dir is not None and src and "/" not in src and ":" not in src else None
        if path is not None and path.is_file() and path.suffix.lower() == ".png":
            token.attrSet("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())
        return default_image(tokens, idx, options, env) if default_image else ""

    md.add_render_rule("image", image)
    return md.render(text)


def _cell_text(text: str) -> str:
    text = text.strip()
    if len(text) <= _SNIPPET:
        return html.escape(text)
    return f"<details><summary>{html.escape(text[:_SNIPPET])}…</summary>{html.escape(text)}</details>"


def disagreement_view(records: Sequence[BenchRecord], outcomes: Sequence[Outcome], *,
                      limit: int = MAX_RECORDS) -> str:
    """The records on which the targets' scores differ: input, gold, each target's answer and score."""
    from genroute.bench.scorers import gold_answers

    by_record: dict[str, dict[str, Outcome]] = {}
    targets: list[str] = []
    for o in outcomes:
        by_record.setdefault(o.record_id, {})[o.backend] = o
        if o.backend not in targets:
            targets.append(o.backend)
    rows: list[str] = []
    total = 0
    for record in records:
        got = by_record.get(record.id, {})
        scores = {round(o.score if o.ok else 0.0, 6) for o in got.values()}
        if len(got) < 2 or len(scores) < 2:
            continue
        total += 1
        if len(rows) >= limit:
            continue
        gold = record.label if record.label is not None else record.output or " | ".join(gold_answers(record))
        cells = [f"<td class=\"text\">{html.escape(record.task or '')}</td>",
                 f"<td class=\"text\">{html.escape(record.id)}</td>",
                 f"<td class=\"text\">{_cell_text(record.input)}</td>", f"<td class=\"text\">{_cell_text(gold)}</td>"]
        for target in targets:
            found = got.get(target)
            if found is None:
                cells.append("<td class=\"text\">–</td>")
                continue
            score = found.score if found.ok else 0.0
            answer = found.answer if found.ok or found.answer else f"[{found.error_type}] {found.error or ''}"
            cells.append(f"<td class=\"text\"><div class=\"score {_mark(score)}\">{score:.2f}</div>"
                         f"<div class=\"answer\">{_cell_text(answer)}</div></td>")
        task = html.escape(record.task or "", quote=True)
        rows.append(f"<tr data-task=\"{task}\">{''.join(cells)}</tr>")
    tasks = sorted({r.task or "" for r in records if r.id in by_record})
    options = "".join(f"<option value=\"{html.escape(t, quote=True)}\">{html.escape(t or '(no task)')}</option>"
                      for t in tasks)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["task", "record", "input", "gold", *targets])
    shown = min(total, limit)
    return (f"<p>{total} of {len(by_record)} records where the targets' scores differ"
            + (f" (the first {limit} shown)" if total > limit else "") + ". "
            f"<label>Task: <select id=\"task-filter\"><option value=\"\">all</option>{options}</select></label> "
            f"showing <span id=\"shown-count\">{shown}</span>.</p>"
            f"<table id=\"disagreements\"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + _filter_script("disagreements", "task-filter", "shown-count"))


def routing_view(matrix: OutcomeMatrix, policies: Mapping[str, Sequence[int]], *, limit: int = MAX_RECORDS) -> str:
    """Per evaluation record of an outcome matrix: the query, gold, every candidate's score and the candidate
    each compiled policy routed to (with that candidate's score). Records on which the policies' outcomes
    differ come first (``data-differ="1"``); records every candidate scores alike are left out."""
    names = list(policies)
    order, differ = [], {}
    for i in range(len(matrix.records)):
        if len({round(float(v), 6) for v in matrix.scores[i]}) < 2:
            continue
        got = {round(float(matrix.scores[i, int(policies[n][i])]), 6) for n in names}
        differ[i] = len(got) > 1
        order.append(i)
    order.sort(key=lambda i: not differ[i])  # stable: file order within each group
    rows = []
    for i in order[:limit]:
        record = matrix.records[i]
        cells = [f"<td class=\"text\">{html.escape(record.task or '')}</td>",
                 f"<td class=\"text\">{html.escape(record.id)}</td>",
                 f"<td class=\"text\">{_cell_text(record.input)}</td>",
                 f"<td class=\"text\">{_cell_text(record.output or '')}</td>"]
        for j in range(len(matrix.candidates)):
            score = float(matrix.scores[i, j])
            cells.append(f"<td class=\"score {_mark(score)}\">{score:.2f}</td>")
        for n in names:
            j = int(policies[n][i])
            score = float(matrix.scores[i, j])
            cells.append(f"<td class=\"text\"><span class=\"score {_mark(score)}\">{score:.2f}</span> "
                         f"{html.escape(matrix.candidates[j])}</td>")
        task = html.escape(record.task or "", quote=True)
        rows.append(f"<tr data-task=\"{task}\" data-differ=\"{int(differ[i])}\">{''.join(cells)}</tr>")
    tasks = sorted({r.task or "" for r in matrix.records})
    options = "".join(f"<option value=\"{html.escape(t, quote=True)}\">{html.escape(t or '(no task)')}</option>"
                      for t in tasks)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["task", "record", "query", "gold", *matrix.candidates])
    head += "".join(f"<th>routed by {html.escape(n)}</th>" for n in names)
    n_differ = sum(differ.values())
    return (f"<p>{len(order)} of {len(matrix.records)} evaluation records where the candidates' scores differ"
            + (f" (the first {limit} shown)" if len(order) > limit else "") +
            f"; on {n_differ} of them the compiled policies' outcomes differ (listed first). Candidate columns: "
            "each candidate's score; policy columns: the score of the candidate it routed to, and its name. "
            f"<label>Task: <select id=\"routing-task-filter\"><option value=\"\">all</option>{options}</select>"
            "</label> <label><input type=\"checkbox\" id=\"routing-only-differ\"> only where the policies' "
            f"outcomes differ</label> showing <span id=\"routing-shown-count\">{min(len(order), limit)}</span>.</p>"
            f"<table id=\"routing\"><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            + _filter_script("routing", "routing-task-filter", "routing-shown-count", "routing-only-differ"))


def _mark(score: float) -> str:
    return "s1" if score >= 1 else "s0" if score <= 0 else ""


def table_html(columns: Sequence[str], rows: Sequence[Sequence[str]], *, table_id: str) -> str:
    """A plain HTML table."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table id=\"{table_id}\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, summary_table: str, pareto: Path | None, sections: Sequence[tuple[str, str]], *,
         out_dir: Path | None = None, per_record: str | None = None,
         per_record_title: str = "Where backends disagree") -> str:
    """The whole page: the summary table, the Pareto chart, every section, the per-record view."""
    image = ""
    if pareto is not None and pareto.exists():
        data = base64.b64encode(pareto.read_bytes()).decode()
        image = f'<img id="pareto" alt="Pareto chart" src="data:image/png;base64,{data}">'
    parts = [f"<h2>{html.escape(t)}</h2><section>{render_markdown(text, out_dir)}</section>" for t, text in sections]
    if per_record is not None:
        parts.append(f"<h2>{html.escape(per_record_title)}</h2><section id=\"per-record\">{per_record}</section>")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"{summary_table}{image}{''.join(parts)}</body></html>\n")
