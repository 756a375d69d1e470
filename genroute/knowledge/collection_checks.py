"""What a genroute collection records about itself, and the checks made when one is opened.

A collection records what it holds (documents, examples, routes) and which embedder filled it, at what width:
opening it with another embedder is a ``ConfigError`` rather than silently meaningless distances.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from genroute.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from genroute.knowledge.embedders import Embedder

_META_KIND = "genroute.kind"
_META_EMBEDDER = "genroute.embedder"
_META_EMBEDDER_KIND = "genroute.embedder_kind"
_META_DIMENSION = "genroute.dimension"
#: Collection metadata: every record of a file holds the keys of the directories above it (``record_dirs``).
DIR_KEYS = "genroute.dir_keys"
#: How to refill a collection of ingested records with another embedder: ingesting into this one is refused by this
#: very check. (Route collections are filled by the router: ``routes`` names their remedy.)
_REMEDY = " (or ingest into a new collection and use that one)"


def collection_metadata(kind: str, embedder: Embedder) -> dict[str, Any]:
    """The metadata a new collection of ``kind`` filled by ``embedder`` is made with."""
    made = {_META_KIND: kind, _META_EMBEDDER_KIND: embedder.name(), _META_EMBEDDER: embedder.model,
            _META_DIMENSION: embedder.dimension}
    return {**made, DIR_KEYS: 1} if kind in ("documents", "examples") else made


def check_collection(col: Any, kind: str, embedder: Embedder, *, field: str) -> None:
    """Refuse a collection that holds another kind (``UsageError`` naming ``field``) or was filled by another
    embedder or width (``ConfigError`` naming ``knowledge.embedder``)."""
    meta = col.metadata or {}
    have_kind = meta.get(_META_KIND)
    if have_kind is not None and have_kind != kind:
        raise UsageError(f"collection {col.name!r} holds {have_kind}, not {kind}", field=field)
    have = meta.get(_META_EMBEDDER)
    made_by = meta.get(_META_EMBEDDER_KIND, embedder.name())  # older collections lack it
    if (have is not None and have != embedder.model) or made_by != embedder.name():
        raise ConfigError(
            f"collection {col.name!r} was embedded with {have!r} ({made_by}); this store embeds with "
            f"{embedder.model!r} ({embedder.name()}): configure the same embedder{_remedy(kind)}",
            field="knowledge.embedder",
        )
    width = meta.get(_META_DIMENSION)
    if width is None:  # made outside genroute (it records no width): a stored vector says
        width = _stored_width(col)
    if width is not None and width != embedder.dimension:
        # Caught here, not as Chroma's dimension error on the first query or write.
        raise ConfigError(
            f"collection {col.name!r} holds {width}-wide vectors of {have or 'its embedder'}; this store "
            f"embeds {embedder.dimension}-wide: set the same dimension{_remedy(kind)}",
            field="knowledge.embedder.dimension",
        )


def _remedy(kind: str) -> str:
    return "" if kind == "routes" else _REMEDY


def _stored_width(col: Any) -> int | None:
    """The width of a vector ``col`` holds (``None`` when it holds none)."""
    embeddings = col.get(limit=1, include=["embeddings"]).get("embeddings")
    return len(embeddings[0]) if embeddings is not None and len(embeddings) else None


#: What Chroma accepts as a collection name: 3-512 of letters, digits, ``.``, ``_`` and ``-``, starting and ending
#: with a letter or digit.
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{1,510})[A-Za-z0-9]")


def check_collection_name(name: Any, field: str) -> None:
    """Refuse (``UsageError`` naming ``field``) a collection name Chroma would refuse."""
    if not isinstance(name, str) or not _COLLECTION_NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"collection names are 3-512 letters, digits, '.', '_' or '-', starting and ending with a "
                         f"letter or digit; got {name!r}", field=field)
