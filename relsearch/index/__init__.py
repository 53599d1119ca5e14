"""Vector indexes: one FAISS index per encoder, keyed by the engine's record ids.

faiss itself is imported on first use (see ``relsearch.index._faiss``).
"""

from __future__ import annotations

from relsearch.index.faiss_index import VectorIndex, check_spec, rerank_exact
from relsearch.index.metrics import exact_search, recall_at
from relsearch.index.spec import IndexConfig, auto_nlist, auto_pq, auto_spec, train_size

__all__ = [
    "IndexConfig",
    "VectorIndex",
    "auto_nlist",
    "auto_pq",
    "auto_spec",
    "check_spec",
    "exact_search",
    "recall_at",
    "rerank_exact",
    "train_size",
]
