"""The stored examples as an ICL backend reads them: each one's task tag (``example_task``) and the counts per task its
facts report (``task_counts``), an example made safe to show in a prompt (``defused``), and one as the retrieval span
records it (``as_hit``). Pure functions of the records: the backend (``genroute.backends.icl``) selects and renders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from genroute.jsonl import whole_text

if TYPE_CHECKING:
    from genroute.knowledge.examples import ExampleRecord


def task_counts(tags: list[Any], tasks: tuple[str, ...]) -> dict[str, int]:
    """Examples per task, from each example's own task (``example_task``; None: untagged): its own if it has one,
    else each of the backend's configured ``tasks`` (a collection made for those tasks). Untagged examples of a
    backend without tasks count for no task: nothing says which task they teach. A tag reads as every reader reads a
    task (``whole_text``): 3 is task "3"; one that is no text (3.0, true: stored before example files were checked)
    counts for no task."""
    counts = dict.fromkeys(tasks, 0)
    for tag in tags:
        task = whole_text(tag)
        for name in tasks if task is None else [task] if isinstance(task, str) else []:
            counts[name] = counts.get(name, 0) + 1
    return counts


def example_task(meta: Any) -> Any:
    """A stored example's own ``metadata.task`` (its Chroma metadata holds the file's metadata as JSON), or None."""
    import json

    raw = (meta or {}).get("metadata")
    try:
        extra = json.loads(raw) if isinstance(raw, str) else {}
    except json.JSONDecodeError:
        extra = {}
    return extra.get("task") if isinstance(extra, dict) else None


def defused(example: ExampleRecord) -> ExampleRecord:
    """``example`` with turn and block markers in its input, output, label and metadata (keys too) neutralised.

    Stored examples are data like retrieved chunks: one must not be able to end its turn early or
    pose as another turn (``genroute.knowledge.hygiene``), whichever of its fields a template shows.
    """
    from dataclasses import replace

    from genroute.knowledge.hygiene import defuse

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return defuse(value)
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}  # a template may show the keys too
        if isinstance(value, list | tuple):
            return type(value)(clean(v) for v in value)
        return value

    label = defuse(example.label) if example.label is not None else None
    return replace(example, input=defuse(example.input), output=defuse(example.output),
                   label=label, metadata=clean(example.metadata))


def as_hit(example: ExampleRecord) -> Any:
    """``example`` as a retrieval hit (``record_hits``): its id, its input as text, its similarity as 1 - distance."""
    from genroute.knowledge.store import Hit

    score = example.score if example.score is not None else 1.0
    return Hit(id=example.id, text=example.input, metadata={}, distance=1.0 - score)
