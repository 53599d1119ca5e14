"""Analogy mode, explanations, the caption bank, and the per-user index home."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import image_query, make_collection
from mode_helpers import register
from PIL import Image
from typer.testing import CliRunner

from relsearch.analogy import add_analogy, analogy_scores
from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.composed import QueryTerm, search_composed, search_image
from relsearch.errors import RelsearchError
from relsearch.explain import bank_for, load_bank, mean_direction, read_bank, shipped_bank_path
from relsearch.modes import Modes, apply_modes
from relsearch.query import Searcher

register()
runner = CliRunner()
BANK = str(shipped_bank_path())


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _snapshot(idx: Path) -> dict[str, bytes]:
    return {str(p.relative_to(idx)): p.read_bytes() for p in sorted(idx.rglob("*"))
            if p.is_file() and p.name != "lock.mdb"}


@pytest.fixture
def two_columns(tmp_path):
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=24, size=40)
    index = tmp_path / "index"
    build_index(coll, index, BuildOptions(encoders="tinyrel,tinycolor", progress=False, workers=1))
    return index, paths


# -- analogy -------------------------------------------------------------------------------


def _order(rel, attr, weight, rule="linear"):
    return np.argsort(-analogy_scores(rel, attr, weight, rule), kind="stable").tolist()


def test_rerank_rule_pushes_look_alikes_down_and_weight_zero_is_relational():
    rel = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    attr = np.array([0.9, 0.1, 0.2], dtype=np.float32)  # the best relational match is a look-alike
    assert _order(rel, attr, 0.0) == [0, 1, 2]
    assert _order(rel, attr, 1.0) == [1, 2, 0]
    assert _order(rel, attr, 0.0, "above_median") == [0, 1, 2]


def test_above_median_rule_keeps_the_relational_order_of_the_unalike():
    rel = np.array([0.9, 0.85, 0.8, 0.75, 0.7], dtype=np.float32)
    attr = np.array([0.95, 0.20, 0.10, 0.15, 0.25], dtype=np.float32)  # median 0.20
    # linear reorders the unalike candidates (1..4) by attribute noise; above_median does not
    assert _order(rel, attr, 1.0, "linear") == [2, 1, 3, 4, 0]
    assert _order(rel, attr, 2.0, "above_median") == [1, 2, 3, 4, 0]
    with pytest.raises(RelsearchError, match="unknown analogy rule"):
        analogy_scores(rel, attr, 1.0, "z")


def test_analogy_column_is_the_relational_pool_reranked(two_columns):
    index, paths = two_columns
    res = image_query(str(paths[3]), index, k=5, modes=Modes(analogy=True, analogy_weight=1.0, analogy_rule="linear"))
    hits = res.analogy
    assert len(hits) == 5 and [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    with Searcher(index) as s:  # every score is rel - w * attr, recomputed from the stored vectors
        ids = np.array([h.id for h in hits])
        rel = s.opened.store.get_vectors("tinyrel", ids, 384) @ res.vectors["tinyrel"]
        att = s.opened.store.get_vectors("tinycolor", ids, 48) @ res.vectors["tinycolor"]
        n = s.indexes["tinyrel"].ntotal
        assert n <= 100  # the pool is the whole index: its median attribute cosine is computable here
        every = s.opened.store.all_vectors("tinycolor", 48)[1] @ res.vectors["tinycolor"]
    np.testing.assert_allclose([h.score for h in hits], rel - att, atol=1e-5)
    default = image_query(str(paths[3]), index, k=5, modes=Modes(analogy=True, analogy_weight=2.0))  # above_median
    assert res.analogy_of["rule"] == "linear" and default.analogy_of["rule"] == "above_median"
    with Searcher(index) as s:
        ids = np.array([h.id for h in default.analogy])
        rel = s.opened.store.get_vectors("tinyrel", ids, 384) @ res.vectors["tinyrel"]
        att = s.opened.store.get_vectors("tinycolor", ids, 48) @ res.vectors["tinycolor"]
    want = rel - 2.0 * np.maximum(0.0, att - np.median(every))
    np.testing.assert_allclose([h.score for h in default.analogy], want, atol=1e-5)
    # the query's own file is its closest look-alike: analogy mode must not rank it first
    assert hits[0].path != str(paths[3]) and res.results["tinyrel"][0].path == str(paths[3])
    assert set(res.to_dict()["analogy"][0]) == {"rank", "score", "path", "id", "copies", "is_query"}


def test_analogy_needs_both_kinds_of_column(tmp_path, two_columns):
    index, paths = two_columns
    one = tmp_path / "one"
    build_index(paths[0].parent, one, BuildOptions(encoders="tinycolor", progress=False, workers=1))
    before = _snapshot(one)
    res = run("query", paths[1], "--index", one, "--analogy")
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "needs a relational and an attribute column" in res.stderr and "no relational" in res.stderr
    assert _snapshot(one) == before
    with Searcher(index) as s, pytest.raises(RelsearchError, match="image query"):
        add_analogy(s, search_composed(s, [QueryTerm("text:{Object}s in a ring")], 3), 3)


# -- explanations --------------------------------------------------------------------------


def test_explain_hits_use_the_caption_nearest_the_mean_direction(two_columns):
    index, paths = two_columns
    res = image_query(str(paths[5]), index, k=4, modes=Modes(explain=True, analogy=True, captions=BANK))
    out = res.to_dict()["explain"]
    bank = bank_for("tinyrel", BANK)
    q = res.vectors["tinyrel"]
    assert out["query_caption"]["text"] == bank.captions[int(np.argmax(bank.vectors @ q))]
    hits = out["hits"]["tinyrel"]
    assert [h["id"] for h in hits] == [h.id for h in res.results["tinyrel"]]
    assert "tinycolor" not in out["hits"]  # attribute columns are not in the caption space
    with Searcher(index) as s:
        vecs = s.opened.store.get_vectors("tinyrel", np.array([h["id"] for h in hits]), 384)
    want = (mean_direction(np.broadcast_to(q, vecs.shape), vecs) @ bank.vectors.T)
    assert [h["caption"] for h in hits] == [bank.captions[i] for i in want.argmax(1)]
    np.testing.assert_allclose([h["score"] for h in hits], want.max(1), atol=1e-5)
    assert [h["id"] for h in out["analogy"]] == [h.id for h in res.analogy]
    assert any("{" in h["caption"] for h in hits)  # placeholders kept


def test_encoders_without_a_shipped_bank_need_captions(two_columns):
    index, paths = two_columns
    res = run("query", paths[2], "--index", index, "--explain")
    assert res.exit_code == 2 and "--captions" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    ok = run("query", paths[2], "--index", index, "--explain", "--analogy", "--captions", BANK, "--json", "-k", "3")
    data = json.loads(ok.stdout)
    assert {"query", "results", "analogy", "explain"} <= set(data)
    assert set(data["explain"]["query_caption"]) == {"text", "score"}
    assert set(data["explain"]["hits"]["tinyrel"][0]) == {"id", "caption", "score"}
    table = run("query", paths[2], "--index", index, "--explain", "--analogy", "--captions", BANK, "-k", "3")
    head = next(line for line in table.stdout.splitlines() if line.startswith("rank"))
    assert "reads as: " in table.stdout and "analogy" in head


def test_bank_is_embedded_once_and_cached_outside_the_working_dir(tmp_path, monkeypatch):
    import relsearch.encoders.text as text

    monkeypatch.chdir(tmp_path)
    bank_file = tmp_path / "bank.jsonl"
    bank_file.write_text('{"caption": "{Object}s in a ring", "family": "orbit"}\n'
                         '{"caption": "a tower of {Object}s"}\n{"caption": "{Object}s in a ring"}\n')
    first = load_bank(bank_file)
    assert first.captions == ["{Object}s in a ring", "a tower of {Object}s"] and first.families == ["orbit", None]
    cached = list((Path(os.environ["RELSEARCH_HOME"]) / "cache").glob("caption-bank-*.npy"))
    assert len(cached) == 1 and not list(tmp_path.glob("*.npy"))

    def boom(*a, **k):
        raise AssertionError("the text tower ran again")

    monkeypatch.setattr(text, "embed_text", boom)
    again = load_bank(bank_file)
    np.testing.assert_array_equal(again.vectors, first.vectors)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no caption key"}\n')
    with pytest.raises(RelsearchError, match=r"bad.jsonl:1: not a caption line"):
        read_bank(bad)


def test_shipped_bank_holds_training_captions_of_every_family(tmp_path):
    from relsearch.corpus.captions import TEMPLATES
    from relsearch.explain import write_template_bank

    captions, families = read_bank(shipped_bank_path())
    for text, fam in zip(captions, families):
        assert text in TEMPLATES.get(fam, ()), (text, fam)
    fresh = read_bank(write_template_bank(tmp_path / "bank.jsonl"))
    assert (captions, families) == fresh, (
        "the shipped caption bank is out of date with relsearch/corpus/captions.py; regenerate it: "
        'python -c "from relsearch.explain import write_template_bank; write_template_bank()"')


def test_explain_command(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (40, 40), (200, 20, 20)).save(a)
    Image.new("RGB", (40, 40), (20, 20, 200)).save(b)
    res = run("explain", a, b, "--encoders", "tinyrel,tinycolor", "--captions", BANK, "--json")
    data = json.loads(res.stdout)
    assert set(data) == {"a", "b", "shared", "relational", "attribute"}
    assert {"caption", "score"} <= set(data["shared"]) and set(data["relational"]) == {"tinyrel"}
    assert -1 <= data["attribute"]["tinycolor"] <= 1
    same = json.loads(run("explain", a, a, "--encoders", "tinyrel", "--captions", BANK, "--json").stdout)
    assert same["relational"]["tinyrel"] == pytest.approx(1.0, abs=1e-5)
    assert same["a"]["caption"] == same["b"]["caption"] == same["shared"]["caption"]
    assert same["shared"]["score"] == pytest.approx(same["a"]["score"], abs=1e-5)
    bad = run("explain", a, b, "--encoders", "tinycolor")
    assert bad.exit_code == 2 and "relational encoder" in bad.stderr
    missing = run("explain", a, tmp_path / "nope.png")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_views_show_analogy_and_captions(two_columns, tmp_path):
    from relsearch.view import render_page, render_sheet

    index, paths = two_columns
    plain = image_query(str(paths[1]), index, k=4)
    both = image_query(str(paths[1]), index, k=4, modes=Modes(analogy=True, explain=True, captions=BANK))
    page = render_page(both)
    order = [m for m in ("data-encoder=\"tinyrel\"", "data-encoder=\"analogy\"", "data-encoder=\"tinycolor\"")]
    assert [page.index(m) for m in order] == sorted(page.index(m) for m in order)
    assert page.count('class="why"') == 8 and 'class="qcap"' in page
    assert 'class="why"' not in render_page(plain)
    assert render_sheet(both).height > render_sheet(plain).height


# -- index home ----------------------------------------------------------------------------


def test_home_build_query_info_without_index(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    monkeypatch.setenv("RELSEARCH_HOME", str(home))
    a, b = tmp_path / "alpha", tmp_path / "beta"
    make_collection(a, 3)
    make_collection(b, 4, seed=1)
    assert run("query", a / "img_001.png").exit_code == 2
    assert run("build-index", a, "--encoders", "tinycolor").exit_code == 0
    res = run("query", a / "img_001.png", "-k", "1", "--json")
    assert "the only index" in res.stderr and str(home / "indexes" / "alpha") in res.stderr
    assert json.loads(res.stdout)["results"]["tinycolor"][0]["path"].endswith("img_001.png")
    time.sleep(0.01)
    assert run("build-index", b, "--encoders", "tinycolor").exit_code == 0
    res = run("query", a / "img_001.png", "-k", "1", "--json")
    assert "most recently built of 2" in res.stderr and str(home / "indexes" / "beta") in res.stderr
    info = json.loads(run("info", "--json").stdout)
    assert info["home"] == str(home / "indexes")
    assert [Path(i["index"]).name for i in info["indexes"]] == ["beta", "alpha"]
    assert not (tmp_path / "indexes").exists()


def test_home_follows_xdg_without_relsearch_home(tmp_path, monkeypatch):
    from relsearch.home import cache_dir, index_home

    monkeypatch.delenv("RELSEARCH_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert index_home() == tmp_path / "data" / "relsearch" / "indexes"
    assert cache_dir() == tmp_path / "cache" / "relsearch"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert index_home() == Path.home() / ".local" / "share" / "relsearch" / "indexes"


def test_apply_modes_records_timings(two_columns):
    index, paths = two_columns
    with Searcher(index) as s:
        res = apply_modes(s, search_image(s, Image.open(paths[0]), 3), 3,
                          Modes(analogy=True, explain=True, captions=BANK))
    assert {"analogy", "explain"} <= set(res.timings_ms)


# -- bench relational: the analogy row and explanation accuracy -----------------------------


def test_bench_relational_reports_analogy_and_explain(tmp_path):
    coll = tmp_path / "coll"
    (coll / "images").mkdir(parents=True)
    rng = np.random.default_rng(3)
    rows = []
    for g in range(4):  # a group: one colour ("object set") rendered in both families
        base = rng.integers(30, 220, 3)
        for fam, shift in (("orbit", 0), ("stack", 90)):
            arr = np.clip(base + shift * np.eye(3)[g % 3] + rng.normal(0, 10, (4, 4, 3)), 0, 255).astype(np.uint8)
            rel = f"images/{fam}_{g}.png"
            Image.fromarray(arr).resize((32, 32), Image.NEAREST).save(coll / rel)
            rows.append({"path": rel, "family": fam, "objects": [f"o{g}"], "group": g})
    (coll / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run("bench", "relational", "--collection", coll, "--encoders", "tinyrel,tinycolor", "-k", "3",
              "--captions", BANK, "--results-dir", tmp_path / "res", "--out", tmp_path / "nn.jsonl", "--json")
    report = json.loads(res.stdout)
    a = report["analogy"]
    rel = report["encoders"]["tinyrel"]
    zero = next(s for s in a["sweep"] if s["weight"] == 0.0)  # weight 0 is the relational column itself
    assert {s["rule"] for s in a["sweep"]} == {"linear", "above_median"}
    assert zero["precision_at_k"] == pytest.approx(rel["precision_at_k"])
    assert zero["twins_at_k"] == pytest.approx(rel["twins_at_k"])
    assert (a["relational"], a["attribute"]) == ("tinyrel", "tinycolor") and a["weight"] == 1.0
    # twins recomputed from the neighbours file: same group
    group = {r["path"]: r["group"] for r in rows}
    nn = [json.loads(x) for x in (tmp_path / "nn.jsonl").read_text().splitlines()]
    color = [x for x in nn if x["encoder"] == "tinycolor"]
    want = np.mean([np.mean([group[n] == group[x["query"]] for n in x["neighbours"]]) for x in color])
    assert report["encoders"]["tinycolor"]["twins_at_k"] == pytest.approx(want)
    e = report["explain"]
    assert e["encoder"] == "tinyrel" and e["queries"] == 8 and 0 <= e["own_caption_accuracy"] <= 1
    fam = {r["path"]: r["family"] for r in rows}
    pairs = sum(fam[n] == fam[x["query"]] for x in nn if x["encoder"] == "tinyrel" for n in x["neighbours"])
    assert e["pairs"] == pairs
    table = run("bench", "relational", "--collection", coll, "--encoders", "tinyrel,tinycolor", "-k", "3",
                "--captions", BANK, "--results-dir", tmp_path / "res")
    assert "analogy" in table.stdout and "explain (tinyrel" in table.stdout


def test_bench_throughput_times_whole_queries_with_modes(tmp_path):
    res = run("bench", "throughput", "--encoders", "tinyrel,tinycolor", "--n", "8", "--queries", "3", "-k", "3",
              "--analogy", "--results-dir", tmp_path / "res", "--json")
    qm = json.loads(res.stdout)["query_modes"]
    assert qm["modes"] == ["analogy"] and qm["queries"] == 3
    assert qm["total"]["p50_ms"] >= qm["columns"]["p50_ms"] > 0 and qm["analogy"]["p50_ms"] > 0
    assert qm["explain"]["p50_ms"] == 0


def test_bench_cold_bad_input_is_one_line(tmp_path):
    res = run("bench", "cold", "--image", tmp_path / "missing.jpg", "--runs", "1")
    assert res.exit_code == 2 and "does not exist" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cold_cli_import_stays_light():
    """The CLI module graph must not pull in the corpus, peft, transformers or open_clip."""
    import subprocess
    import sys

    from relsearch.cli import compose as cli_compose
    from relsearch.corpus.art import SPLITS
    from relsearch.corpus.compose import IMAGE_FORMATS

    assert (cli_compose.SPLITS, cli_compose.IMAGE_FORMATS) == (SPLITS, IMAGE_FORMATS)
    code = ("import sys, relsearch.cli\n"
            "print(sorted(m for m in ('relsearch.corpus', 'peft', 'transformers', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_analogy_leaves_out_the_query_itself(two_columns):
    index, paths = two_columns
    res = image_query(str(paths[4]), index, k=30, modes=Modes(analogy=True))
    assert str(paths[4]) not in {h.path for h in res.analogy}
    assert res.results["tinyrel"][0].path == str(paths[4])
    assert len(res.analogy) == 23  # every other image of the 24


def test_cached_fingerprint_computes_once_and_survives_garbage(tmp_path):
    from relsearch.home import cache_dir, cached_fingerprint, file_identity

    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    calls = []

    def compute() -> str:
        calls.append(1)
        return "0123456789abcdef"

    key = "enc|" + file_identity(f)
    assert cached_fingerprint(key, compute) == cached_fingerprint(key, compute) == "0123456789abcdef"
    assert len(calls) == 1
    for entry in (cache_dir() / "fingerprints").iterdir():
        entry.write_text("not a fingerprint")
    assert cached_fingerprint(key, compute) == "0123456789abcdef" and len(calls) == 2
    time.sleep(0.01)
    f.write_bytes(b"other weights!")  # a changed file is another key
    assert file_identity(f) not in key
