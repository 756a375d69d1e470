"""The HTML bench report as a person opens it: rendered by headless Chromium, its DOM checked.

Needs Debian's ``chromium`` (``scripts/install.sh`` installs it when run as root with apt-get). Without it the
test skips, except where ``GENROUTE_REQUIRE_CHROMIUM=1`` (CI sets it): there it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from genroute.bench.compile import compile_policy
from genroute.bench.datasets import BenchRecord
from genroute.bench.run_report import compiled_markdown
from genroute.bench.paired import backend_comparisons, comparison_markdown, compiled_comparisons, explain
from genroute.bench.report import summarize, write_report
from genroute.bench.runner import Outcome


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("GENROUTE_REQUIRE_CHROMIUM") == "1":
            pytest.fail("chromium is required here (GENROUTE_REQUIRE_CHROMIUM=1): apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return found


def dump_dom(path: Path, tmp_path: Path, fragment: str = "") -> str:
    """The page's DOM after its scripts ran, as headless Chromium renders it."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom", path.resolve().as_uri() + fragment]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


class Dom(HTMLParser):
    """Tables by id (rows of cell texts, each row's attributes), images, and text inside <pre>."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str | None], list[str]]]] = {}
        self.table_count = 0
        self.images: list[dict[str, str | None]] = []
        self.pre_text = ""
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._pre = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table_count += 1
            self._table = a.get("id") or f"table-{self.table_count}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
            self.tables[self._table].append((a, self._row))
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "pre":
            self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._pre:
            self.pre_text += data


def parse(dom: str) -> Dom:
    parser = Dom()
    parser.feed(dom)
    return parser


def bench_outputs(tmp_path: Path) -> Path:
    """Outcomes of three backends on two tasks, compiled and reported the way ``genroute bench`` does."""
    records, outcomes = [], []
    for i in range(40):
        task = "sentiment" if i % 2 else "intent"
        rid = f"{task}-{i}"
        records.append(BenchRecord(id=rid, input=f"text number {i} <b>bold</b>", output="positive", task=task))
        right = {"prompt": i % 3 == 0, "icl": i % 4 != 0, "tuned": task == "sentiment" or i % 5 == 0}
        for backend, cost in (("prompt", 1e-5), ("icl", 4e-5), ("tuned", 1.2e-5)):
            outcomes.append(Outcome(backend=backend, record_id=rid, task=task, ok=True, scorer="label_accuracy",
                                    score=float(right[backend]), answer="positive" if right[backend] else "negative",
                                    cost_usd=cost, latency_s=0.1, input_tokens=10))
    out = tmp_path / "out"
    compiled = compile_policy(outcomes, records, out, learned=False)
    held = compiled_comparisons(compiled, min_n=100)
    pairs = backend_comparisons(outcomes)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0.5, 0.9])
    fig.savefig(out / "curve.png")
    plt.close(fig)
    sections = [("Paired differences (all records)", explain() + "\n\n" + comparison_markdown(pairs)),
                ("Compiled policy (held-out split)", compiled_markdown(compiled, held, 100)),
                ("Graduation advisor", "Verdict: inconclusive.")]
    files = write_report(out, summarize(outcomes), title="bench", sections=sections, records=records,
                         outcomes=outcomes)
    return files["html"]


def test_the_html_report_renders_its_tables_charts_and_per_record_view(tmp_path: Path) -> None:
    page = bench_outputs(tmp_path)
    dom = parse(dump_dom(page, tmp_path))
    # Every table is a table: the summary, the paired differences, the compiled policy's rows and its
    # paired differences; none of them is Markdown text in a <pre>.
    assert "|---" not in dom.pre_text and "| router |" not in dom.pre_text
    summary = dom.tables["summary"]
    assert [cells[0] for _, cells in summary[1:]] == ["prompt", "icl", "tuned"]
    headers = {tuple(rows[0][1]) for rows in dom.tables.values() if rows}
    paired_header = ("A", "B", "n", "mean A", "mean B", "A − B [95 % CI, unadjusted]", "McNemar p", "sign-flip p",
                     "Holm-adjusted p (m)", "smallest detectable", "verdict")
    paired = [rows for rows in dom.tables.values() if rows and tuple(rows[0][1]) == paired_header]
    assert len(paired) == 2  # all records, and the compiled policy on the held-out split
    assert {(cells[0], cells[1]) for _, cells in paired[0][1:]} == {("prompt", "icl"), ("prompt", "tuned"),
                                                                     ("icl", "tuned")}
    assert all(cells[10] == "no verdict (n < 100)" for _, cells in paired[1][1:])
    assert ("router", "n", "quality [95 % CI]", "$/request", "p50 s", "routed to") in headers
    # The charts: the Pareto chart and the cost–quality curve, embedded.
    alts = {img.get("alt"): img.get("src") or "" for img in dom.images}
    assert alts["Pareto chart"].startswith("data:image/png;base64,")
    assert alts["cost-quality curve"].startswith("data:image/png;base64,")
    # The per-record view: only records where the backends disagree, each with input, gold, answers, scores.
    view = dom.tables["disagreements"]
    assert view[0][1] == ["task", "record", "input", "gold", "prompt", "icl", "tuned"]
    rows = view[1:]
    assert rows and all(attrs.get("style") in (None, "") for attrs, _ in rows)  # no filter: all shown
    for _, cells in rows:
        scores = {cell.split()[0] for cell in cells[4:]}
        assert len(scores) > 1 and cells[3] == "positive" and "<b>bold</b>" in cells[2]
    assert {cells[0] for _, cells in rows} == {"sentiment", "intent"}


def test_the_per_record_view_shows_gold_answers_kept_in_metadata() -> None:
    """A record whose gold is only metadata.answers (SQuAD-style) had an empty gold cell."""
    from genroute.bench.html_report import disagreement_view

    answers = [{"text": "Paris"}, "City of Paris"]
    record = BenchRecord(id="q1", input="Capital of France?", metadata={"answers": answers})
    outcomes = [Outcome(backend=b, record_id="q1", ok=True, score=s, scorer="token_f1", answer=a)
                for b, s, a in (("a", 1.0, "Paris"), ("b", 0.0, "Lyon"))]
    assert "<td class=\"text\">Paris | City of Paris</td>" in disagreement_view([record], outcomes)


def test_the_per_record_view_filters_by_task(tmp_path: Path) -> None:
    page = bench_outputs(tmp_path)
    dom = parse(dump_dom(page, tmp_path, "#task=sentiment"))
    rows = dom.tables["disagreements"][1:]
    shown = [cells for attrs, cells in rows if "display: none" not in (attrs.get("style") or "")]
    hidden = [cells for attrs, cells in rows if "display: none" in (attrs.get("style") or "")]
    assert shown and hidden
    assert {c[0] for c in shown} == {"sentiment"} and {c[0] for c in hidden} == {"intent"}


def test_compiled_section_refuses_or_forces_a_verdict_below_the_minimum(tmp_path: Path) -> None:
    records = [BenchRecord(id=f"r{i}", input=f"q{i}", output="a") for i in range(20)]
    outcomes = [Outcome(backend=b, record_id=r.id, ok=True, scorer="exact", cost_usd=c,
                        score=float(b == "good" or i % 2 == 0))
                for i, r in enumerate(records) for b, c in (("good", 2e-5), ("cheap", 1e-5))]
    compiled = compile_policy(outcomes, records, tmp_path, learned=False)
    refused = compiled_markdown(compiled, compiled_comparisons(compiled, min_n=100), 100)
    assert f"the held-out split has n = {compiled.n_held_out} records, below the minimum of 100" in refused
    assert "wins" not in refused
    forced = compiled_markdown(compiled, compiled_comparisons(compiled, min_n=100, force=True), 100)
    assert "were forced (--force-verdict)" in forced and "no verdict" not in forced
    enough = compiled_comparisons(compiled, min_n=compiled.n_held_out)
    assert all(c.decision != "no_verdict" for c in enough)
    # Each held-out row states its n and a 95 % bootstrap CI of its quality.
    cheap = {row.name: row for row in compiled.rows}["cheap"]
    low, high = cheap.quality_ci
    assert low < cheap.quality < high
    assert f"| cheap | {compiled.n_held_out} | {cheap.quality:.3f} [{low:.3f}, {high:.3f}] |" in refused


def outcomes_report(tmp_path: Path) -> Path:
    """``genroute bench --outcomes`` on a matrix where the best single candidate (C) misses a third of the
    trivia that B gets right: the per-task rule and cost_aware route differently from it there."""
    from genroute.bench.offline import compile_outcomes
    from tests.test_bench_outcomes import synthetic

    rows = synthetic(30)
    for n, row in enumerate(r for r in rows if r["metadata"]["task"] == "trivia"):
        if n % 3 == 0:
            row["outcomes"]["C"]["score"] = 0.0
    report = compile_outcomes(rows, out_dir=tmp_path / "outcomes", learned=False, min_n=10)
    return Path(report.files["html"])


def test_the_outcomes_report_shows_per_record_scores_and_routes(tmp_path: Path) -> None:
    dom = parse(dump_dom(outcomes_report(tmp_path), tmp_path))
    assert "|---" not in dom.pre_text
    view = dom.tables["routing"]
    assert view[0][1] == ["task", "record", "query", "gold", "A", "B", "C", "routed by best single (train)",
                          "routed by per-task best (train)", "routed by cost_aware (task label)"]
    rows = view[1:]
    assert rows and all(attrs.get("style") in (None, "") for attrs, _ in rows)
    for attrs, cells in rows:
        scores = [float(c) for c in cells[4:7]]
        routed = {c.split()[1]: float(c.split()[0]) for c in cells[7:]}  # "1.00 A" -> candidate and its score
        assert all(routed[name] == scores["ABC".index(name)] for name in routed)
        if cells[0] == "math":
            assert cells[7].endswith(" C") and cells[8].endswith(" A") and cells[9].endswith(" A")
        differ = len(set(routed.values())) > 1
        assert attrs.get("data-differ") == str(int(differ))
    differing = [cells for attrs, cells in rows if attrs.get("data-differ") == "1"]
    assert differing and {c[0] for c in differing} == {"trivia"}
    assert rows[: len(differing)] == [(a, c) for a, c in rows if a.get("data-differ") == "1"]  # listed first
    assert all(c[7] == "0.00 C" and c[8] == "1.00 B" for c in differing)


def test_the_outcomes_per_record_view_filters_by_task_and_disagreement(tmp_path: Path) -> None:
    page = outcomes_report(tmp_path)
    rows = parse(dump_dom(page, tmp_path, "#task=math")).tables["routing"][1:]
    shown = [cells for attrs, cells in rows if "display: none" not in (attrs.get("style") or "")]
    assert shown and {c[0] for c in shown} == {"math"} and len(shown) < len(rows)
    rows = parse(dump_dom(page, tmp_path, "#differ=1")).tables["routing"][1:]
    shown = [attrs for attrs, _ in rows if "display: none" not in (attrs.get("style") or "")]
    assert shown and all(a.get("data-differ") == "1" for a in shown) and len(shown) < len(rows)


def test_outcomes_given_in_memory_are_named_as_such(tmp_path: Path) -> None:
    from genroute.bench.offline import compile_outcomes
    from tests.test_bench_outcomes import synthetic

    report = compile_outcomes(synthetic(30), out_dir=tmp_path / "outcomes", learned=False, min_n=10)
    text = Path(report.files["markdown"]).read_text()
    assert "records of the outcomes given;" in text and "records of records" not in text
