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
    assert sorted(os.listdir(tmp_path / "work")) == []  # shard files are cleaned up
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
