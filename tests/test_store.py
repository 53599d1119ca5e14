from __future__ import annotations

import numpy as np
import pytest

from relsearch.errors import IndexMismatchError, RelsearchError
from relsearch.store import SCHEMA_VERSION, PathEntry, Record, Store, envs, lmdb_store


def _rec(i: int, digest: str, path: str) -> Record:
    return Record(i, digest, [path], 10, 4, 3, 0.0)


def test_records_paths_hashes_vectors_roundtrip(tmp_path):
    store = Store.open(tmp_path / "s", create=True)

    def fill(txn):
        ids = store.allocate_ids(txn, 2)
        for i, (d, p) in zip(ids, [("aa", "/x/a.png"), ("bb", "/x/b.png")]):
            store.put_record(txn, _rec(i, d, p))
            store.put_path(txn, p, PathEntry(i, 10, 123))
            store.put_vector(txn, "enc", i, np.full(3, i + 1, dtype=np.float32))
        store.mark(txn, "pending", ids)
        return ids

    ids = store.write(fill)
    assert ids == [0, 1]
    assert store.get_meta("schema_version") == SCHEMA_VERSION
    assert store.get_records([1])[1].path == "/x/b.png"
    assert store.all_paths()["/x/a.png"] == PathEntry(0, 10, 123)
    with store.read() as txn:
        assert store.txn_id_for_hash(txn, "bb") == 1
    v = store.get_vectors("enc", np.array([1, -1, 0]), 3)
    assert v[0].tolist() == [2, 2, 2] and v[1].tolist() == [0, 0, 0] and v[2].tolist() == [1, 1, 1]
    got_ids, vecs = store.all_vectors("enc", 3)
    assert got_ids.tolist() == [0, 1] and vecs.shape == (2, 3)
    assert sorted(store.marked("pending")) == [0, 1]
    # ids keep growing: never reused after delete
    store.write(lambda txn: store.delete_record(txn, store.txn_record(txn, 0), ["enc"]))
    assert 0 not in store.vector_ids("enc") and 0 not in store.record_ids()
    assert store.write(lambda txn: store.allocate_ids(txn, 1)) == [2]
    store.close()


def test_map_grows_on_demand(tmp_path, monkeypatch):
    monkeypatch.setattr(lmdb_store, "_INITIAL_MAP_SIZE", 1 << 20)  # 1 MiB
    monkeypatch.setattr(envs, "SHARED_MAP_SIZE", 0)  # no roomy shared map: make it grow
    store = Store.open(tmp_path / "s", create=True)
    blob = np.random.default_rng(0).random(4096).astype(np.float32)  # 16 KiB a vector

    def fill(txn):
        for i in range(200):  # ~3 MiB: must outgrow the 1 MiB map
            store.put_vector(txn, "enc", i, blob)

    store.write(fill)
    assert store.count("vec:enc") == 200
    assert store.env.info()["map_size"] > (1 << 20)
    store.close()


def test_schema_mismatch_and_missing(tmp_path):
    with pytest.raises(RelsearchError, match="no metadata store"):
        Store.open(tmp_path / "nothing")
    store = Store.open(tmp_path / "s", create=True)
    store.write(lambda txn: store.put_meta(txn, "schema_version", 999))
    store.close()
    with pytest.raises(IndexMismatchError, match="schema version 999"):
        Store.open(tmp_path / "s")
