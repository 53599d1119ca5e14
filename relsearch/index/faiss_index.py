"""One FAISS index over one encoder's unit vectors, searched by inner product.

Small collections get an exact flat index; large ones IVF-PQ whose ``nprobe``
is tuned at build time to reach a recall target, with optional exact
re-ranking of the top candidates from the raw vectors (which the engine keeps
in its store, so the index file itself stays small).

The file format lives in :mod:`relsearch.index.fileformat`, the nprobe tuning in
:mod:`relsearch.index.tuning`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time
import warnings
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError, first_line
from relsearch.index import _faiss, refine, sharded
from relsearch.index.fileformat import read_index_file, write_index_file
from relsearch.index.refine import VectorLookup
from relsearch.index.spec import AUTO_RERANK, IndexConfig, auto_spec, train_size
from relsearch.index.tuning import tune_nprobe

log = logging.getLogger(__name__)

#: An IVF index trained when the collection had N vectors is rebuilt once it
#: holds this many times more: its nlist is then about half of what N calls for
#: and its lists hold vectors its centroids never saw.
REBUILD_GROWTH = 4.0
_ADD_CHUNK = 65_536


def _as_matrix(x: np.ndarray, d: int | None, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1 and d is not None and x.shape[0] == d:
        x = x[None, :]
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        want = f"[n, {d}]" if d is not None else "[n, d]"
        raise ValueError(f"{what} must be a {want} array, got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_ids(ids: np.ndarray, n: int) -> np.ndarray:
    ids = np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
    if ids.shape[0] != n:
        raise ValueError(f"got {ids.shape[0]} ids for {n} vectors")
    if n and ids.min() < 0:
        raise ValueError(f"ids must be >= 0 (-1 marks padding), got {int(ids.min())}")
    if len(np.unique(ids)) != n:
        raise ValueError("ids must be unique")
    return ids


def rerank_exact(
    queries: np.ndarray, candidates: np.ndarray, lookup: VectorLookup, k: int, chunk: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate ids exactly with the raw vectors and keep the best ``k``."""
    nq, d = queries.shape
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    kk = min(k, candidates.shape[1])
    for s in range(0, nq, chunk):
        cand = candidates[s : s + chunk]
        valid = cand >= 0
        if not valid.any():
            continue
        # One lookup per chunk, in candidate order: the rows land directly in the
        # [c, R, d] layout the batched product wants (no second gather).
        vecs = np.asarray(lookup(cand[valid]), dtype=np.float32)
        if vecs.shape != (int(valid.sum()), d):
            raise ValueError(f"vector_lookup returned shape {vecs.shape}, expected {(int(valid.sum()), d)}")
        if valid.all():
            stacked = vecs.reshape(cand.shape[0], cand.shape[1], d)
        else:
            stacked = np.zeros((cand.shape[0], cand.shape[1], d), dtype=np.float32)
            stacked[valid] = vecs
        # [c, R, d] @ [c, d, 1]: one small matrix-vector product per query.
        scores = np.matmul(stacked, queries[s : s + chunk, :, None])[..., 0]
        scores[~valid] = -np.inf
        if kk < scores.shape[1]:
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        else:
            top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        out_s[s : s + chunk, :kk] = np.take_along_axis(top_scores, order, axis=1)
        ids = np.take_along_axis(cand, top, axis=1)
        ids[~np.isfinite(out_s[s : s + chunk, :kk])] = -1
        out_i[s : s + chunk, :kk] = ids
    return out_s, out_i


def _train_sample(faiss: Any, index: Any, ivf: Any, vectors: np.ndarray, spec: str) -> np.ndarray:
    """Train ``index`` on a seeded sample of ``vectors`` if it needs training; the sample's rows (none if not)."""
    if index.is_trained:
        return np.empty(0, dtype=np.int64)
    n = len(vectors)
    if ivf is not None and n < ivf.nlist:
        raise RelsearchError(f"index spec {spec} needs at least {ivf.nlist} vectors to train, got {n}")
    n_train = train_size(n, ivf.nlist) if ivf is not None else min(n, 100_000)
    if n_train == 0:
        raise RelsearchError(f"index spec {spec} needs training vectors, got none")
    rng = np.random.default_rng(0)
    train_rows = np.sort(rng.choice(n, n_train, replace=False)) if n_train < n else np.arange(n)
    _train(faiss, index, ivf, vectors[train_rows])
    return train_rows


def _add_in_chunks(index: Any, vectors: np.ndarray, ids: np.ndarray, progress: str | None) -> None:
    """Add ``vectors`` under ``ids`` in memory, a chunk at a time (with a progress bar named ``progress``)."""
    n = len(vectors)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=progress, unit="vec", leave=False)
    for s in range(0, n, _ADD_CHUNK):
        index.add_with_ids(vectors[s : s + _ADD_CHUNK], ids[s : s + _ADD_CHUNK])
        if bar is not None:
            bar.update(min(_ADD_CHUNK, n - s))
    if bar is not None:
        bar.close()


class VectorIndex:
    """A FAISS index keyed by the engine's int64 record ids.

    Build with :meth:`build`, persist with :meth:`save` / :meth:`load`.
    Scores are inner products (cosine for unit vectors); results are padded
    with id ``-1`` and score ``-inf`` when fewer than ``k`` exist.
    """

    def __init__(self, index: Any, spec: str, meta: dict[str, Any]) -> None:
        # Use build() or load(); this stores already-validated state.
        self._index = index
        self._spec = spec
        self._ivf = _extract_ivf(_faiss.import_faiss(), index)
        self._nprobe = int(meta.get("nprobe", 1))
        self._rerank = int(meta.get("rerank", 0))
        self._meta = dict(meta)
        self._lookup: VectorLookup | None = None
        self._gpu: Any = None
        self._gpu_stale = True
        self._file_bytes: int | None = None
        self._warned_no_lookup = False
        #: This generation's memory-mapped raw vectors, when it has a refine store.
        self._store: refine.RefineStore | None = None
        if self._ivf is not None:
            self._ivf.nprobe = self._nprobe

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        config: IndexConfig | None = None,
        vector_lookup: VectorLookup | None = None,
        progress: bool = False,
        ondisk: str | os.PathLike[str] | None = None,
        executor: sharded.Executor | None = None,
        shard_rows: int = sharded.DEFAULT_SHARD_ROWS,
    ) -> VectorIndex:
        """Choose the spec, train, add ``vectors`` under ``ids`` and tune ``nprobe``.

        ``vectors``: float32 ``[N, d]`` L2-normalised; ``ids``: unique int64 ``[N]``.
        ``vector_lookup`` (ids -> raw vectors) is kept for :meth:`search` in this
        process; tuning uses ``vectors`` directly.

        ``ondisk`` names the ``.ivfdata`` file that on-disk inverted lists go to
        when the config's layout calls for them (``layout="ondisk"``, or ``"auto"``
        at ``ondisk_threshold`` vectors and above); without it the lists stay in
        memory. On-disk indexes are built in shards of ``shard_rows`` vectors by
        ``executor`` (anything with ``map``; default: in this process), see
        :mod:`relsearch.index.sharded`. Save the index beside that file
        (``x.ivfdata`` belongs to ``x.faiss``).
        """
        config = config or IndexConfig()
        vectors = _as_matrix(vectors, None, "vectors")
        n, d = vectors.shape
        ids = _as_ids(ids, n)
        faiss = _faiss.import_faiss()
        use_disk = ondisk is not None and config.on_disk(n)
        resolved = dataclasses.replace(config, layout="ondisk" if use_disk else "memory")
        spec = auto_spec(n, d, resolved) if config.is_auto else config.spec
        index = _make_index(faiss, d, spec)
        ivf = _extract_ivf(faiss, index)
        if config.rerank is not None:
            rerank = config.rerank
        else:
            rerank = AUTO_RERANK if ivf is not None and not _is_uncompressed(ivf) else 0

        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        train_rows = _train_sample(faiss, index, ivf, vectors, spec)
        timings["train_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if use_disk and ivf is not None:
            assert ondisk is not None
            index = sharded.build_sharded(index, ids, vectors, ondisk, os.fspath(ondisk) + ".shards",
                                          shard_rows=shard_rows, executor=executor)
            ivf = _extract_ivf(faiss, index)
        else:
            _add_in_chunks(index, vectors, ids, f"index {spec}" if progress else None)
        timings["add_s"] = time.perf_counter() - t0

        meta: dict[str, Any] = {
            "nprobe": 1,
            "rerank": rerank,
            "auto": config.is_auto,
            "exact_threshold": config.exact_threshold,
            "recall_target": config.recall_target,
            "built_n": n,
            "trained_on": len(train_rows),
            "timings": timings,
            "layout": "ondisk" if sharded.on_disk_lists(faiss, index) is not None else "memory",
        }
        built = cls(index, spec, meta)
        built._lookup = vector_lookup
        if ivf is not None and n:
            t0 = time.perf_counter()
            curve, built._meta["tuned_recall"] = tune_nprobe(built, vectors, ids, config, train_rows)
            timings["tune_s"] = time.perf_counter() - t0
            built._meta["tuning"] = curve
        return built

    # ----------------------------------------------------------- properties
    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def spec(self) -> str:
        return self._spec

    @property
    def nprobe(self) -> int:
        """Lists probed per query (1 and meaningless for non-IVF indexes)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        value = int(value)
        if self._ivf is None:
            if value != 1:
                raise ValueError(f"nprobe applies to IVF indexes only; {self._spec} has none (got {value})")
            return
        if not 1 <= value <= self._ivf.nlist:
            raise ValueError(f"nprobe must be in [1, {self._ivf.nlist}], got {value}")
        self._nprobe = value
        self._ivf.nprobe = value
        if self._gpu is not None:
            _faiss.set_gpu_nprobe(self._gpu, value)

    @property
    def rerank(self) -> int:
        """Candidates re-scored exactly per query (0 = off)."""
        return self._rerank

    @rerank.setter
    def rerank(self, value: int) -> None:
        if not 0 <= int(value) <= 2048:
            raise ValueError(f"rerank must be in [0, 2048], got {value!r}")
        self._rerank = int(value)

    @property
    def is_ivf(self) -> bool:
        return self._ivf is not None

    @property
    def nlist(self) -> int:
        return int(self._ivf.nlist) if self._ivf is not None else 0

    def info(self) -> dict[str, Any]:
        """Facts for ``relsearch info`` and benchmarks (JSON-serialisable)."""
        return {
            "spec": self._spec,
            "ntotal": self.ntotal,
            "dim": self.dim,
            "nlist": self.nlist,
            "nprobe": self._nprobe,
            "rerank": self._rerank,
            "bytes_per_vector": round(self._payload_bytes() / max(self.ntotal, 1), 2),
            **self.bytes_per_vector(),
            "layout": self.layout,
            "is_trained": bool(self._index.is_trained),
            "trained_on": int(self._meta.get("trained_on", 0)),
            "built_n": int(self._meta.get("built_n", 0)),
            "auto": bool(self._meta.get("auto", False)),
            "tuned_recall": self._meta.get("tuned_recall"),
            "timings": dict(self._meta.get("timings", {})),
            "gpu": self._gpu is not None,
        }

    @property
    def layout(self) -> str:
        """``"ondisk"`` when the inverted lists are a memory-mapped file, else ``"memory"``."""
        return "ondisk" if sharded.on_disk_lists(_faiss.import_faiss(), self._index) is not None else "memory"

    @property
    def refine_store(self) -> refine.RefineStore | None:
        """The memory-mapped raw vectors this index re-ranks with, when it has them."""
        return self._store

    def attach_refine_store(self, path: str | os.PathLike[str]) -> None:
        """Re-rank from the refine store at ``path`` (as :meth:`load` does for the store beside the file)."""
        store = refine.RefineStore(path)
        if store.n != self.ntotal or store.dim != self.dim:
            raise RelsearchError(
                f"refine store {path} holds {store.n} x {store.dim} vectors, the index {self.ntotal} x {self.dim}"
            )
        self._store = store

    def bytes_per_vector(self) -> dict[str, float]:
        """RAM and disk per vector, separately.

        ``ram_bytes_per_vector``: what a query process holds resident for the
        index itself (all of it in memory; the quantizers and list directory
        for on-disk lists, whose pages the OS caches on demand).
        ``disk_bytes_per_vector``: the FAISS file, its on-disk lists and its
        refine store together; ``refine_bytes_per_vector`` is the store's share
        (memory-mapped: resident only while the page cache keeps it).
        """
        n = max(self.ntotal, 1)
        payload = self._payload_bytes()
        lists = sharded.on_disk_lists(_faiss.import_faiss(), self._index)
        ivfdata = int(lists.totsize) if lists is not None else 0
        store = os.path.getsize(self._store.path) if self._store is not None else 0
        return {
            "ram_bytes_per_vector": round(payload / n, 2),
            "disk_bytes_per_vector": round((payload + ivfdata + store) / n, 2),
            "refine_bytes_per_vector": round(store / n, 2),
        }

    def updated(
        self, faiss_file: str | os.PathLike[str], remove_ids: np.ndarray, add_ids: np.ndarray,
        add_vectors: np.ndarray | None,
    ) -> VectorIndex:
        """This index less ``remove_ids`` plus the added vectors, for the generation saved as ``faiss_file``.

        In memory the index is edited in place and returned (the previous
        generation's file is untouched until it is replaced). On-disk lists are
        shared with the processes serving the previous generation, so a new
        ``.ivfdata`` beside ``faiss_file`` is written from the old lists
        (filtered) and the new vectors, and a new index on it is returned.
        """
        add_ids = np.asarray(add_ids, dtype=np.int64).reshape(-1)
        if sharded.on_disk_lists(_faiss.import_faiss(), self._index) is None:
            if len(remove_ids):
                self.remove(remove_ids)
            if len(add_ids):
                self.add(add_vectors, add_ids)
            return self
        vectors = _as_matrix(add_vectors, self.dim, "vectors") if len(add_ids) else np.zeros((0, self.dim), np.float32)
        present = self._present(add_ids) & ~np.isin(add_ids, np.asarray(remove_ids, dtype=np.int64))
        if present.any():
            raise ValueError(f"ids already in the index: {add_ids[present][:5].tolist()}")
        index = sharded.rewrite_on_disk(self._index, sharded.ivfdata_path(faiss_file), remove_ids, add_ids, vectors)
        copy = VectorIndex(index, self._spec, self._meta)
        copy._nprobe, copy._rerank, copy._lookup = self._nprobe, self._rerank, self._lookup
        copy.nprobe = self._nprobe
        return copy

    def needs_rebuild(self, n_total: int) -> bool:
        """Whether an index holding ``n_total`` vectors should be rebuilt from scratch.

        An automatic flat index that crossed the exact threshold should become
        IVF-PQ; an IVF index that has grown :data:`REBUILD_GROWTH` times past
        the collection it was trained for has too few, stale lists; an
        automatic IVF index that shrank to well below the threshold is better
        served exactly.
        """
        threshold = int(self._meta.get("exact_threshold", 0))
        if self._ivf is None:
            return bool(self._meta.get("auto")) and n_total >= threshold
        if n_total > REBUILD_GROWTH * max(int(self._meta.get("built_n", 0)), 1):
            return True
        return bool(self._meta.get("auto")) and n_total < threshold // 2

    # ------------------------------------------------------------- mutation
    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under new ids (ids already present raise ValueError)."""
        vectors = _as_matrix(vectors, self.dim, "vectors")
        ids = _as_ids(ids, vectors.shape[0])
        if not len(ids):
            return
        present = self._present(ids)
        if present.any():
            raise ValueError(f"ids already in the index: {ids[present][:5].tolist()}")
        for s in range(0, len(ids), _ADD_CHUNK):
            self._index.add_with_ids(vectors[s : s + _ADD_CHUNK], ids[s : s + _ADD_CHUNK])
        self._changed()

    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids; returns how many were present."""
        ids = np.ascontiguousarray(np.asarray(ids).reshape(-1), dtype=np.int64)
        if not len(ids):
            return 0
        faiss = _faiss.import_faiss()
        try:
            removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))
        except RuntimeError as e:
            raise RelsearchError(
                f"index spec {self._spec} cannot remove vectors ({first_line(e)}); rebuild the index"
            ) from None
        if removed:
            self._changed()
        return removed

    def _present(self, ids: np.ndarray) -> np.ndarray:
        faiss = _faiss.import_faiss()
        if self.ntotal == 0:
            return np.zeros(len(ids), dtype=bool)
        if self._ivf is not None:
            stored = ivf_ids(faiss, self._ivf)
        elif isinstance(self._index, faiss.IndexIDMap):
            stored = faiss.vector_to_array(self._index.id_map)
        else:
            return np.zeros(len(ids), dtype=bool)
        return np.isin(ids, stored)

    def _changed(self) -> None:
        self._gpu_stale = True
        self._file_bytes = None

    # --------------------------------------------------------------- search
    def search(
        self, queries: np.ndarray, k: int, vector_lookup: VectorLookup | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``(scores float32 [Q, k], ids int64 [Q, k])``.

        With re-ranking on, the best ``max(k, rerank)`` candidates are re-scored
        with the raw vectors from ``vector_lookup`` (or the one given to
        :meth:`build`), so the returned scores are exact inner products.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = int(k)
        q = _as_matrix(queries, self.dim, "queries")
        nq = q.shape[0]
        if self.ntotal == 0 or nq == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        # The generation's own refine store first: it holds exactly this index's
        # vectors and is read by one memory-mapped gather, not per-row look-ups.
        lookup = next((f for f in (self._store, vector_lookup, self._lookup) if f is not None), None)
        rerank = self._rerank
        if rerank and lookup is None:
            if not self._warned_no_lookup:
                warnings.warn(
                    f"index {self._spec} was tuned with exact re-ranking but no vector_lookup was given; "
                    "returning approximate scores, recall will be lower",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._warned_no_lookup = True
            rerank = 0
        kk = max(k, rerank) if rerank else k
        scores, found = self._raw_search(q, kk)
        if rerank:
            if lookup is self._store:
                return self._store.rerank(q, found, k)
            return rerank_exact(q, found, lookup, k)
        scores = np.ascontiguousarray(scores[:, :k], dtype=np.float32)
        found = np.ascontiguousarray(found[:, :k], dtype=np.int64)
        scores[found < 0] = -np.inf
        return scores, found

    def _raw_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        target = self._gpu_index()
        try:
            return target.search(q, k)
        except RuntimeError as exc:
            if target is self._index:
                raise
            # GPU indexes limit k and memory; the CPU copy always works.
            log.warning("GPU search failed (k=%d), searching on the CPU: %s", k, first_line(exc))
            return self._index.search(q, k)

    def _gpu_index(self) -> Any:
        if _faiss.gpu_count() == 0:
            return self._index
        if self._gpu_stale:
            self._gpu = _faiss.to_gpu(self._index)
            self._gpu_stale = False
            if self._gpu is not None and self._ivf is not None:
                try:
                    _faiss.set_gpu_nprobe(self._gpu, self._nprobe)
                except Exception as exc:  # an index type the GPU cannot probe: search the CPU copy
                    log.warning("cannot set nprobe on the GPU index, searching on the CPU: %s", first_line(exc))
                    self._gpu = None
        return self._gpu if self._gpu is not None else self._index

    # ----------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: temp file in the same directory, fsync, ``os.replace``."""
        faiss = _faiss.import_faiss()
        path = os.fspath(path)
        meta = {k: v for k, v in self._meta.items()}
        lists = sharded.on_disk_lists(faiss, self._index)
        if lists is not None:
            # The lists must sit beside the index file (x.ivfdata next to x.faiss)
            # and be durable before the index that points at them is.
            want = os.path.abspath(sharded.ivfdata_path(path))
            if os.path.abspath(lists.filename) != want:
                raise ValueError(f"an on-disk index saves beside its lists: {lists.filename} is not {want}")
            with open(want, "rb+") as f:
                os.fsync(f.fileno())
            meta["ivfdata_bytes"] = os.path.getsize(want)
        payload = faiss.serialize_index(self._index)
        if lists is not None:
            meta["ivfdata_offset"] = sharded.ivfdata_name_offset(payload, want)
        else:
            meta.pop("ivfdata_offset", None)
            meta.pop("ivfdata_bytes", None)
        self._file_bytes = int(payload.nbytes)
        meta.update(
            spec=self._spec,
            dim=self.dim,
            ntotal=self.ntotal,
            nprobe=self._nprobe,
            rerank=self._rerank,
            faiss_version=getattr(faiss, "__version__", "unknown"),
        )
        write_index_file(path, meta, payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VectorIndex:
        """Read a file written by :meth:`save`; any damage raises RelsearchError."""
        path = os.fspath(path)
        meta, payload = read_index_file(path)
        size = len(payload)
        faiss = _faiss.import_faiss()
        if "ivfdata_offset" in meta:
            # Point the index at the lists beside it, wherever the folder now is.
            lists = os.path.abspath(sharded.ivfdata_path(path))
            try:
                actual = os.path.getsize(lists)
            except OSError:
                raise RelsearchError(
                    f"index file {path} is missing its on-disk lists {os.path.basename(lists)}; rebuild the index"
                ) from None
            if actual != int(meta.get("ivfdata_bytes", -1)):
                # A short file would fault (SIGBUS) on the first probe of a missing page.
                raise RelsearchError(
                    f"corrupt on-disk lists {lists}: {actual} bytes, expected {meta.get('ivfdata_bytes')}; "
                    "rebuild the index"
                )
            try:
                payload = memoryview(sharded.with_ivfdata_name(payload, int(meta["ivfdata_offset"]), lists))
            except (struct.error, ValueError, TypeError):
                raise RelsearchError(f"corrupt index file {path}: bad on-disk list record; rebuild the index") from None
        try:
            index = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        except RuntimeError as e:
            raise RelsearchError(
                f"corrupt index file {path}: faiss could not read it ({first_line(e)}); rebuild the index"
            ) from None
        loaded = cls(index, str(meta["spec"]), meta)
        loaded._file_bytes = size
        store = refine.refine_path(path)
        if loaded._rerank and store.exists():
            try:
                loaded.attach_refine_store(store)
            except RelsearchError as e:
                raise RelsearchError(f"{e}; rebuild the index") from None
        return loaded

    def check_dim(self, dim: int, path: str | os.PathLike[str]) -> None:
        """Refuse a loaded file of other than ``dim`` dimensions (what the manifest says of its column)."""
        if self.dim != dim:
            # another column's file in this one's place (swapped or copied by hand): verify rebuilds it
            folder = os.path.dirname(os.path.dirname(os.path.abspath(path)))
            raise RelsearchError(f"index file {os.fspath(path)} holds {self.dim}-dimensional vectors, its column "
                                 f"is {dim}-dimensional; fix it with: relsearch verify --repair --index {folder}")

    def _payload_bytes(self) -> int:
        if self._file_bytes is None:
            self._file_bytes = int(_faiss.import_faiss().serialize_index(self._index).nbytes)
        return self._file_bytes

    def __repr__(self) -> str:
        return f"VectorIndex(spec={self._spec!r}, ntotal={self.ntotal}, dim={self.dim}, nprobe={self._nprobe}, rerank={self._rerank})"


def check_spec(spec: str, d: int) -> None:
    """Raise a one-line :class:`RelsearchError` now if ``spec`` cannot index ``d``-dim vectors.

    The engine calls this before it writes anything, so a typo in ``--index-spec``
    never costs an embedding run or touches an index.
    """
    try:
        config = IndexConfig(spec=spec)
    except ValueError as e:
        raise RelsearchError(f"invalid index spec: {e}") from None
    if not config.is_auto:
        index = _make_index(_faiss.import_faiss(), d, config.spec)
        if config.layout == "ondisk" and sharded.is_fast_scan(_extract_ivf(_faiss.import_faiss(), index)):
            raise RelsearchError(
                f"index spec {spec!r}: on-disk inverted lists hold plain codes, not fast-scan blocks "
                "(drop the 'fs' suffix)"
            )


# ---------------------------------------------------------------- helpers
def _make_index(faiss: Any, d: int, spec: str) -> Any:
    try:
        index = faiss.index_factory(d, spec, faiss.METRIC_INNER_PRODUCT)
        if faiss.try_extract_index_ivf(index) is None and not isinstance(index, faiss.IndexIDMap):
            # Non-IVF indexes number vectors 0..N-1 and cannot take our ids;
            # the IDMap wrapper stores the id of every row (8 bytes each).
            index = faiss.index_factory(d, "IDMap," + spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise RelsearchError(
            f"invalid FAISS index spec {spec!r} for dimension {d}: {first_line(e)}"
        ) from None
    ivf = _extract_ivf(faiss, index)
    if ivf is not None:
        # Unit vectors: spherical k-means keeps centroids on the sphere, so a
        # tight cluster's centroid does not out-score a loose one by norm alone.
        ivf.cp.spherical = True
        if hasattr(ivf, "do_polysemous_training"):
            # The factory turns on polysemous training (a code reordering for
            # Hamming-distance filtering, which we never use); it multiplies
            # training time several times over.
            ivf.do_polysemous_training = False
        pq = getattr(ivf, "pq", None)
        if pq is not None:
            # PQ k-means runs once per slice (48 times at d=384) and its
            # centroids are only a first filter before exact re-ranking, so 64
            # points per centroid (16k vectors, faiss default 256) and 20
            # iterations (default 25) are plenty: 2.5x less PQ training time.
            pq.cp.max_points_per_centroid = 64
            pq.cp.niter = 20
    return index


def _extract_ivf(faiss: Any, index: Any) -> Any | None:
    """The IVF layer of ``index`` as its concrete class (IndexIVFPQ...), or None."""
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else faiss.downcast_index(ivf)


def _train(faiss: Any, index: Any, ivf: Any, sample: np.ndarray) -> None:
    gpu_flat = None
    if ivf is not None and _faiss.gpu_count() > 0:
        # k-means assignment is the expensive part of training; do it on the GPU.
        # The index itself stays on the CPU (the master copy we save and edit).
        gpu_flat = _faiss.gpu_flat_for_training(ivf.d, ivf.metric_type)
        if gpu_flat is not None:
            ivf.clustering_index = gpu_flat
    try:
        index.train(sample)
    except RuntimeError as e:
        raise RelsearchError(f"training index failed: {first_line(e)}") from None
    finally:
        if gpu_flat is not None:
            ivf.clustering_index = None


def _is_uncompressed(ivf: Any) -> bool:
    # IVF-Flat stores raw floats: its scores are already exact.
    return int(ivf.code_size) == 4 * int(ivf.d)


def ivf_ids(faiss: Any, ivf: Any) -> np.ndarray:
    invlists = ivf.invlists
    out = []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            out.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
    return np.concatenate(out) if out else np.empty(0, np.int64)


