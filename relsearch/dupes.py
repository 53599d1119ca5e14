"""``dupes``: groups of near-identical images in an index's attribute column.

Two kinds of group:

- ``exact``: files with the same bytes (sha256). The store keeps one record per
  content, so these are the records holding more than one path; no vector is needed.
- ``near``: records whose attribute vectors, PCA-whitened on the collection (see
  :func:`whiten`), have cosine similarity >= the threshold (resized, recompressed,
  slightly cropped or colour-shifted copies), joined into connected components.
  ``score`` is the lowest similarity among the edges found inside the group, so every
  member is linked to the group at least that closely.

Pairs come from a FAISS range search over the whitened vectors (never N^2 in Python):
a flat index up to :data:`FLAT_MAX` vectors (every pair considered, in BLAS), an
inverted file above it, where a near copy falls in its original's cell or one of the
:data:`NPROBE` cells nearest to it (recall measured with ``relsearch bench dupes``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError

#: Whitened cosine at or above which two images are near-duplicates, chosen on planted copies
#: (``relsearch bench dupes``; benchmarks/README.md has the sweep).
DEFAULT_THRESHOLD = 0.88
#: Above this many vectors the range search runs on an inverted file instead of all pairs.
FLAT_MAX = 20_000
#: Cells searched per vector by the inverted file.
NPROBE = 8
_CHUNK = 8192
#: Principal axes kept by the whitening.
REDUCED_DIM = 128
#: Variance added to every axis before whitening, as a fraction of the mean variance.
WHITEN_REG = 1.0


@dataclass
class DupeGroup:
    """One group of duplicate images."""

    kind: str  # "exact" | "near"
    paths: list[str]
    score: float
    ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "score": round(self.score, 6), "paths": self.paths}


@dataclass
class DupesResult:
    index: str
    encoder: str
    threshold: float
    images: int
    groups: list[DupeGroup]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "encoder": self.encoder, "threshold": self.threshold,
                "images": self.images, "groups": [g.to_dict() for g in self.groups],
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


# ------------------------------------------------------------------------- pairs
def whiten(x: np.ndarray, dim: int = 0, reg: float = 0.0, sample: int = 20_000) -> np.ndarray:
    """Unit rows of ``x`` PCA-whitened on the collection's own top ``dim`` axes.

    Pooled CNN features share a large common direction, and their first axes spread
    every picture along the same few "looks like a photo / like a drawing" themes, so
    plain cosine puts unrelated images of one kind above 0.97 while a strong JPEG
    recompression can fall below it. Centring and whitening (each axis divided by
    its standard deviation; ``reg`` times the mean variance added first, so weak axes
    do not turn into noise amplifiers) is the standard cure in copy detection.
    """
    dim = dim or REDUCED_DIM
    reg = reg or WHITEN_REG
    n, d = x.shape
    rows = np.random.default_rng(0).choice(n, min(n, sample), replace=False)
    mean = x[rows].mean(axis=0)
    xs = (x[rows] - mean).astype(np.float64)
    k = max(1, min(dim, d, len(rows) - 1))
    vals, vecs = np.linalg.eigh(xs.T @ xs / max(1, len(rows) - 1))  # ascending eigenvalues
    vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
    axes = (vecs / np.sqrt(np.maximum(vals, 0) + reg * max(float(vals.mean()), 1e-12))).astype(np.float32)
    out = np.empty((n, k), dtype=np.float32)
    for s in range(0, n, 32_768):
        out[s : s + 32_768] = (x[s : s + 32_768] - mean) @ axes
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def near_pairs(vectors: np.ndarray, threshold: float, nprobe: int = NPROBE,
               flat_max: int = FLAT_MAX) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows whose whitened cosine is >= ``threshold``: ``(i, j, sim)``, ``i < j``.

    ``vectors`` are the column's float32 rows; they are whitened with :func:`whiten`
    and searched by inner product with FAISS range search: flat (every pair) up to
    ``flat_max`` rows, an IVF-Flat index probing ``nprobe`` cells above.
    """
    from relsearch.index import _faiss

    faiss = _faiss.import_faiss()
    n = vectors.shape[0]
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if n < 2:
        return empty
    y = whiten(np.ascontiguousarray(vectors, dtype=np.float32))
    dr = y.shape[1]
    if n <= flat_max:
        index = faiss.IndexFlatIP(dr)
    else:
        nlist = int(max(64, min(4096, 4 * np.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dr), dr, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 32  # enough to route by; more only costs time
        rows = np.random.default_rng(0).choice(n, min(n, 32 * nlist), replace=False)
        index.train(y[np.sort(rows)])
        index.nprobe = min(nprobe, nlist)
    index.add(y)
    out_i, out_j, out_s = [], [], []
    for s in range(0, n, _CHUNK):
        lims, dist, labels = index.range_search(y[s : s + _CHUNK], float(threshold))
        qi = np.repeat(np.arange(s, s + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        keep = labels > qi  # each pair once, no self-match
        out_i.append(qi[keep])
        out_j.append(labels[keep].astype(np.int64))
        out_s.append(np.minimum(dist[keep], 1.0).astype(np.float32))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def components(n: int, i: np.ndarray, j: np.ndarray, sim: np.ndarray) -> list[tuple[list[int], float]]:
    """Connected components (of size >= 2) of the pair graph: ``(rows, lowest edge sim)``."""
    parent = np.arange(n)

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    touched = np.unique(np.concatenate([i, j])) if len(i) else np.empty(0, np.int64)
    roots = np.array([find(int(a)) for a in touched], dtype=np.int64)
    groups: dict[int, list[int]] = {}
    for a, r in zip(touched.tolist(), roots.tolist()):
        groups.setdefault(r, []).append(a)
    low: dict[int, float] = {}
    for a, s in zip(i.tolist(), sim.tolist()):
        r = find(a)
        low[r] = min(low.get(r, 1.0), s)
    return [(rows, low[r]) for r, rows in sorted(groups.items())]


# ------------------------------------------------------------------------- index
def find_dupes(index: str | os.PathLike[str], threshold: float = DEFAULT_THRESHOLD,
               encoder: str | None = None) -> DupesResult:
    """Exact and near-duplicate groups of an index, biggest first.

    ``encoder`` names the column (default: the index's first attribute column).
    """
    from relsearch.indexdir import open_index

    if not 0.0 < threshold <= 1.0:
        raise RelsearchError(f"--threshold must be in (0, 1], got {threshold}")
    t0 = time.perf_counter()
    with open_index(index) as opened:
        entries = opened.manifest.encoders
        name = encoder or next((n for n, e in entries.items() if e.kind != "relational"), None)
        if name is None:
            raise RelsearchError(
                f"index {index} has no attribute column (it has: {', '.join(entries)}); near-duplicates need "
                "one (build with e.g. --encoders relsim-mini,imagenet), or pass --encoder"
            )
        if name not in entries:
            raise RelsearchError(f"index {index} has no {name!r} column; it has: {', '.join(entries)}")
        records = {r.id: r for r in opened.store.iter_records()}
        ids, vecs = opened.store.all_vectors(name, entries[name].dim)
    t_load = time.perf_counter()
    i, j, sim = near_pairs(vecs, threshold)
    t_pairs = time.perf_counter()

    groups = [DupeGroup("exact", sorted(r.paths), 1.0, [r.id]) for r in records.values() if len(r.paths) > 1]
    for rows, low in components(len(ids), i, j, sim):
        members = sorted((records[int(ids[r])] for r in rows if int(ids[r]) in records), key=lambda r: r.path)
        if len(members) > 1:
            groups.append(DupeGroup("near", [p for r in members for p in r.paths], low, [r.id for r in members]))
    groups.sort(key=lambda g: (-len(g.paths), g.kind, g.paths[0]))
    return DupesResult(str(index), name, threshold, len(records), groups,
                       {"load": t_load - t0, "pairs": t_pairs - t_load, "total": time.perf_counter() - t0})
