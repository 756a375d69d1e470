"""Knowledge: Chroma collections of documents (RAG) and examples (ICL), ingestion and embedders.

Importing this package is cheap; Chroma and onnxruntime load on first use.
"""

from __future__ import annotations

from genroute.knowledge.examples import ExampleRecord, ExampleStore, aload_examples
from genroute.knowledge.ingest import IngestReport, aingest, ingest
from genroute.knowledge.ingest_command import ingest_paths
from genroute.knowledge.store import Hit, KnowledgeStore, build_store
from genroute.knowledge.store_config import StoreConfig

__all__ = [
    "ExampleRecord",
    "ExampleStore",
    "Hit",
    "IngestReport",
    "KnowledgeStore",
    "StoreConfig",
    "aingest",
    "aload_examples",
    "build_store",
    "ingest",
    "ingest_paths",
]
