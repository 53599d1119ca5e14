"""Vector index: recall against exact search on structured data, ids, persistence."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from relsearch.bench.synthetic import clustered, clustered_with_queries
from relsearch.errors import RelsearchError
from relsearch.index import IndexConfig, VectorIndex, auto_spec, exact_search, recall_at

D = 32


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base, queries = clustered_with_queries(4000, 100, d=D, n_clusters=40, seed=3)
    # Record ids as the engine hands them out: arbitrary, sparse, large int64.
    ids = (np.arange(len(base), dtype=np.int64) * 7 + 10**12)[np.random.default_rng(0).permutation(len(base))]
    return base, queries, ids


def _lookup(base: np.ndarray, ids: np.ndarray):
    pos = {int(i): p for p, i in enumerate(ids)}
    return lambda want: base[[pos[int(i)] for i in want]]


def _truth(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    _, pos = exact_search(base, queries, k)
    return ids[pos]


@pytest.fixture(scope="module")
def ivfpq(data) -> VectorIndex:
    base, _, ids = data
    config = IndexConfig(spec="IVF32,PQ8x4", recall_target=0.95)
    return VectorIndex.build(base, ids, config, vector_lookup=_lookup(base, ids))


def test_config_validates_and_quotes_bad_values() -> None:
    with pytest.raises(ValueError, match="1.5"):
        IndexConfig(recall_target=1.5)
    with pytest.raises(ValueError, match="-3"):
        IndexConfig(exact_threshold=-3)
    with pytest.raises(ValueError, match="IVF 12"):
        IndexConfig(spec="IVF 12")
    with pytest.raises(ValueError, match="5000"):
        IndexConfig(rerank=5000)


def test_exact_path_is_exact_and_uses_given_ids(data) -> None:
    base, queries, ids = data
    index = VectorIndex.build(base, ids, IndexConfig())  # 4000 < threshold: exact
    assert index.spec == "Flat" and index.ntotal == len(base)
    scores, found = index.search(queries, 10)
    assert found.dtype == np.int64 and scores.dtype == np.float32
    assert set(found.ravel().tolist()) <= set(ids.tolist())
    assert recall_at(found, _truth(base, ids, queries), 10) == 1.0
    exact_scores, _ = exact_search(base, queries, 10)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-5)


def test_forced_ivfpq_reaches_recall_on_new_queries(data, ivfpq) -> None:
    base, queries, ids = data
    assert ivfpq.is_ivf and ivfpq.rerank > 0 and 1 <= ivfpq.nprobe <= 32
    scores, found = ivfpq.search(queries, 10)
    assert found.dtype == np.int64 and np.isin(found, ids).all()
    assert recall_at(found, _truth(base, ids, queries), 10) >= 0.9
    # Re-ranked scores are exact inner products of the returned ids.
    vec = _lookup(base, ids)(found[0])
    np.testing.assert_allclose(scores[0], vec @ queries[0], rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_recall_does_not_fall_as_nprobe_rises(data) -> None:
    base, queries, ids = data
    truth = _truth(base, ids, queries)
    # Exact scores inside the probed lists: more lists can only add true neighbours.
    flat = VectorIndex.build(base, ids, IndexConfig(spec="IVF32,Flat"))
    pq = VectorIndex.build(
        base, ids, IndexConfig(spec="IVF32,PQ8x4", rerank=200), vector_lookup=_lookup(base, ids)
    )
    for index, slack in ((flat, 0.0), (pq, 0.01)):
        recalls = []
        for nprobe in (1, 2, 4, 8, 16, 32):
            index.nprobe = nprobe
            recalls.append(recall_at(index.search(queries, 10)[1], truth, 10))
        assert all(b >= a - slack for a, b in zip(recalls, recalls[1:])), (index.spec, recalls)
        assert recalls[-1] > recalls[0]
    assert recalls[-1] >= 0.97  # all lists + re-ranking 200 candidates of a 4-bit PQ


def test_rerank_improves_or_keeps_recall(data, ivfpq) -> None:
    base, queries, ids = data
    truth = _truth(base, ids, queries)
    saved = ivfpq.rerank
    try:
        for nprobe in (2, 8):
            ivfpq.nprobe = nprobe
            ivfpq.rerank = 0
            plain = recall_at(ivfpq.search(queries, 10)[1], truth, 10)
            ivfpq.rerank = 100
            reranked = recall_at(ivfpq.search(queries, 10)[1], truth, 10)
            assert reranked >= plain
        assert reranked > plain  # 4-bit codes alone order close neighbours poorly
    finally:
        ivfpq.rerank = saved


def test_tuning_deepens_automatic_rerank_only(data) -> None:
    base, queries, ids = data
    # 4-bit codes of 4-d slices: the top-100 by code score misses true neighbours.
    auto = VectorIndex.build(base, ids, IndexConfig(spec="IVF32,PQ8x4", recall_target=0.98))
    fixed = VectorIndex.build(base, ids, IndexConfig(spec="IVF32,PQ8x4", recall_target=0.98, rerank=100))
    assert auto.rerank > 100 and auto.info()["tuned_recall"] >= 0.98
    assert fixed.rerank == 100 and fixed.info()["tuned_recall"] < 0.98
    lookup = _lookup(base, ids)
    truth = _truth(base, ids, queries)
    assert recall_at(auto.search(queries, 10, lookup)[1], truth, 10) >= 0.95


@pytest.mark.parametrize("spec", ["auto", "IVF16,PQ8x4"])
def test_add_and_remove_by_id(data, spec) -> None:
    base, _, ids = data
    lookup = _lookup(base, ids)
    keep, extra = slice(0, 3000), slice(3000, 4000)
    index = VectorIndex.build(base[keep], ids[keep], IndexConfig(spec=spec), vector_lookup=lookup)
    index.add(base[extra], ids[extra])
    assert index.ntotal == 4000
    # A vector's nearest neighbour is itself, whichever batch it came in.
    _, found = index.search(base[3000:3050], 1)
    assert np.mean(found[:, 0] == ids[3000:3050]) >= 0.9
    with pytest.raises(ValueError, match="already"):
        index.add(base[:2], ids[:2])

    gone = ids[::3]
    assert index.remove(np.concatenate([gone, [5]])) == len(gone)  # 5 was never there
    assert index.ntotal == 4000 - len(gone)
    _, found = index.search(base[::3][:200], 20)
    assert not np.isin(found, gone).any()
    assert index.remove(gone) == 0


def test_search_pads_with_minus_one(data) -> None:
    base, queries, ids = data
    index = VectorIndex.build(base[:5], ids[:5], IndexConfig())
    scores, found = index.search(queries[:3], 8)
    assert found.shape == (3, 8) and (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()
    assert set(found[:, :5].ravel().tolist()) == set(ids[:5].tolist())
    empty = VectorIndex.build(base[:0], ids[:0], IndexConfig())
    s, f = empty.search(queries[:2], 3)
    assert (f == -1).all() and f.shape == (2, 3)


def test_save_load_round_trip(tmp_path, data, ivfpq) -> None:
    base, queries, ids = data
    ivfpq.nprobe, ivfpq.rerank = 5, 37  # not what tuning chose: must survive anyway
    path = tmp_path / "enc.faiss"
    ivfpq.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["enc.faiss"]  # no temp file left
    loaded = VectorIndex.load(path)
    assert (loaded.nprobe, loaded.rerank, loaded.spec, loaded.ntotal) == (5, 37, ivfpq.spec, ivfpq.ntotal)
    lookup = _lookup(base, ids)
    a = ivfpq.search(queries, 10, vector_lookup=lookup)
    b = loaded.search(queries, 10, vector_lookup=lookup)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0])
    info = loaded.info()
    assert info["trained_on"] == 4000 and info["is_trained"] and info["rerank"] == 37
    assert 0 < info["bytes_per_vector"] < 100
    json.dumps(info)
    # The loaded index still knows its ids.
    with pytest.raises(ValueError, match="already"):
        loaded.add(base[:1], ids[:1])
    assert loaded.remove(ids[:10]) == 10 and loaded.ntotal == len(ids) - 10


def test_corrupt_or_missing_file_is_one_line_error(tmp_path, data) -> None:
    base, _, ids = data
    path = tmp_path / "enc.faiss"
    VectorIndex.build(base[:500], ids[:500], IndexConfig()).save(path)
    blob = path.read_bytes()
    cases = {
        "truncated": blob[: len(blob) - 100],
        "flipped": blob[:-50] + bytes([blob[-50] ^ 0xFF]) + blob[-49:],
        "garbage": b"not an index at all",
        "empty": b"",
        "header": blob[:20] + b"{" * 30 + blob[50:],
    }
    for name, content in cases.items():
        bad = tmp_path / f"{name}.faiss"
        bad.write_bytes(content)
        with pytest.raises(RelsearchError, match="corrupt index file") as err:
            VectorIndex.load(bad)
        assert "\n" not in str(err.value), name
    with pytest.raises(RelsearchError, match="not found"):
        VectorIndex.load(tmp_path / "missing.faiss")


def test_save_failure_leaves_previous_file(tmp_path, data) -> None:
    base, _, ids = data
    path = tmp_path / "enc.faiss"
    VectorIndex.build(base[:50], ids[:50], IndexConfig()).save(path)
    before = path.read_bytes()
    with pytest.raises(RelsearchError, match="cannot write"):
        VectorIndex.build(base[:60], ids[:60], IndexConfig()).save(tmp_path / "no-such-dir" / "x.faiss")
    assert path.read_bytes() == before


def test_auto_spec_switches_at_threshold(data) -> None:
    base, _, ids = data
    config = IndexConfig(exact_threshold=1000)
    assert auto_spec(999, D, config) == "Flat"
    assert auto_spec(1000, D, config).startswith("IVF")
    below = VectorIndex.build(base[:999], ids[:999], config)
    at = VectorIndex.build(base[:1000], ids[:1000], config, vector_lookup=_lookup(base, ids))
    assert below.spec == "Flat" and not below.is_ivf and below.rerank == 0
    assert at.spec.startswith("IVF") and ",PQ" in at.spec and at.is_ivf and at.rerank > 0
    assert below.needs_rebuild(1000) and not below.needs_rebuild(999)
    assert not at.needs_rebuild(3000) and at.needs_rebuild(4001)


def test_auto_spec_at_scale_fits_byte_budget() -> None:
    config = IndexConfig()
    # In memory: 4-bit fast-scan codes; on disk (where FAISS keeps plain codes): 8-bit PQ.
    assert auto_spec(1_000_000, 384, config) == "IVF1024,PQ96x4fs"
    assert auto_spec(1_000_000, 384, IndexConfig(layout="ondisk")) == "IVF2048,PQ48"
    assert auto_spec(20_000_000, 384, config).endswith(",PQ48")  # past the on-disk threshold
    assert IndexConfig(spec="ondisk:auto").layout == "ondisk"
    for n, d in ((1_000_000, 384), (100_000, 384), (20_000, 384), (1_000_000, 1280), (50_000, 768)):
        for layout in ("memory", "ondisk"):
            spec = auto_spec(n, d, IndexConfig(layout=layout))
            nlist = int(spec.split(",")[0][3:])
            m = int(spec.split(",PQ")[1].split("x")[0])
            nbits = 4 if "x4" in spec else 8
            est = m * nbits / 8 + 8 + (nlist * d * 4 + (1 << nbits) * d * 4) / n
            assert d % m == 0 and est <= 80, (n, d, spec, est)
            assert spec.endswith("fs") == (layout == "memory"), spec


def test_bad_spec_and_unsupported_removal(data) -> None:
    base, _, ids = data
    with pytest.raises(RelsearchError, match="invalid FAISS index spec"):
        VectorIndex.build(base, ids, IndexConfig(spec="IVFbanana"))
    hnsw = VectorIndex.build(base[:300], ids[:300], IndexConfig(spec="HNSW8,Flat"))
    assert hnsw.search(base[:1], 1)[1][0, 0] == ids[0]
    with pytest.raises(RelsearchError, match="cannot remove"):
        hnsw.remove(ids[:3])


def test_recall_at_counts_overlap_and_ignores_padding() -> None:
    true = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [-1, -1, -1, -1]])
    assert recall_at(found, true, 4) == pytest.approx((2 / 4 + 0) / 2)
    assert recall_at(true, true, 2) == 1.0


def test_synthetic_vectors_are_clustered_not_noise() -> None:
    base, queries = clustered_with_queries(3000, 50, d=64, n_clusters=30, seed=1)
    assert base.dtype == np.float32 and base.shape == (3000, 64)
    np.testing.assert_allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5)
    nn, _ = exact_search(base, queries, 1)
    random_pairs = np.sum(base[:1000] * base[1000:2000], axis=1)
    assert np.median(nn[:, 0]) > np.median(random_pairs) + 0.3
    assert nn.max() < 0.9999  # queries are fresh samples, not copies of base rows
    np.testing.assert_array_equal(clustered(100, 16, 5, seed=2), clustered(100, 16, 5, seed=2))


def test_run_ann_reports_and_writes(tmp_path, data) -> None:
    from relsearch.bench.ann import run_ann

    base, queries, _ = data
    out = str(tmp_path / "ids.npy")
    r = run_ann(base, queries[:40], k=5, spec="IVF16,PQ8x4", out=out, sweep=True, results_dir=str(tmp_path))
    assert r["spec"] == "IVF16,PQ8x4" and r["recall_at_10"] >= 0.9 and r["recall_at_1"] >= 0.9
    assert r["qps_batched"] > 0 and r["exact_qps_single"] > 0 and r["bytes_per_vector"] > 0
    ids = np.load(out)
    assert ids.shape == (40, 5) and ids.dtype == np.int64 and ids.min() >= 0
    sweep = json.loads((tmp_path / "ann_sweep.json").read_text())
    points = sweep["curves"]["IVF16,PQ8x4"]
    assert {p["rerank"] for p in points} == {0, r["rerank"]}
    assert [p["nprobe"] for p in points][:4] == [1, 1, 2, 2]
    assert os.path.getsize(tmp_path / "ann_sweep.png") > 1000


def test_run_ann_rejects_bad_input_before_writing(tmp_path, data) -> None:
    from relsearch.bench.ann import load_vectors, run_ann

    base, queries, _ = data
    out = tmp_path / "ids.npy"
    with pytest.raises(RelsearchError, match="same d"):
        run_ann(base, queries[:, :16], out=str(out))
    with pytest.raises(RelsearchError, match="invalid FAISS index spec"):
        run_ann(base[:200], queries[:5], spec="IVFbanana", out=str(out))
    with pytest.raises(RelsearchError, match="no such directory"):
        run_ann(base[:200], queries[:5], out=str(tmp_path / "nope" / "ids.npy"))
    assert not out.exists()
    with pytest.raises(RelsearchError, match="not found"):
        load_vectors(str(tmp_path / "missing.npy"), "base")
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    with pytest.raises(RelsearchError, match=r"\[N, d\]"):
        load_vectors(str(tmp_path / "flat.npy"), "base")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    with pytest.raises(RelsearchError, match="cannot read"):
        load_vectors(str(tmp_path / "junk.npy"), "base")
