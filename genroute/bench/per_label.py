"""Recall per gold label, for runs scored by a label scorer: what overall accuracy hides on an imbalanced set.

A backend that always answers the majority label scores the majority's share of an imbalanced set (0.8 on a set
80 % "positive") and looks good in the summary table; here it shows recall 1 on that label, 0 on every other, and a
macro-averaged recall of 1/k, below the majority-class baseline's accuracy.

Which runs get it (``label_golds``): every ``label_accuracy`` run (the gold is the label, else the output); an
``exact`` or ``normalized_exact`` run when its gold outputs form a small set of labels: at least 2 distinct golds
(as the scorer compares them: stripped, or normalised), at most ``MAX_LABELS`` of them in any one task, no more
than half as many as there are labelled records (each label is, on average, the gold of 2 records or more: a
question-answering set whose answers hardly repeat is no classification) and no record with several gold
``answers``. Records of several tasks are labelled within their task ("task: label"), and the majority-class
baseline answers each task's most common label. A record whose gold is empty has no label: it is left out of the
section (named in ``LabelBreakdown.unlabeled``), the rest still reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field

from genroute.bench.intervals import exact_binomial_ci
from genroute.bench.md_table import markdown_row
from genroute.bench.scorers import gold_answers
from genroute.bench.text_match import label_key, names_label, normalize
from genroute.public_model import PublicModel

if TYPE_CHECKING:
    from genroute.bench.datasets import BenchRecord
    from genroute.bench.runner import Outcome

#: Scorers whose gold is a label; exact matches whose golds may be (``label_golds`` decides from the records).
LABEL_SCORERS = frozenset({"label_accuracy"})
EXACT_SCORERS = frozenset({"exact", "normalized_exact"})
#: Most distinct gold outputs one task of an exact-match run may have to be read as labels (BANKING77 has 77).
MAX_LABELS = 100
#: Labels a backend's table shows one by one (the most frequent); the rest are one row.
TOP_LABELS = 10
_SNIPPET = 40
#: Unlabelled records the overview names by id.
_NAMED = 5
#: Unlabeled record ids ``LabelBreakdown.unlabeled`` (and summary.json) lists at most; ``unlabeled_count`` has them all.
MAX_UNLABELED_IDS = 100

Key = tuple[str | None, str]  # (task, label)


class LabelRow(PublicModel):
    """How one target did on the records of one gold label."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str
    task: str | None = None
    gold: int = Field(description="Records whose gold is this label.")
    correct: int
    recall: float
    recall_ci: tuple[float, float] = Field(description="Exact (Clopper-Pearson) 95 % CI.")
    instead: str | None = Field(default=None, description="What the target answered most often when wrong: a "
                                "label, a quoted answer that names none, \"(failed)\" or \"(empty)\".")
    instead_n: int = 0


class LabelBreakdown(PublicModel):
    """A target's recall on every gold label, their macro average and the majority-class baseline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: int = Field(description="This target's rows on records with a gold label.")
    macro_recall: float = Field(description="Mean of the labels' recalls (each label weighs the same).")
    majority_answers: float = Field(description="Share of records the target answered with its task's majority "
                                    "label.")
    baseline_accuracy: float = Field(description="Accuracy of always answering each task's most common gold label.")
    baseline_macro_recall: float = Field(description="That baseline's macro recall: tasks / labels (1/k for one task).")
    labels: tuple[LabelRow, ...] = Field(description="Every gold label, most frequent first.")
    records: int = Field(default=0, description="Records of the run with a gold label: the baseline's n.")
    majority_gold: int = Field(default=0, description="Of them, those whose gold is their task's majority label.")
    majority_label: str = Field(default="", description="The first task's majority label (of a tie, the first "
                                "listed): the one the baseline answers in a run of one task.")
    unlabeled: tuple[str, ...] = Field(default=(), description="Ids of the run's records with an empty gold: no "
                                       "label, left out of this section (still scored in the backend table); the "
                                       f"first {MAX_UNLABELED_IDS} of them, ``unlabeled_count`` counts them all.")
    unlabeled_count: int = Field(default=0, description="How many of the run's records have an empty gold.")

    @property
    def accuracy(self) -> float:
        """Share of this target's labelled rows answered right."""
        return sum(r.correct for r in self.labels) / self.n


def _key_fn(scorer: str) -> Callable[[str], str]:
    """How ``scorer`` compares an answer with a gold: stripped (exact), normalised, or as a label is named."""
    if scorer == "exact":
        return str.strip
    if scorer == "normalized_exact":
        return normalize
    return lambda text: label_key(text.replace("_", " "))


def label_golds(scorer: str, records: Sequence[BenchRecord]) -> dict[str, Key] | None:
    """Record id -> (task, gold label) when ``scorer``'s golds are labels (module docstring), else ``None``. Golds
    the scorer compares as one ("Yes" and "yes." by ``normalized_exact``) are one label, written as first seen.
    A record whose gold is empty (as the scorer compares it) has no label and is not in the mapping."""
    if scorer in LABEL_SCORERS:
        golds = {r.id: (r.task, (r.label if r.label is not None else r.output).strip()) for r in records}
    elif scorer in EXACT_SCORERS:
        answers = {r.id: gold_answers(r) if scorer == "normalized_exact" else [r.output] for r in records}
        if any(len(a) != 1 for a in answers.values()):  # several gold answers: a question, not a class
            return None
        golds = {r.id: (r.task, answers[r.id][0].strip()) for r in records}
    else:
        return None
    key = _key_fn(scorer)
    golds = {i: g for i, g in golds.items() if key(g[1])}  # an empty gold is no label: left out, not fatal
    if not golds:
        return None
    distinct = {(t, key(g)) for t, g in golds.values()}
    per_task = Counter(t for t, _ in distinct)  # the cap is a task's: three tasks of 60 labels are small sets
    if scorer in EXACT_SCORERS and not (2 <= len(distinct) <= len(golds) / 2
                                        and max(per_task.values()) <= MAX_LABELS):
        return None
    shown: dict[Key, str] = {}
    for t, g in golds.values():
        shown.setdefault((t, key(g)), g)
    return {i: (t, shown[(t, key(g))]) for i, (t, g) in golds.items()}


def _answered(outcome: Outcome, labels: Mapping[str | None, Sequence[str]],
              index: Mapping[str | None, Mapping[str, str]], scorer: str) -> str:
    """The label ``outcome``'s answer names (of its task; ``index``: each task's labels by the scorer's key of
    them), else the answer quoted, "(failed)" or "(empty)"."""
    if not outcome.ok:
        return "(failed)"
    text = outcome.answer.strip()
    if not text:
        return "(empty)"
    found = index.get(outcome.task, {}).get(_key_fn(scorer)(text))
    if found is not None:
        return found
    if scorer in LABEL_SCORERS:  # "The answer is negative." names one label
        answer = label_key(text)
        named = [label for label in labels.get(outcome.task, ()) if names_label(text, answer, label)]
        if len(named) == 1:
            return named[0]
    one_line = " ".join(text.split())
    return f"“{one_line[:_SNIPPET]}{'…' if len(one_line) > _SNIPPET else ''}”"


def breakdowns(outcomes: Sequence[Outcome], records: Sequence[BenchRecord]) -> dict[str, LabelBreakdown]:
    """Each target's ``LabelBreakdown`` (in the order targets first appear), or none when the run's scorer is no
    label scorer (``label_golds``)."""
    if not outcomes:
        return {}
    scorer = outcomes[0].scorer
    golds = label_golds(scorer, records)
    if golds is None:
        return {}
    counts = Counter(golds.values())
    labels: dict[str | None, list[str]] = {}
    for task, label in counts:
        labels.setdefault(task, []).append(label)
    compare = _key_fn(scorer)
    index = {task: {compare(name): name for name in names} for task, names in labels.items()}
    order = sorted(counts, key=lambda k: (-counts[k], str(k[0]), k[1]))
    majority: dict[str | None, str] = {}
    for task, label in order:  # on a tie, the label the tables list first (and the overview names)
        majority.setdefault(task, label)
    on_baseline = sum(counts[(t, m)] for t, m in majority.items())
    unlabeled = [r.id for r in records if r.id not in golds]
    by_target: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if o.record_id in golds:
            by_target.setdefault(o.backend, []).append(o)
    result = {}
    for target, rows in by_target.items():
        right: Counter[Key] = Counter()
        misses: dict[Key, Counter[str]] = {}
        on_majority = 0
        for o in rows:
            gold = golds[o.record_id]
            said = _answered(o, labels, index, scorer)
            on_majority += said == majority[gold[0]]
            if o.ok and o.score >= 1.0:
                right[gold] += 1
            else:
                misses.setdefault(gold, Counter())[said] += 1
        seen = Counter(golds[o.record_id] for o in rows)
        label_rows = []
        for key in order:
            if not seen[key]:
                continue
            miss = misses.get(key, Counter()).most_common(1)
            label_rows.append(LabelRow(
                label=key[1], task=key[0], gold=seen[key], correct=right[key], recall=right[key] / seen[key],
                recall_ci=exact_binomial_ci(right[key], seen[key]), instead=miss[0][0] if miss else None,
                instead_n=miss[0][1] if miss else 0))
        result[target] = LabelBreakdown(
            n=len(rows), macro_recall=sum(r.recall for r in label_rows) / len(label_rows),
            majority_answers=on_majority / len(rows), baseline_accuracy=on_baseline / len(golds),
            baseline_macro_recall=len(labels) / len(counts), labels=tuple(label_rows), records=len(golds),
            majority_gold=on_baseline, majority_label=order[0][1],
            unlabeled=tuple(unlabeled[:MAX_UNLABELED_IDS]), unlabeled_count=len(unlabeled))
    return result


def _name(row: LabelRow, tasks: bool) -> str:
    return f"{row.task or '(no task)'}: {row.label}" if tasks else row.label


def _recall(correct: int, gold: int) -> str:
    low, high = exact_binomial_ci(correct, gold)
    return f"{correct / gold:.3f} [{low:.3f}, {high:.3f}]"


def _several_tasks(found: Mapping[str, LabelBreakdown]) -> bool:
    return len({r.task for b in found.values() for r in b.labels}) > 1


def per_label_overview(found: Mapping[str, LabelBreakdown]) -> str:
    """n, accuracy, macro recall, labels at recall 0 and answers of the majority label per target (on the records
    with a gold label); the baseline, on every such record of the run; the records left out for want of a label."""
    if not found:
        return ""
    first = next(iter(found.values()))
    lines = [markdown_row(["backend", "n", "accuracy", "macro recall", "labels at recall 0",
                           "answered the majority label"]), "|---|---|---|---|---|---|"]
    for target, b in found.items():
        zero = sum(r.recall == 0 for r in b.labels)
        lines.append(markdown_row([target, b.n, f"{b.accuracy:.3f}", f"{b.macro_recall:.3f}",
                                   f"{zero} of {len(b.labels)}", f"{b.majority_answers:.1%}"]))
    which = ("each task's most common gold label" if _several_tasks(found) else
             f"`{first.majority_label}`, the most common gold label")
    text = ("\n".join(lines) + f"\n\nMajority-class baseline: always answering {which} "
            f"({first.majority_gold} of the run's {first.records} labelled records) scores accuracy "
            f"{first.baseline_accuracy:.3f} and macro recall {first.baseline_macro_recall:.3f}. A backend whose "
            "accuracy is near the baseline's while its macro recall is far below it answers the majority label "
            "whatever the input: read its table of recall per label. n, accuracy and recall count a backend's "
            "rows on labelled records; recall is the share of a label's records answered right (exact 95 % CI); "
            "failed requests count as wrong.\n")
    if first.unlabeled_count:
        shown = ", ".join(f"`{i}`" for i in first.unlabeled[:_NAMED])
        more = f" and {first.unlabeled_count - _NAMED} more" if first.unlabeled_count > _NAMED else ""
        text += (f"\n{first.unlabeled_count} record(s) have an empty gold, so no label, and are left out of this "
                 f"section (the backend table scores them): {shown}{more}.\n")
    return text


def per_label_markdown(found: Mapping[str, LabelBreakdown], *, top: int = TOP_LABELS) -> str:
    """``per_label_overview`` and a table per target: its ``top`` most frequent labels, the rest in one row."""
    if not found:
        return ""
    tasks = _several_tasks(found)
    text = per_label_overview(found)
    for target, b in found.items():
        rows = [markdown_row(["label", "gold n", "recall (95% CI)", "answered instead most often"]),
                "|---|---|---|---|"]
        for r in b.labels[:top]:
            instead = f"{r.instead} ({r.instead_n} of {r.gold - r.correct})" if r.instead is not None else "–"
            rows.append(markdown_row([_name(r, tasks), r.gold, _recall(r.correct, r.gold), instead]))
        rest = b.labels[top:]
        if rest:
            gold, correct = sum(r.gold for r in rest), sum(r.correct for r in rest)
            zero = sum(r.recall == 0 for r in rest)
            rows.append(markdown_row([f"({len(rest)} more labels, pooled)", gold, _recall(correct, gold),
                                      f"{zero} of them at recall 0 (summary.json lists every label)"]))
        text += f"\n**{target}** (macro recall {b.macro_recall:.3f}):\n\n" + "\n".join(rows) + "\n"
    return text
