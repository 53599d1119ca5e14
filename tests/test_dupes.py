"""Near-duplicate groups: k-NN candidates against brute force, components, the dupes command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import make_collection
from PIL import Image
from typer.testing import CliRunner

from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.dupes import candidate_pairs, components, find_dupes, whiten
from relsearch.errors import RelsearchError


def _vectors(n: int, d: int, copies: int, seed: int = 0) -> np.ndarray:
    """Correlated positive vectors (like pooled CNN features) with ``copies`` planted near copies."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((16, d)).astype(np.float32)
    x = np.maximum(rng.standard_normal((n, 16)).astype(np.float32) @ basis + 2.0
                   + rng.standard_normal((n, d)).astype(np.float32), 0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noise = rng.standard_normal((copies, d)).astype(np.float32) * rng.uniform(0.002, 0.02, (copies, 1))
    c = x[:copies] + noise.astype(np.float32)
    x = np.vstack([x, c / np.linalg.norm(c, axis=1, keepdims=True)])
    return x


def _brute_force_pairs(y: np.ndarray, k: int, floor: float) -> dict[tuple[int, int], float]:
    s = y @ y.T
    np.fill_diagonal(s, -np.inf)
    out = {}
    for a in range(len(y)):
        for b in np.argsort(-s[a])[:k]:
            if s[a, b] >= floor:
                out[(min(a, int(b)), max(a, int(b)))] = float(s[a, b])
    return out


@pytest.mark.parametrize(("flat_max", "whiten_min"), [(10_000, 10_000), (10_000, 100), (100, 10_000)])
def test_candidate_pairs_match_brute_force_knn(flat_max: int, whiten_min: int) -> None:
    x = _vectors(3000, 256, 150)
    whitened = whiten_min <= len(x)
    y = whiten(x) if whitened else x / np.linalg.norm(x, axis=1, keepdims=True)
    floor = 0.8 if whitened else 0.94
    want = _brute_force_pairs(y, 4, floor)
    assert 100 <= len(want)  # the planted copies at least
    i, j, sim = candidate_pairs(x, neighbours=4, raw_min=0.94, whitened_min=0.8, whiten_min=whiten_min,
                                flat_max=flat_max)
    got = set(zip(i.tolist(), j.tolist()))
    assert len(got) == len(i) and all(a < b for a, b in got)  # each pair once
    assert got <= set(want)
    np.testing.assert_allclose(sim, [want[p] for p in zip(i.tolist(), j.tolist())], atol=1e-4)
    recall = len(got) / len(want)
    assert recall == 1.0 if flat_max > len(x) else recall >= 0.95
    planted = {(a, 3000 + a) for a in range(150)}
    assert len(planted & got) >= 145


def test_small_collections_take_plain_cosine_not_whitening() -> None:
    x = _vectors(40, 256, 6, seed=3)  # 46 rows: far too few to fit 128 whitened axes
    i, j, _ = candidate_pairs(x, whitened_min=0.99)
    assert {(a, 40 + a) for a in range(6)} <= set(zip(i.tolist(), j.tolist()))


def test_whitening_is_unit_norm_and_ignores_a_shared_offset() -> None:
    x = _vectors(3000, 256, 150)
    y = whiten(x)
    assert y.shape == (3000 + 150, 128)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(whiten(x + 0.3), y, atol=1e-3)  # the shared direction is removed
    assert whiten(x[:20]).shape == (20, 19)  # no more axes than the rows span


def test_components_join_chains_and_keep_the_lowest_edge() -> None:
    i, j = np.array([0, 1, 5, 3]), np.array([1, 2, 6, 7])
    s = np.array([0.99, 0.975, 0.98, 1.0], dtype=np.float32)
    groups = components(9, i, j, s)
    assert [(rows, round(low, 3)) for rows, low in groups] == [([0, 1, 2], 0.975), ([3, 7], 1.0), ([5, 6], 0.98)]
    assert components(4, np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)) == []


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    root, idx = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 10, seed=4, size=64)
    src = Image.open(paths[2])
    src.resize((48, 48), Image.BILINEAR).save(root / "resized.png")
    src.convert("RGB").save(root / "recompressed.jpg", quality=60)
    shutil.copyfile(paths[5], root / "exact_copy.png")
    build_index(root, idx, BuildOptions(encoders="tinycolor", progress=False, workers=2))
    return root, idx, {"orig": paths[2], "exact_of": paths[5]}


def test_find_dupes_reports_exact_and_near_groups(planted) -> None:
    root, idx, p = planted
    result = find_dupes(idx, threshold=0.97)
    kinds = {g.kind: g for g in result.groups}
    assert sorted(g.kind for g in result.groups) == ["exact", "near"]
    assert kinds["exact"].paths == sorted([str(p["exact_of"]), str(root / "exact_copy.png")])
    assert kinds["exact"].score == 1.0
    assert sorted(kinds["near"].paths) == sorted([str(p["orig"]), str(root / "resized.png"),
                                                  str(root / "recompressed.jpg")])
    assert 0.97 <= kinds["near"].score <= 1.0
    assert result.encoder == "tinycolor" and result.images == 12  # 13 files, one exact copy


def test_dupes_cli_json_contract_and_bad_input(planted) -> None:
    _, idx, _ = planted
    runner = CliRunner()
    res = runner.invoke(app, ["dupes", "--index", str(idx), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert len(out["groups"]) == 2 and all({"paths", "score", "kind"} <= set(g) for g in out["groups"])
    table = runner.invoke(app, ["dupes", "--index", str(idx)]).stdout
    assert "1 exact and 1 near-duplicate groups" in table
    strict = json.loads(runner.invoke(app, ["dupes", "--index", str(idx), "--json", "--threshold", "1.0"]).stdout)
    assert [g["kind"] for g in strict["groups"]] == ["exact"]
    for args, needle in [(["--threshold", "1.5"], "threshold"), (["--encoder", "nope"], "no 'nope' column")]:
        res = runner.invoke(app, ["dupes", "--index", str(idx), *args])
        assert res.exit_code == 2 and needle in res.output


def test_relational_only_index_is_refused(planted, monkeypatch) -> None:
    from engine_helpers import TinyColorEncoder

    _, idx, _ = planted
    monkeypatch.setattr(TinyColorEncoder, "kind", "relational")
    root2, idx2 = idx.parent / "col2", idx.parent / "idx2"
    make_collection(root2, 4)
    build_index(root2, idx2, BuildOptions(encoders="tinycolor", progress=False, workers=2))
    with pytest.raises(RelsearchError, match="no attribute column"):
        find_dupes(idx2)


# --------------------------------------------------------------------------- bench helpers
def test_score_counts_pairs_and_false_groups() -> None:
    from relsearch.bench.dupes import score

    truth = [["o1", "r1", "c1"], ["o2", "r2"], ["o3"]]
    s = score([["o1", "r1"], ["o2", "r2", "o3"]], truth)
    # found pairs: (o1,r1) (o2,r2) (o2,o3) (o3,r2); true: (o1,r1) (o1,c1) (c1,r1) (o2,r2)
    assert (s["pairs_found"], s["pairs_true"], s["pairs_correct"]) == (4, 4, 2)
    assert s["precision"] == 0.5 and s["recall"] == 0.5
    assert (s["groups"], s["false_groups"]) == (2, 1)


def test_plant_writes_originals_copies_and_exact_copies(tmp_path: Path) -> None:
    from relsearch.bench.dupes import plant

    srcs = make_collection(tmp_path / "src", 60, size=96)
    truth = plant(srcs, tmp_path / "out", 40, seed=2)
    files = [p for g in truth["groups"] for p in g]
    assert len(files) == 40 and all(Path(p).is_file() for p in files)
    copied = [g for g in truth["groups"] if len(g) > 1]
    assert len(copied) == 8 and sum(len(g) == 3 for g in copied) == 1  # a fifth are copies, one exact
    exact = next(g for g in copied if len(g) == 3)
    assert Path(exact[0]).read_bytes() == Path(exact[2]).read_bytes()
    for g in copied:
        p = truth["params"][g[1]]
        assert 0.6 <= p["scale"] <= 0.9 and 50 <= p["q"] <= 90 and 0.9 <= p["brightness"] <= 1.1
        assert Image.open(g[1]).size[0] < Image.open(g[0]).size[0]


def test_synthetic_vectors_plant_copies_at_the_asked_similarity() -> None:
    from relsearch.bench.dupes import synthetic_vectors

    real = _vectors(300, 128, 0, seed=2)
    x, pairs = synthetic_vectors(real, 2000, [0.95, 0.99], copy_fraction=0.1)
    assert x.shape == (2000, 128) and pairs.shape == (200, 2)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    sims = np.einsum("ij,ij->i", x[pairs[:, 0]], x[pairs[:, 1]])
    assert np.all(np.isclose(sims, 0.95, atol=1e-3) | np.isclose(sims, 0.99, atol=1e-3))
    assert (x[:1800] >= 0).all()  # base rows are ReLU-floored like the pooled features they imitate


def test_a_vanished_file_is_never_grouped_and_is_counted(planted) -> None:
    root, idx, p = planted
    (root / "resized.png").unlink()  # indexed, gone since: its vector is still a candidate
    result = find_dupes(idx, threshold=0.97)
    near = [g for g in result.groups if g.kind == "near"]
    assert [sorted(g.paths) for g in near] == [sorted([str(p["orig"]), str(root / "recompressed.jpg")])]
    assert result.unchecked >= 1
    res = CliRunner().invoke(app, ["dupes", "--index", str(idx), "--threshold", "0.97"])
    assert res.exit_code == 0 and "could not be read" in res.stderr


def test_bench_dupes_refuses_bad_sizes_before_writing(tmp_path: Path) -> None:
    for sizes, needle in [("30,x", "numbers separated by commas"), ("5", "at least 10")]:
        res = CliRunner().invoke(app, ["bench", "dupes", "--work", str(tmp_path / "w"), "--sizes", sizes])
        assert res.exit_code == 2 and needle in res.stderr
    assert not (tmp_path / "w").exists()
