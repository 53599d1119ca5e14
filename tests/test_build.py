"""Incremental, atomic index builds (engine core) with the cheap test encoder."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import image_query, make_collection
from PIL import Image

from relsearch import build as build_mod
from relsearch.build import BuildOptions, build_index
from relsearch.errors import IndexMismatchError, RelsearchError
from relsearch.indexdir import open_index, read_manifest
from relsearch.query import Searcher

OPTS = dict(encoders="tinycolor", progress=False, workers=2)


def _build(root: Path, idx: Path, **kw):
    return build_index(root, idx, BuildOptions(**{**OPTS, **kw}))


def _snapshot(idx: Path) -> dict[str, bytes]:
    # lock.mdb is LMDB's reader table, rewritten by every reader: not index content.
    return {str(p.relative_to(idx)): p.read_bytes() for p in sorted(idx.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


def test_build_then_query_finds_itself(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 12)
    rep = _build(root, idx)
    assert (rep.scanned, rep.added, rep.unchanged, rep.failed) == (12, 12, 0, [])
    res = image_query(str(paths[5]), idx, k=3)
    hits = res.results["tinycolor"]
    assert hits[0].path == str(paths[5]) and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3] and hits[0].score >= hits[1].score >= hits[2].score
    m = read_manifest(idx)
    assert m.encoders["tinycolor"].dim == 48 and m.count == 12


def test_incremental_add_change_delete(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 10)
    _build(root, idx)
    # unchanged rebuild embeds nothing and writes no new generation
    calls_before = _encoder_calls()
    rep = _build(root, idx)
    assert (rep.added, rep.updated, rep.removed, rep.unchanged) == (0, 0, 0, 10)
    assert _encoder_calls() == calls_before and rep.generation == 1
    # add one, change one, delete one
    new = root / "new.png"
    Image.new("RGB", (16, 16), (250, 10, 10)).save(new)
    Image.new("RGB", (16, 16), (10, 250, 10)).save(paths[1])
    os.utime(paths[1], ns=(time.time_ns(), time.time_ns() + 10**9))
    paths[2].unlink()
    rep = _build(root, idx)
    assert (rep.added, rep.updated, rep.removed, rep.unchanged) == (1, 1, 1, 8)
    assert rep.generation == 2
    with Searcher(idx) as s:
        all_paths = {r.path for r in s.opened.store.iter_records()}
        assert str(paths[2]) not in all_paths and str(new) in all_paths
        assert s.indexes["tinycolor"].ntotal == 10
        green = s.search_vectors("tinycolor", s.encoder("tinycolor").embed([Image.open(paths[1])]), 1)[0][0]
        assert green.path == str(paths[1]) and green.score > 0.999
    # touched but identical bytes: not re-embedded, counted unchanged
    os.utime(paths[3], ns=(time.time_ns(), time.time_ns() + 5 * 10**9))
    rep = _build(root, idx)
    assert (rep.added, rep.updated, rep.unchanged) == (0, 0, 10)


def _encoder_calls() -> int:
    from engine_helpers import TinyColorEncoder

    return TinyColorEncoder.images_embedded


def test_identical_files_embedded_once_all_paths_kept(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 4)
    dup = root / "copy_of_0.png"
    shutil.copy(paths[0], dup)
    rep = _build(root, idx)
    assert rep.scanned == 5 and rep.added == 5
    with open_index(idx) as opened:
        recs = list(opened.store.iter_records())
        assert len(recs) == 4
        both = [r for r in recs if len(r.paths) == 2][0]
        assert set(both.paths) == {str(paths[0]), str(dup)}
    # deleting one copy keeps the record; deleting both removes it
    dup.unlink()
    _build(root, idx)
    with open_index(idx) as opened:
        assert opened.store.count("records") == 4
    paths[0].unlink()
    _build(root, idx)
    with open_index(idx) as opened:
        assert opened.store.count("records") == 3


def test_failed_files_listed_and_build_goes_on(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "empty.jpg").write_bytes(b"")
    rep = _build(root, idx)
    failed = {Path(f["path"]).name: f["error"] for f in rep.failed}
    assert set(failed) == {"broken.png", "empty.jpg"} and all(failed.values())
    assert rep.added == 4  # failures are not counted as added
    rep = _build(root, idx)  # still broken: reported again, nothing added
    assert {Path(f["path"]).name for f in rep.failed} == {"broken.png", "empty.jpg"}
    assert (rep.added, rep.unchanged) == (0, 4)
    with open_index(idx) as opened:
        assert opened.store.count("records") == 4


def test_interrupted_build_keeps_old_index_and_resumes(tmp_path, monkeypatch):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 6)
    _build(root, idx)
    before = image_query(str(root / "img_001.png"), idx, k=6).to_dict()
    extra = make_collection(tmp_path / "more", 40, seed=7)
    for i, p in enumerate(extra):
        shutil.move(p, root / f"extra_{i:02d}.png")
    monkeypatch.setattr(build_mod, "CHUNK", 8)

    real_commit = build_mod._commit

    def boom(*a, **kw):
        raise KeyboardInterrupt  # killed after embedding, before FAISS switched

    monkeypatch.setattr(build_mod, "_commit", boom)
    with pytest.raises(KeyboardInterrupt):
        _build(root, idx, batch_size=4)
    # previous generation still answers, with the same results
    assert image_query(str(root / "img_001.png"), idx, k=6).to_dict() == before
    monkeypatch.setattr(build_mod, "_commit", real_commit)
    calls = _encoder_calls()
    rep = _build(root, idx)
    assert _encoder_calls() == calls  # everything was embedded before the kill: nothing twice
    assert rep.generation == 2
    with open_index(idx) as opened:
        assert opened.store.count("records") == 46
        ids, _ = opened.store.all_vectors("tinycolor", 48)
        assert len(ids) == len(set(ids.tolist())) == 46


def test_fingerprint_mismatch_refused_without_writing(tmp_path, monkeypatch):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 4)
    _build(root, idx)
    snap = _snapshot(idx)
    with pytest.raises(IndexMismatchError, match="weights"):
        _build(root, idx, encoders="tinycolor@v2")
    # the installed weights changed under the index: queries refuse too
    import engine_helpers

    monkeypatch.setattr(engine_helpers, "load_tinycolor", lambda source=None, device=None:
                        engine_helpers.TinyColorEncoder("v2"))
    with pytest.raises(IndexMismatchError, match="rebuild"):
        image_query(str(root / "img_001.png"), idx, k=2)
    with pytest.raises(IndexMismatchError):
        _build(root, idx)
    assert _snapshot(idx) == snap


def test_forced_spec_and_ivf_rebuild(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 300, size=8)
    rep = _build(root, idx, index_spec="IVF4,Flat")
    m = read_manifest(idx)
    assert m.encoders["tinycolor"].faiss["spec"].startswith("IVF4") and rep.added == 300
    res = image_query(str(root / "img_010.png"), idx, k=1).results["tinycolor"][0]
    assert res.path.endswith("img_010.png")


def test_schema_mismatch_is_clear(tmp_path):
    from relsearch.store import Store

    root, idx = tmp_path / "col", tmp_path / "idx"
    make_collection(root, 3)
    _build(root, idx)
    # the store is the authority (manifest.json is an exported copy)
    with Store.open(idx / "meta.lmdb") as store:
        store.write(lambda txn: store.put_meta(txn, "schema_version", 99))
    with pytest.raises(IndexMismatchError, match="schema version 99"):
        image_query(str(root / "img_001.png"), idx)
    with pytest.raises(RelsearchError):
        _build(root, idx)


def test_other_collection_into_same_index_refused(tmp_path):
    a, b, idx = tmp_path / "a", tmp_path / "b", tmp_path / "idx"
    make_collection(a, 3)
    make_collection(b, 3, seed=3)
    _build(a, idx)
    snap = _snapshot(idx)
    with pytest.raises(RelsearchError, match="holds collection"):
        _build(b, idx)
    assert _snapshot(idx) == snap


def test_vectors_stored_match_encoder(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 5)
    _build(root, idx)
    from engine_helpers import TinyColorEncoder

    enc = TinyColorEncoder()
    seen = []
    with open_index(idx) as opened:
        for rec in opened.store.iter_records():
            v = opened.store.get_vectors("tinycolor", np.array([rec.id]), 48)[0]
            want = enc.embed([Image.open(rec.path)])[0]
            np.testing.assert_allclose(v, want, atol=1e-6)
            assert (rec.width, rec.height) == (32, 32)
            seen.append(rec.path)
    assert sorted(seen) == sorted(str(p) for p in paths)  # every image stored, each once


def test_adding_an_encoder_to_an_existing_index(tmp_path):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 6)
    _build(root, idx)
    rep = _build(root, idx, encoders="tinyflip")
    assert rep.encoders == ["tinycolor", "tinyflip"] and (rep.added, rep.unchanged) == (0, 6)
    m = read_manifest(idx)
    assert set(m.encoders) == {"tinycolor", "tinyflip"}
    res = image_query(str(paths[3]), idx, k=2).results
    assert set(res) == {"tinycolor", "tinyflip"}
    assert all(hits[0].path == str(paths[3]) for hits in res.values())
    with Searcher(idx) as s:
        assert s.indexes["tinycolor"].ntotal == s.indexes["tinyflip"].ntotal == 6
    # a new image now gets both vectors
    Image.new("RGB", (16, 16), (5, 5, 200)).save(root / "blue.png")
    rep = _build(root, idx)
    assert rep.added == 1
    with Searcher(idx) as s:
        assert s.indexes["tinycolor"].ntotal == s.indexes["tinyflip"].ntotal == 7
