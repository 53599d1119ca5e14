"""Saying it when a query shows no relation the encoder knows: JSON, table, page, sheet, explain."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from engine_helpers import image_query, make_collection
from mode_helpers import register
from PIL import Image
from typer.testing import CliRunner

from relsearch import explain
from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.explain import CaptionBank, relation_verdict
from relsearch.modes import Modes
from relsearch.view import render_page
from relsearch.view.sheet import NO_RELATION, render_sheet

register()
runner = CliRunner()


def run(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def indexed(tmp_path):
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=12, size=40)
    index = tmp_path / "index"
    build_index(coll, index, BuildOptions(encoders="tinyrel,tinycolor", progress=False, workers=1))
    return index, paths


def _bank(tmp_path, family: str):
    """A one-line caption bank whose only caption is of ``family``: every query reads as it."""
    f = tmp_path / f"bank-{family}.jsonl"
    f.write_text(json.dumps({"caption": "an empty scene" if family == "none" else "{Object}s in a ring",
                             "family": family}) + "\n")
    return f


@pytest.fixture
def known(monkeypatch):
    """Any caption score counts as a relation (the bank decides the family alone)."""
    monkeypatch.setattr(explain, "KNOWN_MIN_SCORE", -1.0)


def test_verdict_none_caption_weak_score_and_known():
    bank = CaptionBank(["ring", "tower", "nothing"], ["orbit", "stack", "none"], np.eye(3, dtype=np.float32))
    near_ring = np.array([0.9, 0.1, 0.0], np.float32) / np.linalg.norm([0.9, 0.1, 0.0])
    v = relation_verdict(bank, near_ring, min_score=0.5)
    assert v.known and v.caption == "ring" and v.family == "orbit" and v.why == ""
    none = relation_verdict(bank, np.array([0.1, 0.0, 0.99], np.float32), min_score=0.05)
    assert not none.known and none.caption == "nothing" and "no-relation" in none.why
    weak = relation_verdict(bank, np.array([0.3, 0.25, 0.2], np.float32), min_score=0.5)
    assert not weak.known and weak.caption == "ring" and "0.300 < 0.50" in weak.why


def test_json_says_per_relational_column_whether_the_relation_is_known(indexed, tmp_path, known):
    index, paths = indexed
    out = json.loads(run("query", paths[3], "--index", index, "-k", "3", "--captions", _bank(tmp_path, "none"),
                         "--json").stdout)
    assert set(out["relation"]) == {"tinyrel"}  # attribute columns get no verdict
    rel = out["relation"]["tinyrel"]
    assert rel["caption"] == "an empty scene" and rel["known"] is False and isinstance(rel["score"], float)
    assert set(out["results"]) == {"tinyrel", "tinycolor"} and len(out["results"]["tinyrel"]) == 3
    ok = json.loads(run("query", paths[3], "--index", index, "-k", "3", "--captions", _bank(tmp_path, "orbit"),
                        "--json").stdout)
    assert ok["relation"]["tinyrel"]["known"] is True and ok["relation"]["tinyrel"]["family"] == "orbit"


def test_json_weak_score_is_not_known(indexed, tmp_path, monkeypatch):
    index, paths = indexed
    monkeypatch.setattr(explain, "KNOWN_MIN_SCORE", 1.01)  # no cosine reaches it
    out = json.loads(run("query", paths[3], "--index", index, "-k", "3", "--captions", _bank(tmp_path, "orbit"),
                         "--json").stdout)
    assert out["relation"]["tinyrel"]["known"] is False and "< 1.01" in out["relation"]["tinyrel"]["why"]


def test_table_says_it_above_and_at_the_head_of_the_column(indexed, tmp_path, known):
    index, paths = indexed
    table = run("query", paths[3], "--index", index, "-k", "3", "--captions", _bank(tmp_path, "none")).stdout
    lines = table.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("tinyrel: no relation it knows"))
    head = next(i for i, line in enumerate(lines) if line.startswith("rank"))
    assert note < head and "an empty scene" in lines[note] and "share no relation it knows" in lines[note]
    assert "tinyrel (no known relation)" in lines[head] and "(relational)" not in lines[head]
    good = run("query", paths[3], "--index", index, "-k", "3", "--captions", _bank(tmp_path, "orbit")).stdout
    assert "tinyrel reads a relation: {Object}s in a ring" in good and "tinyrel (relational)" in good
    assert "no relation" not in good


def test_page_puts_the_warning_above_the_relational_row(indexed, tmp_path, known):
    index, paths = indexed
    res = image_query(str(paths[2]), index, k=4, modes=Modes(captions=str(_bank(tmp_path, "none"))))
    page = render_page(res)
    row = re.search(r'<section class="row relational" data-encoder="tinyrel"([^>]*)>(.*?)</section>', page, re.S)
    assert row is not None and 'data-relation="unknown"' in row.group(1)
    body = row.group(2)
    warn = body.index('class="relation unknown"')
    assert warn < body.index('class="hits"') and "no relation tinyrel knows" in body
    assert 'data-encoder="tinycolor"' in page and page.count('class="relation ') == 1
    fine = render_page(image_query(str(paths[2]), index, k=4, modes=Modes(captions=str(_bank(tmp_path, "orbit")))))
    assert 'data-relation="known"' in fine and 'class="relation known"' in fine and "relation unknown" not in fine


def test_view_answer_carries_the_verdict(indexed, tmp_path, known):
    from relsearch.composed import search_image
    from relsearch.query import Searcher
    from relsearch.view import browse

    index, paths = indexed
    with Searcher(index) as s:
        from relsearch.collection import load_image

        result = search_image(s, load_image(paths[1], max_side=512), k=3, label="upload")
        result, show = browse.finish(s, result, 3, analogy=False, explain=False, captions=str(_bank(tmp_path, "none")))
        ans = browse.answer(result, None, "upload", show)
    assert ans["result"]["relation"]["tinyrel"]["known"] is False
    assert 'data-relation="unknown"' in ans["html"]


def test_sheet_draws_the_verdict_line_in_warning_colour(indexed, tmp_path, known):
    index, paths = indexed
    res = image_query(str(paths[2]), index, k=3, modes=Modes(captions=str(_bank(tmp_path, "none"))))
    with_note = np.asarray(render_sheet(res).convert("RGB"))
    res.relation.clear()
    without = np.asarray(render_sheet(res).convert("RGB"))
    assert with_note.shape[0] > without.shape[0]

    def red(px: np.ndarray) -> int:  # the random thumbnails hold some of it too, the same in both
        return int(np.all(np.abs(px.astype(int) - NO_RELATION) < 30, axis=2).sum())

    assert red(with_note) - red(without) > 100


def test_explain_pair_says_when_an_image_reads_as_no_relation(tmp_path, known):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(a)
    Image.new("RGB", (32, 32), (30, 30, 200)).save(b)
    out = json.loads(run("explain", a, b, "--encoders", "tinyrel,tinycolor", "--captions", _bank(tmp_path, "none"),
                         "--json").stdout)
    assert out["a"]["known"] is False and out["b"]["known"] is False and out["shared"]["known"] is False
    assert out["a"]["caption"] == "an empty scene" and "score" in out["shared"]  # nothing renamed
    text = run("explain", a, b, "--encoders", "tinyrel", "--captions", _bank(tmp_path, "none")).stdout
    assert text.count("no relation tinyrel knows") == 3
    fine = json.loads(run("explain", a, b, "--encoders", "tinyrel", "--captions", _bank(tmp_path, "orbit"),
                          "--json").stdout)
    assert fine["a"]["known"] and fine["shared"]["known"]
    assert "no relation" not in run("explain", a, b, "--encoders", "tinyrel", "--captions",
                                    _bank(tmp_path, "orbit")).stdout
