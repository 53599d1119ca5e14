"""``build_index``: scan a folder, embed what is new, commit FAISS + LMDB atomically.

The order of writes. Each step ends at a named fault point (``relsearch.faults``)
where the fault-injection tests SIGKILL a build; wherever it dies, the previous
generation keeps answering in full and the next build finishes the job.

1. ``locked``   The build lock is taken before the index is read, so the encoders, the
                manifest and the diff come from the index as it is now, never from a
                copy that another build has since replaced. Temp files of killed
                builds are removed.
2. ``planned``  Read only: the scan against the store (unchanged, new, changed, gone).
3. ``chunk``    New content embedded in chunks, each chunk one LMDB txn (record, hash,
                raw vectors with checksums, ``pending`` mark), committed every
                ``commit_every`` images or ``commit_seconds``, whichever comes first, and
                on SIGINT / SIGTERM (``relsearch.interrupt``). Nothing live changes:
                paths still point at generation G's records and FAISS G lacks the new ids.
4. ``faiss``    Per encoder, a FAISS file for G+1 (G minus what the switch removes plus
                ``pending``, or rebuilt from the raw vectors), written atomically beside G.
5. ``switched`` One LMDB txn: paths re-pointed or removed, records that no file holds
                any more deleted, ``pending`` cleared, the files that failed to decode
                remembered, ``generation`` = G+1 and G+1's manifest. Until it commits,
                queries use G, whole.
6. ``exported`` ``manifest.json`` rewritten from the committed manifest (a copy).
7. ``cleaned``  FAISS files of other generations deleted.

A build with nothing to do still checks the index and repairs what it can without
embedding: a FAISS file that fails its checksum is rebuilt from the raw vectors, a
``manifest.json`` that disagrees with the store is rewritten.

A file that failed to decode is remembered by (path, size, mtime) and not tried again
until it changes (``BuildOptions.retry_failed`` tries it anyway); the report still lists it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from relsearch.collection import Decoded, FileEntry, iter_batches, iter_decoded, sha256_file
from relsearch.collection.exclude import STORED_NAME, effective, write_stored
from relsearch.collection.roots import check_roots, merge_roots, scan_roots
from relsearch.encoders import DEFAULT_ENCODERS, Encoder, get_encoder, resolve_factory
from relsearch.encoders.base import EncoderSpec, PipelinedEncoder, parse_encoder_list
from relsearch.errors import RelsearchError
from relsearch.faults import new_run, point
from relsearch.home import default_index_path
from relsearch.indexdir import (
    FAISS_DIR,
    LOCK,
    MANIFEST,
    STORE_DIR,
    EncoderEntry,
    Manifest,
    build_lock,
    check_fingerprint,
    check_layout,
    ensure_writable,
    faiss_path,
    manifest_bytes,
    write_manifest,
)
from relsearch.interrupt import BuildInterrupted, StopSignals
from relsearch.safe_io import read_regular
from relsearch.store import SCHEMA_VERSION, PathEntry, Record, Store
from relsearch.store.disk import is_write_failure, write_error

log = logging.getLogger(__name__)

#: images per LMDB commit while embedding: with COMMIT_SECONDS, the most work a kill can lose.
CHUNK = 256
#: seconds between LMDB commits while embedding (``$RELSEARCH_COMMIT_SECONDS`` overrides it).
COMMIT_SECONDS = 30.0
COMMIT_SECONDS_ENV = "RELSEARCH_COMMIT_SECONDS"
#: the build's named write points, in order (see the module docstring).
FAULT_POINTS = ("locked", "planned", "chunk", "faiss", "switched", "exported", "cleaned")

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

    def executor(self) -> Any:
        """A ``map(fn, items)`` for the shards of an on-disk index, or None to build them here."""
        ...


@dataclass
class BuildOptions:
    encoders: str | None = None  # "a,b@src"; None: the index's own, or the default pair
    index_spec: str | None = None  # FAISS factory string forcing the index type
    batch_size: int = 32
    workers: int | None = None
    device: str | None = None
    progress: bool = True
    recall_target: float = 0.95
    commit_every: int | None = None  # images per LMDB commit while embedding (None: CHUNK)
    commit_seconds: float | None = None  # ... or seconds (None: $RELSEARCH_COMMIT_SECONDS or COMMIT_SECONDS)
    retry_failed: bool = False  # try files that failed to decode before even if they have not changed
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
        if self.commit_every is not None and self.commit_every < 1:
            raise ValueError(f"commit_every must be >= 1, got {self.commit_every!r}")
        if self.commit_seconds is not None and not 0 < self.commit_seconds < float("inf"):
            raise ValueError(f"commit_seconds must be a positive number, got {self.commit_seconds!r}")
        if not 0.0 < self.recall_target <= 1.0:
            raise ValueError(f"recall_target must be in (0, 1], got {self.recall_target!r}")


class NothingToIndexError(RelsearchError):
    """Every file failed to embed; ``failed`` lists them (``{"path", "error"}``) once the build knows."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.failed: list[dict[str, str]] = []


@dataclass
class BuildReport:
    index: str
    scanned: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    failed_before: int = 0  # of ``failed``: failed in an earlier build, unchanged since, not tried again
    encoders: list[str] = field(default_factory=list)
    embedded: int = 0
    generation: int = 0
    repaired: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)  # folders, files, removed (from the index)
    notes: list[str] = field(default_factory=list)  # files passed over on purpose (SVG, RAW beside a JPEG)

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
    expect: str | None = None  # sha256 the embedded bytes must have (the file may change meanwhile)


@dataclass
class _Plan:
    """What the scan asks of the store; nothing of it is live before the switch."""

    final: dict[str, int | str]  # path -> record id, or content digest still to be embedded
    entries: dict[str, FileEntry]  # paths whose (id, size, mtime) entry is (re)written at the switch
    known: dict[str, PathEntry]  # the paths table of generation G
    work: dict[str, _Work]  # digest (or "#id" for a record missing vectors) -> content to embed
    refilled: set[str] = field(default_factory=set)  # encoders whose live records lacked vectors
    exclusions: dict[str, Any] | None = None  # folder patterns, committed with the switch (verify restores them)
    # files that failed to decode, remembered at the switch: path -> [size, mtime_ns, error]
    failed: dict[str, list[Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
def _resolve_encoders(requested: str | None, manifest: Manifest | None,
                      building: list[str] | None) -> list[EncoderSpec]:
    """The encoders of this build: the index's own, those an interrupted build was
    adding, and any ``--encoders`` asks to add (an index never loses a column)."""
    try:
        specs = parse_encoder_list(requested or DEFAULT_ENCODERS) if (requested or not manifest) else []
        interrupted = [EncoderSpec.parse(s) for s in building or ()]
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    have = {s.name for s in specs}
    own = [EncoderSpec.parse(e.spec) for e in manifest.encoders.values()] if manifest else []
    extra = [s for s in own + interrupted if s.name not in have]
    out: list[EncoderSpec] = []
    for s in extra + specs:
        if s.name not in {o.name for o in out}:
            out.append(s)
    for spec in out:  # unknown names fail before any weights load
        resolve_factory(spec.name)
    return out


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


def _is_index(path: Path) -> bool:
    # a first build killed early leaves only some of these (the lock file, an empty store)
    ours = {LOCK, STORE_DIR, FAISS_DIR, MANIFEST, STORED_NAME}
    return (path / STORE_DIR).exists() or (path / MANIFEST).exists() or \
        all(p.name in ours or _is_temp(p.name) for p in path.iterdir())


def _is_temp(name: str) -> bool:
    """A temp file of a killed atomic write (``relsearch.atomic``: ``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


# --------------------------------------------------------------------------------------------
def build_index(
    collection: str | os.PathLike[str],
    index: str | os.PathLike[str] | None = None,
    options: BuildOptions | None = None,
) -> BuildReport:
    """Index (or incrementally update) the images under ``collection``.

    SIGINT and SIGTERM (in the main thread) stop it with :class:`BuildInterrupted` once the
    images embedded so far are committed (``saved``); the same call later continues from there.
    """
    opts = options or BuildOptions()
    t0 = time.perf_counter()
    new_run()
    roots = check_roots(collection)  # one folder, or several making one library
    index_path = Path(index) if index is not None else default_index_path(roots[0])
    _check_paths(roots[0], index_path)
    opts = replace(opts, commit_seconds=commit_seconds(opts.commit_seconds))
    stop = StopSignals()
    try:
        with stop:
            return _build(roots, index_path, opts, stop, t0)
    except BuildInterrupted as exc:
        exc.saved = stop.saved
        raise


def commit_seconds(value: float | None = None) -> float:
    """Seconds between commits while embedding: ``value``, ``$RELSEARCH_COMMIT_SECONDS`` or COMMIT_SECONDS."""
    if value is not None:
        return value
    raw = os.environ.get(COMMIT_SECONDS_ENV, "").strip()
    if not raw:
        return COMMIT_SECONDS
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < float("inf"):
        raise RelsearchError(f"{COMMIT_SECONDS_ENV} must be a positive number of seconds, got {raw!r}")
    return seconds


def _check_paths(root: Path, index_path: Path) -> None:
    """The collection and index paths, checked before any model loads or anything is written."""
    if not root.exists():
        raise RelsearchError(f"collection folder {root} does not exist")
    if not root.is_dir():
        raise RelsearchError(f"collection path {root} is not a folder")
    if index_path.exists() and not index_path.is_dir():
        raise RelsearchError(f"index path {index_path} exists and is not a folder")
    if index_path.is_dir() and any(index_path.iterdir()) and not _is_index(index_path):
        raise RelsearchError(f"{index_path} is a non-empty folder that is not a relsearch index; choose another --index")
    if index_path.is_dir():
        check_layout(index_path)  # a file where a folder belongs (or the reverse): verify --repair fixes it
    ensure_writable(index_path)


def _build(roots: list[Path], index_path: Path, opts: BuildOptions, stop: StopSignals, t0: float) -> BuildReport:
    # Before the lock, for early failure on bad input: the scan, and the encoders asked
    # for, loaded once and handed to the locked part (this build owns them; nothing caches
    # models process-wide). What the index says is re-read under the lock.
    exclusions, scanned = _scan(roots, index_path, opts)
    if opts.encoders or not (index_path / STORE_DIR / "data.mdb").exists():
        asked = _resolve_encoders(opts.encoders, None, None)
        loaded = _load_encoders(asked, None, index_path, opts)
        # handed to the locked part, which checks them against the index (no second load)
        opts = replace(opts, preloaded={**{str(s): e for s, e in zip(asked, loaded)}, **opts.preloaded})
    report = BuildReport(index=str(index_path))
    try:
        with build_lock(index_path):
            point("locked")
            _remove_temp_files(index_path)
            # the stored folder patterns are index state: another build may have changed them
            locked, rescanned = _scan(roots, index_path, opts, unless=exclusions)
            if rescanned is not None:
                exclusions, scanned = locked, rescanned
            report.scanned = len(scanned.files)
            report.failed = [{"path": p, "error": r} for p, r in scanned.skipped]
            report.excluded = {**scanned.excluded.counts(), "removed": 0}
            report.notes = scanned.notes()
            report.seconds["scan"] = time.perf_counter() - t0
            log.info("scan: %d image files in %s (%d skipped, %d folders excluded)", len(scanned.files),
                     ", ".join(map(str, roots)), len(scanned.skipped), len(scanned.excluded.folders))
            store = Store.open(index_path / STORE_DIR, create=True)
            try:
                _update(store, roots, scanned.files, opts, report, index_path, scanned.excluded.matcher(),
                        exclusions, stop)
            except NothingToIndexError as exc:
                exc.failed = list(report.failed)  # why each file failed: the caller shows them
                raise
            finally:
                store.close()
    except OSError as exc:
        if is_write_failure(exc):
            raise write_error(exc.filename or index_path, exc) from None
        raise
    report.seconds["total"] = time.perf_counter() - t0
    return report


def _scan(roots: list[Path], index_path: Path, opts: BuildOptions, unless: Any = None) -> tuple[Any, Any]:
    """(exclusions, scan) with the index's stored folder patterns; scan is None when the
    patterns equal ``unless`` (the scan already made with them stands)."""
    existing = (index_path / STORE_DIR / "data.mdb").exists()
    exclusions = effective(index_path if existing else None, opts.exclude_dirs, opts.default_excludes,
                           opts.forget_excludes)
    if unless is not None and exclusions == unless:
        return exclusions, None
    scanned = scan_roots(roots, exclusions)
    if not scanned.files:
        from relsearch.collection.formats import looked_for

        raise RelsearchError(f"no images found under {', '.join(map(str, roots))} (looked for {looked_for()})"
                             + "".join(f"; {n}" for n in scanned.notes()))
    return exclusions, scanned


def _remove_temp_files(index: Path) -> None:
    """Temp files a killed build left behind (FAISS and manifest writes: hidden names,
    see ``relsearch.atomic``). Called under the build lock, so none is still in use."""
    for tmp in [*index.glob(f"{FAISS_DIR}/.*"), *index.glob(".*.tmp"), *index.glob(f".{MANIFEST}.*")]:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _committed_manifest(store: Store, index: Path) -> Manifest | None:
    from relsearch.indexdir import stored_manifest

    if store.get_meta("manifest") is None:
        return None
    return stored_manifest(store, index)[0]


def _update(store: Store, roots: list[Path], files: list[FileEntry], opts: BuildOptions, report: BuildReport,
            index_path: Path, is_excluded: Callable[[str], bool] = lambda path: False,
            exclusions: Any = None, stop: StopSignals | None = None) -> None:
    # Everything below is decided from the store as it is under the lock.
    t = time.perf_counter()
    manifest = _committed_manifest(store, index_path)
    given = [r.resolve() for r in roots]
    held = merge_roots(manifest.collection_roots(), given, index_path) if manifest else [str(r) for r in given]
    specs = _resolve_encoders(opts.encoders, manifest, store.get_meta("building"))
    report.encoders = [s.name for s in specs]
    # A plain rebuild loads no model unless it has to: new content, or a column the
    # committed manifest does not describe yet (one an interrupted build was adding).
    need = bool(opts.encoders or opts.index_spec) or not manifest or any(s.name not in manifest.encoders for s in specs)
    encoders = _load_encoders(specs, manifest, index_path, opts) if need else None

    plan = _plan(store, files, specs, report, is_excluded, opts.retry_failed)
    point("planned")
    report.seconds["diff"] = time.perf_counter() - t
    log.info("diff: %d unchanged, %d added, %d updated, %d removed; %d to embed", report.unchanged,
             report.added, report.updated, report.removed, len(plan.work))

    t = time.perf_counter()
    if plan.work and encoders is None:
        encoders = _load_encoders(specs, manifest, index_path, opts)
    if exclusions is not None:
        # Every option is checked by now (encoders, fingerprints, --index-spec): a refused
        # build wrote nothing. Before any removal: a killed build resumes with them.
        write_stored(index_path, exclusions)
        plan.exclusions = exclusions.to_dict()
    if plan.work:
        assert encoders is not None
        log.info("embed: %d images with %s", len(plan.work), ", ".join(s.name for s in specs))
        _embed(store, list(plan.work.values()), encoders, specs, opts, report, stop or StopSignals(), plan.failed)
    report.seconds["embed"] = time.perf_counter() - t

    t = time.perf_counter()
    _commit(store, held, specs, encoders, opts, report, index_path, manifest, plan)
    report.seconds["index"] = time.perf_counter() - t


def remembered_failures(raw: Any) -> dict[str, list[Any]] | None:
    """The files earlier builds could not decode, from the store's ``failed`` meta:
    ``{path: [size, mtime_ns, error]}`` (``{}`` when there is none), or None when the
    value has another shape (``relsearch verify`` flags it; a build starts afresh)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        return None
    for value in raw.values():
        if not (isinstance(value, list) and len(value) == 3 and isinstance(value[2], str)
                and all(isinstance(x, int) and not isinstance(x, bool) for x in value[:2])):
            return None
    return raw


def _plan(store: Store, files: list[FileEntry], specs: list[EncoderSpec], report: BuildReport,
          is_excluded: Callable[[str], bool], retry_failed: bool = False) -> _Plan:
    """Step ``planned``: diff the scan against the store; reads only."""
    names = [s.name for s in specs]
    store.ensure_dbs(["meta", "records", "paths", "hashes", "pending"] + [f"vec:{n}" for n in names])
    known = store.all_paths()
    remembered = {} if retry_failed else remembered_failures(store.get_meta("failed")) or {}
    final, candidates, skipped = _unchanged(files, known, remembered, report)
    scanned = {f.path for f in files}
    deleted = [p for p in known if p not in scanned]
    report.removed = len(deleted)
    report.excluded["removed"] = sum(map(is_excluded, deleted))
    work, entries = _new_content(store, candidates, known, names, final, report)
    refilled = _refills(store, names, final, work)
    return _Plan(final, entries, known, work, refilled, failed=skipped)


def _unchanged(files: list[FileEntry], known: dict[str, PathEntry], remembered: dict[str, list[Any]],
               report: BuildReport) -> tuple[dict[str, int | str], list[FileEntry], dict[str, list[Any]]]:
    """(paths whose entry matches the store, with their ids; files to hash; files that failed
    to decode before and have not changed since, remembered again and not tried)."""
    final: dict[str, int | str] = {}
    candidates: list[FileEntry] = []
    skipped: dict[str, list[Any]] = {}
    for f in files:
        old = known.get(f.path)
        if old is not None and old.size == f.size and old.mtime_ns == f.mtime_ns:
            report.unchanged += 1
            final[f.path] = old.id
            continue
        was = remembered.get(f.path)
        if old is None and was is not None and was[:2] == [f.size, f.mtime_ns]:
            report.failed.append({"path": f.path, "error": was[2], "status": "failed before, unchanged: skipped"})
            report.failed_before += 1
            skipped[f.path] = was
            continue
        candidates.append(f)
    return final, candidates, skipped


def _new_content(store: Store, candidates: list[FileEntry], known: dict[str, PathEntry], names: list[str],
                 final: dict[str, int | str], report: BuildReport) -> tuple[dict[str, _Work], dict[str, FileEntry]]:
    """Hash the new and changed files: what the store already holds is re-pointed (into
    ``final``), the rest becomes work; returns (work by digest, path entries to write)."""
    hashes = _hash_many([f.path for f in candidates], workers=4)
    work: dict[str, _Work] = {}
    entries: dict[str, FileEntry] = {}
    with store.read() as txn:
        for f in candidates:
            digest = hashes[f.path]
            old = known.get(f.path)
            if isinstance(digest, Exception):
                report.failed.append({"path": f.path, "error": f"unreadable: {digest.strerror or digest}"})
                if old is not None:  # keep what it held until it can be read again
                    final[f.path] = old.id
                continue
            entries[f.path] = f
            if old is not None:
                old_rec = store.txn_record(txn, old.id)
                if old_rec is not None and old_rec.sha256 == digest:
                    report.unchanged += 1  # touched, same bytes: only size/mtime change
                    final[f.path] = old.id
                    continue
            how = "updated" if old is not None else "added"
            setattr(report, how, getattr(report, how) + 1)
            existing = store.txn_id_for_hash(txn, digest)  # live, or embedded by a killed build
            if existing is not None:
                final[f.path] = existing
                continue
            final[f.path] = digest
            w = work.setdefault(digest, _Work(digest, [], [], missing=list(names), expect=digest))
            w.paths.append(f.path)
            w.entries.append(f)
            w.counted.append(how)
    return work, entries


def _refills(store: Store, names: list[str], final: dict[str, int | str], work: dict[str, _Work]) -> set[str]:
    """Records the result will hold that lack a vector (an encoder new to the index, a killed
    build, or a vector verify --repair dropped) become work; returns the encoders concerned."""
    holders: dict[int, str] = {}
    for p, rid in final.items():
        if isinstance(rid, int):
            holders.setdefault(rid, p)
    refilled: set[str] = set()
    for name in names:
        have = store.vector_ids(name)
        for rid, p in holders.items():
            if rid not in have:
                key = f"#{rid}"
                if key not in work:
                    rec = store.get_records([rid]).get(rid)
                    work[key] = _Work(key, [p], [], record_id=rid, expect=rec.sha256 if rec else None)
                work[key].missing.append(name)
                refilled.add(name)
    return refilled


class _Chunk:
    """Embedded content not committed yet (step ``chunk``): committed in one LMDB txn when
    ``commit_every`` items or ``commit_seconds`` have gathered, and when the build stops."""

    def __init__(self, store: Store, specs: list[EncoderSpec], opts: BuildOptions, stop: StopSignals) -> None:
        self.store = store
        self.building = [str(s) for s in specs]  # a resumed build (even without --encoders) finishes these
        self.stop = stop
        self.every = opts.commit_every or CHUNK
        self.seconds = commit_seconds(opts.commit_seconds)
        self.items: list[tuple[_Work, Decoded, dict[str, np.ndarray]]] = []
        self.since = time.monotonic()

    def due(self) -> bool:
        return len(self.items) >= self.every or (bool(self.items) and time.monotonic() - self.since >= self.seconds)

    def flush(self) -> None:
        self.since = time.monotonic()
        if not self.items:
            return
        items = list(self.items)
        with self.stop.shielded():  # the commit a signal asked for is never cut short by it
            self.store.write(lambda txn: self._put(txn, items))
            self.items.clear()
            self.stop.saved += len(items)
        point("chunk")

    def _put(self, txn: Any, items: list[tuple[_Work, Decoded, dict[str, np.ndarray]]]) -> None:
        store = self.store
        store.put_meta(txn, "building", self.building)
        ids = iter(store.allocate_ids(txn, sum(w.record_id is None for w, _, _ in items)))
        now = time.time()
        for w, d, vecs in items:
            if w.record_id is None:
                rid = next(ids)
                store.put_record(txn, Record(rid, w.sha256, sorted(w.paths), w.entries[0].size,
                                             d.width, d.height, now))
                store.mark(txn, "pending", [rid])
            else:
                rid = w.record_id
            for name, v in vecs.items():
                store.put_vector(txn, name, rid, v)


def _embed(store: Store, work: list[_Work], encoders: list[Encoder], specs: list[EncoderSpec],
           opts: BuildOptions, report: BuildReport, stop: StopSignals, failed: dict[str, list[Any]]) -> None:
    """Step ``chunk``: embed and store new content; nothing becomes live here. A signal
    stops it after the batch in hand, once what is embedded is committed."""
    chunk = _Chunk(store, specs, opts, stop)
    step = opts.embedding.embed if opts.embedding is not None else _embed_here
    bar = _progress(len(work), opts.progress, "embedding")
    batches = step([w.paths[0] for w in work], [w.missing for w in work], encoders, opts)
    try:
        try:
            with stop.deferred():
                for rows in batches:
                    _take(rows, work, chunk, report, failed)
                    bar.update(len(rows))
                    if stop.requested:
                        break
                    if chunk.due():
                        chunk.flush()
        finally:
            bar.close()
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # the decode threads (or a Ray dataset) stop here, not when collected
    except BuildInterrupted:  # a second signal: keep what is embedded all the same
        chunk.flush()
        raise
    chunk.flush()
    if stop.requested:
        raise stop.interrupted()


def _take(rows: EmbeddedBatch, work: list[_Work], chunk: _Chunk, report: BuildReport,
          failed: dict[str, list[Any]]) -> None:
    """One embedded batch into the chunk; files that failed are reported (and, when they
    failed to decode, remembered with their size and mtime)."""
    for d, vecs in rows:
        w = work[d.index]
        if d.error is not None:
            _failed(w, d.error, report)
            for p, entry in zip(w.paths, w.entries):
                failed[p] = [entry.size, entry.mtime_ns, d.error]
        elif _changed(w, d):
            _failed(w, "changed while it was being indexed; run build-index again", report)
        else:
            chunk.items.append((w, d, vecs))
            report.embedded += 1


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


def _changed(w: _Work, d: Decoded) -> bool:
    """The decoded bytes are not the content planned (and hashed) for ``w``: its vectors
    would be stored under another picture's hash."""
    return d.sha256 is not None and w.expect is not None and d.sha256 != w.expect


def _failed(w: _Work, error: str, report: BuildReport) -> None:
    for p in w.paths:
        report.failed.append({"path": p, "error": error})
    for how in w.counted:  # it was not added (or updated) after all
        setattr(report, how, getattr(report, how) - 1)


@dataclass
class _Switch:
    """What step ``switched`` changes, decided from the store and the plan before any write."""

    by_id: dict[int, list[str]]  # the ids the new generation holds, with their paths
    removed: list[int]  # live ids no path holds any more
    added: list[int]  # ids new to FAISS (embedded by this build or a killed one)
    dropped: list[int]  # embedded by a killed build for files since gone
    path_puts: dict[str, PathEntry]
    path_dels: list[str]
    record_updates: list[Record]
    failed: dict[str, list[Any]] | None  # files to remember as failed, when that changes

    def changes_lmdb(self, store: Store, plan: _Plan) -> bool:
        return bool(self.dropped or self.path_puts or self.path_dels or self.record_updates
                    or self.failed is not None or store.get_meta("building") is not None
                    or (plan.exclusions is not None and store.get_meta("exclusions") != plan.exclusions))


def _commit(
    store: Store,
    held: list[str],
    specs: list[EncoderSpec],
    encoders: list[Encoder] | None,
    opts: BuildOptions,
    report: BuildReport,
    index_path: Path,
    manifest: Manifest | None,
    plan: _Plan,
) -> None:
    """Steps ``faiss``, ``switched``, ``exported``, ``cleaned``."""
    gen = store.generation if manifest else 0
    sw = _switch_plan(store, plan)
    names = [s.name for s in specs]
    entries = dict(manifest.encoders) if manifest else {}
    current, rebuild = _current_faiss(index_path, names, entries, gen, opts, plan, report)
    new_faiss = bool(sw.removed or sw.added or rebuild)
    lmdb_changes = new_faiss or sw.changes_lmdb(store, plan) or (manifest is not None
                                                                 and manifest.collection_roots() != held)
    new_gen = gen + 1 if new_faiss else gen
    if new_faiss:
        _write_faiss(store, index_path, specs, encoders, entries, gen, new_gen, current, sw, opts)
    if manifest is not None and not lmdb_changes:
        new_manifest = manifest  # nothing changed: keep it (and its time stamps) as committed
    else:
        new_manifest = Manifest(schema_version=SCHEMA_VERSION, collection=held[0], encoders=entries,
                                generation=new_gen, created=manifest.created if manifest else time.time(),
                                count=len(sw.by_id), roots=held if len(held) > 1 else [])
    log.info("index: %s", f"generation {new_gen} of {', '.join(names)} written" if new_faiss else "FAISS files unchanged")
    if lmdb_changes or manifest is None:
        _switch(store, sw, plan, new_manifest, sorted(set(names) | set(entries)))
        log.info("commit: generation %d live, %d images", new_gen, len(sw.by_id))
    point("switched")
    report.generation = new_gen
    # The manifest file is a copy of the committed one: rewritten whenever it differs
    # (a kill before this point, a corrupt or deleted file).
    if _export_manifest(index_path, new_manifest) and manifest is not None and not lmdb_changes:
        report.repaired.append(f"{MANIFEST}: rewritten from the store")
    point("exported")
    _clean_generations(index_path, new_gen)
    point("cleaned")


def _switch_plan(store: Store, plan: _Plan) -> _Switch:
    """Paths, records and ids of the new generation against the live one (reads only)."""
    pending = set(store.marked("pending"))
    live = store.record_ids() - pending  # the ids FAISS generation G holds
    final = _final_ids(store, plan)
    by_id: dict[int, list[str]] = {}
    for p, rid in final.items():
        by_id.setdefault(rid, []).append(p)
    path_puts = {p: PathEntry(final[p], f.size, f.mtime_ns) for p, f in plan.entries.items() if p in final}
    path_puts = {p: e for p, e in path_puts.items() if plan.known.get(p) != e}
    path_dels = [p for p in plan.known if p not in final]
    touched = {plan.known[p].id for p in list(path_puts) + path_dels if p in plan.known}
    touched |= {e.id for e in path_puts.values()} | pending
    record_updates: list[Record] = []
    for rid in sorted(touched & by_id.keys()):
        rec = store.get_records([rid]).get(rid)
        if rec is not None and rec.paths != sorted(by_id[rid]):
            rec.paths = sorted(by_id[rid])
            record_updates.append(rec)
    failed = plan.failed if plan.failed != (store.get_meta("failed") or {}) else None
    return _Switch(by_id, sorted(live - by_id.keys()), sorted(by_id.keys() - live), sorted(pending - by_id.keys()),
                   path_puts, path_dels, record_updates, failed)


def _final_ids(store: Store, plan: _Plan) -> dict[str, int]:
    """Each path's record id: content embedded in this build (or by a killed one) has one now."""
    final: dict[str, int] = {}
    with store.read() as txn:
        for p, rid in plan.final.items():
            if isinstance(rid, str):
                found = store.txn_id_for_hash(txn, rid)
                if found is None:
                    continue  # it failed to decode: reported, remembered
                rid = found
            final[p] = rid
    return final


def _current_faiss(index_path: Path, names: list[str], entries: dict[str, EncoderEntry], gen: int,
                   opts: BuildOptions, plan: _Plan, report: BuildReport) -> tuple[dict[str, Any], dict[str, str]]:
    """Generation G's FAISS index per encoder, loaded (and so checked), and why the others
    are rebuilt from the raw vectors: ({name: VectorIndex}, {name: reason})."""
    from relsearch.index import VectorIndex

    current: dict[str, Any] = {}
    rebuild: dict[str, str] = {}
    for name in names:
        entry = entries.get(name)
        why = ("new" if entry is None
               else "new spec" if opts.index_spec and entry.faiss.get("requested") != opts.index_spec
               else "refilled" if name in plan.refilled else None)
        if why is None:
            try:
                current[name] = VectorIndex.load(faiss_path(index_path, name, gen))
            except RelsearchError as exc:  # damaged or missing: rebuilt from the raw vectors
                why = "repaired"
                report.repaired.append(f"{name}: {exc}")
        if why is not None:
            rebuild[name] = why
    return current, rebuild


def _write_faiss(store: Store, index_path: Path, specs: list[EncoderSpec], encoders: list[Encoder] | None,
                 entries: dict[str, EncoderEntry], gen: int, new_gen: int, current: dict[str, Any], sw: _Switch,
                 opts: BuildOptions) -> None:
    """Step ``faiss``: each encoder's files of generation G+1, beside G's; ``entries`` (the
    manifest's, updated in place) describe them."""
    loaded = {enc.name: enc for enc in encoders or ()}
    (index_path / FAISS_DIR).mkdir(parents=True, exist_ok=True)
    for spec in specs:
        name = spec.name
        entry = entries.get(name)
        dim = loaded[name].dim if name in loaded else entries[name].dim
        requested = opts.index_spec or (entry.faiss.get("requested", "auto") if entry else "auto")
        faiss_info = write_generation(store, index_path, name, dim, gen, new_gen, current.get(name),
                                      sorted(sw.by_id), sw.removed, sw.added, requested, opts)
        point("faiss")
        if entry is not None and name not in loaded:
            entries[name] = EncoderEntry(**{**asdict(entry), "faiss": faiss_info})
        else:
            enc = loaded[name]
            entries[name] = EncoderEntry(name, str(spec), enc.fingerprint, enc.dim, enc.kind, faiss_info)


def _switch(store: Store, sw: _Switch, plan: _Plan, manifest: Manifest, encoder_names: list[str]) -> None:
    """Step ``switched``: one LMDB transaction makes generation G+1 live."""

    def txn_fn(txn: Any) -> None:
        for p in sw.path_dels:
            store.delete_path(txn, p)
        for p, e in sw.path_puts.items():
            store.put_path(txn, p, e)
        for rec in sw.record_updates:
            store.put_record(txn, rec)
        for rid in sw.removed + sw.dropped:
            rec = store.txn_record(txn, rid)
            if rec is not None:
                store.delete_record(txn, rec, encoder_names)
        store.clear(txn, "pending")
        store.delete_meta(txn, "building")
        if sw.failed:
            store.put_meta(txn, "failed", sw.failed)
        elif sw.failed is not None:
            store.delete_meta(txn, "failed")
        store.put_meta(txn, "generation", manifest.generation)
        store.put_meta(txn, "manifest", manifest.to_dict())
        if plan.exclusions is not None:
            store.put_meta(txn, "exclusions", plan.exclusions)

    store.write(txn_fn)


def _export_manifest(index_path: Path, manifest: Manifest) -> bool:
    """Step ``exported``: ``manifest.json`` rewritten when it differs from the committed
    manifest; True when a file that was there is rewritten."""
    want = manifest_bytes(manifest)
    try:
        on_disk = read_regular(index_path / MANIFEST)
    except OSError:
        on_disk = b""
    if on_disk == want:
        return False
    write_manifest(index_path, manifest)
    return bool(on_disk)


def _clean_generations(index_path: Path, new_gen: int) -> None:
    """Step ``cleaned``: FAISS files of other generations deleted (readers of G hold them open)."""
    for old in (index_path / FAISS_DIR).glob("*"):
        if not old.name.startswith(".") and f".{new_gen}." not in old.name:
            with contextlib.suppress(OSError):
                old.unlink()


def write_generation(store: Store, index_path: Path, name: str, dim: int, gen: int, new_gen: int,
                     current: Any, ids: list[int], removed: list[int], added: list[int], requested: str,
                     opts: BuildOptions) -> dict[str, Any]:
    """Write encoder ``name``'s files of generation ``new_gen`` (FAISS file, its on-disk
    lists and refine store when it has them): ``current`` (generation ``gen``, loaded)
    less ``removed`` plus ``added``, or, when ``current`` is None or due for a rebuild,
    built afresh from the raw vectors of ``ids``. No model is needed. Returns the
    manifest's ``faiss`` entry."""
    from relsearch.index import IndexConfig, VectorIndex
    from relsearch.index.refine import write_generation_store
    from relsearch.index.sharded import ivfdata_path

    new_file = faiss_path(index_path, name, new_gen)
    lookup = _lookup(store, name, dim)
    rebuilt = None
    index = current
    if index is not None and index.needs_rebuild(len(ids)):
        index = None
    if index is None:
        all_ids, vecs = _raw_vectors(store, name, dim, ids)
        if len(all_ids) == 0:
            raise NothingToIndexError("no image could be embedded, so there is nothing to index")
        config = IndexConfig(spec=requested, recall_target=opts.recall_target)
        # Large collections get memory-mapped on-disk lists beside the FAISS file;
        # a Ray build also adds the shards of an on-disk index as Ray tasks.
        executor = opts.embedding.executor() if opts.embedding is not None else None
        index = VectorIndex.build(vecs, all_ids, config, vector_lookup=lookup, ondisk=ivfdata_path(new_file),
                                  executor=executor)
        rebuilt = (all_ids, vecs)
    else:
        # On-disk lists are rewritten into the new generation's file, never edited under readers.
        add = np.asarray(added, dtype=np.int64)
        index = index.updated(new_file, np.asarray(removed, dtype=np.int64), add,
                              store.get_vectors(name, add, dim, strict=True) if len(add) else None)
    _save(index, new_file)
    # The re-ranking's raw vectors, contiguous and memory-mapped, per generation.
    write_generation_store(index, new_file, faiss_path(index_path, name, gen), rebuilt=rebuilt,
                           removed=np.asarray(removed, dtype=np.int64), added=np.asarray(added, dtype=np.int64),
                           vectors_of=lookup, all_vectors=lambda: _raw_vectors(store, name, dim, ids))
    return {**index.info(), "requested": requested, "file_sha256": file_sha256(new_file)}


def _raw_vectors(store: Store, name: str, dim: int, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The stored (checksum-verified) vectors of ``name`` for ``ids`` that have one."""
    all_ids, vecs = store.all_vectors(name, dim)
    keep = np.isin(all_ids, np.asarray(ids, dtype=np.int64))
    return all_ids[keep], vecs[keep]


def _save(index: Any, path: Path) -> None:
    try:
        index.save(path)
    except RelsearchError as exc:
        # VectorIndex.save reports OSError as one line; add which disk is full.
        text = str(exc)
        if "No space left" in text or "quota" in text.lower():
            raise write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from None
        raise


def file_sha256(path: Path) -> str:
    return sha256_file(path)  # a regular file only, read up to the size it had when opened


def _lookup(store: Store, name: str, dim: int) -> Any:
    return lambda ids: store.get_vectors(name, np.asarray(ids), dim)
