"""Metadata and raw vectors in LMDB, the index directory's source of truth.

Named databases (keys are bytes; ids are 8-byte big-endian so cursors walk in id order):

- ``meta``      str -> JSON           schema version, next id, generation, manifest
- ``records``   id -> JSON            one record per unique content (sha256): paths, size, width...
- ``paths``     path -> JSON          {id, size, mtime_ns}: the incremental-build check
- ``hashes``    sha256 -> id          identical files share one id (embedded once)
- ``pending``   id -> b""             embedded but not yet in the FAISS files of ``generation``
- ``vec:<enc>`` id -> float32 bytes + CRC-32   raw vectors: exact re-ranking and index rebuilds

File paths are stored as their file-system bytes (``os.fsencode``), so a name that is
not valid UTF-8 round-trips: in Python it is the ``surrogateescape`` string that
``os.listdir`` gave, in record JSON the same string with ``\\udcXX`` escapes.

FAISS files are derived from this store; the ``generation`` in ``meta`` names
the FAISS files that match it, and the ``manifest`` in ``meta`` (written in the
same transaction that switches ``generation``) describes them. A crash anywhere
before that commit leaves the previous generation in force, whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import numpy as np

from relsearch.errors import IndexMismatchError, RelsearchError
from relsearch.safe_io import regular_opener
from relsearch.store import envs
from relsearch.store.disk import write_error

#: 2: path keys are file-system bytes, raw vectors carry a CRC-32, the manifest lives in ``meta``.
SCHEMA_VERSION = 2
_CRC = struct.Struct("<I")
_INITIAL_MAP_SIZE = 1 << 30  # virtual; sparse on disk, doubled on MapFullError
_MAX_DBS = 32
T = TypeVar("T")


def id_key(i: int) -> bytes:
    return struct.pack(">Q", int(i))


def key_id(b: bytes) -> int:
    return struct.unpack(">Q", bytes(b))[0]


def path_key(path: str) -> bytes:
    """A path as LMDB key: its file-system bytes (undecodable names included)."""
    return os.fsencode(path)


def key_path(b: bytes) -> str:
    return os.fsdecode(bytes(b))


def pack_vector(i: int, vec: np.ndarray) -> bytes:
    """float32 bytes + CRC-32 of (id, bytes): a vector overwritten or stored under
    another id no longer matches its checksum."""
    raw = np.ascontiguousarray(vec, dtype=np.float32).tobytes()
    return raw + _CRC.pack(zlib.crc32(raw, zlib.crc32(id_key(i))))


def unpack_vector(i: int, value: bytes) -> np.ndarray | None:
    """The stored vector, or None when its checksum does not match."""
    value = bytes(value)
    raw, crc = value[:-4], value[-4:]
    if len(value) < 4 or (len(raw) % 4) or _CRC.pack(zlib.crc32(raw, zlib.crc32(id_key(i)))) != crc:
        return None
    return np.frombuffer(raw, dtype=np.float32)


class CorruptVectorError(RelsearchError):
    """A raw vector failed its checksum."""


class StoreDamagedError(RelsearchError):
    """The LMDB store cannot be read; ``relsearch verify --repair`` rebuilds it from the collection."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or str(self)  # what is wrong, without the command that fixes it


#: LMDB's verdicts on a file whose pages are not what it wrote (garbage, a foreign file,
#: a torn copy). Disk-full and I/O errors are plain :class:`lmdb.Error` and stay write errors.
DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.VersionMismatchError,
          lmdb.PanicError, lmdb.IncompatibleError, lmdb.BadTxnError, lmdb.BadValsizeError, lmdb.BadDbiError,
          lmdb.BadChecksumError)


def repair_hint(index: Path) -> str:
    """The command that rebuilds a damaged store (re-embedding from the collection)."""
    return f"rebuild it from the collection with: relsearch verify --repair --index {index}"


def damaged(store_dir: Path, reason: str) -> StoreDamagedError:
    """The one-line error for a store that cannot be read, naming the command that fixes it."""
    what = f"metadata store {store_dir / envs.DATA_FILE} is damaged ({reason})"
    return StoreDamagedError(f"{what}; {repair_hint(store_dir.parent)}", what)


def _loads(raw: bytes, what: str, store_dir: Path) -> Any:
    """JSON stored by this module; bytes that do not parse mean the page holding them was overwritten."""
    try:
        return json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        raise damaged(store_dir, f"unreadable {what}: {exc}") from None


def check_data_file(data: Path, attempts: int = 3) -> None:
    """Refuse a ``data.mdb`` shorter than its own meta pages say it is.

    LMDB maps the file and trusts it: a truncated file is a SIGBUS on first touch of
    a missing page, which kills the process with no message. Both meta pages (page 0
    and 1) record the last page in use; the newer one (higher txn id) is in force.

    A build may commit while this runs. LMDB writes a transaction's pages before the
    meta page that points at them, and never shrinks the file, so the meta pages are
    read *before* the size: any meta seen then fits the size seen after. A failed
    check is also re-read a few times (a torn read of a meta page being rewritten
    passes on the next try; a truly damaged file fails every time).
    """
    problem = ""
    for attempt in range(max(1, attempts)):
        if attempt:
            time.sleep(0.05 * attempt)
        problem = _data_file_problem(data)
        if not problem:
            return
    raise StoreDamagedError(problem, problem.split("; ")[0])


def _data_file_problem(data: Path) -> str:
    """The reason ``data`` cannot be mapped safely, or "" when it can."""
    try:
        with open(data, "rb", opener=regular_opener) as f:  # a FIFO in its place must not block the open
            head = f.read(2 * 65536)
            size = os.fstat(f.fileno()).st_size  # after the read: see check_data_file
    except OSError as exc:
        raise RelsearchError(f"cannot read metadata store {data}: {exc.strerror or exc}") from None
    recover = repair_hint(data.parent.parent)
    if size == 0:
        if finished_before(data.parent.parent):
            return f"metadata store {data} is damaged (empty, yet a build of this index finished); {recover}"
        return ""  # created, never written (a first build killed at once): LMDB initialises it
    metas = []
    for off in (0, None):
        if off is None:  # the second meta page sits one page (size read from the first) in
            if not metas:
                break
            off = metas[0][0]
        if len(head) < off + 152:
            break
        magic, version = struct.unpack_from("<II", head, off + 16)
        if magic != 0xBEEFC0DE:
            break
        psize = struct.unpack_from("<I", head, off + 40)[0]  # mm_dbs[FREE_DBI].md_pad = page size
        last_pg, txnid = struct.unpack_from("<QQ", head, off + 136)
        metas.append((psize, last_pg, txnid))
    if len(metas) < 2 or not metas[0][0] or metas[0][0] & (metas[0][0] - 1):
        return f"metadata store {data} is damaged (no valid LMDB meta pages, {size} bytes); {recover}"
    psize, last_pg, _ = max(metas, key=lambda m: m[2])
    need = (last_pg + 1) * psize
    if size < need:
        return f"metadata store {data} is truncated ({size} bytes, its meta pages need {need}); {recover}"
    return ""


def finished_before(index: Path) -> bool:
    """Whether a build of ``index`` ever finished: it exported ``manifest.json`` (a first build
    does so only after its store committed; its FAISS files come earlier, so they do not count)."""
    return (index / "manifest.json").exists()


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
        try:
            self.path = Path(env.path())
        except UnicodeDecodeError:  # py-lmdb decodes the folder as UTF-8; Store.open sets the path it was given
            self.path = Path()
        self._closed = False
        self._seen: tuple[Any, int] = (None, 0)  # data file (device, inode) and size when last read

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], readonly: bool = False, create: bool = False) -> Store:
        path = Path(path)
        if not create and not (path / "data.mdb").exists():
            raise RelsearchError(f"no metadata store at {path} (is this a relsearch index?)")
        if (path / "data.mdb").exists():
            check_data_file(path / "data.mdb")
        try:
            # Shared per process (relsearch.store.envs): LMDB forbids a second handle.
            # lock=True even read-only: a concurrent build must not be read mid-write.
            env = envs.acquire(path, write=not readonly, create=create, map_size=_INITIAL_MAP_SIZE,
                               max_dbs=_MAX_DBS, max_readers=126)
        except DAMAGE as exc:
            raise damaged(path, f"{type(exc).__name__}: {exc}") from None
        except lmdb.Error as exc:
            if not readonly:
                raise write_error(path, exc) from None
            raise RelsearchError(f"cannot open metadata store {path}: {exc}") from exc
        store = cls(env, readonly)
        store.path = path
        store._watch()
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
                raise damaged(self.path, f"database {name}: {type(exc).__name__}: {exc}") from None
        return self._dbs[name]

    def _check_schema(self, create: bool) -> None:
        version = self.get_meta("schema_version")
        if version is None:
            if create and not self.readonly:
                self.write(lambda txn: self.put_meta(txn, "schema_version", SCHEMA_VERSION))
                return
            index = self.path.parent
            if finished_before(index):
                raise damaged(self.path, "it holds no schema version, yet a build of this index finished")
            if self._db("meta") is None or not self.count("meta"):
                # created by a first build killed before its first commit: nothing to read yet
                raise RelsearchError(
                    f"index {index} has no finished build yet (the first build was interrupted); "
                    f"finish it with: relsearch build-index DIR --index {index}"
                )
            raise damaged(self.path, "no schema version")
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
            except DAMAGE as exc:
                self._dbs.clear()
                raise damaged(self.path, f"{type(exc).__name__}: {exc}") from None
            except lmdb.MapResizedError:
                self._dbs.clear()
                raise RelsearchError(f"metadata store {self.path} was grown by another process beyond this "
                                     "one's map; run the command again") from None
            except (lmdb.Error, OSError) as exc:
                # Disk full, I/O error: the txn was aborted, the last commit stands.
                self._dbs.clear()
                raise write_error(self.path, exc) from None

    def ensure_dbs(self, names: Iterable[str]) -> None:
        """Open (creating when writable) these databases now, outside any transaction:
        opening one later inside a read txn would start a second txn in this thread."""
        for name in names:
            self._db(name)

    @contextlib.contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read transaction; LMDB's verdicts on damaged pages leave it as one-line errors."""
        self._check_shrink()
        try:
            with self.env.begin(write=False) as txn:
                yield txn
        except DAMAGE as exc:
            raise damaged(self.path, f"{type(exc).__name__}: {exc}") from None
        except lmdb.MapResizedError:
            raise RelsearchError(f"metadata store {self.path} was grown by another process beyond this "
                                 "one's map; run the command again") from None

    def _watch(self) -> None:
        """Note the data file's identity and size, for :meth:`_check_shrink`."""
        try:
            st = os.stat(self.path / envs.DATA_FILE)
        except OSError:
            self._seen = (None, 0)
            return
        self._seen = ((st.st_dev, st.st_ino), st.st_size)

    def _check_shrink(self) -> None:
        """Refuse to read a data file that shrank since it was mapped.

        LMDB never shrinks its file, so a smaller one was truncated by someone else, and
        touching a page past its new end is a SIGBUS that kills the process (a long-lived
        page server included). One ``stat`` per transaction catches that before LMDB reads;
        a truncation landing between this check and the read is not caught.
        """
        key, size = self._seen
        try:
            st = os.stat(self.path / envs.DATA_FILE)
        except OSError:
            return  # deleted: the mapping still holds the old file whole
        if (st.st_dev, st.st_ino) != key or st.st_size >= size:
            if (st.st_dev, st.st_ino) == key:
                self._seen = (key, st.st_size)
            return  # replaced (the mapping holds the old file) or grown: safe
        problem = _data_file_problem(self.path / envs.DATA_FILE) if st.st_size else "emptied"
        if problem:
            raise damaged(self.path, f"it shrank under this process from {size} to {st.st_size} bytes")
        self._seen = (key, st.st_size)

    # ---- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        db = self._db("meta")
        if db is None:
            return default
        with self.read() as txn:
            raw = txn.get(key.encode(), db=db)
        return default if raw is None else _loads(raw, f"meta {key}", self.path)

    def get_metas(self, keys: Iterable[str]) -> list[Any]:
        """Several meta values read in one transaction (consistent with each other)."""
        db = self._db("meta")
        if db is None:
            return [None for _ in keys]
        with self.read() as txn:
            raws = [txn.get(k.encode(), db=db) for k in keys]
        return [None if r is None else _loads(r, f"meta {k}", self.path) for k, r in zip(keys, raws)]

    def delete_meta(self, txn: lmdb.Transaction, key: str) -> None:
        txn.delete(key.encode(), db=self._db("meta"))

    def put_meta(self, txn: lmdb.Transaction, key: str, value: Any) -> None:
        txn.put(key.encode(), json.dumps(value).encode(), db=self._db("meta"))

    def txn_meta(self, txn: lmdb.Transaction, key: str, default: Any = None) -> Any:
        raw = txn.get(key.encode(), db=self._db("meta"))
        return default if raw is None else _loads(raw, f"meta {key}", self.path)

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
        return None if raw is None else self._record(raw)

    def _record(self, raw: bytes) -> Record:
        try:
            return Record(**_loads(raw, "record", self.path))
        except TypeError as exc:
            raise damaged(self.path, f"unreadable record: {exc}") from None

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
                    out[int(i)] = self._record(raw)
        return out

    def iter_records(self) -> Iterator[Record]:
        db = self._db("records")
        if db is None:
            return
        with self.read() as txn:
            for _, raw in txn.cursor(db=db):
                yield self._record(raw)

    def record_ids(self) -> set[int]:
        db = self._db("records")
        if db is None:
            return set()
        with self.read() as txn:
            return {key_id(k) for k in txn.cursor(db=db).iternext(keys=True, values=False)}

    def count(self, name: str = "records") -> int:
        db = self._db(name)
        if db is None:
            return 0
        with self.read() as txn:
            return int(txn.stat(db)["entries"])

    def id_for_hash(self, sha256: str) -> int | None:
        """The record id holding content ``sha256``, or None, in a read transaction of its own."""
        db = self._db("hashes")  # opened first: a named database cannot be opened inside a read txn
        if db is None:
            return None
        with self.read() as txn:
            raw = txn.get(sha256.encode(), db=db)
        return None if raw is None else key_id(raw)

    def txn_id_for_hash(self, txn: lmdb.Transaction, sha256: str) -> int | None:
        raw = txn.get(sha256.encode(), db=self._db("hashes"))
        return None if raw is None else key_id(raw)

    def delete_record(self, txn: lmdb.Transaction, rec: Record, encoders: Iterable[str]) -> None:
        """Remove a record, its hash and vectors (the caller keeps FAISS in step)."""
        key = id_key(rec.id)
        txn.delete(key, db=self._db("records"))
        if self.txn_id_for_hash(txn, rec.sha256) == rec.id:
            txn.delete(rec.sha256.encode(), db=self._db("hashes"))
        txn.delete(key, db=self._db("pending"))
        for enc in encoders:
            txn.delete(key, db=self._db(f"vec:{enc}"))

    # ---- paths ---------------------------------------------------------------------------
    def all_paths(self) -> dict[str, PathEntry]:
        db = self._db("paths")
        out: dict[str, PathEntry] = {}
        if db is None:
            return out
        with self.read() as txn:
            for k, v in txn.cursor(db=db):
                out[key_path(k)] = self._path_entry(v)
        return out

    def get_path(self, path: str) -> PathEntry | None:
        """What the last build stored for one path (id, size, mtime), or None."""
        db = self._db("paths")
        if db is None:
            return None
        with self.read() as txn:
            raw = txn.get(path_key(path), db=db)
        return None if raw is None else self._path_entry(raw)

    def _path_entry(self, raw: bytes) -> PathEntry:
        try:
            return PathEntry(**_loads(raw, "path entry", self.path))
        except TypeError as exc:
            raise damaged(self.path, f"unreadable path entry: {exc}") from None

    def put_path(self, txn: lmdb.Transaction, path: str, entry: PathEntry) -> None:
        txn.put(path_key(path), json.dumps(asdict(entry)).encode(), db=self._db("paths"))

    def delete_path(self, txn: lmdb.Transaction, path: str) -> None:
        txn.delete(path_key(path), db=self._db("paths"))

    # ---- vectors -------------------------------------------------------------------------
    def put_vector(self, txn: lmdb.Transaction, enc: str, i: int, vec: np.ndarray) -> None:
        txn.put(id_key(i), pack_vector(i, vec), db=self._db(f"vec:{enc}"))

    def iter_vectors(self, enc: str) -> Iterator[tuple[int, np.ndarray | None]]:
        """(id, vector or None when its checksum fails) for every stored vector of ``enc``."""
        db = self._db(f"vec:{enc}")
        if db is None:
            return
        with self.read() as txn:
            for k, v in txn.cursor(db=db):
                i = key_id(k)
                yield i, unpack_vector(i, v)

    def delete_vector(self, txn: lmdb.Transaction, enc: str, i: int) -> None:
        txn.delete(id_key(i), db=self._db(f"vec:{enc}"))

    def vector_ids(self, enc: str) -> set[int]:
        db = self._db(f"vec:{enc}")
        if db is None:
            return set()
        with self.read() as txn:
            return {key_id(k) for k in txn.cursor(db=db).iternext(keys=True, values=False)}

    def get_vectors(self, enc: str, ids: np.ndarray, dim: int, strict: bool = False) -> np.ndarray:
        """Raw vectors for ``ids``, for exact re-ranking: zeros where missing or failing
        their checksum (``relsearch verify`` reports those); ``strict`` raises instead."""
        out = np.zeros((len(ids), dim), dtype=np.float32)
        db = self._db(f"vec:{enc}")
        if db is None:
            return out
        with self.read() as txn:
            for row, i in enumerate(np.asarray(ids).ravel()):
                if i < 0:
                    continue
                raw = txn.get(id_key(int(i)), db=db)
                vec = None if raw is None else unpack_vector(int(i), raw)
                if vec is not None and len(vec) == dim:
                    out[row] = vec
                elif strict:
                    raise CorruptVectorError(
                        f"raw vector of id {int(i)} ({enc}) in {self.path} is "
                        f"{'missing' if raw is None else 'failing its checksum'}; "
                        "run relsearch verify --repair, then relsearch build-index to re-embed it"
                    )
        return out

    def all_vectors(self, enc: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector of ``enc`` as (ids int64 [N], vectors float32 [N, dim]).

        A vector failing its checksum raises :class:`CorruptVectorError`: an index
        built from it would be silently wrong.
        """
        db = self._db(f"vec:{enc}")
        if db is None:
            return np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)
        with self.read() as txn:
            n = int(txn.stat(db)["entries"])
            ids = np.empty(n, dtype=np.int64)
            vecs = np.empty((n, dim), dtype=np.float32)
            row = -1
            for row, (k, v) in enumerate(txn.cursor(db=db)):
                if row >= n:
                    break
                ids[row] = key_id(k)
                vec = unpack_vector(ids[row], v)
                if vec is None or len(vec) != dim:
                    raise CorruptVectorError(
                        f"raw vector of id {ids[row]} ({enc}) in {self.path} fails its checksum; "
                        "run relsearch verify --repair, then relsearch build-index to re-embed it"
                    )
                vecs[row] = vec
            if row + 1 != n:  # the tree and its own entry count disagree
                raise damaged(self.path, f"vec:{enc} counts {n} entries, {row + 1} can be read")
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
