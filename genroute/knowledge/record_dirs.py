"""Which directories a stored record's file sits in, kept on the record so a re-ingest reads only its own directory.

Each record whose metadata names a ``source`` file also holds, for every directory above that file, a key named by
the directory's depth (``genroute.dir.<n>``, ``n`` = how many parts its path has) whose value is that directory's
path: ``/data/docs/a.txt`` holds ``genroute.dir.1 = "/"``, ``genroute.dir.2 = "/data"``,
``genroute.dir.3 = "/data/docs"``. Re-ingesting ``/data/docs`` then asks Chroma only for the records where
``genroute.dir.3`` is ``/data/docs`` (Chroma 1.0 matches no prefix of a string), so the records of the collection's
other directories are never read.

Records written before these keys existed get them once per collection (``ensure_dir_keys``, page by page, each
page one Chroma update that only adds keys); the collection's metadata then records that every record has them
(``DIR_KEYS``; a collection genroute makes records it from the start).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from genroute.knowledge.collection_checks import DIR_KEYS

if TYPE_CHECKING:
    from genroute.knowledge.store import KnowledgeStore

DIR_PREFIX = "genroute.dir."
#: Records read (or backfilled) per Chroma call when a directory's records are looked through.
PAGE = 1000


def dir_key(folder: Path) -> str:
    """The metadata key holding, on a record under ``folder``, the path of its ancestor at ``folder``'s depth."""
    return f"{DIR_PREFIX}{len(folder.parts)}"


def dir_keys(source: str) -> dict[str, str]:
    """The ``genroute.dir.<n>`` keys of a record of the file ``source`` (one per directory above it)."""
    return {dir_key(parent): str(parent) for parent in Path(source).parents}


def placed(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` with the directory keys of the ``source`` it names (as is when it names none)."""
    source = meta.get("source")
    return {**meta, **dir_keys(source)} if isinstance(source, str) and source else dict(meta)


def under(folders: Sequence[Path]) -> dict[str, Any]:
    """A Chroma filter matching the records of files under any of ``folders`` (resolved paths)."""
    clauses = [{dir_key(folder): str(folder)} for folder in sorted(set(folders))]
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


async def ensure_dir_keys(store: KnowledgeStore, collection: str, *, kind: Literal["documents", "examples"]) -> int:
    """Give the records of ``collection`` written before directory keys existed their keys, once; returns how many
    records were updated (0 once the collection is marked)."""
    if (await store.collection_meta(collection, kind=kind)).get(DIR_KEYS):
        return 0
    updated = 0
    # Updating keys neither adds nor removes records, so the pages' offsets stay put while they are written.
    async for page in store.metadata_pages(collection, None, kind=kind, size=PAGE):
        todo = {i: dir_keys(m["source"]) for i, m in page.items()
                if isinstance(m.get("source"), str) and m["source"] and any(
                    m.get(k) != v for k, v in dir_keys(m["source"]).items())}
        await store.update_metadatas(collection, sorted(todo), [todo[i] for i in sorted(todo)], kind=kind)
        updated += len(todo)
    await store.mark_collection(collection, {DIR_KEYS: 1}, kind=kind)
    return updated
