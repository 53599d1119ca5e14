"""`bench realphoto` on a tiny labelled fixture of installed photographs, and the label-free health check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from relsearch.bench.health import caption_histogram, effective_rank, health
from relsearch.bench.realphoto import (
    Label,
    agreement,
    check_photos,
    read_labels,
    score_encoder,
    sheet_queries,
)
from relsearch.cli import app
from relsearch.collection.scan import sha256_file
from relsearch.explain import CaptionBank

runner = CliRunner()
#: Photographs tools/setup.sh installs (lomiri-wallpapers-16.04), two per made-up relation group.
PHOTOS = ["Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Fossa_by_Jasper_Roks.jpg",
          "Kleiber_by_Lukas_Baubkus.jpg", "Picture_0B_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg"]
BACKGROUNDS = Path("/usr/share/backgrounds")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# -- health ---------------------------------------------------------------------------------


def test_health_flags_vectors_near_one_point_and_passes_a_spread_set():
    rng = np.random.default_rng(0)
    spread = _unit(rng.standard_normal((200, 64)))
    ok = health(spread)
    assert not ok["collapsed"] and ok["reasons"] == []
    assert ok["effective_rank"] > 30 and abs(ok["cosine_mean"]) < 0.05 and ok["cosine_p90"] < 0.3

    near = _unit(rng.standard_normal((1, 64)) + 0.02 * rng.standard_normal((200, 64)))
    bad = health(near)
    assert bad["collapsed"] and bad["cosine_p50"] > 0.99
    assert any("near-ties" in r for r in bad["reasons"])


def test_health_flags_a_set_that_spans_few_directions():
    rng = np.random.default_rng(1)
    basis = _unit(rng.standard_normal((3, 64)))
    few = _unit(rng.standard_normal((200, 3)) @ basis + 1e-4 * rng.standard_normal((200, 64)))
    h = health(few)
    assert h["effective_rank"] < 4 and h["collapsed"]
    assert any("effective rank" in r for r in h["reasons"]) and not any("near-ties" in r for r in h["reasons"])


def test_effective_rank_of_known_spectra():
    # centred rows along two orthogonal axes with equal spread: two directions exactly
    x = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float64)
    assert effective_rank(x) == pytest.approx(2.0)
    assert effective_rank(np.ones((5, 3))) == 0.0


def test_caption_histogram_counts_none_captions():
    bank = CaptionBank(["ring", "tower", "nothing"], ["orbit", "stack", "none"], np.eye(3, dtype=np.float32))
    vecs = _unit(np.array([[1, 0.1, 0], [0, 0.1, 1], [0.1, 0, 1], [0.2, 0, 1]], dtype=np.float32))
    hist = caption_histogram(vecs, bank)
    assert hist["none_share"] == 0.75 and hist["per_family"] == {"none": 0.75, "orbit": 0.25}


# -- metrics --------------------------------------------------------------------------------


def test_score_encoder_precision_and_same_look_leakage():
    # two relations of three photographs; each photograph shares its look with one of the other relation
    labels = [Label(f"p{i}", "pkg", rel, f"look{i % 3}", "") for i, rel in enumerate(["a"] * 3 + ["b"] * 3)]
    labels.append(Label("p6", "pkg", "none", "look0", ""))
    rng = np.random.default_rng(2)
    vecs = _unit(rng.standard_normal((7, 16)))
    res = score_encoder(object(), vecs, labels, {"a": "{Object}s in a ring"})
    # k = 6 (every other photograph): 2 of 6 share the relation; 1 of 6 (+ the none one for look0) the look
    assert res["queries"] == 6 and res["precision_at_10"] == pytest.approx(2 / 6, abs=1e-4)
    leak = {r: v["leakage_at_10"] for r, v in res["per_relation"].items()}
    assert leak["a"] == pytest.approx((2 / 6 + 1 / 6 + 1 / 6) / 3, abs=1e-4)
    assert "none" not in res["per_relation"] and "text_to_image_precision_at_10" not in res


def test_bootstrap_interval_and_paired_difference_of_p_at_10():
    """Every query at precision 0.5 gives a point interval; a known spread gives an interval that
    holds the mean; the paired difference of an encoder with itself is exactly 0."""
    from relsearch.bench.realphoto import paired_differences
    from relsearch.retrieval_metrics import bootstrap_ci, query_precisions

    assert bootstrap_ci(np.full(30, 0.5)) == (0.5, 0.5)
    vals = np.random.default_rng(1).uniform(0, 1, 200)
    lo, hi = bootstrap_ci(vals)
    assert lo < vals.mean() < hi and hi - lo < 0.2
    fams = ["a", "a", "b", "b", "none"]
    vecs = _unit(np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.9, 0.1], [0, 0, 1]], dtype=np.float32))
    per = query_precisions(vecs, fams, k=1)
    assert per.tolist() == [1.0, 1.0, 1.0, 1.0]  # the none row is not a query
    shuffled = query_precisions(vecs[[0, 2, 1, 3, 4]], fams, k=1)
    assert shuffled.tolist() == [0.0, 0.0, 0.0, 0.0]
    pair = paired_differences({"x": per, "y": shuffled, "x2": per})
    assert pair["x - y"]["precision_at_10"] == 1.0 and pair["x - y"]["ci95"] == [1.0, 1.0]
    assert pair["x - x2"] == {"precision_at_10": 0.0, "ci95": [0.0, 0.0]}


def test_a_relation_of_one_photograph_is_a_distractor_not_a_query():
    labels = [Label(f"p{i}", "pkg", rel, "", "") for i, rel in enumerate(["a", "a", "b", "b", "c"])]
    vecs = _unit(np.random.default_rng(4).standard_normal((5, 8)))
    res = score_encoder(object(), vecs, labels, {})
    assert res["queries"] == 4 and set(res["per_relation"]) == {"a", "b"}
    assert sheet_queries(labels) == [0, 2]


def test_check_photos_counts_missing_by_package_and_changed_bytes(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(good)
    changed = tmp_path / "changed.png"
    Image.new("RGB", (8, 8), (10, 200, 10)).save(changed)
    labels = [Label(str(good), "pkg-a", "r", "", sha256_file(good)),
              Label(str(changed), "pkg-a", "r", "", "0" * 64),
              Label(str(tmp_path / "gone.jpg"), "some-wallpapers", "r", "", "")]
    present, check = check_photos(labels)
    assert [p.path for p in present] == [str(good)]
    assert check["missing"] == 1 and check["missing_packages"] == ["some-wallpapers"]
    assert check["changed"] == 1 and check["install"] == "apt-get install some-wallpapers"


def test_read_labels_resolves_relative_paths_and_rejects_bad_lines(tmp_path):
    f = tmp_path / "labels.jsonl"
    f.write_text(json.dumps({"path": "x.jpg", "relation": "radial"}) + "\n\n")
    assert read_labels(f)[0].path == str(tmp_path / "x.jpg")
    f.write_text('{"path": "x.jpg"}\n')
    res = runner.invoke(app, ["bench", "realphoto", "--labels", str(f), "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "labels.jsonl:1" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


# -- the command, on installed photographs ----------------------------------------------------


@pytest.fixture
def fixture_labels(tmp_path):
    paths = [BACKGROUNDS / p for p in PHOTOS]
    if not all(p.is_file() for p in paths):
        pytest.skip("needs lomiri-wallpapers-16.04 (tools/setup.sh installs it)")
    rels = ["vanishing_point", "vanishing_point", "small_in_vast", "small_in_vast", "repetition", "none"]
    rows = [{"path": str(p), "package": "lomiri-wallpapers-16.04", "split": "test", "relation": r,
             "look": "warm" if i % 2 else "cool", "sha256": sha256_file(p), "note": ""}
            for i, (p, r) in enumerate(zip(paths, rels))]
    rows.append({"path": "/usr/share/backgrounds/not-installed.jpg", "package": "some-wallpapers",
                 "relation": "radial", "look": "cool", "sha256": "0" * 64})
    f = tmp_path / "labels_test.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    relations = Path(__file__).resolve().parents[1] / "benchmarks" / "realphoto" / "relations.json"
    return f, relations


def test_bench_realphoto_reports_metrics_health_and_sheet(fixture_labels, tmp_path):
    labels, relations = fixture_labels
    out = tmp_path / "res"
    res = runner.invoke(app, ["bench", "realphoto", "--labels", str(labels), "--relations", str(relations),
                              "--encoders", "relsim-mini,tinycolor", "--results-dir", str(out), "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["photos"]["present"] == 6 and rep["photos"]["missing"] == 1
    assert rep["photos"]["missing_packages"] == ["some-wallpapers"]
    mini, tiny = rep["encoders"]["relsim-mini"], rep["encoders"]["tinycolor"]
    # repetition has one photograph: a distractor, never a query
    assert mini["queries"] == 4 and set(mini["per_relation"]) == {"vanishing_point", "small_in_vast"}
    assert rep["singletons"] == ["repetition"]
    assert 0.0 <= mini["precision_at_10"] <= 1.0 and 0.0 <= mini["leakage_at_10"] <= 1.0
    lo, hi = mini["precision_at_10_ci95"]
    assert lo <= mini["precision_at_10"] <= hi
    pair = rep["paired"]["relsim-mini - tinycolor"]
    assert pair["precision_at_10"] == pytest.approx(mini["precision_at_10"] - tiny["precision_at_10"], abs=2e-4)
    assert pair["ci95"][0] <= pair["precision_at_10"] <= pair["ci95"][1]
    assert "text_to_image_precision_at_10" in mini and "text_to_image_precision_at_10" not in tiny
    kn = mini["relation_known"]
    assert 0.0 <= kn["relation_photos"] <= 1.0 and "relation_known" not in tiny
    assert kn["known_queries"] + kn["unknown_queries"] == mini["queries"]
    assert "none_share" in rep["health"]["relsim-mini"]["captions"] and "captions" not in rep["health"]["tinycolor"]
    assert json.loads(Path(rep["json"]).read_text())["encoders"].keys() == rep["encoders"].keys()
    sheet = Image.open(rep["png"])
    # one row per relation with queries, each encoder's top 5 beside the query
    assert 2 * 96 < sheet.height < 3 * 96 + 100 and sheet.width > 2 * 5 * 96

    table = runner.invoke(app, ["bench", "realphoto", "--labels", str(labels), "--relations", str(relations),
                                "--encoders", "tinycolor", "--results-dir", str(out)], catch_exceptions=False)
    assert table.exit_code == 0 and "apt-get install some-wallpapers" in table.stdout
    assert "| tinycolor |" in table.stdout and "health (no labels used)" in table.stdout


def test_bench_health_command_on_a_folder(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(photos / f"{i}.png")
    res = runner.invoke(app, ["bench", "health", "--photos", str(photos), "--encoders", "tinycolor",
                              "--results-dir", str(tmp_path / "res"), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    h = json.loads(res.stdout)["encoders"]["tinycolor"]
    assert h["n"] == 8 and not h["collapsed"]
    bad = runner.invoke(app, ["bench", "health", "--photos", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and "does not exist" in bad.stderr
    name = runner.invoke(app, ["bench", "health", "--photos", str(photos), "--encoders", "tinycolor,nosuch",
                               "--results-dir", str(tmp_path / "res2")])
    assert name.exit_code == 2 and "unknown encoder 'nosuch'" in name.stderr and not (tmp_path / "res2").exists()


def test_agreement_counts_pairs_both_labellers_kept(tmp_path):
    labs = [Label(path=f"/p{i}", package="x", split="test", relation=r, look="water", sha256="0" * 64)
            for i, r in enumerate(["none", "none", "reflection", "reflection", "radial"])]
    second = tmp_path / "second.jsonl"
    rows = [("/p0", "none"), ("/p1", "reflection"), ("/p2", "reflection"), ("/p3", "reflection"),
            ("/p4", "drop"), ("/elsewhere", "none")]
    second.write_text("".join(json.dumps({"path": p, "relation": r, "labeller": "blind"}) + "\n" for p, r in rows))
    got = agreement(labs, second)["blind"]
    # 4 pairs kept, 3 agree; expected agreement (2*1 + 2*3) / 16 = 0.5 -> kappa 0.5
    assert (got["photos"], got["agreement"], got["kappa"], got["left_out"]) == (4, 0.75, 0.5, 2)


# -- the shipped label files ------------------------------------------------------------------
LABELS = Path(__file__).resolve().parent.parent / "benchmarks" / "realphoto"


@pytest.mark.parametrize("extra, at_least", [("train_extra", 500), ("train_extra2", 150)])
def test_the_extra_training_labels_stay_out_of_both_splits(extra, at_least):
    relations = set(json.loads((LABELS / "relations.json").read_text()))
    names = ("test", "train", "train_extra", "train_extra2")
    split = {name: read_labels(LABELS / f"labels_{name}.jsonl") for name in names}
    others = [name for name in names if name != extra]
    assert len(split[extra]) >= at_least
    assert {lab.split for lab in split[extra]} == {"train"}
    assert {lab.relation for lab in split[extra]} <= relations
    packages = {name: {lab.package for lab in labs} for name, labs in split.items()}
    for name in others:  # split by package: no package in two files
        assert not packages[extra] & packages[name], name
    hashes = {name: {lab.sha256 for lab in labs} for name, labs in split.items()}
    assert all(len(h) == 64 for h in hashes[extra])
    for name in others:  # no photograph twice
        assert not hashes[extra] & hashes[name], name
    assert len(hashes[extra]) == len(split[extra])


def test_unpack_rcc_writes_the_pictures_of_a_qt_resource_bundle(tmp_path):
    """A bundle made here in Qt's format (version 1): a folder holding a zlib-compressed JPEG,
    a stored PNG and a text file; the unpacker writes the two pictures, byte for byte."""
    import struct
    import subprocess
    import sys
    import zlib

    jpeg, png = b"\xff\xd8\xff jpeg bytes" * 40, b"\x89PNG stored bytes"
    names, data = b"", b""

    def name(text: str) -> int:
        nonlocal names
        at = len(names)
        names += struct.pack(">HI", len(text), 0) + text.encode("utf-16-be")
        return at

    def blob(raw: bytes) -> int:
        nonlocal data
        at = len(data)
        data += struct.pack(">I", len(raw)) + raw
        return at

    packed = struct.pack(">I", len(jpeg)) + zlib.compress(jpeg)
    files = [("a.jpg", 1, blob(packed)), ("b.png", 0, blob(png)), ("c.txt", 0, blob(b"not a picture"))]
    tree = struct.pack(">IHII", 0, 2, 1, 1)  # root: one child, node 1
    tree += struct.pack(">IHII", name("images"), 2, len(files), 2)  # the folder: nodes 2..4
    for fname, flags, at in files:
        tree += struct.pack(">IHHHI", name(fname), flags, 0, 0, at)
    header_size = 20
    bundle = b"qres" + struct.pack(">IIII", 1, header_size, header_size + len(tree),
                                   header_size + len(tree) + len(data)) + tree + data + names
    src = tmp_path / "game.rcc"
    src.write_bytes(bundle)
    tool = Path(__file__).resolve().parent.parent / "tools" / "unpack_rcc.py"
    out = subprocess.run([sys.executable, str(tool), str(tmp_path / "out"), str(src)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "game" / "images" / "a.jpg").read_bytes() == jpeg
    assert (tmp_path / "out" / "game" / "images" / "b.png").read_bytes() == png
    assert not (tmp_path / "out" / "game" / "images" / "c.txt").exists()
    (tmp_path / "bad.rcc").write_bytes(b"not a bundle")
    bad = subprocess.run([sys.executable, str(tool), str(tmp_path / "out"), str(tmp_path / "bad.rcc")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1


def _load_tool(name: str):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "tools" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tool_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_realphoto_rows_keep_a_symmetry_axis_and_write_copies(tmp_path):
    """A left-right symmetric picture stays symmetric in every symmetry variant (crops stay centred);
    a relation photograph becomes N captioned rows of distinct files, a `none` one a teacher row."""
    import subprocess
    import sys

    from relsearch.corpus.captions import TEMPLATES

    tool = _load_tool("realphoto_rows")
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 255, (20, 15, 3), dtype=np.uint8)).resize((90, 120), Image.BILINEAR)
    half = np.asarray(coarse)  # smooth enough that JPEG re-encoding barely moves it
    sym = Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1))
    for _ in range(12):
        a = np.asarray(tool.augment(sym, "symmetry", rng).convert("L"), dtype=np.float32)
        assert np.abs(a - a[:, ::-1]).mean() < 4, "a symmetry variant lost its axis"
    off = [np.asarray(tool.augment(sym, "repetition", rng).convert("L"), dtype=np.float32) for _ in range(12)]
    assert max(np.abs(a - a[:, ::-1]).mean() for a in off) > 12  # uncentred crops do move the axis
    sym.save(tmp_path / "sym.png")
    Image.fromarray(half).save(tmp_path / "plain.png")
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"path": str(tmp_path / "sym.png"), "relation": "symmetry", "package": "p"}) + "\n"
                      + json.dumps({"path": str(tmp_path / "plain.png"), "relation": "none", "package": "q"}) + "\n")
    script = Path(__file__).resolve().parent.parent / "tools" / "realphoto_rows.py"
    out = subprocess.run([sys.executable, str(script), "--labels", str(labels), "--out", str(tmp_path / "o"),
                          "--copies", "5", "--augment", "--seed", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in (tmp_path / "o" / "rows.jsonl").read_text().splitlines()]
    rel = [r for r in rows if r["family"] == "symmetry"]
    assert len(rel) == 5 and len({r["path"] for r in rel}) == 5 and rel[0]["path"] == str(tmp_path / "sym.png")
    assert all(r["caption"] in TEMPLATES["symmetry"] and Path(r["path"]).is_file() for r in rel)
    teacher = [r for r in rows if r.get("target") == "teacher"]
    assert len(teacher) == 1 and teacher[0]["path"] == str(tmp_path / "plain.png")
    taught = subprocess.run([sys.executable, str(script), "--labels", str(labels), "--out", str(tmp_path / "t"),
                             "--copies", "5", "--augment", "--seed", "1", "--teacher-relations", "symmetry"],
                            capture_output=True, text=True, timeout=120)
    assert taught.returncode == 0, taught.stderr
    trows = [json.loads(x) for x in (tmp_path / "t" / "rows.jsonl").read_text().splitlines()]
    assert len(trows) == 6 and all(r.get("target") == "teacher" for r in trows)
    # the same files as without the option, so an earlier round's feature cache stays valid
    assert [Path(r["path"]).name for r in trows[:5]] == [Path(r["path"]).name for r in rel]
    bad = subprocess.run([sys.executable, str(script), "--labels", str(tmp_path / "missing.jsonl"), "--out",
                          str(tmp_path / "o2")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1


def _dhash(path: str) -> np.ndarray:
    im = Image.open(path)
    im.draft("L", (64, 64))
    a = np.asarray(im.convert("L").resize((17, 16), Image.BILINEAR), dtype=np.int16)
    return (a[:, 1:] > a[:, :-1]).ravel()


@pytest.mark.parametrize("extra", ["train_extra", "train_extra2"])
def test_no_extra_training_photograph_is_a_copy_of_a_benchmark_one(extra):
    """The same picture re-encoded or resized in another package (same sha256 check misses it):
    a 256-bit difference hash within 10 bits of a test or validation photograph (a copy cropped to
    another shape measured 1; different dark space pictures 15 and more)."""
    labs = {name: read_labels(LABELS / f"labels_{name}.jsonl") for name in ("test", "train", extra)}
    if not all(Path(lab.path).is_file() for labs_ in labs.values() for lab in labs_):
        pytest.skip("needs the photographs (tools/setup_realphoto.sh --train-extra)")
    bench = np.array([_dhash(lab.path) for lab in labs["test"] + labs["train"]])
    for lab in labs[extra]:
        nearest = int((bench != _dhash(lab.path)).sum(1).min())
        assert nearest > 10, f"{lab.path} is a copy of a benchmark photograph"
