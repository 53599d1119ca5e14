"""Index configuration, and how the automatic FAISS spec is chosen from N and d."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Points per centroid below which faiss's k-means warns that centroids are unreliable.
MIN_POINTS_PER_CENTROID = 39
#: Re-rank depth used by the automatic IVF-PQ spec. PQ codes order the close
#: neighbours of a query poorly (every candidate is within a few percent of the
#: same score), but the true top-10 almost always lies in the PQ top-100, and
#: scoring 100 raw vectors exactly costs ~40k multiply-adds per query.
AUTO_RERANK = 100
#: The id stored next to every code in an IVF inverted list.
ID_BYTES = 8


@dataclass
class IndexConfig:
    """How to build a :class:`~relsearch.index.VectorIndex`.

    ``spec`` is ``"auto"`` or any FAISS factory string (``"Flat"``, ``"IVF1024,PQ48"``,
    ``"HNSW32,Flat"``...). ``rerank`` is the number of candidates re-scored
    exactly with the raw vectors (0 = off, None = automatic: off for exact
    indexes, :data:`AUTO_RERANK` for IVF-PQ).
    """

    spec: str = "auto"
    exact_threshold: int = 20_000
    recall_target: float = 0.95
    rerank: int | None = None
    max_bytes_per_vector: int = 80
    #: queries sampled from the collection to tune nprobe (leave-one-out).
    tune_queries: int = 500

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip() or any(c.isspace() for c in self.spec):
            raise ValueError(
                f"spec must be 'auto' or a FAISS factory string without spaces, got {self.spec!r}"
            )
        if self.exact_threshold < 0:
            raise ValueError(f"exact_threshold must be >= 0, got {self.exact_threshold!r}")
        if not 0.0 < self.recall_target <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {self.recall_target!r}")
        if self.rerank is not None and not (isinstance(self.rerank, int) and 0 <= self.rerank <= 2048):
            raise ValueError(f"rerank must be None or an int in [0, 2048], got {self.rerank!r}")
        if self.max_bytes_per_vector < ID_BYTES + 1:
            raise ValueError(f"max_bytes_per_vector must be > {ID_BYTES}, got {self.max_bytes_per_vector!r}")
        if self.tune_queries < 10:
            raise ValueError(f"tune_queries must be >= 10, got {self.tune_queries!r}")

    @property
    def is_auto(self) -> bool:
        return self.spec.lower() == "auto"


def auto_nlist(n: int) -> int:
    """Number of IVF lists for ``n`` vectors.

    FAISS's guideline is 4..16 x sqrt(N), tuned for big machines where the
    coarse quantizer is cheap. Here both k-means training and assigning every
    added vector cost O(N * nlist * d), which dominates build time on a 2-core
    machine, so we take 2 x sqrt(N) (power of two: 2048 lists at 1M, 512 at
    100k). The lists get longer, but scanning PQ codes is cheap and the exact
    re-ranking fixes the order. Every centroid must keep >= 39 training points.
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    nlist = 2 ** max(0, round(math.log2(2 * math.sqrt(n))))
    while nlist > 1 and n < MIN_POINTS_PER_CENTROID * nlist:
        nlist //= 2
    return nlist


def train_size(n: int, nlist: int) -> int:
    """How many vectors to train an IVF index with ``nlist`` lists on.

    k-means cost is linear in the sample; centroids stop improving noticeably
    past ~64 points each, and faiss warns below 39. So: at least 40 per list,
    up to 256 per list while the sample stays under 100k (cheap), never more
    than we have.
    """
    return min(n, max(40 * nlist, min(256 * nlist, 100_000)))


def auto_pq(d: int, n: int, nlist: int, max_bytes: int) -> tuple[int, int]:
    """``(m, nbits)`` of the product quantizer for ``d``-dim vectors.

    One sub-quantizer per 8 dimensions (m = d/8: each 8-d slice gets 256
    centroids, the usual accuracy/size balance). Finer slices buy little once
    the top candidates are re-ranked exactly: at d=384, N=100k, PQ64 (6-d
    slices) trained 5x slower than PQ48 for +0.007 recall@10 at equal speed.
    m is then reduced to the largest divisor
    of d whose file stays within ``max_bytes`` per vector: m code bytes + 8 id
    bytes + the coarse centroids spread over the collection (nlist*d*4/N) +
    the PQ codebooks (256*d*4/N). At d=384, N=1M: m=48, ~60 bytes per vector.
    With too few training vectors for 256 centroids per slice (faiss wants 39
    points each) we use 4-bit codes (16 centroids).
    """
    nbits = 8 if train_size(n, nlist) >= MIN_POINTS_PER_CENTROID * 256 else 4
    overhead = (nlist * d * 4 + (1 << nbits) * d * 4) / max(n, 1)
    budget = max_bytes - ID_BYTES - overhead
    best = 1
    for m in range(1, d + 1):
        if d % m or m > max(1, d // 8):
            continue
        if m * nbits / 8 <= budget:
            best = m
    return best, nbits


def auto_spec(n: int, d: int, config: IndexConfig) -> str:
    """The FAISS factory string ``"auto"`` resolves to for ``n`` vectors of dimension ``d``."""
    if n < config.exact_threshold or n < MIN_POINTS_PER_CENTROID:
        # Below the threshold a flat scan is fast enough and exact: 20k x 384
        # floats is 30 MB, about a millisecond per query on one core, and there
        # is nothing to train or tune.
        return "Flat"
    nlist = auto_nlist(n)
    m, nbits = auto_pq(d, n, nlist, config.max_bytes_per_vector)
    return f"IVF{nlist},PQ{m}" + ("" if nbits == 8 else f"x{nbits}")
