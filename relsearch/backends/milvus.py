"""Serve an index from Milvus: ``relsearch export milvus`` and ``query --backend milvus``.

One collection per encoder holds ``id`` (the LMDB record id), ``vector``, ``path`` and
``sha256``; a collection property carries what a query needs to embed an image the same way
(encoder spec, weight fingerprint, dim, kind) and the search parameters, so a query
needs only the URI. The vector index is mapped from the encoder's FAISS spec:

==================  =============================  ================================
FAISS               Milvus server                  milvus-lite (a local ``.db`` file)
==================  =============================  ================================
Flat                FLAT                           FLAT
IVFn,Flat           IVF_FLAT nlist=n               IVF_FLAT nlist=n
IVFn,SQ8            IVF_SQ8 nlist=n                IVF_SQ8 nlist=n
IVFn,PQm[xb]        IVF_PQ nlist=n m=m nbits=b     IVF_SQ8 nlist=n (no IVF_PQ; said so)
HNSWM               HNSW M=M                       HNSW M=M
==================  =============================  ================================

Re-exporting after an incremental build upserts new or re-pointed records and deletes
removed ones, so a collection never holds a record twice. Records embedded by a build
that has not switched generations yet (``pending``) are not exported: Milvus shows the
same generation FAISS answers from.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError, first_line

#: rows per upsert / delete call: bounded request size on a server.
BATCH = 1000
_MARK = "relsearch"  # the collection property that marks it as ours and describes it
_MAX_PATH = 4096


def _client(uri: str) -> Any:
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise RelsearchError(f"Milvus needs the 'milvus' extra: pip install 'relsearch[milvus]' ({exc})") from exc
    if is_lite(uri):
        parent = Path(uri).expanduser().resolve().parent
        if not parent.is_dir():
            raise RelsearchError(f"folder of the milvus-lite file {uri} does not exist")
        try:
            str(Path(uri).expanduser().resolve()).encode("utf-8")
        except UnicodeEncodeError:  # milvus-lite fails on such a path deep inside, after creating it
            msg = f"milvus-lite needs a UTF-8 file name; {uri!r} is not one: choose another --uri"
            raise RelsearchError(msg) from None
    with _captured_logs("milvus_lite") as records:
        try:
            return MilvusClient(uri=uri)
        except Exception as exc:  # pymilvus raises MilvusException and plain ones for a bad URI
            # milvus-lite logs why it could not open the file (with a traceback) and pymilvus raises
            # a generic error: tell the user the logged reason, in one line
            why = next((first_line(r.exc_info[1]) for r in records if r.exc_info and r.exc_info[1]), None)
            if is_lite(uri) and why:
                raise RelsearchError(f"cannot open {uri} as a milvus-lite database: {why}") from None
            raise RelsearchError(f"cannot connect to Milvus at {uri}: {first_line(exc)}") from None


@contextlib.contextmanager
def _captured_logs(name: str) -> Iterator[list[logging.LogRecord]]:
    """Records of logger ``name`` kept in a list instead of printed (a library that logs its own
    tracebacks would print them above the one-line error)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [handler], False
    try:
        yield records
    finally:
        logger.handlers, logger.propagate = saved


def is_lite(uri: str) -> bool:
    """A local file (``./x.db``) is milvus-lite; ``http(s)://``, ``tcp://``, ``unix:`` a server."""
    return not re.match(r"^(https?|tcp|grpc|unix)://|^unix:", uri)


def collection_name(prefix: str, encoder: str) -> str:
    """Milvus names allow letters, digits and underscores and start with a letter or underscore."""
    name = re.sub(r"\W", "_", f"{prefix}_{encoder}")
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"


@dataclass(frozen=True)
class MilvusIndex:
    """The Milvus index (and search parameters) a FAISS spec maps to."""

    index_type: str
    params: dict[str, int]
    search_params: dict[str, int]
    note: str = ""


def map_faiss_spec(faiss: dict[str, Any], lite: bool) -> MilvusIndex:
    """Milvus index parameters equivalent to the FAISS index described by ``faiss`` (its ``info()``)."""
    spec = str(faiss.get("spec", "Flat"))
    nlist = _int(r"IVF(\d+)", spec)
    nprobe = int(faiss.get("nprobe") or 1)
    hnsw = _int(r"HNSW(\d+)", spec)
    pq = re.search(r"(?<!O)PQ(\d+)(?:x(\d+))?", spec)
    if hnsw:
        return MilvusIndex("HNSW", {"M": hnsw, "efConstruction": 200}, {"ef": 128})
    if nlist is None:
        if "Flat" not in spec:
            return MilvusIndex("FLAT", {}, {}, f"FAISS spec {spec} has no Milvus equivalent: FLAT (exact)")
        return MilvusIndex("FLAT", {}, {})
    search = {"nprobe": min(nprobe, nlist)}
    if pq:
        m, nbits = int(pq.group(1)), int(pq.group(2) or 8)
        if not lite:
            return MilvusIndex("IVF_PQ", {"nlist": nlist, "m": m, "nbits": nbits}, search)
        return MilvusIndex("IVF_SQ8", {"nlist": nlist}, search,
                           f"milvus-lite has no IVF_PQ: IVF_SQ8 with the same nlist {nlist} in place of "
                           f"{spec} (1 byte per dimension instead of {m * nbits / 8:g} bytes per vector)")
    if "SQ8" in spec:
        return MilvusIndex("IVF_SQ8", {"nlist": nlist}, search)
    return MilvusIndex("IVF_FLAT", {"nlist": nlist}, search)


def _int(pattern: str, text: str) -> int | None:
    m = re.search(pattern, text)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------
@dataclass
class CollectionReport:
    collection: str
    encoder: str
    rows: int = 0
    upserted: int = 0
    deleted: int = 0
    index_type: str = ""
    index_params: dict[str, int] = field(default_factory=dict)
    note: str = ""


@dataclass
class ExportReport:
    uri: str
    lite: bool
    index: str
    generation: int
    collections: list[CollectionReport] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_milvus(index: str | os.PathLike[str], uri: str, prefix: str | None = None,
                  encoders: list[str] | None = None) -> ExportReport:
    """Write (or bring up to date) one Milvus collection per encoder of ``index``."""
    from relsearch.indexdir import open_index

    t0 = time.perf_counter()
    index = Path(index)
    with open_index(index) as opened:
        manifest = opened.manifest
        names = list(manifest.encoders)
        for name in encoders or []:
            if name not in manifest.encoders:
                raise RelsearchError(f"index {index} has no {name!r} column; it was built with: {', '.join(names)}")
        prefix = prefix or index.resolve().name
        client = _client(uri)
        report = ExportReport(uri=uri, lite=is_lite(uri), index=str(index), generation=opened.generation)
        try:
            store = opened.store
            pending = set(store.marked("pending"))
            for name in encoders or names:
                entry = manifest.encoders[name]
                report.collections.append(_export_one(client, store, entry, collection_name(prefix, name),
                                                      pending, prefix, report.lite, names.index(name)))
        finally:
            client.close()
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def _export_one(client: Any, store: Any, entry: Any, coll: str, pending: set[int], prefix: str,
                lite: bool, position: int) -> CollectionReport:
    from pymilvus import DataType, MilvusClient

    mapped = map_faiss_spec(entry.faiss, lite)
    meta = {_MARK: 1, "prefix": prefix, "encoder": entry.name, "spec": entry.spec, "fingerprint": entry.fingerprint,
            "dim": entry.dim, "kind": entry.kind, "search_params": mapped.search_params, "position": position}
    rep = CollectionReport(coll, entry.name, index_type=mapped.index_type, index_params=mapped.params,
                           note=mapped.note)
    if client.has_collection(coll):
        old = _meta_of(client, coll)
        if old is None:
            raise RelsearchError(f"Milvus collection {coll} exists and was not written by relsearch; "
                                 "choose another --collection prefix")
        if old.get("fingerprint") != entry.fingerprint or int(old.get("dim", -1)) != entry.dim \
                or _index_type(client, coll) != mapped.index_type:
            # other weights or another index type: the old rows cannot be kept
            client.drop_collection(coll)
    if not client.has_collection(coll):
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=entry.dim)
        schema.add_field("path", DataType.VARCHAR, max_length=_MAX_PATH)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        params = client.prepare_index_params()
        params.add_index(field_name="vector", index_type=mapped.index_type, metric_type="IP",
                         params=mapped.params)
        client.create_collection(coll, schema=schema, index_params=params,
                                 properties={_MARK: json.dumps(meta, sort_keys=True)})
    else:  # search parameters follow the index's current nprobe
        client.alter_collection_properties(coll, properties={_MARK: json.dumps(meta, sort_keys=True)})

    ids, vectors = store.all_vectors(entry.name, entry.dim)
    keep = np.asarray([int(i) not in pending for i in ids], dtype=bool)
    ids, vectors = ids[keep], vectors[keep]
    records = store.get_records(int(i) for i in ids)
    present = _existing(client, coll)
    wanted = {int(i) for i in ids}
    gone = sorted(set(present) - wanted)
    for part in _chunks(gone, BATCH):
        client.delete(coll, ids=part)
    rep.deleted = len(gone)
    rows = []
    for i, vec in zip(ids, vectors):
        rec = records.get(int(i))
        if rec is None:
            continue
        text = to_milvus_path(rec.path)
        if present.get(int(i)) == (text, rec.sha256):
            continue  # already there, unchanged (a record's vector never changes: its bytes are its id)
        if len(text.encode()) > _MAX_PATH:
            raise RelsearchError(f"path longer than {_MAX_PATH} bytes cannot go to Milvus: {text[:80]}...")
        rows.append({"id": int(i), "vector": vec.tolist(), "path": text, "sha256": rec.sha256})
    for part in _chunks(rows, BATCH):
        client.upsert(coll, part)
    rep.upserted = len(rows)
    client.flush(coll)
    rep.rows = len(wanted)
    return rep


#: Milvus VARCHARs are UTF-8; a file name that is not (stored surrogate-escaped) goes in as
#: this prefix + base64 of its bytes. Record paths are absolute, so the prefix cannot clash.
_BYTES_PREFIX = "bytes:"


def to_milvus_path(path: str) -> str:
    """``path`` as valid UTF-8 text, reversibly (see :func:`from_milvus_path`)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return _BYTES_PREFIX + base64.b64encode(os.fsencode(path)).decode("ascii")


def from_milvus_path(text: str) -> str:
    if text.startswith(_BYTES_PREFIX):
        return os.fsdecode(base64.b64decode(text[len(_BYTES_PREFIX):]))
    return text


def _meta_of(client: Any, coll: str) -> dict[str, Any] | None:
    try:
        meta = json.loads((client.describe_collection(coll).get("properties") or {}).get(_MARK) or "")
    except (ValueError, TypeError):
        return None
    return meta if isinstance(meta, dict) and meta.get(_MARK) == 1 else None


def _index_type(client: Any, coll: str) -> str:
    try:
        return str(client.describe_index(coll, "vector").get("index_type", ""))
    except Exception:  # no index on the field yet
        return ""


def _existing(client: Any, coll: str) -> dict[int, tuple[str, str]]:
    """id -> (path, sha256) of every row in the collection."""
    client.load_collection(coll)
    out: dict[int, tuple[str, str]] = {}
    with _quiet_iterator_logs():
        it = client.query_iterator(coll, batch_size=BATCH, filter="id >= 0", output_fields=["id", "path", "sha256"])
        try:
            while page := it.next():
                for row in page:
                    out[int(row["id"])] = (row["path"], row["sha256"])
        finally:
            it.close()
    return out


@contextlib.contextmanager
def _quiet_iterator_logs() -> Iterator[None]:
    """milvus-lite lacks the call the iterator starts with (the iterator then falls back by
    itself) and logs that at ERROR/WARNING; those lines are noise on a command's stderr."""
    loggers = [logging.getLogger(n) for n in ("grpc._server", "pymilvus.client.iterator.query_iterator")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]




# ---------------------------------------------------------------------------------------------
def relsearch_collections(client: Any, prefix: str | None = None) -> dict[str, dict[str, Any]]:
    """collection -> its relsearch metadata, for the collections written by ``export milvus``."""
    out = {}
    for coll in sorted(client.list_collections()):
        meta = _meta_of(client, coll)
        if meta is not None and (prefix is None or meta.get("prefix") == prefix):
            out[coll] = meta
    return out


@dataclass(frozen=True)
class MilvusColumn:
    """One searched column of a :class:`MilvusSearcher`: its collection, dimension and kind."""

    collection: str
    dim: int
    kind: str


class MilvusSearcher:
    """The Milvus collections of one exported index, with their encoders loaded (like ``Searcher``)."""

    def __init__(self, uri: str, prefix: str | None = None, encoders: str | None = None,
                 device: str | None = None) -> None:
        if is_lite(uri) and not Path(uri).expanduser().exists():
            raise RelsearchError(f"milvus-lite file {uri} does not exist; write it with: relsearch export milvus")
        self.uri, self.device = uri, device
        self.client = _client(uri)
        try:
            self.collections = self._pick(prefix, encoders)
        except BaseException:
            self.client.close()
            raise
        self._loaded: dict[str, Any] = {}

    def _pick(self, prefix: str | None, encoders: str | None) -> dict[str, dict[str, Any]]:
        found = relsearch_collections(self.client, prefix)
        if not found:
            where = f" with prefix {prefix!r}" if prefix else ""
            raise RelsearchError(f"no relsearch collection{where} in Milvus at {self.uri}; "
                                 "write one with: relsearch export milvus")
        prefixes = sorted({m["prefix"] for m in found.values()})
        if len(prefixes) > 1:
            raise RelsearchError(f"Milvus at {self.uri} holds several exported indexes ({', '.join(prefixes)}); "
                                 "choose one with --collection")
        if not encoders:  # in the index's own column order, as a FAISS query gives them
            return dict(sorted(found.items(), key=lambda cm: cm[1].get("position", 0)))
        asked = [e.strip().partition("@")[0] for e in encoders.split(",") if e.strip()]
        have = {m["encoder"]: c for c, m in found.items()}
        missing = [a for a in asked if a not in have]
        if missing:
            raise RelsearchError(f"no Milvus collection for {', '.join(missing)}; exported: {', '.join(sorted(have))}")
        return {have[a]: found[have[a]] for a in asked}

    @property
    def encoders(self) -> dict[str, MilvusColumn]:
        """The searched columns by encoder name, as :attr:`relsearch.query.Searcher.encoders` lists them."""
        return {meta["encoder"]: MilvusColumn(coll, int(meta["dim"]), meta.get("kind", "attribute"))
                for coll, meta in self.collections.items()}

    def refresh(self) -> bool:
        """Nothing to follow: a Milvus collection is updated in place by ``export milvus``."""
        return False

    def encoder(self, name: str) -> Any:
        coll = self.encoders[name].collection
        if coll not in self._loaded:
            from relsearch.encoders import get_encoder

            meta = self.collections[coll]
            enc = get_encoder(meta["spec"], device=self.device)
            if enc.fingerprint != meta["fingerprint"]:
                raise RelsearchError(f"Milvus collection {coll} was written with other {meta['encoder']} weights "
                                     f"({meta['fingerprint']}, loaded {enc.fingerprint}); export the index again")
            self.client.load_collection(coll)
            self._loaded[coll] = enc
        return self._loaded[coll]

    def search_vectors(self, name: str, vectors: np.ndarray, k: int) -> list[list[Any]]:
        """Hits of each query vector in the encoder's collection (as ``Searcher.search_vectors``)."""
        from relsearch.results import Hit

        coll = self.encoders[name].collection
        meta = self.collections[coll]
        res = self.client.search(coll, data=[np.asarray(v, dtype=np.float32).tolist() for v in vectors],
                                 limit=k, output_fields=["path"],
                                 search_params={"metric_type": "IP", "params": meta.get("search_params", {})})
        return [[Hit(r + 1, float(h["distance"]), from_milvus_path(h["entity"]["path"]), int(h["id"]),
                     [from_milvus_path(h["entity"]["path"])]) for r, h in enumerate(row)] for row in res]

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> MilvusSearcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def query_milvus(image: str | os.PathLike[str], uri: str, k: int = 20, prefix: str | None = None,
                 encoders: str | None = None, device: str | None = None) -> Any:
    """Neighbours of ``image`` from the Milvus collections of one exported index (a ``ComposedResult``)."""
    from relsearch.composed import QueryTerm, search_composed
    from relsearch.query import load_query_image

    if k < 1:
        raise RelsearchError(f"-k must be at least 1, got {k}")
    img = load_query_image(image)
    with MilvusSearcher(uri, prefix, encoders, device) as searcher:
        return search_composed(searcher, [QueryTerm(str(image))], k, images={str(image): img})


def query_milvus_cli(queries: list[str] | None, text: str | None, uri: str | None, k: int, prefix: str | None,
                     encoders: str | None, device: str | None, plain: bool = True) -> Any:
    """``query --backend milvus``: the CLI's argument checks, then :func:`query_milvus`."""
    if uri is None:
        raise RelsearchError("--backend milvus needs --uri (a Milvus server or a milvus-lite file)")
    terms = list(queries or [])
    if text is not None or any(t.startswith("text:") for t in terms):
        raise RelsearchError("text queries are not served from Milvus; query the index directory (--backend faiss)")
    if len(terms) != 1 or not plain:
        raise RelsearchError("--backend milvus takes one query image (no --weights, --not, --analogy, --explain)")
    return query_milvus(terms[0], uri, k=k, prefix=prefix, encoders=encoders, device=device)
