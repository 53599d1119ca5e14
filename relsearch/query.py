"""The searcher of one index directory: its encoders and FAISS indexes, kept loaded.

A :class:`Searcher` pays the model load once, so a server or a benchmark queries it many
times; every query goes through :func:`relsearch.composed.search_composed` (a plain image
query is the composed query of one image), which embeds with :meth:`Searcher.encoder` and
searches with :meth:`Searcher.search_vectors`.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from relsearch import snapshot
from relsearch.encoders import get_encoder
from relsearch.errors import RelsearchError
from relsearch.indexdir import OpenIndex, check_fingerprint, open_index
from relsearch.results import Hit


class Searcher:
    """Loaded encoders + FAISS indexes of one index directory.

    Follows rebuilds: each query first checks LMDB's generation and, when a build has
    switched it, loads the new FAISS files (:mod:`relsearch.snapshot`). Many searchers
    (and a build) may share an index in one process: the LMDB handle is shared.
    """

    def __init__(self, index: str | os.PathLike[str], encoders: str | None = None, device: str | None = None,
                 preload: bool = False) -> None:
        self.opened: OpenIndex = open_index(index)
        self._asked = [e.strip().partition("@")[0] for e in encoders.split(",") if e.strip()] if encoders else None
        self.device = device
        self._pending: dict[str, tuple[tuple[str, str], Future[Any]]] = {}
        if preload:
            self._preload()
        try:
            self._snapshot = snapshot.load(self.opened.path, self.opened.store, self._asked)
        except BaseException:
            self.opened.close()
            raise
        self._sync_opened()
        self._loaded: dict[str, Any] = {}
        #: folders hits must lie under (``query --here``, :mod:`relsearch.scope`); None: the whole index
        self.scope: list[str] | None = None

    @property
    def encoders(self) -> dict[str, Any]:
        """Manifest entries of the searched columns (of the generation in use)."""
        return self._snapshot.encoders

    @property
    def indexes(self) -> dict[str, Any]:
        return self._snapshot.indexes

    @property
    def generation(self) -> int:
        return self._snapshot.generation

    def refresh(self) -> bool:
        """Load the index's current generation if a build switched it; True when it did."""
        snap = snapshot.current(self._snapshot, self.opened.path, self.opened.store, self._asked)
        if snap is self._snapshot:
            return False
        self._snapshot = snap
        self._sync_opened()
        return True

    def _sync_opened(self) -> None:
        self.opened.manifest = self._snapshot.manifest
        self.opened.generation = self._snapshot.generation

    def _preload(self) -> None:
        """Start loading the searched columns' encoders on threads, while this thread reads the
        FAISS files and the query goes on: ONNX Runtime builds a session without holding the GIL,
        so a cold query's model loads overlap its index load instead of following it."""
        from concurrent.futures import ThreadPoolExecutor

        entries = {n: e for n, e in self.opened.manifest.encoders.items() if self._asked is None or n in self._asked}
        if not entries:
            return
        pool = ThreadPoolExecutor(max_workers=len(entries), thread_name_prefix="relsearch-load")
        self._pending = {n: ((e.spec, e.fingerprint), pool.submit(get_encoder, e.spec, device=self.device))
                         for n, e in entries.items()}
        pool.shutdown(wait=False)  # the threads end with their loads; nothing waits for them here

    def encoder(self, name: str) -> Any:
        entry = self.opened.manifest.encoders[name]
        cached = self._loaded.get(name)
        if cached is None or cached[0] != (entry.spec, entry.fingerprint):
            key, pending = self._pending.pop(name, (None, None))
            if pending is not None and key == (entry.spec, entry.fingerprint):
                enc = pending.result()  # its load error, if any, raises here as it would have below
            else:
                enc = get_encoder(entry.spec, device=self.device)
            check_fingerprint(entry, enc.fingerprint, self.opened.path)
            self._loaded[name] = ((entry.spec, entry.fingerprint), enc)
        return self._loaded[name][1]

    def close(self) -> None:
        """Close the index and drop the loaded models (nothing else keeps them alive)."""
        self._loaded.clear()
        for _, pending in self._pending.values():
            pending.cancel()
        self._pending.clear()
        self.opened.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------
    def search_vectors(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The ``k`` nearest records per row of ``vectors`` in column ``name`` (within :attr:`scope`)."""
        if self.scope:
            from relsearch.scope import scoped_search

            return scoped_search(self._search_all, name, vectors, k, self.scope, self.indexes[name].ntotal)
        return self._search_all(name, vectors, k)

    def _search_all(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        entry = self.opened.manifest.encoders[name]
        store = self.opened.store
        index = self.indexes[name]
        # FAISS allocates [Q, k] answers whatever the collection holds: a k beyond it
        # only buys empty slots (gigabytes for a k in the billions).
        k = max(1, min(int(k), index.ntotal))
        scores, ids = index.search(
            np.ascontiguousarray(vectors, dtype=np.float32), k,
            vector_lookup=lambda ids: store.get_vectors(name, np.asarray(ids), entry.dim),
        )
        records = store.get_records(int(i) for i in ids.ravel() if i >= 0)
        out = []
        for row_s, row_i in zip(scores, ids):
            hits: list[Hit] = []
            for s, i in zip(row_s, row_i):
                rec = records.get(int(i))
                if rec is None:  # removed since this FAISS generation was written
                    continue
                hits.append(Hit(len(hits) + 1, float(s), rec.path, int(i), list(rec.paths)))
            out.append(hits)
        return out


#: Most pixels a query image may decode to, counted after JPEG's reduced-size decoding (so
#: camera JPEGs of any size pass): a 48-megapixel phone PNG passes, a crafted file that
#: claims hundreds of megapixels in a few hundred bytes does not.
QUERY_MAX_PIXELS = 50_000_000


def load_query_image(path: str | os.PathLike[str]) -> Any:
    from relsearch.collection import DecodeError, load_image
    from relsearch.collection.decode import TooManyPixels

    p = Path(path)
    if not p.exists():
        raise RelsearchError(f"query image {p} does not exist")
    if p.is_dir():
        raise RelsearchError(f"query image {p} is a folder, not an image")
    try:
        return load_image(p, max_side=512, max_pixels=QUERY_MAX_PIXELS)
    except TooManyPixels as exc:
        raise RelsearchError(f"query image {p} is too large to search with: {exc}") from exc
    except DecodeError as exc:
        raise RelsearchError(f"query image {p} is not a readable image: {exc}") from exc
