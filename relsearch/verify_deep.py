"""``relsearch verify --deep``: re-embed a sample of files and compare with what is stored.

``relsearch verify`` proves the index agrees with itself (checksums, ids, manifest), but a
stored vector that passes its checksum and still belongs to another picture looks
healthy to it. The deep check loads the index's encoders, decodes a sample of indexed
files whose bytes still hash to their record's content hash, embeds them as a build
does, and flags every stored vector whose cosine with the fresh embedding is below a
threshold. With ``repair`` the flagged vectors are replaced by the fresh ones and the
FAISS files of those encoders are rebuilt from the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError

#: records re-embedded by default; an index this small is checked whole
DEFAULT_SAMPLE = 64
#: a re-embedding of the same bytes by the same weights agrees far closer than this
DEFAULT_MIN_COSINE = 0.98
#: the build's decode size: the same pixels give the same vector
_MAX_SIDE = 512
_BATCH = 32
_LIST = 50


@dataclass
class DeepReport:
    index: str
    sampled: int = 0  # records chosen
    checked: int = 0  # records re-embedded (their file still holds the indexed bytes)
    of: int = 0  # live records in the index
    min_cosine: float = DEFAULT_MIN_COSINE
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    mismatched: dict[str, list[int]] = field(default_factory=dict)  # encoder -> record ids

    @property
    def consistent(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "consistent": self.consistent}


def deep_verify(index: str | os.PathLike[str], sample: int = DEFAULT_SAMPLE,
                min_cosine: float = DEFAULT_MIN_COSINE, repair: bool = False,
                seed: int | None = None, device: str | None = None) -> DeepReport:
    """Re-embed ``sample`` random indexed files (all of them when the index holds no more)
    and report stored vectors below ``min_cosine`` of their file's embedding; with
    ``repair``, store the fresh vectors and rebuild those encoders' FAISS files."""
    from relsearch.indexdir import STORE_DIR, build_lock

    if sample < 1:
        raise RelsearchError(f"--sample must be >= 1, got {sample}")
    if not 0.0 < min_cosine <= 1.0:
        raise RelsearchError(f"--min-cosine must be in (0, 1], got {min_cosine}")
    path = Path(index)
    if not (path / STORE_DIR / "data.mdb").exists():
        raise RelsearchError(f"no index at {path} (no {STORE_DIR}/data.mdb); build one with: relsearch build-index DIR")
    report = DeepReport(index=str(path), min_cosine=min_cosine)
    if not repair:
        _check(path, report, sample, seed, device, keep={})
        return report
    with build_lock(path):  # the vectors written must be those just compared
        fresh: dict[str, dict[int, np.ndarray]] = {}
        _check(path, report, sample, seed, device, keep=fresh)
        if report.mismatched:
            report.repaired = _repair(path, fresh)
            report.problems, report.mismatched = [], {}
    return report


def _check(path: Path, report: DeepReport, sample: int, seed: int | None, device: str | None,
           keep: dict[str, dict[int, np.ndarray]]) -> None:
    from relsearch.encoders import get_encoder
    from relsearch.encoders.base import EncoderSpec
    from relsearch.indexdir import STORE_DIR, check_fingerprint, stored_manifest
    from relsearch.store import Store

    with Store.open(path / STORE_DIR, readonly=True) as store:
        manifest, _ = stored_manifest(store, path)
        live = sorted(store.record_ids() - set(store.marked("pending")))
        report.of = len(live)
        if len(live) > sample:
            live = sorted(np.random.default_rng(seed).choice(live, size=sample, replace=False).tolist())
        report.sampled = len(live)
        encoders = []
        for entry in manifest.encoders.values():
            enc = get_encoder(EncoderSpec.parse(entry.spec), device=device)
            check_fingerprint(entry, enc.fingerprint, path)
            encoders.append((entry, enc))
        changed = 0
        for rows in _decoded_batches(store, live):
            ok = [(rid, p, d) for rid, p, d in rows if d is not None]
            changed += len(rows) - len(ok)
            report.checked += len(ok)
            if ok:
                for entry, enc in encoders:
                    _compare(store, entry, enc, ok, report, keep)
    over = sum(map(len, report.mismatched.values())) - _LIST
    if over > 0:
        report.problems.append(f"... and {over} more stored vector(s) that differ from their file's embedding")
    if changed:
        report.notes.append(f"{changed} sampled record(s) skipped: no file of theirs still holds the indexed "
                            "bytes (relsearch build-index re-indexes changed files)")


def _decoded_batches(store: Any, ids: list[int]) -> Iterator[list[tuple[int, str, Any]]]:
    """(record id, path, decoded image or None) in batches; an image only from a file whose
    bytes, read once, hash to the record's content hash."""
    from relsearch.collection import decode_one

    for start in range(0, len(ids), _BATCH):
        records = store.get_records(ids[start : start + _BATCH])
        rows = []
        for rid in ids[start : start + _BATCH]:
            rec = records.get(rid)
            found = None
            for p in rec.paths if rec is not None else ():
                d = decode_one(0, p, _MAX_SIDE)
                if d.ok and d.sha256 == rec.sha256:
                    found = (rid, p, d.image)
                    break
            rows.append(found or (rid, rec.paths[0] if rec is not None and rec.paths else "", None))
        yield rows


def _compare(store: Any, entry: Any, enc: Any, rows: list[tuple[int, str, Any]], report: DeepReport,
             keep: dict[str, dict[int, np.ndarray]]) -> None:
    from relsearch.encoders.base import PipelinedEncoder

    images = [im for _, _, im in rows]
    fresh = enc.embed_batch(enc.preprocess_batch(images)) if isinstance(enc, PipelinedEncoder) else enc.embed(images)
    fresh = np.asarray(fresh, dtype=np.float32)
    ids = np.asarray([rid for rid, _, _ in rows], dtype=np.int64)
    stored = store.get_vectors(entry.name, ids, entry.dim)  # zeros where missing or failing the CRC
    norms = np.linalg.norm(stored, axis=1) * np.linalg.norm(fresh, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", stored.astype(np.float64), fresh) / norms
    for (rid, p, _), c, n, vec in zip(rows, cos, norms, fresh):
        if n == 0 or (np.isfinite(c) and c >= report.min_cosine):
            continue  # a missing or CRC-failing vector is plain verify's finding
        report.mismatched.setdefault(entry.name, []).append(rid)
        keep.setdefault(entry.name, {})[rid] = vec
        if sum(map(len, report.mismatched.values())) <= _LIST:
            report.problems.append(f"{entry.name}: record {rid} ({p}): stored vector differs from the file's "
                                   f"embedding (cosine {c:.3f} < {report.min_cosine})")


def _repair(path: Path, fresh: dict[str, dict[int, np.ndarray]]) -> list[str]:
    """Store the fresh vectors, then rebuild those encoders' FAISS files. Caller holds the lock."""
    from relsearch.indexdir import STORE_DIR
    from relsearch.store import Store
    from relsearch.verify import Findings
    from relsearch.verify import repair_findings as rebuild_faiss

    with Store.open(path / STORE_DIR) as store:
        def put(txn: Any) -> None:
            for name, vecs in fresh.items():
                for rid, vec in vecs.items():
                    store.put_vector(txn, name, rid, vec)

        store.write(put)
    done = [f"{name}: {len(vecs)} stored vector(s) replaced by their file's embedding"
            for name, vecs in fresh.items()]
    return done + rebuild_faiss(path, Findings(faiss=set(fresh)))
