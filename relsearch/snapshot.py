"""What a reader searches: one generation of an index (manifest entries + loaded FAISS files).

A build writes generation G+1's FAISS files beside G's, switches ``generation`` and the
manifest in one LMDB transaction, then deletes G's files. A long-lived reader (the local
page, a notebook's :class:`~relsearch.query.Searcher`) therefore

- notices a switch by reading LMDB's ``generation`` (one key, microseconds) and loads
  the new generation: :func:`current`;
- may find the generation it just read already replaced by a faster build, its files
  gone: it reads the generation again and retries, rather than failing.

Generation and manifest are read in one LMDB transaction, so they always match.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relsearch.errors import RelsearchError
from relsearch.indexdir import EncoderEntry, Manifest, faiss_path, stored_manifest
from relsearch.store import Store

#: How long a load keeps retrying while builds replace the generation under it.
ATTEMPTS = 40


@dataclass(frozen=True)
class Snapshot:
    """One generation, loaded: never changes once built, so threads may share it."""

    generation: int
    manifest: Manifest
    encoders: dict[str, EncoderEntry]
    indexes: dict[str, Any]  # name -> relsearch.index.VectorIndex


def select_encoders(manifest: Manifest, asked: list[str] | None, index: Path) -> list[str]:
    """The columns to load: ``asked`` (validated against the manifest) or all of them."""
    from relsearch.encoders import resolve_factory

    names = list(manifest.encoders)
    if not asked:
        return names
    for name in asked:
        resolve_factory(name)  # unknown name -> the registry's message
        if name not in manifest.encoders:
            raise RelsearchError(f"index {index} has no {name!r} column; it was built with: {', '.join(names)}")
    return list(asked)


def load(index: Path, store: Store, asked: list[str] | None) -> Snapshot:
    """The generation LMDB names now, with its FAISS files loaded (retrying across builds)."""
    from relsearch.index import VectorIndex

    for attempt in range(ATTEMPTS):
        last = attempt == ATTEMPTS - 1
        manifest, gen = stored_manifest(store, index)  # one txn: they match
        names = select_encoders(manifest, asked, index)
        indexes: dict[str, Any] = {}
        try:
            for name in names:
                path = faiss_path(index, name, gen)
                if not path.exists():
                    raise RelsearchError(f"index {index} is missing its FAISS file {path.name}; rebuild it")
                indexes[name] = VectorIndex.load(path)
                indexes[name].check_dim(manifest.encoders[name].dim, path)
        except RelsearchError:
            if store.generation != gen and not last:
                continue  # replaced while we read it: the new generation is complete, take that
            raise
        return Snapshot(gen, manifest, {n: manifest.encoders[n] for n in names}, indexes)
    raise AssertionError("unreachable: the last attempt returns or raises")


def current(snapshot: Snapshot, index: Path, store: Store, asked: list[str] | None) -> Snapshot:
    """``snapshot`` itself while LMDB still names its generation, else the new one loaded."""
    if store.generation == snapshot.generation:
        return snapshot
    return load(index, store, asked)
