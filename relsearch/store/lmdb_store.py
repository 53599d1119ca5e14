"""Metadata and raw vectors in LMDB, the index directory's source of truth.

Named databases (keys are bytes; ids are 8-byte big-endian so cursors walk in id order):

- ``meta``      str -> JSON           schema version, next id, generation
- ``records``   id -> JSON            one record per unique content (sha256): paths, size, width...
- ``paths``     path -> JSON          {id, size, mtime_ns}: the incremental-build check
- ``hashes``    sha256 -> id          identical files share one id (embedded once)
- ``pending``   id -> b""             embedded but not yet in the FAISS files
- ``tombstones`` id -> b""            removed from the store, still to be removed from FAISS
- ``vec:<enc>`` id -> float32 bytes   raw vectors: exact re-ranking and index rebuilds

FAISS files are derived from this store; the ``generation`` in ``meta`` names
the FAISS files that match it, so a crash between writing new FAISS files and
committing here leaves the previous generation in force.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import numpy as np

from relsearch.errors import IndexMismatchError, RelsearchError
from relsearch.store import envs

SCHEMA_VERSION = 1
_INITIAL_MAP_SIZE = 1 << 30  # virtual; sparse on disk, doubled on MapFullError
_MAX_DBS = 32
T = TypeVar("T")


def id_key(i: int) -> bytes:
    return struct.pack(">Q", int(i))


def key_id(b: bytes) -> int:
    return struct.unpack(">Q", bytes(b))[0]


@dataclass
class Record:
    """One unique image content; ``paths`` lists every file holding it."""

    id: int
    sha256: str
    paths: list[str]
    size: int
    width: int
    height: int
    added: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.paths[0] if self.paths else ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        return cls(**json.loads(bytes(raw)))


@dataclass
class PathEntry:
    id: int
    size: int
    mtime_ns: int


class Store:
    """LMDB-backed store; open with :func:`Store.open`."""

    def __init__(self, env: lmdb.Environment, readonly: bool) -> None:
        self.env = env
        self.readonly = readonly
        self._dbs: dict[str, Any] = {}
        self._txn: lmdb.Transaction | None = None
        self._closed = False

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool = False, create: bool = False) -> Store:
        path = Path(path)
        if not create and not (path / "data.mdb").exists():
            raise RelsearchError(f"no metadata store at {path} (is this a relsearch index?)")
        try:
            # Shared per process (relsearch.store.envs): LMDB forbids a second handle.
            # lock=True even read-only: a concurrent build must not be read mid-write.
            env = envs.acquire(path, write=not readonly, create=create, map_size=_INITIAL_MAP_SIZE,
                               max_dbs=_MAX_DBS, max_readers=126)
        except lmdb.Error as exc:
            raise RelsearchError(f"cannot open metadata store {path}: {exc}") from exc
        store = cls(env, readonly)
        try:
            store._check_schema(create)
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Give the environment back (closed with the last store using it)."""
        if not self._closed:
            self._closed = True
            envs.release(self.env)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self, name: str) -> Any:
        if name not in self._dbs:
            try:
                if self._txn is not None:
                    # Inside write() the open must join the running txn: LMDB's open_db would
                    # otherwise start its own write txn and wait forever on ours.
                    self._dbs[name] = self.env.open_db(name.encode(), txn=self._txn, create=not self.readonly)
                else:
                    # Outside a txn: once per name per (shared) environment, see envs.open_db.
                    self._dbs[name] = envs.open_db(self.env, name, create=not self.readonly)
            except lmdb.NotFoundError:
                return None
            except lmdb.Error as exc:
                raise RelsearchError(f"corrupt metadata store ({name}): {exc}") from exc
        return self._dbs[name]

    def _check_schema(self, create: bool) -> None:
        version = self.get_meta("schema_version")
        if version is None:
            if create and not self.readonly:
                self.write(lambda txn: self.put_meta(txn, "schema_version", SCHEMA_VERSION))
                return
            raise RelsearchError("metadata store has no schema version (corrupt or not a relsearch index)")
        if version != SCHEMA_VERSION:
            raise IndexMismatchError(
                f"index schema version {version} != supported {SCHEMA_VERSION}; rebuild it into a new --index path"
            )

    # ---- transactions --------------------------------------------------------------------
    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn(txn)`` in one write transaction, growing the map when it is full."""
        if self.readonly:
            raise RuntimeError("store opened read-only")
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    self._txn = txn
                    try:
                        return fn(txn)
                    finally:
                        self._txn = None
            except lmdb.MapFullError:
                # The aborted txn left nothing behind (handles it opened are void too);
                # grow and redo it whole.
                self._dbs.clear()
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def read(self) -> lmdb.Transaction:
        return self.env.begin(write=False)

    # ---- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        db = self._db("meta")
        if db is None:
            return default
        with self.read() as txn:
            raw = txn.get(key.encode(), db=db)
        return default if raw is None else json.loads(bytes(raw))

    def put_meta(self, txn: lmdb.Transaction, key: str, value: Any) -> None:
        txn.put(key.encode(), json.dumps(value).encode(), db=self._db("meta"))

    def txn_meta(self, txn: lmdb.Transaction, key: str, default: Any = None) -> Any:
        raw = txn.get(key.encode(), db=self._db("meta"))
        return default if raw is None else json.loads(bytes(raw))

    def allocate_ids(self, txn: lmdb.Transaction, n: int) -> list[int]:
        start = int(self.txn_meta(txn, "next_id", 0))
        self.put_meta(txn, "next_id", start + n)
        return list(range(start, start + n))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    # ---- records -------------------------------------------------------------------------
    def put_record(self, txn: lmdb.Transaction, rec: Record) -> None:
        txn.put(id_key(rec.id), rec.to_json(), db=self._db("records"))
        txn.put(rec.sha256.encode(), id_key(rec.id), db=self._db("hashes"))

    def txn_record(self, txn: lmdb.Transaction, i: int) -> Record | None:
        raw = txn.get(id_key(i), db=self._db("records"))
        return None if raw is None else Record.from_json(raw)

    def get_records(self, ids: Iterable[int]) -> dict[int, Record]:
        out: dict[int, Record] = {}
        db = self._db("records")
        if db is None:
            return out
        with self.read() as txn:
            for i in ids:
                if i < 0:
                    continue
                raw = txn.get(id_key(i), db=db)
                if raw is not None:
                    out[int(i)] = Record.from_json(raw)
        return out

    def iter_records(self) -> Iterator[Record]:
        db = self._db("records")
        if db is None:
            return
        with self.read() as txn:
            for _, raw in txn.cursor(db=db):
                yield Record.from_json(raw)

    def count(self, name: str = "records") -> int:
        db = self._db(name)
        if db is None:
            return 0
        with self.read() as txn:
            return int(txn.stat(db)["entries"])

    def txn_id_for_hash(self, txn: lmdb.Transaction, sha256: str) -> int | None:
        raw = txn.get(sha256.encode(), db=self._db("hashes"))
        return None if raw is None else key_id(raw)

    def delete_record(self, txn: lmdb.Transaction, rec: Record, encoders: Iterable[str]) -> None:
        """Remove a record, its hash and vectors, and tombstone its id for FAISS."""
        key = id_key(rec.id)
        txn.delete(key, db=self._db("records"))
        txn.delete(rec.sha256.encode(), db=self._db("hashes"))
        txn.delete(key, db=self._db("pending"))
        for enc in encoders:
            txn.delete(key, db=self._db(f"vec:{enc}"))
        txn.put(key, b"", db=self._db("tombstones"))

    # ---- paths ---------------------------------------------------------------------------
    def all_paths(self) -> dict[str, PathEntry]:
        db = self._db("paths")
        out: dict[str, PathEntry] = {}
        if db is None:
            return out
        with self.read() as txn:
            for k, v in txn.cursor(db=db):
                out[bytes(k).decode()] = PathEntry(**json.loads(bytes(v)))
        return out

    def get_path(self, path: str) -> PathEntry | None:
        """What the last build stored for one path (id, size, mtime), or None."""
        db = self._db("paths")
        if db is None:
            return None
        with self.read() as txn:
            # fsencode: a name that is not UTF-8 (surrogateescape str) must not raise here.
            raw = txn.get(os.fsencode(path), db=db)
        return None if raw is None else PathEntry(**json.loads(bytes(raw)))

    def put_path(self, txn: lmdb.Transaction, path: str, entry: PathEntry) -> None:
        txn.put(path.encode(), json.dumps(asdict(entry)).encode(), db=self._db("paths"))

    def delete_path(self, txn: lmdb.Transaction, path: str) -> None:
        txn.delete(path.encode(), db=self._db("paths"))

    # ---- vectors -------------------------------------------------------------------------
    def put_vector(self, txn: lmdb.Transaction, enc: str, i: int, vec: np.ndarray) -> None:
        txn.put(id_key(i), np.ascontiguousarray(vec, dtype=np.float32).tobytes(), db=self._db(f"vec:{enc}"))

    def vector_ids(self, enc: str) -> set[int]:
        db = self._db(f"vec:{enc}")
        if db is None:
            return set()
        with self.read() as txn:
            return {key_id(k) for k in txn.cursor(db=db).iternext(keys=True, values=False)}

    def get_vectors(self, enc: str, ids: np.ndarray, dim: int) -> np.ndarray:
        """Raw vectors for ``ids`` (zeros where missing), for exact re-ranking."""
        out = np.zeros((len(ids), dim), dtype=np.float32)
        db = self._db(f"vec:{enc}")
        if db is None:
            return out
        with self.read() as txn:
            for row, i in enumerate(np.asarray(ids).ravel()):
                if i < 0:
                    continue
                raw = txn.get(id_key(int(i)), db=db)
                if raw is not None:
                    out[row] = np.frombuffer(raw, dtype=np.float32)
        return out

    def all_vectors(self, enc: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector of ``enc`` as (ids int64 [N], vectors float32 [N, dim])."""
        db = self._db(f"vec:{enc}")
        n = self.count(f"vec:{enc}") if db is not None else 0
        ids = np.empty(n, dtype=np.int64)
        vecs = np.empty((n, dim), dtype=np.float32)
        if n:
            with self.read() as txn:
                for row, (k, v) in enumerate(txn.cursor(db=db)):
                    ids[row] = key_id(k)
                    vecs[row] = np.frombuffer(v, dtype=np.float32)
        return ids, vecs

    # ---- pending / tombstones ------------------------------------------------------------
    def mark(self, txn: lmdb.Transaction, name: str, ids: Iterable[int]) -> None:
        db = self._db(name)
        for i in ids:
            txn.put(id_key(i), b"", db=db)

    def marked(self, name: str) -> list[int]:
        db = self._db(name)
        if db is None:
            return []
        with self.read() as txn:
            return [key_id(k) for k in txn.cursor(db=db).iternext(keys=True, values=False)]

    def clear(self, txn: lmdb.Transaction, name: str) -> None:
        txn.drop(self._db(name), delete=False)
