"""``relsearch verify``: check that an index agrees with itself, and repair what it can.

The LMDB store is the source of truth (records, paths, raw vectors with their
checksums, the committed manifest and generation); the FAISS files and
``manifest.json`` are derived from it. Checked:

- the store opens (its file against LMDB's meta pages, its schema) and holds a
  committed manifest whose generation and count match the store;
- ``manifest.json`` equals the committed manifest;
- paths <-> records <-> hashes point at each other;
- every live record has a raw vector per encoder, of the right size, passing its
  checksum (CRC-32 over id and bytes);
- each encoder's FAISS file of the current generation loads (its own SHA-256),
  matches the checksum the manifest recorded, and holds exactly the live ids.

Repairs need no model: FAISS files are rebuilt from the raw vectors into a new
generation (one LMDB txn switches to it), ``manifest.json`` is rewritten, records'
path lists follow the paths table, and a raw vector failing its checksum is dropped
so that the next ``relsearch build-index`` re-embeds that one image.
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
    MANIFEST,
    STORE_DIR,
    EncoderEntry,
    Manifest,
    build_lock,
    faiss_path,
    manifest_bytes,
    stored_manifest,
    write_manifest,
)
from relsearch.store import Store

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
class _Findings:
    """What a check found, in the terms a repair needs."""

    manifest_file: bool = False  # manifest.json differs from the committed manifest
    faiss: set[str] = field(default_factory=set)  # encoders whose FAISS file must be rebuilt
    bad_vectors: dict[str, list[int]] = field(default_factory=dict)  # encoder -> ids failing the checksum
    record_paths: dict[int, list[str]] = field(default_factory=dict)  # id -> paths per the paths table
    stray_paths: list[str] = field(default_factory=list)  # path entries whose record is gone


def faiss_ids(index: Any) -> np.ndarray:
    """Every id stored in a :class:`~relsearch.index.VectorIndex` (sorted)."""
    from relsearch.index import _faiss
    from relsearch.index.faiss_index import _ivf_ids

    faiss = _faiss.import_faiss()
    inner = index._index  # the FAISS object: ids live in its IVF lists or its IDMap
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        return np.sort(_ivf_ids(faiss, ivf))
    if isinstance(inner, faiss.IndexIDMap):
        return np.sort(faiss.vector_to_array(inner.id_map).astype(np.int64))
    return np.arange(inner.ntotal, dtype=np.int64)


def verify_index(index: str | os.PathLike[str], repair: bool = False) -> VerifyReport:
    """Check ``index``; with ``repair``, fix what needs no re-embedding, then check again."""
    path = Path(index)
    if not (path / STORE_DIR / "data.mdb").exists():
        raise RelsearchError(f"no index at {path} (no {STORE_DIR}/data.mdb); build one with: relsearch build-index DIR")
    if not repair:
        report, _ = _check(path)
        return report
    with build_lock(path):  # a repair writes: never beside a running build
        report, found = _check(path)
        if report.consistent:
            return report
        repaired = _repair(path, found)
        after, _ = _check(path)
    after.repaired = repaired
    return after


def _check(path: Path) -> tuple[VerifyReport, _Findings]:
    from relsearch.index import VectorIndex

    report = VerifyReport(index=str(path))
    found = _Findings()
    problems = report.problems
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
        if store.get_meta("building") is not None:
            report.notes.append("an interrupted build was adding encoders; the next build finishes it")
        if manifest.count != len(live):
            problems.append(f"manifest counts {manifest.count} images, the store holds {len(live)}")

        # manifest.json: a copy of the committed manifest
        try:
            on_disk = (path / MANIFEST).read_bytes()
        except OSError:
            on_disk = None
        if on_disk != manifest_bytes(manifest):
            found.manifest_file = True
            problems.append(f"{MANIFEST} is {'missing' if on_disk is None else 'not the committed manifest'}")

        # paths <-> records <-> hashes
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

        # raw vectors, then FAISS, per encoder
        live_set = set(live)
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
                problems.append(f"{name}: {len(missing)} live record(s) have no raw vector (ids {missing[:5]})")
            _check_faiss(path, name, entry, generation, np.asarray(live, dtype=np.int64), found, problems,
                         VectorIndex, store)
        leftovers = [p.name for p in (path / FAISS_DIR).glob("*")
                     if p.name.startswith(".") or f".{generation}." not in p.name]
        if leftovers:
            report.notes.append(f"files of other generations or killed writes in {FAISS_DIR}/ "
                                f"(the next build removes them): {', '.join(sorted(leftovers)[:5])}")
    return report, found


def _check_faiss(path: Path, name: str, entry: EncoderEntry, generation: int, live: np.ndarray,
                 found: _Findings, problems: list[str], VectorIndex: Any, store: Store) -> None:
    from relsearch.build import _file_sha256

    file = faiss_path(path, name, generation)
    try:
        index = VectorIndex.load(file)
    except RelsearchError as exc:
        found.faiss.add(name)
        problems.append(f"{name}: {exc}")
        return
    want = entry.faiss.get("file_sha256")
    if want and _file_sha256(file) != want:
        found.faiss.add(name)
        problems.append(f"{name}: {file.name} is not the file the manifest recorded (checksum differs)")
    if index.dim != entry.dim:
        found.faiss.add(name)
        problems.append(f"{name}: FAISS dimension {index.dim}, manifest says {entry.dim}")
    _check_refine(file, name, live, store, entry, found, problems)
    ids = faiss_ids(index)
    if len(ids) != len(live) or not np.array_equal(ids, live):
        found.faiss.add(name)
        extra = np.setdiff1d(ids, live)[:5].tolist()
        lost = np.setdiff1d(live, ids)[:5].tolist()
        problems.append(f"{name}: FAISS holds {len(ids)} ids, the store {len(live)} live records "
                        f"(not in the store: {extra}, not in FAISS: {lost})")


def _check_refine(faiss_file: Path, name: str, live: np.ndarray, store: Store, entry: EncoderEntry,
                  found: _Findings, problems: list[str]) -> None:
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
    if len(ids) and not np.array_equal(refine(ids), want):
        found.faiss.add(name)
        problems.append(f"{name}: refine store {file.name} differs from the stored raw vectors")


def _repair(path: Path, found: _Findings) -> list[str]:
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
                # an encoder in order is carried over unchanged into the new generation
                current = None if name in rebuild else VectorIndex.load(faiss_path(path, name, generation))
                info = write_generation(store, path, name, entry.dim, generation, new_gen, current, ids,
                                        [], [], requested, BuildOptions(progress=False))
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
    return done
