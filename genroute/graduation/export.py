"""Step 1 of graduation: a tuning set from captured, labeled production traffic (deduplicated, split, validated)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pydantic import ConfigDict

from genroute.bounds import is_real, is_whole
from genroute.config_errors import check_list
from genroute.errors import UsageError
from genroute.jsonl import check_output_dir, write_jsonl
from genroute.outcomes.records import OutcomeRecord
from genroute.public_model import PublicModel
from genroute.tuning.data import DEFAULT_MAX_CHARS, Example


class TuningSet(PublicModel):
    """What the export kept, dropped and wrote."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str
    captured: int
    unique: int
    conflicting: int
    invalid: int
    train: int
    eval: int
    train_path: str
    eval_path: str

    def line(self) -> str:
        """One report line."""
        return (f"export: {self.captured} captured examples of task {self.task!r} -> {self.unique} unique "
                f"({self.conflicting} inputs with conflicting labels and {self.invalid} invalid dropped) -> "
                f"{self.train} train / {self.eval} eval ({self.train_path})")


def export_tuning_set(records: Sequence[OutcomeRecord], task: str, out_dir: str | Path, *, eval_share: float = 0.2,
                      seed: int = 0, min_examples: int = 20, max_chars: int = DEFAULT_MAX_CHARS) -> TuningSet:
    """Write ``train.jsonl`` and ``eval.jsonl`` (the shared example format) from ``task``'s captured records.

    Inputs that differ only in case, spacing or Unicode composition are one example (``input_key``, as the promotion
    decision and the bench read a repeat); when their accepted outputs disagree the majority
    wins, and a tie drops the input. Every kept example is checked as ``genroute tune`` checks its files. The
    split is seeded and by example, so no input is on both sides.
    """
    from genroute.graduation.promote import check_names

    records = check_list(records, OutcomeRecord, field="records")
    check_names(task=task)
    if not is_real(eval_share) or not 0.0 <= eval_share < 1.0:  # "0.2" was a TypeError
        raise UsageError(f"must be a number in [0, 1) (got {eval_share!r:.40})", field="eval_share")
    if not is_whole(min_examples) or min_examples < 1:
        raise UsageError(f"must be an integer >= 1 (got {min_examples!r})", field="min_examples")
    if not is_whole(max_chars) or max_chars < 1:
        raise UsageError(f"must be an integer >= 1 (got {max_chars!r:.40})", field="max_chars")
    check_output_dir(out_dir, field="out_dir")  # a FileExistsError (or a TypeError for None) once all was read
    from genroute.knowledge.examples import input_key

    captured = [r for r in records if r.task == task and r.input and r.output]
    groups: dict[str, list[OutcomeRecord]] = {}
    for record in captured:
        groups.setdefault(input_key(record.input or ""), []).append(record)
    examples: list[Example] = []
    conflicting = invalid = 0
    for group in groups.values():
        votes = Counter(r.output for r in group).most_common()
        if len(votes) > 1 and votes[0][1] == votes[1][1]:
            conflicting += 1
            continue
        first = next(r for r in group if r.output == votes[0][0])
        text_in, text_out = first.input or "", votes[0][0] or ""
        if not text_in.strip() or not text_out.strip() or len(text_in) + len(text_out) > max_chars:
            invalid += 1
            continue
        examples.append(Example(input=text_in, output=text_out, label=text_out,
                                metadata={"id": first.id, "task": task}))
    if len(examples) < min_examples:
        raise UsageError(f"task {task!r} has {len(examples)} usable captured examples; graduation needs at least "
                         f"{min_examples} (turn on outcomes.capture and send feedback with labels)", field="task")
    random.Random(seed).shuffle(examples)
    n_eval = int(round(len(examples) * eval_share))
    evals, trains = examples[:n_eval], examples[n_eval:]
    if not trains:
        raise UsageError(f"keeps all {len(examples)} usable examples of task {task!r} out of tuning, none to tune on",
                         field="eval_share")
    # Absolute: `genroute graduate --decide`, maybe run from another directory, reads train.jsonl's inputs through the
    # saved report (the inputs the challenger was tuned on are left out of its promotion).
    out = Path(out_dir).resolve()
    dump = [{"input": e.input, "output": e.output, "label": e.label, "metadata": e.metadata} for e in trains]
    train_path = write_jsonl(out / "train.jsonl", dump)
    eval_path = write_jsonl(out / "eval.jsonl", [{"input": e.input, "output": e.output, "label": e.label,
                                                   "metadata": e.metadata} for e in evals])
    return TuningSet(task=task, captured=len(captured), unique=len(groups), conflicting=conflicting, invalid=invalid,
                     train=len(trains), eval=len(evals), train_path=str(train_path), eval_path=str(eval_path))
