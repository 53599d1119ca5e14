"""``dupes``: groups of identical and near-identical images in an index.

Two kinds of group:

- ``exact``: files with the same bytes (sha256). The store keeps one record per
  content, so these are the records holding more than one path; no vector is needed.
- ``near``: pictures that are copies of each other after resizing, recompression, a crop
  of a few percent or a slight brightness change, joined into connected components. A
  pair is near only when two tests agree:

  1. **vectors** (candidates): each record's nearest neighbours in the attribute column
     (FAISS k-NN, never all pairs) at or above a similarity. Below :data:`WHITEN_MIN`
     records the plain cosine is used: whitening fitted on a few hundred pictures, or on a
     collection of one kind, is unstable (it spreads a handful of axes to unit variance and
     calls unrelated pictures identical). From :data:`WHITEN_MIN` up, the vectors are
     PCA-whitened on the collection (see :func:`whiten`), which keeps the candidates few.
  2. **pixels** (:mod:`relsearch.dupes_check`): the two files are decoded and compared on
     their own (aligned detail correlation, colour grid, aspect, transparency); nothing
     is fitted on the collection. ``threshold`` applies to this score.

  A file that cannot be decoded any more is never grouped by the second test; the result
  counts such pairs in ``unchecked``. An exact group inside a near group is one member of
  it, with its other files as ``copies``, and is not listed again on its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError

#: Picture similarity (:func:`relsearch.dupes_check.similarity`) at or above which a
#: candidate pair is a near-duplicate (``relsearch bench dupes`` has the sweep).
DEFAULT_THRESHOLD = 0.9
#: Nearest neighbours per record that the vector stage proposes.
NEIGHBOURS = 10
#: Candidate similarity in the attribute column: plain cosine below WHITEN_MIN records,
#: whitened cosine from it up. Low on purpose: a small copy of a small picture moves far
#: in a CNN's space, and the pixel check, not this floor, decides.
RAW_CANDIDATE = 0.6
WHITENED_CANDIDATE = 0.6
WHITEN_MIN = 20_000
#: Above this many vectors the k-NN runs on an inverted file instead of a flat index.
FLAT_MAX = 20_000
#: Cells searched per vector by the inverted file.
NPROBE = 8
_CHUNK = 8192
#: Principal axes kept by the whitening.
REDUCED_DIM = 128
#: Variance added to every axis before whitening, as a fraction of the mean variance.
WHITEN_REG = 1.0


@dataclass
class DupeMember:
    """One picture of a near group: a file, the files with the same bytes, its best match."""

    path: str
    id: int
    copies: list[str] = field(default_factory=list)
    score: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "id": self.id, "copies": self.copies, "score": round(self.score, 6)}


@dataclass
class DupeGroup:
    """One group of duplicate images; ``paths`` lists every file of it, copies included."""

    kind: str  # "exact" | "near"
    paths: list[str]
    score: float
    ids: list[int] = field(default_factory=list)
    members: list[DupeMember] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "score": round(self.score, 6), "paths": self.paths,
                "members": [m.to_dict() for m in self.members]}


@dataclass
class DupesResult:
    index: str
    encoder: str
    threshold: float
    images: int
    groups: list[DupeGroup]
    seconds: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    unchecked: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "encoder": self.encoder, "threshold": self.threshold,
                "images": self.images, "groups": [g.to_dict() for g in self.groups],
                "candidates": self.candidates, "unchecked": self.unchecked,
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


# ------------------------------------------------------------------------- vectors
def whiten(x: np.ndarray, dim: int = 0, reg: float = 0.0, sample: int = 20_000) -> np.ndarray:
    """Unit rows of ``x`` PCA-whitened on the collection's own top ``dim`` axes.

    Pooled CNN features share a large common direction, and their first axes spread
    every picture along the same few "looks like a photo / like a drawing" themes, so
    plain cosine puts unrelated images of one kind close together. Centring and whitening
    (each axis divided by its standard deviation; ``reg`` times the mean variance added
    first, so weak axes do not turn into noise amplifiers) is the standard cure in copy
    detection, once there are enough rows to estimate the axes (:data:`WHITEN_MIN`).
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


def _knn_index(y: np.ndarray, flat_max: int, nprobe: int) -> Any:
    from relsearch.index import _faiss

    faiss = _faiss.import_faiss()
    n, d = y.shape
    if n <= flat_max:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(max(64, min(4096, 4 * np.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 32  # enough to route by; more only costs time
        rows = np.random.default_rng(0).choice(n, min(n, 32 * nlist), replace=False)
        index.train(y[np.sort(rows)])
        index.nprobe = min(nprobe, nlist)
    index.add(y)
    return index


def candidate_pairs(vectors: np.ndarray, neighbours: int = NEIGHBOURS, raw_min: float = RAW_CANDIDATE,
                    whitened_min: float = WHITENED_CANDIDATE, whiten_min: int = WHITEN_MIN,
                    flat_max: int = FLAT_MAX, nprobe: int = NPROBE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate near-duplicate pairs ``(i, j, sim)``, ``i < j``, each pair once.

    Every row's ``neighbours`` nearest rows (FAISS k-NN by inner product: flat up to
    ``flat_max`` rows, an IVF-Flat index probing ``nprobe`` cells above) at or above
    ``raw_min`` plain cosine, or, from ``whiten_min`` rows up, ``whitened_min`` cosine
    after :func:`whiten`.
    """
    n = vectors.shape[0]
    if n < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if n >= whiten_min:
        y, floor = whiten(x), whitened_min
    else:
        y, floor = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12), raw_min
    index = _knn_index(y, flat_max, nprobe)
    k = min(neighbours + 1, n)
    keys, sims = [], []
    for s in range(0, n, _CHUNK):
        sim, labels = index.search(y[s : s + _CHUNK], k)
        qi = np.repeat(np.arange(s, s + len(labels), dtype=np.int64), k)
        lab, sim = labels.ravel().astype(np.int64), sim.ravel()
        keep = (lab >= 0) & (lab != qi) & (sim >= floor)
        a, b = np.minimum(qi[keep], lab[keep]), np.maximum(qi[keep], lab[keep])
        keys.append(a * n + b)
        sims.append(np.minimum(sim[keep], 1.0).astype(np.float32))
    key, sim = np.concatenate(keys), np.concatenate(sims)
    key, first = np.unique(key, return_index=True)
    return key // n, key % n, sim[first]


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


# ------------------------------------------------------------------------- pixels
def pixel_scores(i: np.ndarray, j: np.ndarray, paths: Callable[[int], list[str]],
                 workers: int | None = None) -> np.ndarray:
    """:func:`relsearch.dupes_check.similarity` of each candidate pair (NaN where a file is unreadable).

    ``paths(row)`` lists the files of a row; the first one that decodes is compared.
    Each picture is decoded once, in ``workers`` threads (decoding releases the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    from relsearch.collection import DecodeError, default_workers
    from relsearch.dupes_check import signature, similarity

    def sig(row: int) -> Any:
        for p in paths(row):
            try:
                return signature(p)
            except DecodeError:
                continue
        return None

    rows = sorted(set(i.tolist()) | set(j.tolist()))
    with ThreadPoolExecutor(max_workers=max(1, min(4, workers or default_workers()))) as pool:
        sigs = dict(zip(rows, pool.map(sig, rows)))
    out = np.full(len(i), np.nan, dtype=np.float32)
    for k, (a, b) in enumerate(zip(i.tolist(), j.tolist())):
        if sigs[a] is not None and sigs[b] is not None:
            out[k] = similarity(sigs[a], sigs[b])
    return out


# ------------------------------------------------------------------------- groups
def make_groups(records: dict[int, Any], ids: np.ndarray, i: np.ndarray, j: np.ndarray, score: np.ndarray,
                threshold: float) -> list[DupeGroup]:
    """Near groups of the pairs scoring >= ``threshold``, then the exact groups not inside one.

    ``records`` maps record id to a record (``paths``); ``i``, ``j`` are rows of ``ids``.
    Biggest group first.
    """
    keep = np.nan_to_num(score, nan=-1.0) >= threshold
    i, j, s = i[keep], j[keep], score[keep]
    best: dict[int, float] = {}
    for a, b, v in zip(i.tolist(), j.tolist(), s.tolist()):
        best[a], best[b] = max(best.get(a, -1.0), v), max(best.get(b, -1.0), v)
    groups, in_near = [], set()
    for rows, low in components(len(ids), i, j, s):
        members = []
        for r in rows:
            rec = records.get(int(ids[r]))
            if rec is not None and rec.paths:
                ps = sorted(rec.paths)
                members.append(DupeMember(ps[0], rec.id, ps[1:], best[r]))
        members.sort(key=lambda m: m.path)
        if len(members) > 1:
            in_near.update(m.id for m in members)
            groups.append(DupeGroup("near", [p for m in members for p in (m.path, *m.copies)], low,
                                    [m.id for m in members], members))
    for rec in records.values():
        if len(rec.paths) > 1 and rec.id not in in_near:
            ps = sorted(rec.paths)
            groups.append(DupeGroup("exact", ps, 1.0, [rec.id], [DupeMember(ps[0], rec.id, ps[1:], 1.0)]))
    groups.sort(key=lambda g: (-len(g.paths), g.kind, g.paths[0]))
    return groups


# ------------------------------------------------------------------------- index
def _column(entries: dict[str, Any], index: Any, encoder: str | None) -> str:
    name = encoder or next((n for n, e in entries.items() if e.kind != "relational"), None)
    if name is None:
        raise RelsearchError(
            f"index {index} has no attribute column (it has: {', '.join(entries)}); near-duplicates need "
            "one (build with e.g. --encoders relsim-mini,imagenet), or pass --encoder"
        )
    if name not in entries:
        raise RelsearchError(f"index {index} has no {name!r} column; it has: {', '.join(entries)}")
    return name


def find_dupes(index: str | os.PathLike[str], threshold: float = DEFAULT_THRESHOLD,
               encoder: str | None = None, workers: int | None = None) -> DupesResult:
    """Exact and near-duplicate groups of an index, biggest first.

    ``encoder`` names the column the candidates come from (default: the index's first
    attribute column); ``threshold`` is the picture similarity a candidate pair needs.
    """
    from relsearch.indexdir import open_index

    if not 0.0 < threshold <= 1.0:
        raise RelsearchError(f"--threshold must be in (0, 1], got {threshold}")
    t0 = time.perf_counter()
    with open_index(index) as opened:
        entries = opened.manifest.encoders
        name = _column(entries, index, encoder)
        records = {r.id: r for r in opened.store.iter_records()}
        ids, vecs = opened.store.all_vectors(name, entries[name].dim)
    t_load = time.perf_counter()
    from relsearch.threads import native_threads, query_threads, threads_for

    with native_threads(threads_for(len(vecs))):  # a small collection: a bounded BLAS / OpenMP pool
        i, j, _ = candidate_pairs(vecs)
    t_cand = time.perf_counter()

    def paths(row: int) -> list[str]:
        rec = records.get(int(ids[row]))
        return sorted(rec.paths) if rec is not None else []

    with native_threads(query_threads()):  # tiny matrices per picture, in several decode threads
        score = pixel_scores(i, j, paths, workers)
    t_check = time.perf_counter()
    groups = make_groups(records, ids, i, j, score, threshold)
    return DupesResult(str(index), name, threshold, len(records), groups,
                       {"load": t_load - t0, "candidates": t_cand - t_load, "check": t_check - t_cand,
                        "total": time.perf_counter() - t0},
                       candidates=len(i), unchecked=int(np.isnan(score).sum()))
