"""`relsearch bench ...` on tiny data: ann, relational, throughput, and their bad-input paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from relsearch.cli import app

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, ["bench", *args])


def _one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for n in needles:
        assert n in lines[0]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def vectors(tmp_path):
    rng = np.random.default_rng(0)
    base, queries = _unit(rng.normal(size=(400, 16))), _unit(rng.normal(size=(12, 16)))
    np.save(tmp_path / "base.npy", base)
    np.save(tmp_path / "queries.npy", queries)
    return tmp_path / "base.npy", tmp_path / "queries.npy", base, queries


# ---------------------------------------------------------------------------------- ann
def test_ann_json_and_ids_match_exact_search(vectors, tmp_path):
    b, q, base, queries = vectors
    out = tmp_path / "ids.npy"
    r = _invoke("ann", "--base", str(b), "--queries", str(q), "-k", "5", "--json", "--out", str(out),
                "--results-dir", str(tmp_path / "res"))
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["n"] == 400 and report["d"] == 16 and report["queries"] == 12
    assert report["recall_at_10"] == 1.0  # 400 vectors: the automatic index is exact
    ids = np.load(out)
    assert ids.shape == (12, 5)
    exact = np.argsort(-(queries @ base.T), axis=1)[:, :5]
    assert (ids == exact).mean() > 0.95  # ties aside
    assert not (tmp_path / "res").exists()  # no sweep asked, nothing written


def test_ann_sweep_writes_curve(vectors, tmp_path):
    b, q, _, _ = vectors
    res = tmp_path / "res"
    r = _invoke("ann", "--base", str(b), "--queries", str(q), "--spec", "IVF4,Flat", "--sweep",
                "--results-dir", str(res))
    assert r.exit_code == 0, r.output
    doc = json.loads((res / "ann_sweep.json").read_text())
    (points,) = doc["curves"].values()
    recalls = [p["recall_at_10"] for p in points if p["rerank"] == 0]
    assert recalls == sorted(recalls) and recalls[-1] == 1.0  # all 4 lists probed: exact
    assert Image.open(res / "ann_sweep.png").size[0] > 300


@pytest.mark.parametrize("case", ["missing", "not_npy", "one_d", "dims", "empty"])
def test_ann_bad_input_is_one_line(vectors, tmp_path, case):
    b, q, _, _ = vectors
    bad = tmp_path / "bad.npy"
    if case == "missing":
        args, needle = ["--base", str(tmp_path / "nope.npy"), "--queries", str(q)], "not found"
    elif case == "not_npy":
        bad.write_text("hello")
        args, needle = ["--base", str(bad), "--queries", str(q)], "as .npy"
    elif case == "one_d":
        np.save(bad, np.zeros(16, dtype=np.float32))
        args, needle = ["--base", str(b), "--queries", str(bad)], "[N, d]"
    elif case == "dims":
        np.save(bad, np.zeros((3, 8), dtype=np.float32))
        args, needle = ["--base", str(b), "--queries", str(bad)], "16-d but queries are 8-d"
    else:
        np.save(bad, np.zeros((0, 16), dtype=np.float32))
        args, needle = ["--base", str(bad), "--queries", str(q)], "non-empty"
    out = tmp_path / "ids.npy"
    r = _invoke("ann", *args, "--out", str(out), "--sweep", "--results-dir", str(tmp_path / "res"))
    _one_line_error(r, needle)
    assert not out.exists() and not (tmp_path / "res").exists()


def test_ann_bad_spec_is_one_line(vectors, tmp_path):
    b, q, _, _ = vectors
    r = _invoke("ann", "--base", str(b), "--queries", str(q), "--spec", "NoSuchIndex7")
    _one_line_error(r, "NoSuchIndex7")



def test_synthetic_writes_unit_vectors_ann_reads(tmp_path):
    out = tmp_path / "ann"
    r = _invoke("synthetic", "--n", "500", "--queries", "7", "--d", "16", "--intrinsic-dim", "4", "--out", str(out))
    assert r.exit_code == 0, r.output
    base, queries = np.load(out / "base.npy"), np.load(out / "queries.npy")
    assert base.shape == (500, 16) and queries.shape == (7, 16) and base.dtype == np.float32
    assert np.allclose(np.linalg.norm(base, axis=1), 1, atol=1e-5)
    r = _invoke("ann", "--base", str(out / "base.npy"), "--queries", str(out / "queries.npy"), "--json")
    assert r.exit_code == 0 and json.loads(r.output)["recall_at_10"] == pytest.approx(1.0)


def test_synthetic_bad_input_is_one_line_and_writes_nothing(tmp_path):
    r = _invoke("synthetic", "--n", "50", "--d", "8", "--intrinsic-dim", "9", "--out", str(tmp_path / "o"))
    _one_line_error(r, "--intrinsic-dim")
    assert not (tmp_path / "o").exists()


def test_scale_plan_from_the_shipped_report():
    report = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "scale_index.json"
    r = _invoke("scale-plan", "--scale", str(report), "--embed-rate", "relsim-mini=46.6", "--gpu-rate", "10,30")
    assert r.exit_code == 0, r.output
    assert set(json.loads(r.output)["targets"]) == {"100000000", "1000000000"}


@pytest.mark.parametrize("args, needle", [
    (["--embed-rate", "relsim-mini"], "scale-plan"),
    (["--gpu-rate", "ten"], "scale-plan"),
])
def test_scale_plan_bad_input_is_one_line(tmp_path, args, needle):
    report = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "scale_index.json"
    _one_line_error(_invoke("scale-plan", "--scale", str(report), *args), needle)
    _one_line_error(_invoke("scale-plan", "--scale", str(tmp_path / "missing.json")), "missing.json")
    (tmp_path / "other.json").write_text("{}")
    _one_line_error(_invoke("scale-plan", "--scale", str(tmp_path / "other.json")), "bench scale")

# --------------------------------------------------------------------------- relational
HUES = {"warm": (220, 60, 40), "cool": (40, 80, 220), "none": (128, 128, 128)}


def _labelled_collection(root: Path, per_family: int = 6) -> list[dict]:
    """Images whose colour follows their family, so the colour encoder finds the family."""
    rng = np.random.default_rng(1)
    rows = []
    (root / "images").mkdir(parents=True)
    for family, rgb in HUES.items():
        for i in range(per_family if family != "none" else 3):
            arr = np.clip(np.array(rgb) + rng.normal(0, 25, size=(4, 4, 3)), 0, 255).astype(np.uint8)
            rel = f"images/{family}_{i}.png"
            Image.fromarray(arr).resize((32, 32), Image.NEAREST).save(root / rel)
            rows.append({"path": rel, "family": family, "objects": [f"obj{i % 2}"], "split": "test"})
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_relational_scores_and_neighbour_file(tmp_path):
    coll = tmp_path / "coll"
    rows = _labelled_collection(coll)
    out, res, index = tmp_path / "nn.jsonl", tmp_path / "res", tmp_path / "index"
    r = _invoke("relational", "--collection", str(coll), "--encoders", "tinycolor", "-k", "4",
                "--out", str(out), "--results-dir", str(res), "--index", str(index), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["items"] == 15 and report["queries"] == 12 and report["k"] == 4
    assert report["build_embedded"] == 15
    m = report["encoders"]["tinycolor"]
    assert m["precision_at_k"] == 1.0 and m["leakage_at_k"] == 0.0
    assert m["recall_at_k"] == pytest.approx(4 / 5)
    assert 0 < report["chance_precision"] < 0.5

    # anyone can recompute precision from the neighbours file and the labels
    family = {row["path"]: row["family"] for row in rows}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 12 and {x["encoder"] for x in lines} == {"tinycolor"}
    assert all(family[x["query"]] != "none" and x["query"] not in x["neighbours"] for x in lines)
    prec = np.mean([np.mean([family[n] == family[x["query"]] for n in x["neighbours"]]) for x in lines])
    assert prec == pytest.approx(m["precision_at_k"])
    assert json.loads((res / "relational.json").read_text())["encoders"]["tinycolor"]["precision_at_k"] == 1.0
    assert (res / "relational.png").stat().st_size > 1000

    # a second run reuses the index: nothing is embedded again
    r2 = _invoke("relational", "--collection", str(coll), "--index", str(index), "-k", "4",
                 "--results-dir", str(res), "--json")
    assert r2.exit_code == 0, r2.output
    assert json.loads(r2.output)["build_embedded"] == 0


def test_relational_attribute_leakage_seen(tmp_path):
    # relabel: families cut across colours while objects follow colour -> leakage, low precision
    coll = tmp_path / "coll"
    rows = _labelled_collection(coll)
    for i, row in enumerate(rows):
        if row["family"] != "none":
            row["objects"] = [row["family"]]
            row["family"] = ("a", "b", "c")[i % 3]
    (coll / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = _invoke("relational", "--collection", str(coll), "--encoders", "tinycolor", "-k", "4",
                "--results-dir", str(tmp_path / "res"), "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)["encoders"]["tinycolor"]
    assert m["leakage_at_k"] > 0.4 and m["precision_at_k"] < 0.6


@pytest.mark.parametrize("case", ["no_labels", "bad_line", "no_folder"])
def test_relational_bad_input_is_one_line(tmp_path, case):
    coll = tmp_path / "coll"
    _labelled_collection(coll)
    res = tmp_path / "res"
    args = ["--collection", str(coll)]
    if case == "no_labels":
        args += ["--labels", str(tmp_path / "missing.jsonl")]
        needle = "does not exist"
    elif case == "bad_line":
        (coll / "labels.jsonl").write_text('{"path": "images/warm_0.png"}\n')
        needle = "labels.jsonl:1"
    else:
        args = ["--collection", str(tmp_path / "nothing")]
        needle = "does not exist"
    r = _invoke("relational", *args, "--encoders", "tinycolor", "--results-dir", str(res))
    _one_line_error(r, needle)
    assert not res.exists()


def test_relsets_draw_is_the_named_recipe_with_another_seed():
    import dataclasses

    from relsearch.bench.relsets import SETS, resolve_set

    draw = resolve_set("photo9@121")
    assert (draw.name, draw.seed) == ("photo9@121", 121)
    assert dataclasses.replace(draw, name="photo9", seed=SETS["photo9"].seed) == SETS["photo9"]
    assert resolve_set("plain9") is SETS["plain9"]


@pytest.mark.parametrize(("bad", "needle"), [("photo9@x", "a whole number"), ("photo10@3", "'photo10'")])
def test_relsets_bad_set_name_is_one_line_before_any_work(tmp_path, bad, needle):
    root, res = tmp_path / "sets", tmp_path / "res"
    r = _invoke("relsets", "--root", str(root), "--sets", f"plain9,{bad}", "--no-baseline",
                "--results-dir", str(res))
    _one_line_error(r, needle)
    assert not root.exists() and not res.exists()  # plain9 was not composed first


# --------------------------------------------------------------------------- throughput
def test_throughput_reports_split_and_ratio(tmp_path):
    res = tmp_path / "res"
    r = _invoke("throughput", "--encoders", "tinycolor", "--n", "10", "--batch-size", "4", "--queries", "6",
                "--workers", "1", "--results-dir", str(res), "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    t = report["encoders"]["tinycolor"]
    assert report["images"] == 10 and t["build"]["embedded"] == 10
    split = t["build"]["split_s"]
    assert set(split) == {"scan", "embed", "waits+writes", "index"}
    assert all(v >= 0 for v in split.values()) and split["embed"] > 0 and split["waits+writes"] > 0
    assert sum(split.values()) <= t["build"]["seconds"] * 1.05
    assert t["raw_forward"]["images_per_s"] > 0 and t["build_over_raw"] > 0
    assert 0 < t["forward_share"] <= 1
    q = t["query"]
    assert q["queries"] == 6
    for step in ("decode", "embed", "search+lookup", "other", "total"):
        assert 0 <= q[step]["p50_ms"] <= q[step]["p95_ms"]
    assert q["total"]["p50_ms"] >= q["embed"]["p50_ms"]
    assert (res / "throughput.json").exists() and (res / "throughput.png").stat().st_size > 1000


def test_throughput_times_the_query_path_and_patches_nothing(tmp_path, monkeypatch):
    import relsearch.build as build_mod
    import relsearch.composed as composed_mod
    from relsearch.query import Searcher
    from relsearch.store import Store

    calls = []
    search = composed_mod.search_composed

    def counted(*args, **kwargs):
        calls.append(args[1])
        return search(*args, **kwargs)

    monkeypatch.setattr(composed_mod, "search_composed", counted)
    before = [dict(vars(m)) for m in (build_mod, composed_mod, Store, Searcher)]
    r = _invoke("throughput", "--encoders", "tinycolor", "--n", "4", "--batch-size", "2", "--queries", "2",
                "--workers", "1", "--results-dir", str(tmp_path / "res"))
    assert r.exit_code == 0, r.output
    assert len(calls) == 2 + 2  # warm-ups (up to 3 of the queries), then the timed ones: all through it
    assert all(len(terms) == 1 and not terms[0].is_text for terms in calls)
    after = [dict(vars(m)) for m in (build_mod, composed_mod, Store, Searcher)]
    for b, a in zip(before, after):
        assert {k: v for k, v in b.items() if k != "__dict__"} == {k: v for k, v in a.items() if k != "__dict__"}


def test_throughput_bad_input_is_one_line(tmp_path):
    res = tmp_path / "res"
    _one_line_error(_invoke("throughput", "--collection", str(tmp_path / "nope"), "--encoders", "tinycolor",
                            "--results-dir", str(res)), "does not exist")
    _one_line_error(_invoke("throughput", "--encoders", "nosuchencoder", "--results-dir", str(res)),
                    "unknown encoder")
    assert not res.exists()


class _PipedColor:
    """The colour encoder split into preprocess + forward, like the real image encoders."""

    name, kind, dim, fingerprint = "pipedcolor", "attribute", 48, "piped-v1"

    def __init__(self) -> None:
        from engine_helpers import TinyColorEncoder

        self._inner = TinyColorEncoder()

    def preprocess_batch(self, images):
        return list(images)

    def embed_batch(self, x):
        return self._inner.embed(x)

    def embed(self, images):
        return self.embed_batch(self.preprocess_batch(images))


def load_piped(source=None, device=None):
    return _PipedColor()


def test_throughput_pipelined_encoder_forward_timed(tmp_path, monkeypatch):
    from relsearch import encoders

    monkeypatch.setitem(encoders.REGISTRY, "pipedcolor", "test_bench_cli:load_piped")
    r = _invoke("throughput", "--encoders", "pipedcolor", "--n", "8", "--batch-size", "4", "--queries", "3",
                "--workers", "1", "--results-dir", str(tmp_path / "res"), "--json")
    assert r.exit_code == 0, r.output
    t = json.loads(r.output)["encoders"]["pipedcolor"]
    assert t["raw_forward"]["pipelined"] is True and t["raw_forward"]["embed_pil"]["images_per_s"] > 0
    assert t["build"]["split_s"]["embed"] > 0 and t["build"]["preprocess_overlapped_s"] > 0


def test_throughput_threads_recorded_and_restored(tmp_path):
    import torch

    before = torch.get_num_threads()
    r = _invoke("throughput", "--encoders", "tinycolor", "--n", "4", "--batch-size", "2", "--queries", "2",
                "--workers", "1", "--threads", "1", "--results-dir", str(tmp_path / "res"), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["torch_threads"] == 1
    assert torch.get_num_threads() == before
