"""The refine store: one generation's raw vectors, contiguous and memory-mapped.

IVF-PQ finds candidates from compressed codes; the exact re-ranking then needs
the raw float32 vector of each of the top ``rerank`` candidates. Fetching them
from LMDB costs one B-tree look-up and one copy per candidate: ~100 look-ups
per query dominated search time, slower than exact search on a batch
(benchmarks/README.md, "ANN on real text vectors"). This file holds the same
vectors sorted by record id, so a look-up is one ``searchsorted`` over the ids
and one fancy-indexed gather from a memory map: no per-row Python, no copies
beyond the gathered rows, and the operating system's page cache (shared by
every process that serves the index) keeps the hot rows.

It is written beside the FAISS file of the same generation
(``<encoder>.<G>.vecs`` next to ``<encoder>.<G>.faiss``), atomically, so a
generation's index and its raw vectors always match and are replaced together.

File layout (little-endian)::

    b"RSVECS1\\n"            magic, 8 bytes
    uint64 n, uint64 d       rows and dimension
    int64  ids[n]            ascending record ids
    padding to 64 bytes
    float32 vectors[n, d]    row i is the vector of ids[i]
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError
from relsearch.safe_io import open_regular, read_fd

#: ids -> their raw float32 vectors ``[len(ids), d]``, what exact re-ranking reads.
VectorLookup = Callable[[np.ndarray], np.ndarray]

MAGIC = b"RSVECS1\n"
SUFFIX = ".vecs"
_HEADER = struct.Struct("<QQ")
_ALIGN = 64
#: Rows copied per write when a store is rewritten (64k x 384 floats = 96 MB).
_CHUNK = 65_536
#: Largest squared norm a stored (unit) vector may have, float32 rounding included.
_MAX_SQ_NORM = 1.0 + 1e-3


def refine_path(faiss_file: str | os.PathLike[str]) -> Path:
    """Where the refine store of the FAISS file ``faiss_file`` lives."""
    return Path(faiss_file).with_suffix(SUFFIX)


def _vectors_offset(n: int) -> int:
    end = len(MAGIC) + _HEADER.size + 8 * n
    return -(-end // _ALIGN) * _ALIGN


class RefineStore:
    """Read-only, memory-mapped raw vectors keyed by record id."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            # a FIFO or device in its place is refused here instead of blocking the open
            fd, st = open_regular(self.path)
        except OSError as e:
            raise RelsearchError(f"cannot read refine store {self.path}: {e.strerror or e}") from None
        try:
            self._open(fd, st.st_size)
        finally:
            os.close(fd)

    def _open(self, fd: int, size: int) -> None:
        try:
            head = read_fd(fd, len(MAGIC) + _HEADER.size, str(self.path))
        except OSError as e:
            raise RelsearchError(f"cannot read refine store {self.path}: {e.strerror or e}") from None
        if len(head) < len(MAGIC) + _HEADER.size or head[: len(MAGIC)] != MAGIC:
            raise self.damaged("bad magic")
        n, d = _HEADER.unpack_from(head, len(MAGIC))
        off = _vectors_offset(n)
        if size != off + 4 * n * d:
            raise self.damaged(f"{size} bytes, expected {off + 4 * n * d}")
        self.n, self.dim = int(n), int(d)
        # Two read-only maps of one file: the ids (8 B/vector, soon resident)
        # and the rows (paged in on demand).
        # One read-only map of the whole file, viewed as plain ndarrays (no
        # np.memmap bookkeeping per call, which shows at one query at a time).
        self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):
            # Re-ranking reads ~100 scattered rows per query: without this the
            # kernel maps (and reads ahead) 64 KB around every touched row, so a
            # query process would soon hold the whole file resident.
            self._map.madvise(mmap.MADV_RANDOM)
        self.ids = np.frombuffer(self._map, dtype=np.int64, count=n, offset=len(MAGIC) + _HEADER.size)
        self.vectors = np.frombuffer(self._map, dtype=np.float32, count=n * d, offset=off).reshape(n, d)
        # Ids handed out in order with no deletions since (a fresh build) map to
        # rows by subtraction; otherwise by binary search over the id column.
        self._dense = bool(n) and int(self.ids[-1]) - int(self.ids[0]) == n - 1
        self._first = int(self.ids[0]) if n else 0
        if n > 1 and not bool((self.ids[1:] > self.ids[:-1]).all()):
            # unsorted ids would send look-ups to the wrong rows (or none)
            raise self.damaged("its ids are not in ascending order")

    def damaged(self, why: str) -> RelsearchError:
        """The one-line error for a store whose content is not what the build wrote."""
        return RelsearchError(f"corrupt refine store {self.path}: {why}; run: relsearch verify --repair "
                              f"--index {self.path.parent.parent}")

    def check_rows(self, rows: np.ndarray) -> None:
        """Raise :meth:`damaged` unless the stored vectors at ``rows`` are finite and no longer
        than a unit vector. Every encoder stores unit vectors, so a longer row is damage
        (random bytes read as float32 are huge or NaN) and would rank first with an
        absurd score; the check costs one pass over the rows about to be returned."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if not len(rows):
            return
        picked = self.vectors[rows]
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.einsum("ij,ij->i", picked, picked, dtype=np.float64)
        if not bool(np.isfinite(norms).all()) or float(norms.max()) > _MAX_SQ_NORM:
            raise self.damaged("stored vectors are not unit vectors")

    def __len__(self) -> int:
        return self.n

    def rows_or_minus1(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 for padding (negative ids); ids must otherwise be in the store."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._dense:
            return np.where(ids >= 0, ids - self._first, -1)
        valid = ids >= 0
        rows = np.full(ids.shape, -1, dtype=np.int64)
        rows[valid] = self.positions(ids[valid])
        return rows

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of each query among its candidate ids: ``(scores [Q, k], ids [Q, k])``.

        Gather, inner products and selection run in one FAISS call over the
        memory-mapped rows (multi-threaded for batches, no Python per query);
        missing results are padded with score ``-inf`` and id -1.
        """
        from relsearch.index._faiss import import_faiss

        faiss = import_faiss()
        q = np.ascontiguousarray(queries, dtype=np.float32)
        cand = np.ascontiguousarray(candidates, dtype=np.int64)
        nq, r = cand.shape
        rows = np.ascontiguousarray(self.rows_or_minus1(cand))
        scores = np.empty((nq, k), dtype=np.float32)
        found = np.empty((nq, k), dtype=np.int64)
        if nq and r and self.n:
            faiss.knn_inner_products_by_idx(
                faiss.swig_ptr(q), faiss.swig_ptr(self.vectors), faiss.swig_ptr(rows), self.dim, nq, self.n, r, k,
                faiss.swig_ptr(scores), faiss.swig_ptr(found), r,
            )
        else:
            found.fill(-1)
        missing = found < 0
        self.check_rows(found[~missing])
        scores[missing] = -np.inf
        ids = self.ids[np.maximum(found, 0)] if self.n else found
        ids[missing] = -1
        return scores, ids

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id; an id not in the store raises KeyError."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self.n == 0:
            raise KeyError(f"ids not in the refine store: {ids[:5].tolist()}")
        pos = np.searchsorted(self.ids, ids)
        np.minimum(pos, self.n - 1, out=pos)
        if not np.array_equal(self.ids[pos], ids):
            raise KeyError(f"ids not in the refine store: {ids[self.ids[pos] != ids][:5].tolist()}")
        return pos

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """The raw vectors of ``ids`` as float32 ``[len(ids), d]`` (a ``VectorLookup``)."""
        pos = self.positions(ids)
        self.check_rows(pos)
        return self.vectors[pos]

    def resident_ids(self) -> np.ndarray:
        return np.asarray(self.ids)


def write_refine_store(
    path: str | os.PathLike[str],
    ids: np.ndarray,
    vectors: np.ndarray,
) -> Path:
    """Write ``vectors`` (row i under ``ids[i]``) sorted by id, atomically; returns the path.

    ``vectors`` may be any array-like indexable by a row array (a memory map
    too): rows are gathered and written in chunks, so memory stays bounded by
    the chunk, not by the collection.
    """
    path = Path(path)
    ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))
    if len(vectors) != len(ids):
        raise ValueError(f"need one vector per id, got {len(vectors)} for {len(ids)}")
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    if len(sorted_ids) > 1 and not (np.diff(sorted_ids) > 0).all():
        raise ValueError("ids must be unique")
    n = len(ids)
    d = int(vectors.shape[1])
    off = _vectors_offset(n)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=path.parent)
    except OSError as e:
        raise RelsearchError(f"cannot write refine store {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC)
            f.write(_HEADER.pack(n, d))
            f.write(sorted_ids.tobytes())
            f.write(b"\0" * (off - f.tell()))
            for s in range(0, n, _CHUNK):
                rows = order[s : s + _CHUNK]
                f.write(np.ascontiguousarray(np.asarray(vectors[rows]), dtype=np.float32).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _unlink_quietly(tmp)
        raise RelsearchError(f"cannot write refine store {path}: {e.strerror or e}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


class _Concat:
    """Rows of several arrays addressed as one (gathers without concatenating them)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.starts[-1]), int(parts[0].shape[1]) if parts else 0)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        which = np.searchsorted(self.starts, rows, side="right") - 1
        for i, part in enumerate(self.parts):
            sel = which == i
            if sel.any():
                out[sel] = part[rows[sel] - self.starts[i]]
        return out


def write_updated_store(
    path: str | os.PathLike[str],
    previous: RefineStore,
    remove_ids: np.ndarray,
    add_ids: np.ndarray,
    add_vectors: np.ndarray,
) -> Path:
    """The next generation's store: ``previous`` less ``remove_ids`` plus the added rows.

    Reads the previous store through its memory map in chunks, so an
    incremental build never holds the whole collection in memory. An id both
    removed and added (a changed file) takes its new vector.
    """
    remove = np.asarray(remove_ids, dtype=np.int64).reshape(-1)
    add_ids = np.asarray(add_ids, dtype=np.int64).reshape(-1)
    old_ids = previous.resident_ids()
    keep = ~np.isin(old_ids, np.concatenate([remove, add_ids]))
    kept_rows = np.flatnonzero(keep)
    source = _Concat([previous.vectors, np.asarray(add_vectors, dtype=np.float32).reshape(len(add_ids), previous.dim)])
    rows = np.concatenate([kept_rows, previous.n + np.arange(len(add_ids))])
    ids = np.concatenate([old_ids[kept_rows], add_ids])
    return write_refine_store(path, ids, _Rows(source, rows))


class _Rows:
    """A row selection of an indexable array, itself indexable by row arrays."""

    def __init__(self, base: _Concat, rows: np.ndarray) -> None:
        self.base, self.rows = base, rows
        self.shape = (len(rows), base.shape[1])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, sel: np.ndarray) -> np.ndarray:
        return self.base[self.rows[np.asarray(sel)]]


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_generation_store(
    index: Any,
    faiss_file: str | os.PathLike[str],
    previous_faiss_file: str | os.PathLike[str] | None,
    *,
    rebuilt: tuple[np.ndarray, np.ndarray] | None,
    removed: np.ndarray,
    added: np.ndarray,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    all_vectors: Callable[[], tuple[np.ndarray, np.ndarray]],
) -> Path | None:
    """Write the refine store of the generation whose FAISS file is ``faiss_file``.

    Only an index that re-ranks gets one. ``rebuilt`` is ``(ids, vectors)`` when
    the index was just built from them; otherwise the previous generation's
    store is carried over less ``removed`` plus ``added`` (whose vectors come
    from ``vectors_of``), or, when there is none, written from ``all_vectors()``.
    Returns the path written, or None.
    """
    if not getattr(index, "rerank", 0):
        return None
    path = refine_path(faiss_file)
    if rebuilt is not None:
        return write_refine_store(path, *rebuilt)
    old = refine_path(previous_faiss_file) if previous_faiss_file is not None else None
    if old is not None and old.exists():
        previous = RefineStore(old)
        added = np.asarray(added, dtype=np.int64)
        new_vecs = vectors_of(added) if len(added) else np.zeros((0, previous.dim), np.float32)
        return write_updated_store(path, previous, removed, added, new_vecs)
    return write_refine_store(path, *all_vectors())
