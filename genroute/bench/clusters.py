"""Repeated inputs in a paired comparison: the scores of records that share an input count as one input.

A benchmark or an outcome log may hold the same question many times (texts that differ only in case or runs of
whitespace are one input, as the held-out split reads them: ``genroute.knowledge.examples.input_key``). Its copies
are not independent evidence: 28 copies of one question answered right by A and wrong by B are one question A wins,
not 28. The comparison is therefore made on cluster means (the standard cluster-level, or "summary measure",
analysis): each distinct input's mean A score and mean B score, each input weighted once, then the paired
machinery over the inputs. An input seen once keeps its scores unchanged, so a comparison without repeats is the
record-level one.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

from genroute.errors import UsageError


def text_groups(texts: Sequence[str | None]) -> list[str]:
    """The input key of each text (``input_key``); a missing text (a request whose text was not captured) is an
    input of its own."""
    from genroute.knowledge.examples import input_key

    return [input_key(text) if text else f"#{i}" for i, text in enumerate(texts)]


def input_of(record_inputs: Iterable[tuple[str, str | None]]) -> dict[str, str]:
    """``{record id: input key}`` from ``(id, input text)`` pairs (``text_groups``)."""
    pairs = list(record_inputs)
    return dict(zip([rid for rid, _ in pairs], text_groups([text for _, text in pairs]), strict=True))


def groups_for(ids: Sequence[str], inputs: Mapping[str, str] | None) -> list[str] | None:
    """The input key of each id (an id ``inputs`` does not name is an input of its own); None without ``inputs``."""
    if inputs is None:
        return None
    return [inputs.get(i, f"id:{i}") for i in ids]


def sample_size(n: int, n_records: int | None) -> str:
    """A comparison's n as a table shows it: ``"33"``, or ``"6 inputs (33 records)"`` when some input repeats."""
    return str(n) if n_records is None else f"{n} inputs ({n_records} records)"


def cluster_means(a: Sequence[float], b: Sequence[float], groups: Sequence[Hashable]
                  ) -> tuple[list[float], list[float]]:
    """Each group's mean A and mean B score, groups in the order they first appear (a group of one record keeps
    its scores as they are). ``UsageError`` naming ``groups`` unless there is one group per pair."""
    import numpy as np

    from genroute.groups import input_means

    if len(groups) != len(a) or len(groups) != len(b):
        raise UsageError(f"one group per paired score is needed (got {len(groups)} groups for {len(a)} pairs)",
                         field="groups")
    means = input_means(np.column_stack([np.asarray(a, dtype=np.float64).reshape(-1),
                                         np.asarray(b, dtype=np.float64).reshape(-1)]), groups)
    return means[:, 0].tolist(), means[:, 1].tolist()
