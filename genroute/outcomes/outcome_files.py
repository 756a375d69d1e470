"""Outcome records from a file a user names (``genroute outcomes`` commands, ``read_outcome_file``): an outcome store
file, read through ``OutcomeStore``, or an outcome-matrix JSONL file, each line checked as ``genroute bench --outcomes``
checks it. The store itself (``genroute.outcomes.store``) neither reads nor knows these files."""

from __future__ import annotations

from pathlib import Path

from genroute.config_errors import not_a, pydantic_validated
from genroute.errors import UsageError
from genroute.outcomes.records import OutcomeRecord, check_sides, number_refusal
from genroute.outcomes.store import OutcomeStore


def read_outcome_file(path: str | Path, *, field: str = "outcomes") -> list[OutcomeRecord]:
    """Outcome records from a store file (``.db``/``.sqlite``) or an outcome-matrix JSONL file."""
    from pydantic import ValidationError

    from genroute.jsonl import existing_file, iter_records

    path = existing_file(path, field=field, what="outcome file")
    if path.suffix in {".db", ".sqlite", ".sqlite3"}:
        return OutcomeStore(path, field=field).records_sync()
    from genroute.bench.datasets import given_id

    records, seen = [], set()
    for lineno, raw in iter_records(path, field=field, what="outcome file"):  # .jsonl or .jsonl.gz
        try:
            record = pydantic_validated(OutcomeRecord, raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = f"{path.name}:{lineno}"
            raise UsageError(number_refusal(where, first) or not_a(where, "an outcome record", first),
                             field=field) from None
        # As genroute bench --outcomes reads the same file: a negative or infinite cost, a score outside [0, 1]
        # or a JSON true would otherwise crash the compile or be written into stats.json.
        check_sides(f"{path.name}:{lineno}", record, raw, field=field)
        # And its ids: the learned model trains on one record per id, so a file without ids (one id, "") trained
        # nothing, and an id given twice merged two records' outcomes.
        rid = given_id(record.metadata.get("id")) or f"record-{lineno}"
        if rid in seen:
            raise UsageError(f"{path.name}:{lineno}: duplicate record id {rid!r}", field=field)
        seen.add(rid)
        records.append(record.model_copy(update={"metadata": {**record.metadata, "id": rid}}))
    return records
