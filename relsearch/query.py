"""``query``: relational and attribute neighbours of one image (or caption), side by side.

A :class:`Searcher` keeps the encoders and FAISS indexes of one index directory
loaded, so a server or a benchmark pays the model load once and each query is
embed + search + LMDB lookup.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from relsearch import snapshot
from relsearch.encoders import get_encoder
from relsearch.encoders.base import TextEncoder
from relsearch.errors import RelsearchError
from relsearch.indexdir import OpenIndex, check_fingerprint, find_indexes, index_info, open_index  # noqa: F401  (their former home; kept importable)
from relsearch.results import Hit, QueryResult


class Searcher:
    """Loaded encoders + FAISS indexes of one index directory.

    Follows rebuilds: each query first checks LMDB's generation and, when a build has
    switched it, loads the new FAISS files (:mod:`relsearch.snapshot`). Many searchers
    (and a build) may share an index in one process: the LMDB handle is shared.
    """

    def __init__(self, index: str | os.PathLike[str], encoders: str | None = None, device: str | None = None) -> None:
        self.opened: OpenIndex = open_index(index)
        self._asked = [e.strip().partition("@")[0] for e in encoders.split(",") if e.strip()] if encoders else None
        try:
            self._snapshot = snapshot.load(self.opened.path, self.opened.store, self._asked)
        except BaseException:
            self.opened.close()
            raise
        self._sync_opened()
        self._loaded: dict[str, Any] = {}
        self.device = device

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

    def encoder(self, name: str) -> Any:
        entry = self.opened.manifest.encoders[name]
        cached = self._loaded.get(name)
        if cached is None or cached[0] != (entry.spec, entry.fingerprint):
            enc = get_encoder(entry.spec, device=self.device)
            check_fingerprint(entry, enc.fingerprint, self.opened.path)
            self._loaded[name] = ((entry.spec, entry.fingerprint), enc)
        return self._loaded[name][1]

    def close(self) -> None:
        """Close the index and drop the loaded models (nothing else keeps them alive)."""
        self._loaded.clear()
        self.opened.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------
    def search_vectors(self, name: str, vectors: np.ndarray, k: int) -> list[list[Hit]]:
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

    def query_image(self, image: Any, k: int = 20, label: str = "") -> QueryResult:
        self.refresh()
        result = QueryResult(query=label, results={})
        for name, entry in self.encoders.items():
            t = time.perf_counter()
            vec = self.encoder(name).embed([image])
            t_embed = time.perf_counter()
            result.vectors[name] = vec[0]
            result.results[name] = self.search_vectors(name, vec, k)[0]
            result.kinds[name] = entry.kind
            result.timings_ms[f"{name}.embed"] = (t_embed - t) * 1e3
            result.timings_ms[f"{name}.search+lookup"] = (time.perf_counter() - t_embed) * 1e3
        return result

    def query_text(self, text: str, k: int = 20) -> QueryResult:
        """Search every relational column through its caption (text) tower."""
        self.refresh()
        result = QueryResult(query=text, results={})
        for name, entry in self.encoders.items():
            enc = self.encoder(name)
            if not isinstance(enc, TextEncoder):
                continue
            vec = enc.embed_text([text])
            result.vectors[name] = vec[0]
            result.results[name] = self.search_vectors(name, vec, k)[0]
            result.kinds[name] = entry.kind
        if not result.results:
            raise RelsearchError(
                "text queries need a relational encoder with a caption tower (e.g. relsim-mini); "
                f"this index has: {', '.join(self.encoders)}"
            )
        return result


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


def query(
    image: str | os.PathLike[str] | None,
    index: str | os.PathLike[str],
    k: int = 20,
    encoders: str | None = None,
    text: str | None = None,
    device: str | None = None,
    modes: Any = None,
) -> QueryResult:
    """Neighbours of ``image`` (or of the caption ``text``) in every encoder column of ``index``.

    ``modes`` (:class:`relsearch.modes.Modes`) adds the analogy column and explanations.
    """
    from relsearch.modes import apply_modes
    from relsearch.threads import use_query_threads

    use_query_threads()
    if k < 1:
        raise RelsearchError(f"-k must be at least 1, got {k}")
    if (image is None) == (text is None):
        raise RelsearchError("give exactly one of an image path or --text")
    img = load_query_image(image) if image is not None else None
    with Searcher(index, encoders=encoders, device=device) as searcher:
        result = searcher.query_text(text, k) if text is not None else searcher.query_image(img, k, label=str(image))
        return apply_modes(searcher, result, k, modes) if modes else result
