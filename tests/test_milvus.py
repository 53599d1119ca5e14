"""``export milvus`` and ``query --backend milvus`` against a real milvus-lite file."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from engine_helpers import make_collection, run_cli
from PIL import Image

from relsearch.build import BuildOptions, build_index
from relsearch.collection import load_image
from relsearch.composed import search_image
from relsearch.indexdir import read_manifest
from relsearch.query import Searcher
from relsearch.store import Store

pytest.importorskip("pymilvus", reason="the 'milvus' extra is not installed (pip install 'relsearch[milvus]')")
pytest.importorskip("milvus_lite", reason="the 'milvus' extra is not installed (pip install 'relsearch[milvus]')")

from pymilvus import MilvusClient  # noqa: E402

from relsearch.backends.milvus import MilvusSearcher, map_faiss_spec  # noqa: E402

ENCODERS = "tinycolor,tinyflip"
SPEC = "IVF4,PQ8x4"  # an IVF-PQ, which milvus-lite does not build: mapped to IVF_SQ8


def _build(root, idx):
    return build_index(root, idx, BuildOptions(encoders=ENCODERS, index_spec=SPEC, progress=False, workers=2))


def _milvus_rows(db, coll) -> dict[int, tuple[np.ndarray, str, str]]:
    client = MilvusClient(str(db))
    try:
        client.load_collection(coll)
        it = client.query_iterator(coll, batch_size=500, filter="id >= 0",
                                   output_fields=["id", "vector", "path", "sha256"])
        rows: dict[int, tuple[np.ndarray, str, str]] = {}
        while page := it.next():
            for r in page:
                assert int(r["id"]) not in rows  # never twice
                rows[int(r["id"])] = (np.asarray(r["vector"], dtype=np.float32), r["path"], r["sha256"])
        it.close()
        return rows
    finally:
        client.close()


def _assert_mirrors(idx, db) -> None:
    """Every vector of the index, and nothing else, is in its collection, with path and sha256."""
    manifest = read_manifest(idx)
    with Store.open(idx / "meta.lmdb", readonly=True) as store:
        for name, entry in manifest.encoders.items():
            ids, vecs = store.all_vectors(name, entry.dim)
            records = store.get_records(int(i) for i in ids)
            rows = _milvus_rows(db, f"{idx.name}_{name}")
            assert sorted(rows) == sorted(int(i) for i in ids)
            assert len(rows) == entry.faiss["ntotal"] == manifest.count
            for i, v in zip(ids, vecs):
                vec, path, sha = rows[int(i)]
                assert np.abs(vec - v).max() <= 1e-6
                assert (path, sha) == (records[int(i)].path, records[int(i)].sha256)


def test_spec_mapping_server_and_lite():
    pq = {"spec": "IVF1024,PQ48x4fs", "nprobe": 32}
    server, lite = map_faiss_spec(pq, lite=False), map_faiss_spec(pq, lite=True)
    assert (server.index_type, server.params) == ("IVF_PQ", {"nlist": 1024, "m": 48, "nbits": 4})
    assert (lite.index_type, lite.params, lite.search_params) == ("IVF_SQ8", {"nlist": 1024}, {"nprobe": 32})
    assert "no IVF_PQ" in lite.note and not server.note
    assert map_faiss_spec({"spec": "OPQ32,IVF256,PQ32"}, lite=False).params == {"nlist": 256, "m": 32, "nbits": 8}
    assert map_faiss_spec({"spec": "Flat"}, lite=True).index_type == "FLAT"
    assert map_faiss_spec({"spec": "HNSW32"}, lite=True).params["M"] == 32
    assert map_faiss_spec({"spec": "IVF64,Flat", "nprobe": 8}, lite=True).index_type == "IVF_FLAT"


def test_export_holds_every_vector_and_top1_agrees_with_faiss(tmp_path, capsys):
    root, idx, db = tmp_path / "col", tmp_path / "photos", tmp_path / "photos.db"
    paths = make_collection(root, 120)
    _build(root, idx)
    assert run_cli("export", "milvus", "--index", str(idx), "--uri", str(db), "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["collection"] for c in report["collections"]] == ["photos_tinycolor", "photos_tinyflip"]
    assert all(c["index_type"] == "IVF_SQ8" and c["index_params"] == {"nlist": 4} and "no IVF_PQ" in c["note"]
               for c in report["collections"])
    assert all(c["rows"] == c["upserted"] == 120 for c in report["collections"])
    _assert_mirrors(idx, db)

    with Searcher(idx) as faiss_side, MilvusSearcher(str(db)) as milvus_side:
        for p in paths:
            img = load_image(p, max_side=512)
            a, b = search_image(faiss_side, img, k=1), search_image(milvus_side, img, k=1)
            for name in ("tinycolor", "tinyflip"):
                assert b.results[name][0].path == a.results[name][0].path == str(p)
                assert b.results[name][0].id == a.results[name][0].id


def test_reexport_after_incremental_build_upserts_and_deletes(tmp_path, capsys):
    root, idx, db = tmp_path / "col", tmp_path / "idx", tmp_path / "x.db"
    paths = make_collection(root, 60)
    Image.open(paths[4]).save(root / "zz_copy.png")  # a second path of record 4's content
    _build(root, idx)
    assert run_cli("export", "milvus", "--index", str(idx), "--uri", str(db), "--collection", "arch") == 0
    out = capsys.readouterr().out
    assert "arch_tinycolor: 60 vectors (60 upserted, 0 deleted), IVF_SQ8 (nlist=4)" in out and "note:" in out
    # add 5, delete 3, change 1 (new record), and remove record 4's first path (it is re-pointed)
    make_collection(root / "more", 5, seed=9)
    for p in paths[20:23]:
        p.unlink()
    Image.new("RGB", (24, 24), (5, 200, 90)).save(paths[30])
    os.utime(paths[30], ns=(time.time_ns(), time.time_ns() + 10**9))
    paths[4].unlink()
    _build(root, idx)
    assert run_cli("export", "milvus", "--index", str(idx), "--uri", str(db), "--collection", "arch", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    for c in report["collections"]:
        assert (c["rows"], c["upserted"], c["deleted"]) == (62, 5 + 1 + 1, 3 + 1)
    for name in ("tinycolor", "tinyflip"):
        rows = _milvus_rows(db, f"arch_{name}")
        assert len(rows) == 62 and str(root / "zz_copy.png") in {r[1] for r in rows.values()}
    # once more with nothing changed: nothing written
    assert run_cli("export", "milvus", "--index", str(idx), "--uri", str(db), "--collection", "arch", "--json") == 0
    assert all((c["upserted"], c["deleted"]) == (0, 0) for c in json.loads(capsys.readouterr().out)["collections"])


def test_query_backend_milvus_gives_the_faiss_json_contract(tmp_path, capsys):
    root, idx, db = tmp_path / "col", tmp_path / "idx", tmp_path / "x.db"
    paths = make_collection(root, 40)
    _build(root, idx)
    assert run_cli("export", "milvus", "--index", str(idx), "--uri", str(db)) == 0
    capsys.readouterr()
    assert run_cli("query", str(paths[7]), "--index", str(idx), "-k", "5", "--json") == 0
    faiss_json = json.loads(capsys.readouterr().out)
    assert run_cli("query", str(paths[7]), "--backend", "milvus", "--uri", str(db), "-k", "5", "--json") == 0
    milvus_json = json.loads(capsys.readouterr().out)
    # The collection's folders live in the index manifest, which a Milvus collection does not carry.
    assert set(milvus_json) <= set(faiss_json) and set(faiss_json) - set(milvus_json) <= {"collection_roots"}
    assert milvus_json["query"] == faiss_json["query"]
    assert list(milvus_json["results"]) == list(faiss_json["results"]) == ["tinycolor", "tinyflip"]
    for name, hits in milvus_json["results"].items():
        # an IVF probes nprobe lists: Milvus (no re-ranking pool) may find fewer than k
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1)) and 1 <= len(hits) <= 5
        assert all(h.keys() == faiss_json["results"][name][0].keys() for h in hits)
        assert hits[0]["path"] == faiss_json["results"][name][0]["path"] == str(paths[7])
        assert hits[0]["score"] == pytest.approx(1.0, abs=0.01)


def test_bad_milvus_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 6)
    assert run_cli("export", "milvus", "--index", str(tmp_path / "nope"), "--uri", str(tmp_path / "a.db")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a relsearch index" in err and not (tmp_path / "a.db").exists()
    assert run_cli("query", str(paths[0]), "--backend", "milvus", "--uri", str(tmp_path / "b.db")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err and not (tmp_path / "b.db").exists()
    assert run_cli("query", str(paths[0]), "--backend", "milvus") == 2
    assert "needs --uri" in capsys.readouterr().err
    assert run_cli("query", str(paths[0]), "--index", str(idx), "--backend", "elastic") == 2
    assert "--backend must be faiss or milvus" in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8_exports_and_comes_back(tmp_path):
    """Milvus holds UTF-8 text only; a non-UTF-8 name (issue 8) must export and round-trip in queries."""
    from relsearch.backends.milvus import from_milvus_path, to_milvus_path

    root, idx, db = tmp_path / "col", tmp_path / "idx", tmp_path / "x.db"
    paths = make_collection(root, 24)  # PQ8x4 trains on at least 16
    bad = os.fsencode(str(root)) + b"/bad_\\xff\\xfe.png"
    os.rename(paths[3], bad)
    _build(root, idx)
    assert run_cli("export", "milvus", "--index", str(idx), "--uri", str(db)) == 0
    _assert_mirrors_decoded(idx, db)
    name = os.fsdecode(bad)
    assert from_milvus_path(to_milvus_path(name)) == name and to_milvus_path(str(paths[0])) == str(paths[0])
    with MilvusSearcher(str(db)) as milvus_side:
        hit = search_image(milvus_side, load_image(name, max_side=512), k=1).results["tinycolor"][0]
    assert os.fsencode(hit.path) == bad


def _assert_mirrors_decoded(idx, db) -> None:
    from relsearch.backends.milvus import from_milvus_path

    manifest = read_manifest(idx)
    with Store.open(idx / "meta.lmdb", readonly=True) as store:
        for name in manifest.encoders:
            ids, _ = store.all_vectors(name, manifest.encoders[name].dim)
            records = store.get_records(int(i) for i in ids)
            rows = _milvus_rows(db, f"{idx.name}_{name}")
            assert {i: from_milvus_path(r[1]) for i, r in rows.items()} == {int(i): records[int(i)].path for i in ids}
