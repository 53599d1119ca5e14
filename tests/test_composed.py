"""Composed queries: weighted sums of images and captions, negatives, columns without a text tower."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import make_collection
from typer.testing import CliRunner

from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.composed import QueryTerm, composed_query, label, parse_terms
from relsearch.errors import RelsearchError
from relsearch.indexdir import open_index

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    tmp = tmp_path_factory.mktemp("composed")
    root, idx = tmp / "col", tmp / "idx"
    paths = make_collection(root, 16, seed=3)
    build_index(root, idx, BuildOptions(encoders="tinycolor", progress=False, workers=2))
    return root, idx, paths


def _stored(idx: Path) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    with open_index(idx) as opened:
        ids, vecs = opened.store.all_vectors("tinycolor", 48)
        paths = {r.id: r.path for r in opened.store.iter_records()}
    return ids, vecs, paths


def test_parse_terms_and_label() -> None:
    terms = parse_terms(["a.jpg", "text:{Object} in a ring"], "1,0.5", ["b.jpg"])
    assert terms == [QueryTerm("a.jpg", 1.0), QueryTerm("text:{Object} in a ring", 0.5),
                     QueryTerm("b.jpg", 1.0, negative=True)]
    assert terms[1].is_text and terms[1].caption == "{Object} in a ring" and not terms[0].is_text
    assert label(terms) == "a.jpg + 0.5*text:{Object} in a ring - b.jpg"
    assert label(parse_terms(["text:x"])) == "x"  # one caption reads as before (--text)


@pytest.mark.parametrize("queries, weights, nots, needle", [
    (["a.jpg", "b.jpg"], "1", None, "one per query"),
    (["a.jpg"], "x", None, "comma-separated numbers"),
    (["a.jpg"], "-1", None, "positive"),
    (["a.jpg"], "0", None, "positive"),
    ([], None, ["b.jpg"], "besides --not"),
    (["text:  "], None, None, "empty query"),
])
def test_bad_compositions_are_user_errors(queries, weights, nots, needle) -> None:
    with pytest.raises(RelsearchError, match=needle):
        parse_terms(queries, weights, nots)


def test_weighted_sum_matches_brute_force(small) -> None:
    _, idx, paths = small
    ids, vecs, names = _stored(idx)
    by_path = {names[int(i)]: v for i, v in zip(ids, vecs)}
    a, b, c = (str(paths[i]) for i in (0, 5, 9))
    want = by_path[a] + 0.5 * by_path[b] - by_path[c]
    want /= np.linalg.norm(want)
    scores = vecs @ want
    order = [names[int(ids[j])] for j in np.argsort(-scores)]
    res = composed_query([a, b], idx, k=5, weights="1,0.5", negatives=[c])
    got = res.results["tinycolor"]
    assert [h.path for h in got] == [p for p in order if p != c][:5]
    np.testing.assert_allclose([h.score for h in got], sorted(scores[[names[int(i)] != c for i in ids]],
                                                             reverse=True)[:5], atol=1e-4)
    assert res.to_dict()["queries"] == [{"query": a, "weight": 1.0, "negative": False},
                                        {"query": b, "weight": 0.5, "negative": False},
                                        {"query": c, "weight": 1.0, "negative": True}]


def test_not_a_never_returns_a_in_the_top_10(small, tmp_path: Path) -> None:
    _, idx, paths = small
    for a in paths[:6]:
        copy = tmp_path / f"copy_of_{a.name}"  # same bytes, outside the collection
        shutil.copyfile(a, copy)
        for b in paths:
            if b == a:
                continue
            for neg in (a, copy):
                res = composed_query([str(b)], idx, k=10, negatives=[str(neg)])
                top = [h.path for h in res.results["tinycolor"]]
                assert str(a) not in top and len(top) == 10, (a, b, top)


def test_queries_that_cancel_out_are_an_error(small) -> None:
    _, idx, paths = small
    with pytest.raises(RelsearchError, match="cancel out"):
        composed_query([str(paths[2])], idx, negatives=[str(paths[2])])


def test_cli_json_lists_queries_and_plain_query_is_unchanged(small) -> None:
    _, idx, paths = small
    res = cli("query", paths[4], "--index", idx, "-k", "3", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["query"] == str(paths[4]) and out["results"]["tinycolor"][0]["path"] == str(paths[4])
    assert out["queries"] == [{"query": str(paths[4]), "weight": 1.0, "negative": False}]
    assert out["skipped"] == {}
    res = cli("query", paths[4], paths[7], "--weights", "1,2", "--not", paths[1], "--index", idx, "--json")
    out = json.loads(res.stdout)
    assert [q["weight"] for q in out["queries"]] == [1.0, 2.0, 1.0]
    assert str(paths[1]) not in [h["path"] for h in out["results"]["tinycolor"]]
    bad = cli("query", paths[4], "--weights", "1,2", "--index", idx)
    assert bad.exit_code == 2 and "one per query" in bad.stderr and bad.stderr.count("\n") == 1


# ------------------------------------------------------------------ relsim-mini on composed scenes
@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """A grouped composed set (every family once per group), indexed with relsim-mini + imagenet."""
    from relsearch.corpus.art import OPENCLIPART_DIR
    from relsearch.corpus.compose import compose

    if not OPENCLIPART_DIR.is_dir():
        pytest.skip("openclipart-png is not installed")
    tmp = tmp_path_factory.mktemp("scenes")
    compose(tmp / "set", n_per_family=0, split="test", seed=5, grouped=True, n_groups=4, size_range=(160, 192))
    labels = [json.loads(line) for line in (tmp / "set" / "labels.jsonl").read_text().splitlines()]
    for r in labels:
        r["path"] = str((tmp / "set" / r["path"]).resolve()) if not Path(r["path"]).is_absolute() else r["path"]
    build_index(tmp / "set" / "images", tmp / "idx",
                BuildOptions(encoders="relsim-mini,imagenet", progress=False, workers=2))
    return tmp / "set", tmp / "idx", labels


def _mean_rank(hits, want: set[str]) -> float:
    ranks = [h.rank for h in hits if str(Path(h.path).resolve()) in want]
    return float(np.mean(ranks)) if ranks else float("inf")


def test_caption_pulls_its_family_up(scenes) -> None:
    from relsearch.corpus.captions import TEMPLATES

    _, idx, labels = scenes
    fams = sorted({r["family"] for r in labels} - {"none"})
    by_family = {f: {r["path"] for r in labels if r["family"] == f} for f in fams}
    n = len(labels)
    checked, gained = 0, 0
    for a in [r for r in labels if r["group"] == 0][:4]:
        for f in [f for f in fams if f != a["family"]][:2]:
            caption = "text:" + TEMPLATES[f][0]
            alone = composed_query([a["path"]], idx, k=n, encoders="relsim-mini").results["relsim-mini"]
            both = composed_query([a["path"], caption], idx, k=n, encoders="relsim-mini").results["relsim-mini"]
            assert len(alone) == len(both) == n
            assert _mean_rank(both, by_family[f]) < _mean_rank(alone, by_family[f]), (a["path"], f)
            in_top = [len({str(Path(h.path).resolve()) for h in hits[:10]} & by_family[f]) for hits in (alone, both)]
            assert in_top[1] >= in_top[0], (a["path"], f, in_top)
            gained += in_top[1] - in_top[0]
            checked += 1
    assert gained >= checked  # on average at least one more scene of F in the top 10
    assert checked == 8


def test_caption_is_skipped_in_the_attribute_column_and_said(scenes) -> None:
    from relsearch.corpus.captions import TEMPLATES

    _, idx, labels = scenes
    a = labels[0]["path"]
    caption = "text:" + TEMPLATES["orbit"][0] if "orbit" in TEMPLATES else "text:" + next(iter(TEMPLATES.values()))[0]
    res = cli("query", a, caption, "--index", idx, "-k", "5", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out["results"]) == {"relsim-mini", "imagenet"}
    assert out["skipped"] == {"imagenet": [f"{caption!r} skipped: imagenet has no caption (text) tower"]}
    # the attribute column searched with the image alone: the same as a plain image query
    plain = json.loads(cli("query", a, "--index", idx, "-k", "5", "--json").stdout)
    assert [h["path"] for h in out["results"]["imagenet"]] == [h["path"] for h in plain["results"]["imagenet"]]
    assert [h["path"] for h in out["results"]["relsim-mini"]] != [h["path"] for h in plain["results"]["relsim-mini"]]
    table = cli("query", a, caption, "--index", idx, "-k", "3").stdout
    assert "note: imagenet:" in table and "no caption (text) tower" in table
