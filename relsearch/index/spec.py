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
#: Where IVF-PQ inverted lists live: in the process ("memory") or in a
#: memory-mapped file beside the index ("ondisk", built in shards and merged).
LAYOUTS = ("auto", "memory", "ondisk")
#: Above this many vectors ``build-index`` builds the on-disk layout by itself.
#: In memory the automatic index is ~60 B/vector (codes + ids) in every serving
#: process, and building it holds all of it plus the raw vectors in one process;
#: at 10M that is 0.6 GB per server process and 15 GB of raw vectors per build,
#: past what a laptop-class machine should spend per index. On disk the serving
#: processes share one page cache and the build works shard by shard. Below it,
#: the in-memory 4-bit fast-scan index is faster (bench scale measures both).
ONDISK_THRESHOLD = 10_000_000
#: Recall margin added to the target when tuning nprobe on held-out collection
#: vectors: their neighbours are denser than those of a new query (a collection
#: has near-duplicates of itself), so new queries need a few more probes than
#: the held-out estimate says.
TUNE_MARGIN = 0.01


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
    #: "auto", "memory" or "ondisk"; a spec may carry it as a prefix ("ondisk:auto").
    layout: str = "auto"
    ondisk_threshold: int = ONDISK_THRESHOLD
    tune_margin: float = TUNE_MARGIN

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip() or any(c.isspace() for c in self.spec):
            raise ValueError(
                f"spec must be 'auto' or a FAISS factory string without spaces, got {self.spec!r}"
            )
        head, sep, rest = self.spec.partition(":")
        if sep:
            if head.lower() not in LAYOUTS[1:] or not rest:
                raise ValueError(f"spec prefix must be 'memory:' or 'ondisk:', got {self.spec!r}")
            self.layout, self.spec = head.lower(), rest
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if not 0.0 <= self.tune_margin < 0.5:
            raise ValueError(f"tune_margin must be in [0, 0.5), got {self.tune_margin!r}")
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

    def on_disk(self, n: int) -> bool:
        """Whether an index of ``n`` vectors gets on-disk inverted lists."""
        return self.layout == "ondisk" or (self.layout == "auto" and self.is_auto and n >= self.ondisk_threshold)


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
    the top candidates are re-ranked exactly: at d=384, PQ64 (6-d slices)
    trains several times slower than PQ48 for a negligible recall gain at
    equal speed (benchmarks/README.md, "ANN recall vs speed").
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


def fast_scan_nlist(n: int) -> int:
    """IVF lists for the in-memory fast-scan index: sqrt(N), as a power of two.

    Half of :func:`auto_nlist`. On real text embeddings (100k-class MiniLM
    vectors of prose, high intrinsic dimension) the coarse partition, not the
    codes, limits recall: true neighbours spread over many lists, and at
    recall@10 0.95 fewer, larger lists needed a smaller share of the
    collection scanned and ran faster (benchmarks/README.md, "ANN on real
    text vectors"). Scanning 4-bit codes is cheap, so long lists cost little.
    """
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    nlist = 2 ** max(0, round(math.log2(math.sqrt(n))))
    while nlist > 1 and n < MIN_POINTS_PER_CENTROID * nlist:
        nlist //= 2
    return nlist


def fast_scan_m(d: int, n: int, nlist: int, max_bytes: int) -> int | None:
    """Sub-quantizers of a 4-bit fast-scan PQ for ``d``-dim vectors, or None if none fits.

    One 4-bit sub-quantizer per 4 dimensions (m = d/4): the same code bytes as
    8-bit PQ with m = d/8, but 16 centroids per slice fit in SIMD registers, so
    the scan is a table shuffle instead of a memory look-up per code (several
    times faster), and twice the slices keep the accuracy. m must be even
    (codes are packed two per byte) and divide d; it is lowered until the
    index stays within ``max_bytes`` per vector.
    """
    overhead = (nlist * d * 4 + 16 * d * 4) / max(n, 1)
    best = None
    for m in range(2, d // 4 + 1, 2):
        if d % m == 0 and m / 2 + ID_BYTES + overhead <= max_bytes:
            best = m
    return best


def auto_spec(n: int, d: int, config: IndexConfig) -> str:
    """The FAISS factory string ``"auto"`` resolves to for ``n`` vectors of dimension ``d``.

    In memory: IVF with 4-bit fast-scan PQ (m = d/4), re-ranked exactly from
    the refine store. On disk (:meth:`IndexConfig.on_disk`): IVF with 8-bit PQ
    (m = d/8), because FAISS's on-disk lists hold plain codes, not fast-scan
    blocks.
    """
    if n < config.exact_threshold or n < MIN_POINTS_PER_CENTROID:
        # Below the threshold a flat scan is fast enough and exact (20k x 384
        # floats is 30 MB, one pass over memory per query), and there is
        # nothing to train or tune.
        return "Flat"
    if not config.on_disk(n):
        nlist = fast_scan_nlist(n)
        m4 = fast_scan_m(d, n, nlist, config.max_bytes_per_vector)
        if m4 is not None:
            return f"IVF{nlist},PQ{m4}x4fs"
    nlist = auto_nlist(n)
    m, nbits = auto_pq(d, n, nlist, config.max_bytes_per_vector)
    return f"IVF{nlist},PQ{m}" + ("" if nbits == 8 else f"x{nbits}")
