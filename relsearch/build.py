"""``build_index``: scan a folder, embed what is new, commit FAISS + LMDB atomically.

Order of writes, chosen so that an interrupted build never leaves an unusable index:

1. path/record removals and re-pointings (one LMDB txn; removed ids are tombstoned);
2. new content embedded in chunks, each chunk one LMDB txn (records, paths, raw
   vectors, ``pending`` marks) -- a killed build keeps every finished chunk, and the
   next run only embeds what is still missing;
3. per encoder, a FAISS file for generation G+1 (tombstones removed, pending added,
   or rebuilt from the raw vectors), each written atomically beside generation G;
4. one LMDB txn switching ``generation`` to G+1 and clearing pending/tombstones;
5. the manifest, atomically; then old-generation FAISS files are deleted.

Until step 4 commits, queries keep using generation G.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from relsearch.collection import Decoded, FileEntry, iter_batches, iter_decoded, scan, sha256_file
from relsearch.collection.exclude import effective, write_stored
from relsearch.encoders import DEFAULT_ENCODERS, Encoder, get_encoder, resolve_factory
from relsearch.encoders.base import EncoderSpec, PipelinedEncoder, parse_encoder_list
from relsearch.errors import RelsearchError
from relsearch.indexdir import (
    FAISS_DIR,
    MANIFEST,
    STORE_DIR,
    EncoderEntry,
    Manifest,
    build_lock,
    check_fingerprint,
    default_index_path,
    ensure_writable,
    faiss_path,
    read_manifest,
    write_manifest,
)
from relsearch.store import SCHEMA_VERSION, PathEntry, Record, Store

#: images per LMDB commit while embedding: the most work a kill can lose.
CHUNK = 256

#: What an embedding step yields: batches of (decoded file, {encoder name: unit vector}); a
#: failed file comes back with ``Decoded.error`` set and no vectors. ``Decoded.index`` is the
#: position in the list of paths the step was given.
EmbeddedBatch = list[tuple[Decoded, dict[str, np.ndarray]]]


class EmbeddingStep(Protocol):
    """Where a build's embedding runs; the default (None) is this process.

    The build scans, diffs and commits itself; a step only loads encoders (or stands-ins
    with ``name``, ``dim``, ``kind``, ``fingerprint``) and turns paths into vectors.
    ``relsearch.backends.ray_embed.RayEmbedding`` runs it on Ray Data.
    """

    def load(self, spec: EncoderSpec, device: str | None = None) -> Encoder: ...

    def embed(self, paths: list[str], missing: list[list[str]], encoders: list[Encoder],
              opts: BuildOptions) -> Iterator[EmbeddedBatch]: ...


@dataclass
class BuildOptions:
    encoders: str | None = None  # "a,b@src"; None: the index's own, or the default pair
    index_spec: str | None = None  # FAISS factory string forcing the index type
    batch_size: int = 32
    workers: int | None = None
    device: str | None = None
    progress: bool = True
    recall_target: float = 0.95
    # folder patterns added to those stored with the index (see relsearch.collection.exclude)
    exclude_dirs: tuple[str, ...] = ()
    default_excludes: bool | None = None  # None: keep the index's choice (on for a new index)
    forget_excludes: bool = False  # drop the stored patterns first
    embedding: EmbeddingStep | None = field(default=None, repr=False)  # None: embed in this process
    # encoders the caller already holds, by spec ("name" or "name@source"): used instead of loading
    # a second copy (the caller keeps ownership; the build never caches what it loads itself)
    preloaded: dict[str, Encoder] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not 0.0 < self.recall_target <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {self.recall_target!r}")


@dataclass
class BuildReport:
    index: str
    scanned: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)
    embedded: int = 0
    generation: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # folders, files, removed (from the index)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Work:
    """One unique content to embed (or an existing record missing some encoders)."""

    sha256: str
    paths: list[str]
    entries: list[FileEntry]
    record_id: int | None = None  # existing record lacking vectors
    missing: list[str] = field(default_factory=list)
    counted: list[str] = field(default_factory=list)  # "added"/"updated" per path, undone on failure


# --------------------------------------------------------------------------------------------
def _resolve_encoders(
    requested: str | None, manifest: Manifest | None, index: Path, device: str | None
) -> list[EncoderSpec]:
    try:
        specs = parse_encoder_list(requested or DEFAULT_ENCODERS) if (requested or not manifest) else []
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    if manifest:
        # An existing index keeps every encoder it has, so each new image gets every vector;
        # --encoders can only add encoders to it.
        asked = {s.name for s in specs}
        specs = [EncoderSpec.parse(e.spec) for e in manifest.encoders.values() if e.name not in asked] + specs
    for spec in specs:  # unknown names fail before any weights load
        resolve_factory(spec.name)
    return specs


def _load_encoders(specs: list[EncoderSpec], manifest: Manifest | None, index: Path,
                   opts: BuildOptions) -> list[Encoder]:
    """Load weights and check them (fingerprints, --index-spec) before anything is written."""
    from relsearch.index import check_spec

    load = opts.embedding.load if opts.embedding is not None else get_encoder
    encoders = [opts.preloaded.get(str(spec)) or load(spec, device=opts.device) for spec in specs]
    for spec, enc in zip(specs, encoders):
        entry = manifest.encoders.get(spec.name) if manifest else None
        if entry is not None:
            check_fingerprint(entry, enc.fingerprint, index)
        if opts.index_spec:
            check_spec(opts.index_spec, enc.dim)
    return encoders


def _hash_many(paths: list[str], workers: int) -> dict[str, str | Exception]:
    def one(p: str) -> str | Exception:
        try:
            return sha256_file(p)
        except OSError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(zip(paths, pool.map(one, paths)))


def _progress(total: int, enabled: bool, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not enabled or total == 0,
                dynamic_ncols=True, leave=False)


# --------------------------------------------------------------------------------------------
def build_index(
    collection: str | os.PathLike[str],
    index: str | os.PathLike[str] | None = None,
    options: BuildOptions | None = None,
) -> BuildReport:
    """Index (or incrementally update) the images under ``collection``."""
    opts = options or BuildOptions()
    t0 = time.perf_counter()
    root = Path(collection)
    if not root.exists():
        raise RelsearchError(f"collection folder {root} does not exist")
    if not root.is_dir():
        raise RelsearchError(f"collection path {root} is not a folder")
    index_path = Path(index) if index is not None else default_index_path(root)
    if index_path.exists() and not index_path.is_dir():
        raise RelsearchError(f"index path {index_path} exists and is not a folder")
    exists = (index_path / MANIFEST).exists()
    if not exists and index_path.is_dir() and any(index_path.iterdir()):
        if not (index_path / STORE_DIR).exists():
            raise RelsearchError(f"{index_path} is a non-empty folder that is not a relsearch index; choose another --index")
    manifest = read_manifest(index_path) if exists else None
    if manifest and Path(manifest.collection) != root.resolve():
        raise RelsearchError(
            f"index {index_path} holds collection {manifest.collection}, not {root.resolve()}; use another --index"
        )
    ensure_writable(index_path)

    exclusions = effective(index_path if exists else None, opts.exclude_dirs, opts.default_excludes,
                           opts.forget_excludes)
    scanned = scan(root, exclusions)
    if not scanned.files:
        raise RelsearchError(f"no images found under {root} (looked for jpg, jpeg, png, webp, bmp, gif, tiff)")
    specs = _resolve_encoders(opts.encoders, manifest, index_path, opts.device)
    # A plain rebuild of an existing index loads no model unless there is work to do;
    # otherwise weights load (and their fingerprints are checked) before anything is written.
    encoders = None if manifest and opts.encoders is None else _load_encoders(specs, manifest, index_path, opts)
    report = BuildReport(index=str(index_path), scanned=len(scanned.files), encoders=[s.name for s in specs])
    report.failed = [{"path": p, "error": r} for p, r in scanned.skipped]
    report.excluded = {**scanned.excluded.counts(), "removed": 0}
    report.seconds["scan"] = time.perf_counter() - t0

    with build_lock(index_path):
        write_stored(index_path, exclusions)  # before any removal: a killed build resumes with them
        store = Store.open(index_path / STORE_DIR, create=True)
        try:
            _update(store, root, scanned.files, specs, encoders, opts, report, index_path, manifest,
                    scanned.excluded.matcher())
        finally:
            store.close()
    report.seconds["total"] = time.perf_counter() - t0
    return report


def _update(
    store: Store,
    root: Path,
    files: list[FileEntry],
    specs: list[EncoderSpec],
    encoders: list[Encoder] | None,
    opts: BuildOptions,
    report: BuildReport,
    index_path: Path,
    manifest: Manifest | None,
    is_excluded: Callable[[str], bool] = lambda path: False,
) -> None:
    t = time.perf_counter()
    enc_names = [s.name for s in specs]
    all_enc_names = sorted(set(enc_names) | set(manifest.encoders if manifest else ()))
    known = store.all_paths()
    seen = {f.path for f in files}
    candidates: list[FileEntry] = []
    for f in files:
        old = known.get(f.path)
        if old is not None and old.size == f.size and old.mtime_ns == f.mtime_ns:
            report.unchanged += 1
        else:
            candidates.append(f)
    deleted = [p for p in known if p not in seen]
    report.excluded["removed"] = sum(map(is_excluded, deleted))
    have = {name: store.vector_ids(name) for name in enc_names}
    n_records = store.count("records")
    gen = store.generation
    idle = not candidates and not deleted and not store.marked("pending") and not store.marked("tombstones") \
        and all(len(have[n]) == n_records for n in enc_names) and not opts.index_spec \
        and all(faiss_path(index_path, n, gen).exists() for n in enc_names)
    if idle:
        from relsearch.index import VectorIndex

        for name in enc_names:  # nothing to write, but a corrupt FAISS file must not pass silently
            VectorIndex.load(faiss_path(index_path, name, gen))
        report.generation = gen
        report.seconds["diff"] = time.perf_counter() - t
        return
    if encoders is None:
        encoders = _load_encoders(specs, manifest, index_path, opts)

    hashes = _hash_many([f.path for f in candidates], workers=4)
    work: dict[str, _Work] = {}

    def stage(txn: Any) -> None:
        # 1. detach deleted/changed paths from their records
        def detach(path: str) -> None:
            entry = known[path]
            rec = store.txn_record(txn, entry.id)
            store.delete_path(txn, path)
            if rec is None:
                return
            rec.paths = [p for p in rec.paths if p != path]
            if rec.paths:
                store.put_record(txn, rec)
            else:
                store.delete_record(txn, rec, all_enc_names)

        for path in deleted:
            detach(path)
            report.removed += 1
        for f in candidates:
            digest = hashes[f.path]
            if isinstance(digest, Exception):
                report.failed.append({"path": f.path, "error": f"unreadable: {digest.strerror or digest}"})
                continue
            old = known.get(f.path)
            if old is not None:
                old_rec = store.txn_record(txn, old.id)
                if old_rec is not None and old_rec.sha256 == digest:
                    # touched but same bytes: refresh size/mtime only
                    store.put_path(txn, f.path, PathEntry(old.id, f.size, f.mtime_ns))
                    report.unchanged += 1
                    continue
                detach(f.path)
                how = "updated"
            else:
                how = "added"
            setattr(report, how, getattr(report, how) + 1)
            existing = store.txn_id_for_hash(txn, digest)
            if existing is not None:
                rec = store.txn_record(txn, existing)
                if rec is not None:
                    rec.paths = sorted(set(rec.paths) | {f.path})
                    store.put_record(txn, rec)
                    store.put_path(txn, f.path, PathEntry(existing, f.size, f.mtime_ns))
                    continue
            w = work.setdefault(digest, _Work(digest, [], [], missing=list(enc_names)))
            w.paths.append(f.path)
            w.entries.append(f)
            w.counted.append(how)

    store.write(stage)
    # existing records missing a vector for a requested encoder (new encoder, or a crash)
    for rec in store.iter_records():
        missing = [n for n in enc_names if rec.id not in have[n]]
        if missing:
            work[rec.sha256] = _Work(rec.sha256, rec.paths, [], record_id=rec.id, missing=missing)
    report.seconds["diff"] = time.perf_counter() - t

    t = time.perf_counter()
    _embed(store, list(work.values()), encoders, opts, report)
    report.seconds["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    _commit(store, root, specs, encoders, opts, report, index_path, manifest)
    report.seconds["index"] = time.perf_counter() - t


def _embed(store: Store, work: list[_Work], encoders: list[Encoder], opts: BuildOptions,
           report: BuildReport) -> None:
    if not work:
        return
    paths = [w.paths[0] for w in work]
    bar = _progress(len(work), opts.progress, "embedding")
    chunk: list[tuple[_Work, Any, dict[str, np.ndarray]]] = []

    def flush() -> None:
        if not chunk:
            return
        items = list(chunk)
        chunk.clear()

        def txn_fn(txn: Any) -> None:
            new = [it for it in items if it[0].record_id is None]
            ids = iter(store.allocate_ids(txn, len(new)))
            now = time.time()
            for w, d, vecs in items:
                if w.record_id is None:
                    rid = next(ids)
                    rec = Record(rid, w.sha256, sorted(w.paths), w.entries[0].size, d.width, d.height, now)
                    store.put_record(txn, rec)
                    for e in w.entries:
                        store.put_path(txn, e.path, PathEntry(rid, e.size, e.mtime_ns))
                else:
                    rid = w.record_id
                for name, v in vecs.items():
                    store.put_vector(txn, name, rid, v)
                if w.record_id is None:
                    # New content goes into every FAISS file at commit. An existing record
                    # only lacked vectors of an encoder new to this index, whose FAISS
                    # file is built from all stored vectors anyway.
                    store.mark(txn, "pending", [rid])

        store.write(txn_fn)

    step = opts.embedding.embed if opts.embedding is not None else _embed_here
    try:
        for rows in step(paths, [w.missing for w in work], encoders, opts):
            for d, vecs in rows:
                if d.error is not None:
                    _failed(work[d.index], d.error, report)
                    continue
                chunk.append((work[d.index], d, vecs))
                report.embedded += 1
            bar.update(len(rows))
            if len(chunk) >= CHUNK:
                flush()
        flush()
    finally:
        bar.close()


def _embed_here(paths: list[str], missing: list[list[str]], encoders: list[Encoder],
                opts: BuildOptions) -> Iterator[EmbeddedBatch]:
    """The local embedding step: decode in worker threads, encoders in this process."""
    by_name = {e.name: e for e in encoders}
    decoded = iter_decoded(paths, max_side=512, workers=opts.workers)
    for batch, groups in _prepared(decoded, missing, by_name, opts.batch_size):
        vec_rows: list[dict[str, np.ndarray]] = [{} for _ in batch]
        for rows, prepared in groups:
            for name, x in prepared.items():
                enc = by_name[name]
                out = enc.embed_batch(x) if _pipelined(enc) else enc.embed(x)
                for j, row in zip(rows, out):
                    vec_rows[j][name] = row
        yield list(zip(batch, vec_rows))


def _pipelined(enc: Encoder) -> bool:
    return isinstance(enc, PipelinedEncoder)


def _prepared(decoded: Iterator[Any], missing: list[list[str]], by_name: dict[str, Encoder],
              batch_size: int) -> Iterator[tuple[list[Any], list[tuple[list[int], dict[str, Any]]]]]:
    """Batches with each encoder's input already prepared, one batch ahead, in a thread.

    :class:`PipelinedEncoder` encoders get their resize and
    normalisation done here while the previous batch runs through the model, so the
    model is never waiting on image work; others get the PIL images.
    """
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in iter_batches(decoded, batch_size):  # failures travel along, flagged
                groups: dict[tuple[str, ...], list[int]] = {}
                for j, d in enumerate(batch):
                    if d.ok:
                        groups.setdefault(tuple(missing[d.index]), []).append(j)
                out = []
                for names, rows in groups.items():
                    images = [batch[j].image for j in rows]
                    out.append((rows, {n: by_name[n].preprocess_batch(images) if _pipelined(by_name[n]) else images
                                       for n in names}))
                for d in batch:
                    if _all_pipelined(by_name):
                        d.image = None  # free decoded pixels early: the build streams
                if not put((batch, out)):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    thread = threading.Thread(target=produce, name="relsearch-prepare", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _all_pipelined(by_name: dict[str, Encoder]) -> bool:
    return all(_pipelined(e) for e in by_name.values())


def _failed(w: _Work, error: str, report: BuildReport) -> None:
    for p in w.paths:
        report.failed.append({"path": p, "error": error})
    for how in w.counted:  # it was not added (or updated) after all
        setattr(report, how, getattr(report, how) - 1)


def _commit(
    store: Store,
    root: Path,
    specs: list[EncoderSpec],
    encoders: list[Encoder],
    opts: BuildOptions,
    report: BuildReport,
    index_path: Path,
    manifest: Manifest | None,
) -> None:
    from relsearch.index import IndexConfig, VectorIndex
    from relsearch.index.refine import write_generation_store
    from relsearch.index.sharded import ivfdata_path

    gen = store.generation
    pending = np.asarray(store.marked("pending"), dtype=np.int64)
    tombstones = np.asarray(store.marked("tombstones"), dtype=np.int64)
    entries = dict(manifest.encoders) if manifest else {}
    loaded = {enc.name: (spec, enc) for spec, enc in zip(specs, encoders)}

    def stale(name: str) -> bool:
        entry = entries.get(name)
        if entry is None or manifest is None or not faiss_path(index_path, name, gen).exists():
            return True
        return bool(opts.index_spec) and entry.faiss.get("requested") != opts.index_spec

    if not len(pending) and not len(tombstones) and not any(stale(n) for n in loaded):
        for name in loaded:  # nothing to write, but a corrupt FAISS file must not pass silently
            VectorIndex.load(faiss_path(index_path, name, gen))
        report.generation = gen
        return

    new_gen = gen + 1
    (index_path / FAISS_DIR).mkdir(parents=True, exist_ok=True)
    for name, (spec, enc) in loaded.items():
        entry = entries.get(name)
        dim = enc.dim
        requested = opts.index_spec or (entry.faiss.get("requested", "auto") if entry else "auto")
        config = IndexConfig(spec=requested, recall_target=opts.recall_target)
        lookup = _lookup(store, name, dim)
        new_file, rebuilt = faiss_path(index_path, name, new_gen), None
        index: VectorIndex | None = None
        if not stale(name):
            index = VectorIndex.load(faiss_path(index_path, name, gen))
            if index.needs_rebuild(index.ntotal - len(tombstones) + len(pending)):
                index = None
        if index is None:
            ids, vecs = store.all_vectors(name, dim)
            if len(ids) == 0:
                raise RelsearchError("no image could be embedded, so there is nothing to index (see the failed list)")
            # Large collections get memory-mapped on-disk lists beside the FAISS file.
            # a Ray build also adds the shards of an on-disk index as Ray tasks
            executor = opts.embedding.executor() if hasattr(opts.embedding, "executor") else None
            index = VectorIndex.build(vecs, ids, config, vector_lookup=lookup, ondisk=ivfdata_path(new_file),
                                      executor=executor)
            rebuilt = (ids, vecs)
        else:
            # On-disk lists are rewritten into the new generation's file, never edited under readers.
            index = index.updated(new_file, tombstones, pending,
                                  store.get_vectors(name, pending, dim) if len(pending) else None)
        index.save(new_file)
        # The re-ranking's raw vectors, contiguous and memory-mapped, per generation.
        write_generation_store(index, new_file, faiss_path(index_path, name, gen), rebuilt=rebuilt,
                               removed=tombstones, added=pending, vectors_of=lookup,
                               all_vectors=lambda n=name, d=dim: store.all_vectors(n, d))
        faiss_info = {**index.info(), "requested": requested}
        entries[name] = EncoderEntry(name, str(spec), enc.fingerprint, enc.dim,
                                     enc.kind, faiss_info)

    def switch(txn: Any) -> None:
        store.put_meta(txn, "generation", new_gen)
        store.clear(txn, "pending")
        store.clear(txn, "tombstones")

    store.write(switch)
    new_manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        collection=str(root.resolve()),
        encoders=entries,
        generation=new_gen,
        created=manifest.created if manifest else time.time(),
        count=store.count("records"),
    )
    write_manifest(index_path, new_manifest)
    report.generation = new_gen
    for old in (index_path / FAISS_DIR).glob("*"):
        if not old.name.startswith(".") and f".{new_gen}." not in old.name:
            with contextlib.suppress(OSError):
                old.unlink()


def _lookup(store: Store, name: str, dim: int) -> Any:
    return lambda ids: store.get_vectors(name, np.asarray(ids), dim)
