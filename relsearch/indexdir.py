"""The index directory: a self-describing artifact.

::

    <index>/
      manifest.json          schema, encoders (+ fingerprints, dims, FAISS specs), package versions
      meta.lmdb/             records, paths, hashes, raw vectors (relsearch.store)
      faiss/<enc>.<gen>.faiss (+ sidecar)   one FAISS index per encoder, generation-numbered
      .build.lock            held while a build writes

The manifest is committed inside LMDB (``meta["manifest"]``) in the same transaction
that switches the generation, so it can never disagree with the store; readers take
both from one read transaction. ``manifest.json`` is a copy exported after that
commit for people and tools; a build or ``relsearch verify --repair`` rewrites it
whenever it differs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from relsearch.atomic import atomic_write_bytes
from relsearch.errors import IndexMismatchError, RelsearchError
from relsearch.safe_io import read_regular
from relsearch.store import SCHEMA_VERSION, Store
from relsearch.store.lmdb_store import damaged, finished_before

MANIFEST = "manifest.json"
STORE_DIR = "meta.lmdb"
FAISS_DIR = "faiss"
LOCK = ".build.lock"
STORED_NAME = "exclusions.json"  # relsearch.collection.exclude.STORED_NAME
_PACKAGES = ("relsearch", "torch", "faiss-cpu", "faiss-gpu", "lmdb", "numpy", "transformers", "peft")


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


@dataclass
class EncoderEntry:
    name: str
    spec: str  # NAME or NAME@SOURCE, as needed to reload it
    fingerprint: str
    dim: int
    kind: str
    faiss: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    schema_version: int
    collection: str
    encoders: dict[str, EncoderEntry]
    generation: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    packages: dict[str, str] = field(default_factory=package_versions)
    count: int = 0
    # every collection folder when there are several (``collection`` is the first); empty
    # for one folder, so a single-folder manifest reads as those written before it existed
    roots: list[str] = field(default_factory=list)

    def collection_roots(self) -> list[str]:
        """The collection folders of the index: one, or several (``build-index DIR1 DIR2``)."""
        return list(self.roots) or [self.collection]

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["encoders"] = {k: dict(v.__dict__) for k, v in self.encoders.items()}
        if not d["roots"]:
            del d["roots"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        try:
            encs = {k: EncoderEntry(**v) for k, v in d["encoders"].items()}
            return cls(**{**d, "encoders": encs})
        except (KeyError, TypeError) as exc:
            raise RelsearchError(f"corrupt manifest: missing or unexpected field ({exc})") from exc


def read_manifest(index: Path) -> Manifest:
    """The index's manifest as committed in its LMDB store (``manifest.json`` is a copy)."""
    index = Path(index)
    if (index / STORE_DIR / "data.mdb").exists():
        with Store.open(index / STORE_DIR, readonly=True) as store:
            return stored_manifest(store, index)[0]
    return read_manifest_file(index)


def stored_manifest(store: Store, index: Path) -> tuple[Manifest, int]:
    """(manifest, generation) from one read transaction of ``store``."""
    raw, generation = store.get_metas(("manifest", "generation"))
    if raw is None and finished_before(index):
        raise damaged(store.path, "it holds no finished build, yet one of this index finished "
                                  "(the store was replaced, or a repair was interrupted)")
    if raw is None:
        raise RelsearchError(
            f"index {index} has no finished build yet (the first build was interrupted); "
            f"finish it with: relsearch build-index DIR --index {index}"
        )
    try:
        if not isinstance(raw, dict):
            raise RelsearchError("not a JSON object")
        return Manifest.from_dict(raw), int(generation or 0)
    except (RelsearchError, TypeError, ValueError) as exc:
        raise damaged(store.path, f"its manifest: {exc}") from None


def read_manifest_file(index: Path) -> Manifest:
    """``manifest.json`` as written on disk (the exported copy)."""
    path = index / MANIFEST
    if not path.exists():
        raise RelsearchError(f"no index at {index} (missing {MANIFEST}); build one with: relsearch build-index DIR")
    try:
        data = json.loads(read_regular(path))
    except (OSError, ValueError) as exc:
        raise RelsearchError(f"corrupt manifest {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise RelsearchError(f"corrupt manifest {path}: not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise IndexMismatchError(
            f"index {index} has schema version {version}, this relsearch reads {SCHEMA_VERSION}; rebuild it"
        )
    return Manifest.from_dict(data)


def manifest_bytes(manifest: Manifest) -> bytes:
    """The exported ``manifest.json`` text of ``manifest``."""
    return (json.dumps(manifest.to_dict(), indent=2) + "\n").encode()


def write_manifest(index: Path, manifest: Manifest) -> None:
    """Export ``manifest`` (already committed to LMDB) as ``manifest.json``, atomically."""
    atomic_write_bytes(index / MANIFEST, manifest_bytes(manifest))


#: What each entry of an index directory must be: True a folder, False a file.
LAYOUT = {MANIFEST: False, STORE_DIR: True, FAISS_DIR: True, STORED_NAME: False, LOCK: False,
          f"{STORE_DIR}/data.mdb": False, f"{STORE_DIR}/lock.mdb": False}
#: The entries a reader needs of that type before it opens anything.
READ_LAYOUT = (STORE_DIR, FAISS_DIR, f"{STORE_DIR}/data.mdb", f"{STORE_DIR}/lock.mdb")


def layout_problems(index: Path) -> dict[str, str]:
    """Entries of ``index`` that exist with the wrong type: {name: what is wrong}."""
    out = {}
    for name, folder in LAYOUT.items():
        p = index / name  # judged by what it is or points at: a link to another disk is fine
        if not p.exists():
            continue
        if folder and not p.is_dir():
            out[name] = "is a file, not a folder"
        elif not folder and not p.is_file():
            out[name] = "is a folder, not a file" if p.is_dir() else "is not a regular file"
    return out


def check_layout(index: Path, names: tuple[str, ...] = tuple(LAYOUT)) -> None:
    """Refuse (one line naming the fix) an index directory whose entries have the wrong type."""
    problems = {n: why for n, why in layout_problems(index).items() if n in names}
    if LOCK in problems:
        raise RelsearchError(f"index {index} is damaged: {LOCK} {problems[LOCK]}; remove {index / LOCK} "
                             "(no build is running while it is not a file)")
    if problems:
        what = "; ".join(f"{name} {why}" for name, why in problems.items())
        raise RelsearchError(f"index {index} is damaged: {what}; fix it with: relsearch verify --repair --index {index}")


def faiss_path(index: Path, encoder: str, generation: int) -> Path:
    return index / FAISS_DIR / f"{encoder}.{generation}.faiss"


def check_fingerprint(entry: EncoderEntry, fingerprint: str, index: Path) -> None:
    if entry.fingerprint != fingerprint:
        raise IndexMismatchError(
            f"index {index} was built with encoder {entry.spec!r} of weights {entry.fingerprint}, "
            f"but the loaded weights are {fingerprint}; rebuild into a new --index path"
        )


def _can_write(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def ensure_writable(index: Path) -> None:
    """Fail early (before touching anything) if ``index`` cannot be created or written."""
    probe = index
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RelsearchError(f"index path {index} is not usable: {probe} is not a directory")
    if not _can_write(probe):
        raise RelsearchError(f"index path {index} is not writable (no write permission on {probe})")


@contextlib.contextmanager
def build_lock(index: Path) -> Iterator[None]:
    """Exclusive lock so two builds never interleave their writes."""
    index.mkdir(parents=True, exist_ok=True)
    check_layout(index, (LOCK,))
    with open(index / LOCK, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RelsearchError(f"another build is writing {index}; wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class OpenIndex:
    """A read-only view of an index directory: manifest, store and per-encoder FAISS."""

    path: Path
    manifest: Manifest
    store: Store
    generation: int

    def faiss_file(self, encoder: str) -> Path:
        return faiss_path(self.path, encoder, self.generation)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> OpenIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_index(path: str | os.PathLike[str]) -> OpenIndex:
    """Open an existing index read-only; clear one-line errors when absent or corrupt."""
    index = Path(path)
    if not index.is_dir():
        raise RelsearchError(f"no index at {index}; build one with: relsearch build-index DIR --index {index}")
    if not (index / STORE_DIR / "data.mdb").exists():
        if (index / MANIFEST).exists():
            raise RelsearchError(f"index {index} has a manifest but no metadata store ({STORE_DIR}); rebuild it")
        raise RelsearchError(f"no index at {index}; build one with: relsearch build-index DIR --index {index}")
    check_layout(index, READ_LAYOUT)
    store = Store.open(index / STORE_DIR, readonly=True)
    try:
        manifest, generation = stored_manifest(store, index)
    except BaseException:
        store.close()
        raise
    return OpenIndex(index, manifest, store, generation)


def index_info(index: str | os.PathLike[str]) -> dict[str, Any]:
    """What an index holds: collection, counts, encoders, FAISS specs, sizes on disk."""
    with open_index(index) as opened:
        m = opened.manifest
        size = sum(f.stat().st_size for f in Path(index).rglob("*") if f.is_file())
        return {
            "index": str(index),
            "collection": m.collection,
            "roots": m.collection_roots(),
            "schema_version": m.schema_version,
            "generation": opened.generation,
            "images": m.count,  # live records (the store may also hold an unfinished build's)
            "paths": opened.store.count("paths"),
            "bytes_on_disk": size,
            "encoders": {name: asdict(e) for name, e in m.encoders.items()},
            "packages": m.packages,
            "updated": m.updated,
        }


def find_indexes(root: str | os.PathLike[str]) -> list[Path]:
    """Index directories directly under ``root``: a manifest, or a store whose manifest a build will re-export."""
    root = Path(root)

    def looks_like_index(p: Path) -> bool:
        try:  # an entry we may not look into is no index of ours, not a reason to fail
            return (p / MANIFEST).exists() or (p / STORE_DIR / "data.mdb").exists()
        except OSError:
            return False

    try:
        return sorted(p for p in root.iterdir() if looks_like_index(p)) if root.is_dir() else []
    except OSError:
        return []


def index_problem(index: str | os.PathLike[str]) -> str | None:
    """None when ``index`` opens for reading, else the one-line reason (naming the fix where there is one)."""
    try:
        with open_index(index):
            return None
    except RelsearchError as exc:
        return str(exc)
    except OSError as exc:
        return f"index {index} cannot be read: {exc.strerror or exc}"
