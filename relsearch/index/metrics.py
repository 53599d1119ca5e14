"""Exact search and recall, the yardstick every approximate index is held to."""

from __future__ import annotations

import numpy as np

from relsearch.index._faiss import import_faiss


def exact_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-``k``.

    Returns ``(scores float32 [Q, k], positions int64 [Q, k])``; positions are
    row numbers of ``base``, ``-1`` (score ``-inf``) where ``base`` has fewer
    than ``k`` rows.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    base = np.ascontiguousarray(base, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if base.ndim != 2 or queries.ndim != 2 or base.shape[1] != queries.shape[1]:
        raise ValueError(f"shape mismatch: base {base.shape}, queries {queries.shape}")
    faiss = import_faiss()
    scores, ids = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    scores = scores.astype(np.float32, copy=False)
    ids = ids.astype(np.int64, copy=False)
    scores[ids < 0] = -np.inf
    return scores, ids


def recall_at(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    """Mean over queries of ``|found top-k ∩ true top-k| / k``.

    ``-1`` entries (padding) never count as found. When fewer than ``k`` true
    neighbours exist, the denominator is the number that do.
    """
    found = np.asarray(found_ids)[:, :k]
    true = np.asarray(true_ids)[:, :k]
    if found.shape[0] != true.shape[0]:
        raise ValueError(f"row count mismatch: {found.shape[0]} found vs {true.shape[0]} true")
    if found.shape[0] == 0:
        return float("nan")
    total = 0.0
    for f, t in zip(found, true):
        t = t[t >= 0]
        if len(t) == 0:
            total += 1.0
            continue
        total += len(np.intersect1d(f[f >= 0], t)) / min(k, len(t))
    return total / found.shape[0]
