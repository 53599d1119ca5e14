"""Build-time nprobe tuning: the smallest nprobe (and, when needed, deeper exact
re-ranking) whose leave-one-out recall@k on the collection reaches the target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np

from relsearch.index.metrics import exact_search, recall_at
from relsearch.index.refine import VectorLookup
from relsearch.index.spec import IndexConfig

log = logging.getLogger(__name__)


class TunableIndex(Protocol):
    """What tuning needs of an IVF index (:class:`relsearch.index.faiss_index.VectorIndex` has it)."""

    nprobe: int
    rerank: int

    @property
    def nlist(self) -> int: ...

    @property
    def spec(self) -> str: ...

    def search(
        self, queries: np.ndarray, k: int, vector_lookup: VectorLookup | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

#: nprobe values tried when tuning, roughly x1.5 apart so the chosen one is
#: never far above what the recall target needs.
NPROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
#: Deepest automatic re-ranking (x4 the default) tried when tuning cannot reach
#: the recall target: 400 raw vectors per query is ~600 KB read from the store.
MAX_AUTO_RERANK = 400


def tune_nprobe(
    index: TunableIndex, vectors: np.ndarray, ids: np.ndarray, config: IndexConfig, train_rows: np.ndarray,
    k: int = 10,
) -> tuple[list[list[float]], float]:
    """Set ``index.nprobe`` (and ``rerank``) to the smallest whose leave-one-out recall@k reaches the target.

    ``vectors``/``ids`` are what the IVF ``index`` holds; ``train_rows`` the rows it was
    trained on. Returns the points tried, ``[nprobe, rerank, recall]``, and the recall
    of the chosen point.

    Queries are collection vectors held out of training when the
    collection is big enough; each one's own id is dropped from both the
    exact and the approximate result lists, so the estimate is for a new
    image that resembles the collection, not for finding itself.
    """
    n = vectors.shape[0]
    nq = min(config.tune_queries, n)
    rng = np.random.default_rng(1)
    held_out = np.setdiff1d(np.arange(n), train_rows, assume_unique=True)
    pool = held_out if len(held_out) >= nq else np.arange(n)
    rows = np.sort(rng.choice(pool, nq, replace=False))
    queries = vectors[rows]
    self_ids = ids[rows]
    kk = min(k, n - 1)
    if kk < 1:
        return [], float("nan")
    _, true_pos = exact_search(vectors, queries, kk + 1)
    true = drop_self(np.where(true_pos >= 0, ids[np.maximum(true_pos, 0)], -1), self_ids, kk)
    lookup = array_lookup(vectors, ids)

    def recall_at_nprobe(nprobe: int) -> float:
        index.nprobe = nprobe
        _, found = index.search(queries, kk + 1, vector_lookup=lookup)
        return recall_at(drop_self(found, self_ids, kk), true, kk)

    # Aim above the target: held-out collection vectors have closer neighbours
    # than new queries do (collections contain near-copies of themselves).
    target = min(config.recall_target + config.tune_margin, 1.0)
    reranks = [index.rerank]
    if config.rerank is None and index.rerank:
        # Automatic depth: if the codes are too coarse for the target at any
        # nprobe (high intrinsic dimension), re-rank deeper before giving up.
        reranks += [r for r in (2 * index.rerank, 4 * index.rerank) if r <= MAX_AUTO_RERANK]
    curve: list[list[float]] = []
    for rerank in reranks:
        index.rerank = rerank
        points = sweep_nprobe(recall_at_nprobe, index.nlist, target)
        curve += [[nprobe, rerank, r] for nprobe, r in points]
        if points[-1][1] >= target:
            break
    # Target reached: the last point. Otherwise the cheapest point of the
    # deepest re-ranking within 0.005 of the best recall seen there.
    last = [c for c in curve if c[1] == index.rerank]
    best = max(c[2] for c in last)
    chosen = (
        last[-1] if last[-1][2] >= target else next(c for c in last if c[2] >= best - 0.005)
    )
    index.nprobe = int(chosen[0])
    log.info("tuned %s: nprobe %d, rerank %d -> recall@%d %.3f (target %.2f, %d points tried)",
             index.spec, index.nprobe, index.rerank, kk, chosen[2], config.recall_target, len(curve))
    return curve, chosen[2]


def array_lookup(vectors: np.ndarray, ids: np.ndarray) -> VectorLookup:
    """Map ids -> rows of ``vectors`` (used while tuning, before the engine's store exists)."""
    order = np.argsort(ids)
    sorted_ids = ids[order]

    def lookup(want: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_ids, want)
        return vectors[order[pos]]

    return lookup


def sweep_nprobe(recall_of: Callable[[int], float], nlist: int, target: float) -> list[tuple[int, float]]:
    """Try nprobe = 1, 2, 3, 4, 6... until recall reaches ``target`` or stops rising."""
    points: list[tuple[int, float]] = []
    for nprobe in NPROBE_STEPS:
        if nprobe > nlist:
            break
        r = round(recall_of(nprobe), 5)
        points.append((nprobe, r))
        if r >= target:
            break
        if len(points) >= 3 and points[-3][1] + 0.002 >= r:
            # Plateau: the codes, not the probes, limit recall; more probes only cost time.
            break
    return points


def drop_self(found: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    out = np.full((found.shape[0], k), -1, dtype=np.int64)
    for i, (row, me) in enumerate(zip(found, self_ids)):
        kept = row[row != me][:k]
        out[i, : len(kept)] = kept
    return out
