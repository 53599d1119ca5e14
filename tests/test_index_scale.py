"""Refine store and sharded on-disk IVF-PQ: same answers as in memory, from files."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from relsearch.bench.synthetic import clustered_with_queries
from relsearch.errors import RelsearchError
from relsearch.index import exact_search, recall_at
from relsearch.index._faiss import import_faiss
from relsearch.index.refine import RefineStore, refine_path, write_refine_store, write_updated_store
from relsearch.index.sharded import (
    build_sharded,
    ivfdata_name_offset,
    on_disk_lists,
    with_ivfdata_name,
)

D = 32


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base, queries = clustered_with_queries(6000, 100, d=D, n_clusters=40, seed=5)
    ids = (np.arange(len(base), dtype=np.int64) * 3 + 10**11)[np.random.default_rng(1).permutation(len(base))]
    return base, queries, ids


def test_refine_store_returns_rows_by_id(tmp_path, data) -> None:
    base, _, ids = data
    path = write_refine_store(tmp_path / "e.3.vecs", ids, base)
    assert path == refine_path(tmp_path / "e.3.faiss")
    store = RefineStore(path)
    want = ids[[5, 0, 5999, 17]]
    np.testing.assert_array_equal(store(want), base[[5, 0, 5999, 17]])
    assert len(store) == len(ids) and store.dim == D
    with pytest.raises(KeyError):
        store(np.array([ids.max() + 1]))


def test_refine_store_update_removes_adds_and_replaces(tmp_path, data) -> None:
    base, _, ids = data
    old = RefineStore(write_refine_store(tmp_path / "e.1.vecs", ids[:5000], base[:5000]))
    removed = ids[:10]
    changed = ids[10:12]  # re-added with a new vector
    new_ids = np.concatenate([ids[5000:], changed])
    new_vecs = np.concatenate([base[5000:], -base[10:12]])
    new = RefineStore(write_updated_store(tmp_path / "e.2.vecs", old, removed, new_ids, new_vecs))
    assert len(new) == 5000 - 10 + 1000
    assert not np.isin(removed, new.resident_ids()).any()
    np.testing.assert_array_equal(new(changed), -base[10:12])
    np.testing.assert_array_equal(new(ids[[20, 5500]]), base[[20, 5500]])
    # The previous generation's file is untouched.
    np.testing.assert_array_equal(old(ids[:3]), base[:3])


def test_truncated_refine_store_is_one_line_error(tmp_path, data) -> None:
    base, _, ids = data
    path = write_refine_store(tmp_path / "e.vecs", ids[:100], base[:100])
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(RelsearchError, match="corrupt refine store"):
        RefineStore(path)


def _trained(base: np.ndarray, spec: str = "IVF32,PQ8"):
    faiss = import_faiss()
    index = faiss.index_factory(D, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if hasattr(ivf, "do_polysemous_training"):
        ivf.do_polysemous_training = False  # as the engine builds it; polysemous training is slow
    index.train(base[:4000])
    return index


def test_sharded_on_disk_equals_in_memory(tmp_path, data) -> None:
    faiss = import_faiss()
    base, queries, ids = data
    trained = _trained(base)
    memory = faiss.clone_index(trained)
    memory.add_with_ids(base, ids)
    with ThreadPoolExecutor(2) as pool:
        disk = build_sharded(faiss.clone_index(trained), ids, base, tmp_path / "e.ivfdata", tmp_path / "work",
                             shard_rows=1700, executor=pool)
    assert on_disk_lists(faiss, disk) is not None and disk.ntotal == len(ids)
    assert not (tmp_path / "work").exists()  # shard files and their folder are cleaned up
    for index in (memory, disk):
        faiss.extract_index_ivf(index).nprobe = 8
    dm, im = memory.search(queries, 10)
    dd, idd = disk.search(queries, 10)
    # Same codes in the same lists: same scores (ties may swap ids).
    np.testing.assert_allclose(dd, dm, rtol=1e-5, atol=1e-6)
    truth = ids[exact_search(base, queries, 10)[1]]
    assert abs(recall_at(idd, truth, 10) - recall_at(im, truth, 10)) < 0.005


def test_on_disk_index_follows_its_data_file_when_moved(tmp_path, data) -> None:
    faiss = import_faiss()
    base, queries, ids = data
    first = tmp_path / "a" / "e.ivfdata"
    first.parent.mkdir()
    disk = build_sharded(_trained(base), ids, base, first, tmp_path / "work", shard_rows=4000)
    payload = faiss.serialize_index(disk)
    at = ivfdata_name_offset(payload, os.path.abspath(first))
    _, before = disk.search(queries[:5], 10)
    del disk
    moved = tmp_path / "b" / "e.ivfdata"
    moved.parent.mkdir()
    os.replace(first, moved)
    patched = with_ivfdata_name(payload, at, os.path.abspath(moved))
    again = faiss.deserialize_index(np.frombuffer(patched, dtype=np.uint8))
    _, after = again.search(queries[:5], 10)
    np.testing.assert_array_equal(before, after)


def test_fast_scan_cannot_go_on_disk(tmp_path, data) -> None:
    base, _, ids = data
    with pytest.raises(RelsearchError, match="plain codes"):
        build_sharded(_trained(base, "IVF32,PQ8x4fs"), ids, base, tmp_path / "e.ivfdata", tmp_path / "w")


def _lookup(base: np.ndarray, ids: np.ndarray):
    order = np.argsort(ids)
    return lambda want: base[order[np.searchsorted(ids[order], want)]]


@pytest.fixture(scope="module")
def on_disk_pair(tmp_path_factory, data):
    """The same automatic index built in memory and, in shards, on disk; both saved with refine stores."""
    from relsearch.index import IndexConfig, VectorIndex

    base, _, ids = data
    folder = tmp_path_factory.mktemp("gen")
    out = {}
    for layout in ("memory", "ondisk"):
        config = IndexConfig(exact_threshold=1000, spec=f"{layout}:IVF32,PQ8")
        with ThreadPoolExecutor(2) as pool:
            index = VectorIndex.build(base, ids, config, vector_lookup=_lookup(base, ids),
                                      ondisk=folder / f"{layout}.1.ivfdata", executor=pool, shard_rows=2500)
        index.save(folder / f"{layout}.1.faiss")
        write_refine_store(refine_path(folder / f"{layout}.1.faiss"), ids, base)
        out[layout] = index
    return folder, out


def test_vector_index_on_disk_matches_memory_and_reloads(on_disk_pair, data) -> None:
    from relsearch.index import VectorIndex

    base, queries, ids = data
    folder, built = on_disk_pair
    assert built["ondisk"].layout == "ondisk" and built["memory"].layout == "memory"
    assert (folder / "ondisk.1.ivfdata").exists() and not (folder / "memory.1.ivfdata").exists()
    truth = ids[exact_search(base, queries, 10)[1]]
    loaded = {k: VectorIndex.load(folder / f"{k}.1.faiss") for k in built}
    for index in loaded.values():
        index.nprobe, index.rerank = 8, 50
        assert index.refine_store is not None  # re-ranking reads the mapped store, not the caller's lookup
    rec = {k: recall_at(v.search(queries, 10)[1], truth, 10) for k, v in loaded.items()}
    assert rec["ondisk"] > 0.9 and abs(rec["ondisk"] - rec["memory"]) <= 0.005, rec
    info = loaded["ondisk"].info()
    assert info["layout"] == "ondisk" and info["ram_bytes_per_vector"] < info["disk_bytes_per_vector"]
    assert info["refine_bytes_per_vector"] >= 4 * D


def test_on_disk_generation_is_rewritten_not_edited(on_disk_pair, data, tmp_path) -> None:
    import shutil

    from relsearch.index import VectorIndex

    base, queries, ids = data
    folder, _ = on_disk_pair
    for f in ("ondisk.1.faiss", "ondisk.1.ivfdata", "ondisk.1.vecs"):
        shutil.copy(folder / f, tmp_path / f)  # a moved/copied index folder still loads
    old = VectorIndex.load(tmp_path / "ondisk.1.faiss")
    before = old.search(queries, 10)[1]
    new = old.updated(tmp_path / "ondisk.2.faiss", ids[:100], np.arange(5, dtype=np.int64), -base[:5])
    assert (tmp_path / "ondisk.2.ivfdata").exists() and new.layout == "ondisk"
    new.save(tmp_path / "ondisk.2.faiss")
    assert new.ntotal == len(ids) - 95
    new.rerank = 0
    found = new.search(-base[:5], 1)[1][:, 0]
    np.testing.assert_array_equal(found, np.arange(5))  # added vectors are found under their ids
    assert not np.isin(new.search(base[:100], 10)[1], ids[:100]).any()  # removed ones are gone
    np.testing.assert_array_equal(old.search(queries, 10)[1], before)  # generation 1 unchanged
    again = VectorIndex.load(tmp_path / "ondisk.2.faiss")
    assert again.ntotal == len(ids) - 95 and again.layout == "ondisk"


def test_damaged_on_disk_lists_are_one_line_errors(on_disk_pair, tmp_path) -> None:
    import shutil

    from relsearch.index import VectorIndex

    folder, _ = on_disk_pair
    shutil.copy(folder / "ondisk.1.faiss", tmp_path / "e.1.faiss")
    with pytest.raises(RelsearchError, match="missing its on-disk lists"):
        VectorIndex.load(tmp_path / "e.1.faiss")
    shutil.copy(folder / "ondisk.1.ivfdata", tmp_path / "e.1.ivfdata")
    with open(tmp_path / "e.1.ivfdata", "r+b") as f:
        f.truncate(4096)
    with pytest.raises(RelsearchError, match="corrupt on-disk lists"):
        VectorIndex.load(tmp_path / "e.1.faiss")


def test_build_index_on_disk_layout_end_to_end(tmp_path) -> None:
    """build-index with an on-disk spec: lists + refine store per generation, incremental copy, queries."""
    from engine_helpers import make_collection
    from PIL import Image

    from relsearch.build import BuildOptions, build_index
    from relsearch.indexdir import read_manifest
    from relsearch.query import Searcher

    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 200, size=8)
    opts = BuildOptions(encoders="tinycolor", progress=False, workers=2, index_spec="ondisk:IVF4,PQ12x4")
    build_index(root, idx, opts)
    files = sorted(p.name for p in (idx / "faiss").iterdir())
    assert files == ["tinycolor.1.faiss", "tinycolor.1.ivfdata", "tinycolor.1.vecs"], files
    assert read_manifest(idx).encoders["tinycolor"].faiss["layout"] == "ondisk"
    paths[0].unlink()
    Image.new("RGB", (8, 8), (250, 10, 10)).save(root / "new.png")
    rep = build_index(root, idx, opts)
    assert rep.generation == 2
    files = sorted(p.name for p in (idx / "faiss").iterdir())
    assert files == ["tinycolor.2.faiss", "tinycolor.2.ivfdata", "tinycolor.2.vecs"], files
    with Searcher(idx) as s:
        index = s.indexes["tinycolor"]
        assert index.layout == "ondisk" and index.refine_store is not None and index.ntotal == 200
        enc = s.encoder("tinycolor")
        for p in (paths[7], root / "new.png"):
            hit = s.search_vectors("tinycolor", enc.embed([Image.open(p)]), 1)[0][0]
            assert hit.path == str(p) and hit.score == pytest.approx(1.0, abs=1e-5)


def test_fast_scan_spec_on_disk_refused_up_front() -> None:
    from relsearch.index import check_spec

    with pytest.raises(RelsearchError, match="fast-scan"):
        check_spec("ondisk:IVF4,PQ8x4fs", 32)
    with pytest.raises(RelsearchError, match="prefix"):
        check_spec("cloud:IVF4,PQ8", 32)


def test_bench_scale_compares_layouts(tmp_path) -> None:
    import json

    from engine_helpers import run_cli

    res = tmp_path / "res"
    code = run_cli("bench", "scale", "--part", "index", "--work", str(tmp_path / "w"), "--n", "4000", "--n-queries", "50", "--d", "16",
                   "--spec", "IVF16,PQ4", "--nprobe", "8", "--rerank", "50", "--shard-rows", "1500",
                   "--workers", "2", "--results-dir", str(res))
    assert code == 0
    r = json.loads((res / "scale_index.json").read_text())
    assert (res / "scale_index.png").stat().st_size > 0
    assert r["build"]["ondisk"]["shards"] == 3 and r["n"] == 4000
    q = r["query"]
    assert q["ondisk"]["recall_at_10"] > 0.8 and abs(r["recall_gap"]) <= 0.005
    assert r["bytes"]["ondisk_ivfdata"] > 0 and all(q[k]["peak_rss"] > 0 for k in q)


def test_text_vector_sentences_split_by_package() -> None:
    """The real-vector test set: description sentences, queries from packages not in the base."""
    from relsearch.bench import text_vectors as tv

    index = (
        "Package: alpha\nDescription-md5: x\nDescription-en: Tool that converts images to text files\n"
        " Alpha reads scanned pages and writes plain text. It supports many languages.\n .\n"
        " This package contains the command line interface.\n\n"
        "Package: beta\nDescription-en: short\n Beta is a library for parsing configuration files quickly.\n"
    )
    sents = tv.package_sentences(index)
    assert sents["alpha"][0] == "Tool that converts images to text files."
    assert "This package contains the command line interface." in sents["alpha"]
    assert all(len(s) >= tv.MIN_CHARS for ss in sents.values() for s in ss)  # "short." is dropped
    pkgs = {f"pkg{i}": [f"Sentence number {i} about a package that does something useful."] for i in range(400)}
    base, queries = tv.split_sentences(pkgs, 300, 20)
    assert len(base) == 300 and len(queries) == 20 and not set(base) & set(queries)
    query_pkgs = {p for p in pkgs if tv._is_query_package(p)}
    assert all(any(q in pkgs[p] for p in query_pkgs) for q in queries)
    with pytest.raises(RelsearchError, match="available"):
        tv.split_sentences(pkgs, 1000, 20)
