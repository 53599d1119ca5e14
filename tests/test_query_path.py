"""One query path: the CLI, the page, the library and the benchmarks all search through
``relsearch.composed.search_composed`` (a plain image query is a composed query of one image)."""

from __future__ import annotations

import json

import pytest
from engine_helpers import make_collection, run_cli
from PIL import Image

import relsearch.composed as composed_mod
import relsearch.query as query_mod
from relsearch.build import BuildOptions, build_index
from relsearch.composed import QueryTerm, search_composed, search_image
from relsearch.query import Searcher, load_query_image
from relsearch.view.server import ViewApp

OPTS = BuildOptions(encoders="tinycolor,tinyflip", progress=False, workers=1)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("path")
    paths = make_collection(tmp / "coll", n=10, size=32)
    build_index(tmp / "coll", tmp / "index", OPTS)
    return tmp / "index", paths


@pytest.fixture
def counted(monkeypatch):
    """Every call of the one search function, by the terms it was given."""
    calls: list[list[QueryTerm]] = []
    real = composed_mod.search_composed

    def spy(searcher, terms, *args, **kwargs):
        calls.append(list(terms))
        return real(searcher, terms, *args, **kwargs)

    monkeypatch.setattr(composed_mod, "search_composed", spy)
    return calls


def test_no_second_query_path():
    import relsearch

    assert not hasattr(query_mod, "query")
    assert relsearch.composed_query is composed_mod.composed_query and "query" not in relsearch.__all__
    assert not {"query_image", "query_text"} & set(vars(Searcher))


def test_a_decoded_image_is_the_composed_query_of_that_image(indexed):
    index, paths = indexed
    with Searcher(index) as s:
        by_pixels = search_image(s, load_query_image(paths[4]), k=5, label="upload")
        by_term = search_composed(s, [QueryTerm("image")], k=5, images={"image": load_query_image(paths[4])})
    assert by_pixels.query == "upload" and set(by_pixels.results) == {"tinycolor", "tinyflip"}
    for name in by_pixels.results:
        assert [(h.id, h.score) for h in by_pixels.results[name]] == [(h.id, h.score) for h in by_term.results[name]]
    assert by_pixels.results["tinycolor"][0].path == str(paths[4])  # its own file, by its pixels
    assert {"tinycolor.embed", "tinycolor.search+lookup"} <= set(by_pixels.timings_ms)


def test_an_upload_named_like_a_caption_is_still_an_image(indexed):
    index, paths = indexed
    with Searcher(index) as s:
        result = search_image(s, Image.open(paths[2]), k=3, label="text:a ring of circles")
    assert result.query == "text:a ring of circles" and not result.skipped
    assert result.results["tinycolor"][0].path == str(paths[2])


def test_the_page_and_the_cli_search_through_it(indexed, counted, capsys):
    index, paths = indexed
    app = ViewApp(index, k=3)
    try:
        answer = app.query_bytes(paths[1].read_bytes(), 3, name="upload")
    finally:
        app.close()
    assert answer["result"]["results"]["tinycolor"][0]["path"] == str(paths[1])
    assert len(counted) == 1 and [t.query for t in counted[0]] == ["image"]
    assert run_cli("query", str(paths[1]), "--index", str(index), "-k", "2", "--json") == 0
    assert json.loads(capsys.readouterr().out)["results"]["tinycolor"]
    assert len(counted) == 2 and [t.query for t in counted[1]] == [str(paths[1])]


def test_a_long_lived_searcher_follows_a_rebuild(tmp_path):
    coll = tmp_path / "coll"
    make_collection(coll, n=6, size=32)
    build_index(coll, tmp_path / "index", OPTS)
    with Searcher(tmp_path / "index") as s:
        before = s.generation
        late = coll / "late.png"
        Image.new("RGB", (32, 32), (3, 250, 7)).save(late)
        build_index(coll, tmp_path / "index", OPTS)
        hit = search_image(s, Image.open(late), k=1).results["tinycolor"][0]
        assert s.generation == before + 1 and hit.path == str(late)
