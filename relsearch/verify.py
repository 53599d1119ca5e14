"""``relsearch verify``: check that an index agrees with itself, and repair what it can.

The LMDB store is the source of truth (records, paths, raw vectors with their
checksums, the committed manifest and generation); the FAISS files and
``manifest.json`` are derived from it. Checked:

- every entry of the index directory has its type (a folder for ``faiss/`` and
  ``meta.lmdb/``, a file for the others); ``exclusions.json`` reads (or, when missing,
  the store's copy of the last build's folder patterns holds only the defaults);
- the store opens (its file against LMDB's meta pages, its schema) and holds a
  committed manifest whose generation and count match the store;
- ``manifest.json`` equals the committed manifest (one generation behind, or not yet
  written, is a note: a build killed right after its switch leaves it so);
- paths <-> records <-> hashes point at each other;
- every live record has a raw vector per encoder, of the right size, passing its
  checksum (CRC-32 over id and bytes);
- each encoder's FAISS file of the current generation loads (its own SHA-256),
  matches the checksum the manifest recorded, and holds exactly the live ids.

Most repairs need no model: FAISS files are rebuilt from the raw vectors into a new
generation (one LMDB txn switches to it), ``manifest.json`` and ``exclusions.json`` are
rewritten from the store, an entry of the wrong type is moved aside, records' path lists
follow the paths table, and a raw vector failing its checksum is dropped so that the
next ``relsearch build-index`` re-embeds that one image.

A store that cannot be read (LMDB reports damage, a truncated or emptied file, JSON
that does not parse) or that still disagrees with itself after those repairs is
rebuilt from the collection ``manifest.json`` names: the damaged store is moved aside,
what it still holds is salvaged (:mod:`relsearch.store.salvage`), and a build embeds
the rest into a fresh generation. Every command that meets such a store names
``relsearch verify --repair``; this is what makes that advice work.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError
from relsearch.indexdir import (
    FAISS_DIR,
    LAYOUT,
    LOCK,
    MANIFEST,
    READ_LAYOUT,
    STORE_DIR,
    STORED_NAME,
    EncoderEntry,
    Manifest,
    build_lock,
    check_layout,
    faiss_path,
    layout_problems,
    manifest_bytes,
    stored_manifest,
    write_manifest,
)
from relsearch.safe_io import read_regular
from relsearch.store import Store
from relsearch.store.lmdb_store import StoreDamagedError, damaged

#: at most this many problems are listed per check (a broken index can have millions)
_LIST = 20


@dataclass
class VerifyReport:
    index: str
    generation: int = 0
    records: int = 0
    paths: int = 0
    pending: int = 0
    vectors_checked: int = 0
    encoders: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "consistent": self.consistent}


@dataclass
class Findings:
    """What a check found, in the terms a repair needs."""

    manifest_file: bool = False  # manifest.json differs from the committed manifest
    exclusions: bool = False  # exclusions.json unreadable, or lost while the store holds patterns
    stored_exclusions: Any = None  # the store's copy of the last build's folder patterns
    faiss: set[str] = field(default_factory=set)  # encoders whose FAISS file must be rebuilt
    bad_vectors: dict[str, list[int]] = field(default_factory=dict)  # encoder -> ids failing the checksum
    record_paths: dict[int, list[str]] = field(default_factory=dict)  # id -> paths per the paths table
    stray_paths: list[str] = field(default_factory=list)  # path entries whose record is gone
    missing: dict[str, set[int]] = field(default_factory=dict)  # encoder -> live ids without a raw vector
    waiting: int = 0  # problems the next build fixes by embedding the missing vectors
    failed_meta: bool = False  # the files a build remembers as failed are not in their shape


def faiss_ids(index: Any) -> np.ndarray:
    """Every id stored in a :class:`~relsearch.index.VectorIndex` (sorted)."""
    from relsearch.index import _faiss
    from relsearch.index.faiss_index import ivf_ids

    faiss = _faiss.import_faiss()
    inner = index._index  # the FAISS object: ids live in its IVF lists or its IDMap
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        return np.sort(ivf_ids(faiss, ivf))
    if isinstance(inner, faiss.IndexIDMap):
        return np.sort(faiss.vector_to_array(inner.id_map).astype(np.int64))
    return np.arange(inner.ntotal, dtype=np.int64)


def verify_index(index: str | os.PathLike[str], repair: bool = False) -> VerifyReport:
    """Check ``index``; with ``repair``, fix what needs no re-embedding (or rebuild a damaged
    store from the collection), then check again."""
    path = Path(index)
    if not (path / STORE_DIR / "data.mdb").exists() and not (path / MANIFEST).exists():
        raise RelsearchError(f"no index at {path} (no {STORE_DIR}/data.mdb); build one with: relsearch build-index DIR")
    if not repair:
        report, _ = _check(path)
        return report
    plan = None
    with build_lock(path):  # a repair writes: never beside a running build
        repaired = _fix_layout(path)
        try:
            report, found = _check(path)
        except StoreDamagedError as exc:
            plan = _plan_rebuild(path, exc)  # moves the damaged store aside
        else:
            if report.consistent and not (found.manifest_file or found.exclusions or repaired):
                return report
            try:
                repaired += repair_findings(path, found)
                after, left = _check(path)
                if len(after.problems) != left.waiting:  # more than the next build's embedding
                    raise damaged(path / STORE_DIR, f"it disagrees with itself after a repair: {after.problems[0]}")
            except StoreDamagedError as exc:
                plan = _plan_rebuild(path, exc)
    if plan is not None:  # build_index takes the lock itself
        repaired += _rebuild_store(path, plan)
    after, _ = _check(path)
    after.repaired = repaired
    return after


@dataclass
class _Rebuild:
    """How to rebuild a damaged store from its collection (what ``manifest.json`` says)."""

    reason: str
    collection: list[Path]  # its folders (one, or several: build-index DIR1 DIR2)
    specs: list[str]
    index_spec: str | None
    exclusions: Any  # relsearch.collection.exclude.Exclusions
    encoders: dict[str, Any]  # spec -> loaded encoder, handed to the build
    dims: dict[str, int]  # encoders whose stored vectors can be salvaged (same weights) -> dim
    notes: list[str] = field(default_factory=list)


def _plan_rebuild(path: Path, exc: StoreDamagedError) -> _Rebuild:
    """Read what a rebuild needs and load the encoders (missing weights fail here, with
    nothing moved), then move the damaged store aside. Caller holds the build lock."""
    import shutil

    from relsearch.collection.exclude import Exclusions, read_stored
    from relsearch.encoders import get_encoder
    from relsearch.encoders.base import EncoderSpec
    from relsearch.indexdir import read_manifest_file

    by_hand = f"delete {path} and build it again with: relsearch build-index DIR --index {path}"
    try:
        manifest = read_manifest_file(path)
    except RelsearchError as bad:
        raise RelsearchError(f"{exc.reason}, and {MANIFEST} cannot say which collection and encoders it held "
                             f"({bad}); {by_hand}") from None
    collection = [Path(r) for r in manifest.collection_roots()]
    gone = [str(r) for r in collection if not r.is_dir()]
    if gone:
        raise RelsearchError(f"{exc.reason}, and its collection {', '.join(gone)} is gone, so there is nothing to "
                             f"re-embed; {by_hand}")
    notes = []
    try:
        exclusions = read_stored(path)
    except RelsearchError:
        exclusions = Exclusions()
        notes.append(f"{STORED_NAME} could not be read either: the rebuild left out the default folders only; "
                     "give your folder patterns again with: relsearch build-index "
                     f"{' '.join(map(str, collection))} --index {path} "
                     "--exclude-dir NAME")
    specs = [e.spec for e in manifest.encoders.values()]
    encoders = {spec: get_encoder(EncoderSpec.parse(spec)) for spec in specs}
    dims = {e.name: e.dim for e in manifest.encoders.values() if encoders[e.spec].fingerprint == e.fingerprint}
    for entry in manifest.encoders.values():
        if entry.name not in dims:
            notes.append(f"{entry.name}: the weights found now ({encoders[entry.spec].fingerprint}) are not "
                         f"those the index was built with ({entry.fingerprint}); the rebuilt column uses them")
    requested = {e.faiss.get("requested", "auto") for e in manifest.encoders.values()}
    index_spec = next(iter(requested)) if len(requested) == 1 and "auto" not in requested else None
    store_dir, aside = path / STORE_DIR, path / f"{STORE_DIR}.damaged"
    if aside.exists():  # the original damage, kept by a repair that was killed: this is its partial rebuild
        shutil.rmtree(store_dir, ignore_errors=True)
    elif store_dir.exists():
        store_dir.rename(aside)
    return _Rebuild(exc.reason, collection, specs, index_spec, exclusions, encoders, dims, notes)


def _rebuild_store(path: Path, plan: _Rebuild) -> list[str]:
    """A fresh store and generation: every image of the collection embedded again."""
    import shutil

    from relsearch.build import BuildOptions, build_index

    salvaged = _seed(path, plan)
    opts = BuildOptions(encoders=",".join(plan.specs), index_spec=plan.index_spec, progress=False,
                        exclude_dirs=plan.exclusions.dirs, default_excludes=plan.exclusions.defaults,
                        forget_excludes=True, preloaded=plan.encoders)
    rep = build_index(plan.collection, path, opts)
    shutil.rmtree(path / f"{STORE_DIR}.damaged", ignore_errors=True)
    failed = f"; {len(rep.failed)} file(s) could not be read (relsearch build-index lists them)" if rep.failed else ""
    folders = ", ".join(map(str, plan.collection))
    return [f"{plan.reason}: rebuilt it from the collection {folders} into generation {rep.generation}: "
            f"{salvaged} record(s) salvaged with their raw vectors, {rep.embedded} image(s) embedded "
            f"again{failed}", *plan.notes]


def _seed(path: Path, plan: _Rebuild) -> int:
    """Put what the damaged store still holds into a fresh one as an unfinished build's
    records, so the rebuild embeds only the rest. Returns how many were salvaged."""
    from relsearch.store.lmdb_store import Record
    from relsearch.store.salvage import salvage

    aside = path / f"{STORE_DIR}.damaged"
    if not plan.dims or not (aside / "data.mdb").is_file():
        return 0
    found = salvage(aside, plan.dims)
    if not len(found):
        return 0
    with Store.open(path / STORE_DIR, create=True) as store:
        store.ensure_dbs(["meta", "records", "hashes", "pending", *(f"vec:{n}" for n in plan.dims)])

        def seed(txn: Any) -> None:
            now = time.time()
            for row, rid in enumerate(store.allocate_ids(txn, len(found))):
                size, width, height = (int(x) for x in found.shape[row])
                store.put_record(txn, Record(rid, found.sha256[row], [], size, width, height, now))
                store.mark(txn, "pending", [rid])
                for name, vecs in found.vectors.items():
                    if found.has[name][row]:
                        store.put_vector(txn, name, rid, vecs[row])

        store.write(seed)
    return len(found)


def _fix_layout(path: Path) -> list[str]:
    """Move aside what squats on a name the index needs (a file for a folder, or the reverse)."""
    import shutil

    done = []
    for name, why in layout_problems(path).items():
        if name == LOCK:
            continue  # held by this very repair; build_lock refused a bad one already
        aside = path / f"{name}.misplaced"
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside)
        elif aside.exists() or aside.is_symlink():
            aside.unlink()
        (path / name).rename(aside)
        done.append(f"{name} {why}: moved aside to {aside.name} (delete it once you have looked at it)")
    return done


def _check(path: Path) -> tuple[VerifyReport, Findings]:
    from relsearch.index import VectorIndex

    report = VerifyReport(index=str(path))
    found = Findings()
    problems = report.problems
    layout = layout_problems(path)
    problems.extend(f"{name} {why} (verify --repair moves it aside)" for name, why in layout.items())
    # a store that cannot be opened leaves nothing else to check
    check_layout(path, tuple(n for n in READ_LAYOUT if n != FAISS_DIR))
    if not (path / STORE_DIR / "data.mdb").is_file():
        raise damaged(path / STORE_DIR, f"{STORE_DIR}/data.mdb is missing")
    with Store.open(path / STORE_DIR, readonly=True) as store:
        store.ensure_dbs(["meta", "records", "paths", "hashes", "pending"])
        manifest, generation = stored_manifest(store, path)
        report.generation = generation
        report.encoders = list(manifest.encoders)
        if manifest.generation != generation:
            problems.append(f"manifest in the store names generation {manifest.generation}, "
                            f"the store is at {generation}")
        pending = set(store.marked("pending"))
        records = {rec.id: rec for rec in store.iter_records()}
        paths = store.all_paths()
        live = sorted(set(records) - pending)
        report.records, report.paths, report.pending = len(live), len(paths), len(pending)
        if pending:
            report.notes.append(f"{len(pending)} embedded image(s) of an unfinished build wait for the next build")
        _note_building(store.get_meta("building"), manifest, pending, report)
        _check_failed(store.get_meta("failed"), found, report)
        if manifest.count != len(live):
            problems.append(f"manifest counts {manifest.count} images, the store holds {len(live)}")
        _check_exports(path, manifest, generation, store.get_meta("exclusions"), found, report)
        _check_links(store, records, paths, pending, live, found, problems)

        # raw vectors, then FAISS, per encoder
        live_set = set(live)
        if FAISS_DIR in layout:
            found.faiss |= set(manifest.encoders)
        for name, entry in manifest.encoders.items():
            ids_with = set()
            corrupt: list[int] = []
            for rid, vec in store.iter_vectors(name):
                ids_with.add(rid)
                report.vectors_checked += 1
                if vec is None or len(vec) != entry.dim:
                    corrupt.append(rid)
            if corrupt:
                found.bad_vectors[name] = corrupt
                problems.append(f"{name}: {len(corrupt)} raw vector(s) fail their checksum (ids {corrupt[:5]})")
            missing = sorted(live_set - ids_with)
            if missing:
                found.missing[name] = set(missing)
                found.waiting += 1
                problems.append(f"{name}: {len(missing)} live record(s) have no raw vector (ids {missing[:5]})")
            if FAISS_DIR not in layout:
                _check_faiss(path, name, entry, generation, np.asarray(live, dtype=np.int64), found, problems,
                             VectorIndex, store)
        leftovers = [p.name for p in (path / FAISS_DIR).glob("*")
                     if p.name.startswith(".") or f".{generation}." not in p.name]
        if leftovers:
            report.notes.append(f"files of other generations or killed writes in {FAISS_DIR}/ "
                                f"(the next build removes them): {', '.join(sorted(leftovers)[:5])}")
    strangers = sorted(p.name for p in path.iterdir() if p.name not in LAYOUT)
    if strangers:
        report.notes.append(f"entries relsearch did not write in {path}: {', '.join(strangers[:5])}")
    return report, found


def _check_links(store: Store, records: dict[int, Any], paths: dict[str, Any], pending: set[int], live: list[int],
                 found: Findings, problems: list[str]) -> None:
    """paths <-> records <-> hashes point at each other."""
    by_id: dict[int, list[str]] = {}
    bad: list[str] = []
    for p, entry in paths.items():
        if entry.id not in records or entry.id in pending:
            found.stray_paths.append(p)
            bad.append(f"path {p!r} points at id {entry.id}, which is not a live record")
        else:
            by_id.setdefault(entry.id, []).append(p)
    with store.read() as txn:
        for rid in live:
            rec = records[rid]
            if rec.paths != sorted(by_id.get(rid, [])):
                found.record_paths[rid] = sorted(by_id.get(rid, []))
                bad.append(f"record {rid} lists paths {rec.paths[:3]}, the paths table {by_id.get(rid, [])[:3]}")
            if store.txn_id_for_hash(txn, rec.sha256) != rid:
                bad.append(f"content hash of record {rid} does not point back at it")
    problems.extend(bad[:_LIST])


def _check_failed(raw: Any, found: Findings, report: VerifyReport) -> None:
    """The files builds remember as failed to decode (skipped until they change)."""
    from relsearch.build import remembered_failures

    failed = remembered_failures(raw)
    if failed is None:
        found.failed_meta = True
        report.problems.append("the list of files that failed before is malformed (verify --repair drops it; "
                               "the next build tries those files again)")
    elif failed:
        report.notes.append(f"{len(failed)} file(s) failed to decode before; builds skip them until they change "
                            "(build-index --retry-failed tries them again)")


def _drop_failed_list(store: Store, found: Findings) -> list[str]:
    if not found.failed_meta:
        return []
    store.write(lambda txn: store.delete_meta(txn, "failed"))
    return ["dropped the malformed list of files that failed before"]


def _note_building(building: Any, manifest: Manifest, pending: set[int], report: VerifyReport) -> None:
    """What an interrupted build left, in words that match what it was doing."""
    if building is None:
        return
    adding = [spec for spec in building if str(spec).split("@")[0] not in manifest.encoders]
    if adding:
        report.notes.append(f"an interrupted build was adding encoder(s) {', '.join(adding)}; "
                            "the next build finishes it")
    elif not pending:
        report.notes.append("an interrupted build embedded images the index does not use yet; "
                            "the next build finishes it")


def _check_exports(path: Path, manifest: Manifest, generation: int, stored_exclusions: Any,
                   found: Findings, report: VerifyReport) -> None:
    """``manifest.json`` (a copy of the committed manifest) and ``exclusions.json`` (the
    folder patterns the next build applies)."""
    import json

    from relsearch.collection.exclude import Exclusions, read_stored

    try:
        on_disk = read_regular(path / MANIFEST)
    except OSError:
        on_disk = None
    if on_disk != manifest_bytes(manifest):
        found.manifest_file = True
        try:
            exported = int(json.loads(on_disk)["generation"]) if on_disk is not None else None
        except (ValueError, KeyError, TypeError):
            exported = -1
        if on_disk is None and not (path / MANIFEST).exists():
            report.notes.append(f"{MANIFEST} is not exported yet (a build was interrupted right after its "
                                "switch); the next build or verify --repair writes it")
        elif exported is not None and 0 <= exported < generation:
            report.notes.append(f"{MANIFEST} is still the copy of generation {exported}, the store is at "
                                f"{generation} (a build was interrupted right after its switch); the next "
                                "build or verify --repair re-exports it")
        else:
            report.problems.append(f"{MANIFEST} is not the committed manifest")
    found.stored_exclusions = stored_exclusions
    if (path / STORED_NAME).exists() or (path / STORED_NAME).is_symlink():
        try:
            read_stored(path)
        except RelsearchError as exc:
            found.exclusions = True
            report.problems.append(f"{STORED_NAME} cannot be read, and every build needs it: "
                                   f"{str(exc).split('; fix it with')[0]}")
    elif stored_exclusions is not None and stored_exclusions != Exclusions().to_dict():
        found.exclusions = True
        report.problems.append(f"{STORED_NAME} is missing: the next build would bring back the folders "
                               f"the last one left out ({', '.join(stored_exclusions.get('dirs', [])[:5])})")


def _check_faiss(path: Path, name: str, entry: EncoderEntry, generation: int, live: np.ndarray,
                 found: Findings, problems: list[str], VectorIndex: Any, store: Store) -> None:
    from relsearch.build import file_sha256

    file = faiss_path(path, name, generation)
    try:
        index = VectorIndex.load(file)
    except RelsearchError as exc:
        found.faiss.add(name)
        problems.append(f"{name}: {exc}")
        return
    want = entry.faiss.get("file_sha256")
    if want and file_sha256(file) != want:
        found.faiss.add(name)
        problems.append(f"{name}: {file.name} is not the file the manifest recorded (checksum differs)")
    if index.dim != entry.dim:
        found.faiss.add(name)
        problems.append(f"{name}: FAISS dimension {index.dim}, manifest says {entry.dim}")
    _check_refine(file, name, live, store, entry, found, problems)
    ids = faiss_ids(index)
    if len(ids) != len(live) or not np.array_equal(ids, live):
        found.faiss.add(name)
        extra, lost = np.setdiff1d(ids, live), np.setdiff1d(live, ids)
        if not len(extra) and set(lost.tolist()) <= found.missing.get(name, set()):
            found.waiting += 1  # the rows of the vectors a repair dropped: the next build adds them
        problems.append(f"{name}: FAISS holds {len(ids)} ids, the store {len(live)} live records "
                        f"(not in the store: {extra[:5].tolist()}, not in FAISS: {lost[:5].tolist()})")


def _check_refine(faiss_file: Path, name: str, live: np.ndarray, store: Store, entry: EncoderEntry,
                  found: Findings, problems: list[str]) -> None:
    """The generation's refine store (raw vectors for re-ranking), when the index has one:
    the live ids, and the same vectors as the store."""
    from relsearch.index.refine import RefineStore, refine_path

    file = refine_path(faiss_file)
    if not file.exists():
        return
    try:
        refine = RefineStore(file)
    except RelsearchError as exc:
        found.faiss.add(name)
        problems.append(f"{name}: {exc}")
        return
    ids = np.sort(refine.resident_ids())
    if not np.array_equal(ids, live):
        found.faiss.add(name)
        problems.append(f"{name}: refine store {file.name} holds {len(ids)} ids, the store {len(live)} live records")
        return
    want = store.get_vectors(name, ids, entry.dim)
    if len(ids) and not np.array_equal(refine.vectors[refine.positions(ids)], want):  # unchecked rows
        found.faiss.add(name)
        problems.append(f"{name}: refine store {file.name} differs from the stored raw vectors")


def repair_findings(path: Path, found: Findings) -> list[str]:
    """Fix what ``_check`` found, from the store alone. Caller holds the build lock."""
    from relsearch.build import BuildOptions, write_generation
    from relsearch.index import VectorIndex

    done: list[str] = []
    with Store.open(path / STORE_DIR) as store:
        manifest, generation = stored_manifest(store, path)
        pending = set(store.marked("pending"))
        live = sorted(store.record_ids() - pending)
        rebuild = set(found.faiss)
        # dropped vectors are re-embedded by the next build; their FAISS rows go now
        rebuild |= set(found.bad_vectors)

        def fix_records(txn: Any) -> None:
            for name, ids in found.bad_vectors.items():
                for rid in ids:
                    store.delete_vector(txn, name, rid)
            for p in found.stray_paths:
                store.delete_path(txn, p)
            for rid, ps in found.record_paths.items():
                rec = store.txn_record(txn, rid)
                if rec is not None:
                    rec.paths = ps
                    store.put_record(txn, rec)

        done += _drop_failed_list(store, found)
        if found.bad_vectors or found.stray_paths or found.record_paths:
            store.write(fix_records)
            n = sum(len(v) for v in found.bad_vectors.values())
            if n:
                done.append(f"dropped {n} raw vector(s) failing their checksum; run relsearch build-index "
                            "to re-embed those images")
            if found.stray_paths or found.record_paths:
                done.append(f"re-linked {len(found.record_paths)} record(s) and {len(found.stray_paths)} "
                            "path(s) to the paths table")
        if rebuild:
            new_gen = generation + 1
            entries = dict(manifest.encoders)
            (path / FAISS_DIR).mkdir(exist_ok=True)
            for name, entry in manifest.encoders.items():
                requested = entry.faiss.get("requested", "auto")
                ids = sorted(set(live) & store.vector_ids(name))
                if live and not ids:  # nothing left to rebuild from: the store itself is lost
                    raise damaged(store.path, f"no raw vector of {name} passes its checksum")
                # an encoder in order is carried over unchanged into the new generation
                current = None if name in rebuild else VectorIndex.load(faiss_path(path, name, generation))
                info = write_generation(store, path, name, entry.dim, generation, new_gen, current, ids,
                                        [], [], requested, BuildOptions(progress=False))
                if info.get("ntotal", len(ids)) != len(ids):  # the store does not read back as it lists
                    raise damaged(store.path, f"{len(ids)} raw vectors of {name} listed, {info.get('ntotal')} read")
                if name in rebuild:
                    done.append(f"{name}: FAISS rebuilt from {len(ids)} raw vectors")
                entries[name] = EncoderEntry(**{**asdict(entry), "faiss": info})
            manifest = Manifest(**{**manifest.__dict__, "encoders": entries, "generation": new_gen,
                                   "count": len(live)})
            manifest.updated = time.time()

            def switch(txn: Any) -> None:
                store.put_meta(txn, "generation", new_gen)
                store.put_meta(txn, "manifest", manifest.to_dict())

            store.write(switch)
            for old in (path / FAISS_DIR).glob("*"):
                if not old.name.startswith(".") and f".{new_gen}." not in old.name:
                    with contextlib.suppress(OSError):
                        old.unlink()
        elif manifest.count != len(live):
            manifest.count = len(live)
            store.write(lambda txn: store.put_meta(txn, "manifest", manifest.to_dict()))
        write_manifest(path, manifest)
        if found.manifest_file:
            done.append(f"{MANIFEST} rewritten from the store")
    if found.exclusions:
        done.append(_repair_exclusions(path, found.stored_exclusions, manifest.collection))
    return done


def _repair_exclusions(path: Path, stored: Any, collection: str) -> str:
    """Rewrite ``exclusions.json`` from the store's copy, or move an unreadable one aside."""
    from relsearch.collection.exclude import Exclusions, write_stored

    try:
        good = Exclusions.from_dict(stored) if isinstance(stored, dict) else None
    except ValueError:
        good = None
    if good is not None:
        write_stored(path, good)
        return (f"{STORED_NAME} rewritten from the store's copy of the last build's folder patterns "
                f"({', '.join(good.dirs) or 'the defaults only'})")
    aside = path / f"{STORED_NAME}.damaged"
    if (path / STORED_NAME).exists():
        (path / STORED_NAME).replace(aside)
    return (f"{STORED_NAME} could not be read and the store keeps no copy (it was built by an older relsearch): "
            f"moved it to {aside.name}, so builds leave out the default folders only; give your folder "
            f"patterns again with: relsearch build-index {collection} --index {path} --exclude-dir NAME")
