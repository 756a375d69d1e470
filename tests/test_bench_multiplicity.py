"""Holm's correction over the comparisons one report table makes: a raw win the family does not support reads
"not resolved", a strong one still decides, and the report (text and JSON) says which correction over how many."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genroute.bench.datasets import BenchRecord
from genroute.bench.multiplicity import adjust_family, holm, hypothesis
from genroute.bench.run_report import report_outcomes
from genroute.bench.runner import Outcome
from genroute.bench.stats import compare_paired

# 40 records, three backends: (ace, base, mid) scores per record type and how many records of each.
# ace vs base: 8 records only ace got right, 1 only base did; ace vs mid: 10 vs 0; base vs mid: 3 vs 0.
TYPES = [((1, 0, 0), 8), ((1, 1, 0), 2), ((0, 1, 0), 1), ((1, 1, 1), 15), ((0, 0, 0), 14)]
SCORES = {name: [s[k] for s, count in TYPES for _ in range(count)] for k, name in enumerate(("ace", "base", "mid"))}
# McNemar's exact p by hand: 2 P(X <= min) with X ~ Bin(discordant, 1/2).
P_ACE_BASE = 2 * (1 + 9) / 2 ** 9   # 8 vs 1: 20/512 = 0.0390625
P_ACE_MID = 2 / 2 ** 10             # 10 vs 0: 0.001953125
P_BASE_MID = 2 / 2 ** 3             # 3 vs 0: 0.25
# Holm, m = 3: the smallest p times 3, the next times 2, the last times 1, each at least the one before.
HOLM_ACE_MID = 3 * P_ACE_MID        # 0.005859375 < 0.05: still a win
HOLM_ACE_BASE = 2 * P_ACE_BASE      # 0.078125 >= 0.05: not resolved
HOLM_BASE_MID = max(HOLM_ACE_BASE, P_BASE_MID)  # 0.25


def test_holm_adjusts_step_down_in_the_order_given() -> None:
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> made non-decreasing: 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.5]) == [1.0, 1.0] and holm([0.02]) == [0.02] and holm([]) == []


def test_a_raw_win_the_family_does_not_support_is_not_resolved_and_a_strong_one_still_decides() -> None:
    raw = [compare_paired(SCORES[a], SCORES[b], a=a, b=b, min_n=20)
           for a, b in (("ace", "base"), ("ace", "mid"), ("base", "mid"))]
    assert [c.mcnemar_p for c in raw] == pytest.approx([P_ACE_BASE, P_ACE_MID, P_BASE_MID])
    assert raw[0].ci[0] > 0 and raw[0].decision == "win"  # alone, ace beats base: the CI excludes 0, p < 0.05
    ace_base, ace_mid, base_mid = adjust_family(raw)
    assert ace_base.adjusted_p == pytest.approx(HOLM_ACE_BASE) and ace_base.ci == raw[0].ci
    assert (ace_base.decision, ace_base.resolved, ace_base.winner) == ("no_difference", False, None)
    assert ace_base.verdict.startswith("not resolved after Holm's correction over m = 3 comparisons (Holm-adjusted "
                                       "p = 0.0781, not below 0.05); unadjusted, ace wins: ace - base = +0.175")
    assert ace_base.short == "not resolved after Holm (m = 3)"
    assert ace_mid.adjusted_p == pytest.approx(HOLM_ACE_MID) and (ace_mid.decision, ace_mid.winner) == ("win", "ace")
    assert ace_mid.verdict.endswith("; Holm-adjusted p = 0.00586 (m = 3)") and ace_mid.short == "ace wins"
    assert base_mid.adjusted_p == pytest.approx(HOLM_BASE_MID) and base_mid.short == "no difference detected"
    assert {(c.adjustment, c.family_size) for c in (ace_base, ace_mid, base_mid)} == {("holm", 3)}


def test_a_row_without_a_verdict_is_not_in_the_family() -> None:
    small = compare_paired([1, 0, 1], [0, 0, 1], min_n=20)  # n = 3 < 20: no verdict, decides nothing
    strong = compare_paired(SCORES["ace"], SCORES["mid"], min_n=20)
    kept, adjusted = adjust_family([small, strong])
    assert kept == small and adjusted.family_size == 1 and adjusted.adjusted_p == pytest.approx(P_ACE_MID)


def test_the_bench_report_says_the_verdicts_are_corrected_and_over_how_many(tmp_path: Path) -> None:
    records = [BenchRecord(id=f"r{i:02d}", input=f"question {i}", output="x") for i in range(40)]
    outcomes = [Outcome(backend=name, record_id=r.id, ok=True, scorer="exact", score=float(scores[i]))
                for name, scores in SCORES.items() for i, r in enumerate(records)]
    report = report_outcomes(outcomes, records, tmp_path, kinds={n: "prompt" for n in SCORES}, compile=False)
    by_pair = {(c.a, c.b): c for c in report.comparisons}
    assert by_pair["ace", "base"].decision == "no_difference" and by_pair["ace", "mid"].decision == "win"
    dumped = json.loads(report.model_dump_json())["comparisons"]
    assert [(c["adjustment"], c["family_size"]) for c in dumped] == [("holm", 3)] * 3
    assert [c["adjusted_p"] for c in dumped] == pytest.approx([HOLM_ACE_BASE, HOLM_ACE_MID, HOLM_BASE_MID])
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "Holm-adjusted p (m)" in text and "corrected for the number of rows: Holm's" in text
    assert "| ace | base | 40 | 0.625 | 0.450 | +0.175 [" in text
    assert "| +0.175 [+0.029, +0.307] | 0.0391 | – | 0.0781 (3) | 0.198 | not resolved after Holm (m = 3) |" in text
    assert "| 0.00586 (3) |" in text and "| ace wins |" in text


def test_the_matrix_report_carries_the_correction_in_its_json_and_text(tmp_path: Path) -> None:
    from genroute.bench.offline import compile_outcomes
    from tests.test_bench_outcomes import synthetic

    rows = synthetic(30)
    for row in rows[:30:2]:  # C misses 15 math questions: the best single (C) is not per-task best (A, B)
        row["outcomes"]["C"]["score"] = 0.0
    report = compile_outcomes(rows, out_dir=tmp_path, learned=False, min_n=10)
    compiled = json.loads((tmp_path / "compiled.json").read_text(encoding="utf-8"))["comparisons"]
    # A row that repeats an earlier row's comparison (the same two score vectors) says so and is counted once.
    stated = [c for c in compiled if c["repeats"] is None]
    m = sum(c["decision"] != "no_verdict" for c in stated)
    assert m >= 2 and all(c["adjustment"] == "holm" and c["family_size"] == m for c in compiled)
    assert holm([c["p_value"] for c in stated]) == pytest.approx([c["adjusted_p"] for c in stated])
    assert all(c["adjusted_p"] >= c["p_value"] for c in compiled)
    text = Path(report.files["markdown"]).read_text(encoding="utf-8")
    assert f"corrected for the m = {m} comparisons below" in text and "Holm-adjusted p (m)" in text



def test_the_matrix_report_names_the_row_a_comparison_repeats_in_its_json(tmp_path: Path) -> None:
    """compiled.json's comparisons did not carry ``repeats`` as ``PairedComparison`` does: code reading it could tell
    a repeated row only by the verdict's words. Here the best single candidate (C) is the per-task best too, so
    "cost_aware vs per-task best" is the comparison "cost_aware vs best single" states."""
    from genroute.bench.offline import compile_outcomes
    from tests.test_bench_outcomes import synthetic

    report = compile_outcomes(synthetic(30), out_dir=tmp_path, learned=False, min_n=10)
    compiled = json.loads((tmp_path / "compiled.json").read_text(encoding="utf-8"))["comparisons"]
    first = "cost_aware (task label) vs best single (train)"
    assert [(c["router"], c["baseline"], c["repeats"]) for c in compiled] == [
        ("cost_aware (task label)", "best single (train)", None),
        ("cost_aware (task label)", "per-task best (train)", first)]
    assert compiled[1]["adjusted_p"] == compiled[0]["adjusted_p"] and compiled[1]["family_size"] == 1
    assert [c.repeats for c in report.comparisons] == [None, first]
    # The table prints each verdict whole, which names the row it repeats.
    text = Path(report.files["markdown"]).read_text(encoding="utf-8")
    (row,) = [line for line in text.splitlines() if line.startswith("| cost_aware (task label) | per-task best")]
    assert row.endswith(f"; the same comparison as {first}, counted once |")

# A compiled policy (ace) on 40 held-out records beside two backends, "best single" and "per-task best" being
# base's own scores: 4 rows, 2 comparisons. ace vs base: 9 records only ace got right, 1 only base did (McNemar
# 2 * 11 / 2^10); ace vs mid: 10 vs 0 (2 / 2^10).
HELD = [((1, 0, 0), 9), ((0, 1, 0), 1), ((1, 1, 0), 1), ((1, 1, 1), 15), ((0, 0, 0), 14)]
HELD_SCORES = {name: [s[k] for s, count in HELD for _ in range(count)] for k, name in enumerate(("ace", "base", "mid"))}
P_HELD_BASE = 2 * (1 + 10) / 2 ** 10  # 0.021484375
P_HELD_MID = 2 / 2 ** 10              # 0.001953125


def test_a_comparison_two_rows_repeat_counts_once_in_the_family() -> None:
    from genroute.bench.compile import CompileReport, HeldOutRow
    from genroute.bench.paired import compiled_comparisons

    def row(name: str, scores: list[int]) -> HeldOutRow:
        return HeldOutRow(name=name, quality=sum(scores) / 40, cost_per_request_usd=0.001, latency_p50_s=None,
                          scores={f"r{i:02d}": float(s) for i, s in enumerate(scores)})

    report = CompileReport(stats_path="stats.json", n_train=60, n_held_out=40, rows=(
        row("compiled learned", HELD_SCORES["ace"]), row("base", HELD_SCORES["base"]), row("mid", HELD_SCORES["mid"]),
        row("best single (train)", HELD_SCORES["base"]), row("per-task best (train)", HELD_SCORES["base"])))
    vs_base, vs_mid, vs_best, vs_per_task = compiled_comparisons(report, min_n=20)
    assert [c.b for c in (vs_base, vs_mid, vs_best, vs_per_task)] == ["base", "mid", "best single (train)",
                                                                      "per-task best (train)"]
    assert vs_base.mcnemar_p == pytest.approx(P_HELD_BASE) and vs_mid.mcnemar_p == pytest.approx(P_HELD_MID)
    # m = 2 distinct comparisons, not 4: Holm multiplies the smaller p by 2 and the larger by 1, so ace vs base
    # keeps p = 0.0215 < 0.05 and wins. Counted four times it read 3 * 0.0215 = 0.0645: not resolved.
    assert {c.family_size for c in (vs_base, vs_mid, vs_best, vs_per_task)} == {2}
    assert vs_mid.adjusted_p == pytest.approx(2 * P_HELD_MID)
    for c in (vs_base, vs_best, vs_per_task):  # the one comparison's verdict on every row that states it
        assert c.adjusted_p == pytest.approx(P_HELD_BASE)
        assert (c.decision, c.winner, c.short) == ("win", "compiled learned", "compiled learned wins")
    assert vs_best.verdict.endswith("; Holm-adjusted p = 0.0215 (m = 2); the same comparison as compiled learned "
                                    "vs base, counted once")
    assert "same comparison" not in vs_base.verdict and "same comparison" not in vs_mid.verdict
    # The row it repeats is a field, for code to read; the verdict's words are for people.
    assert [c.repeats for c in (vs_base, vs_mid, vs_best, vs_per_task)] == [
        None, None, "compiled learned vs base", "compiled learned vs base"]


def test_the_same_scores_on_other_records_are_two_comparisons_and_swapped_sides_one() -> None:
    from genroute.errors import UsageError

    a, b = HELD_SCORES["ace"], HELD_SCORES["base"]
    ab, ba = compare_paired(a, b, a="ace", b="base", min_n=20), compare_paired(b, a, a="base", b="ace", min_n=20)
    same = adjust_family([ab, ba], [hypothesis(a, b, range(40)), hypothesis(b, a, range(40))])
    assert [c.family_size for c in same] == [1, 1] and [c.adjusted_p for c in same] == pytest.approx([P_HELD_BASE] * 2)
    other = adjust_family([ab, ab], [hypothesis(a, b, range(40)), hypothesis(a, b, range(40, 80))])
    assert [c.family_size for c in other] == [2, 2]
    assert [c.adjusted_p for c in other] == pytest.approx([2 * P_HELD_BASE] * 2)
    with pytest.raises(UsageError) as err:
        adjust_family([ab, ba], [hypothesis(a, b)])
    assert err.value.field == "hypotheses"


def test_a_row_repeating_an_earlier_comparison_names_it_in_the_all_records_table(tmp_path: Path) -> None:
    """Two backends that scored alike record by record make "b vs c" the comparison "a vs c" already states: that
    row showed the first one's Holm p and m ("0.604 (2)", or "1 (1)" when every row is the one comparison) with no
    word of which row it repeats; the verdict cell now names it."""
    records = [BenchRecord(id=f"r{i}", input=f"question {i}", output="x") for i in range(30)]
    scores = {"a": lambda i: float(i % 3 != 0), "b": lambda i: float(i % 3 != 0), "c": lambda i: float(i % 2 == 0)}
    outcomes = [Outcome(backend=name, record_id=r.id, ok=True, scorer="exact", score=score(i))
                for name, score in scores.items() for i, r in enumerate(records)]
    report = report_outcomes(outcomes, records, tmp_path, kinds={}, compile=False)
    text = (tmp_path / "report.md").read_text(encoding="utf-8")
    rows = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line for line in text.splitlines()
            if line.startswith(("| a | ", "| b | "))}
    assert rows["| b | c"].endswith("| 0.604 (2) | 0.358 | no difference detected (the same comparison as a vs c) |")
    assert rows["| a | c"].endswith("| no difference detected |") and rows["| a | b"].endswith("detected |")
    assert report.comparisons[2].verdict.endswith("; the same comparison as a vs c, counted once")
    assert [c.repeats for c in report.comparisons] == [None, None, "a vs c"]


def test_the_table_names_the_repeated_row_from_the_field_not_from_the_verdicts_words() -> None:
    """The table found the row a comparison repeats by parsing its verdict's tail (``repeated_row``): a verdict with
    a note added after it (as the offline report adds "… sent every record to …") lost the name, and a verdict that
    merely ended in those words (from a backend's name) gained one. It reads ``PairedComparison.repeats``."""
    from genroute.bench.paired import comparison_rows

    a, b = HELD_SCORES["ace"], HELD_SCORES["base"]
    first, again = adjust_family([compare_paired(a, b, a="ace", b="base", min_n=20),
                                  compare_paired(a, b, a="ace", b="best single", min_n=20)],
                                 [hypothesis(a, b, range(40))] * 2)
    noted = again.model_copy(update={"verdict": again.verdict + "; ace sent every record to one backend"})
    worded = first.model_copy(update={"verdict": first.verdict + "; the same comparison as x vs y, counted once"})
    cells = [row[-1] for row in comparison_rows([first, noted, worded])]
    assert cells == ["ace wins", "ace wins (the same comparison as ace vs base)", "ace wins"]
