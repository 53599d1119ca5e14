"""The browse page in headless Chromium: click a result, toggle analogy / explain, type a caption."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from cdp import CHROMIUM, Browser
from engine_helpers import make_collection
from mode_helpers import register

from relsearch.build import BuildOptions, build_index
from relsearch.explain import shipped_bank_path
from relsearch.view.server import make_server

register()
K = 4


@pytest.fixture
def served(tmp_path):
    coll = tmp_path / "coll"
    make_collection(coll, n=16, size=48)
    index = tmp_path / "index"
    build_index(coll, index, BuildOptions(encoders="tinyrel,tinycolor", progress=False, workers=1))
    server = make_server(index, port=0, k=K, captions=str(shipped_bank_path()))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_search_endpoint_by_id_text_and_toggles(served):
    base = served.url
    status, plain = _get(base + "search?id=3&k=3")
    assert status == 200
    assert plain["result"]["results"]["tinyrel"][0]["id"] == 3  # an indexed image finds itself first
    assert "analogy" not in plain["result"] and "explain" not in plain["result"]
    assert plain["result"]["query_caption"]["text"]  # the query's caption is always shown
    assert 'class="why"' not in plain["html"]

    status, both = _get(base + "search?id=3&k=3&analogy=1&explain=1")
    assert status == 200
    assert len(both["result"]["analogy"]) == 3
    assert [h["id"] for h in both["result"]["explain"]["hits"]["tinyrel"]] == \
        [h["id"] for h in both["result"]["results"]["tinyrel"]]
    assert 'data-encoder="analogy"' in both["html"] and 'class="why"' in both["html"]

    status, text = _get(base + "search?text=" + urllib.parse.quote("{Object}s orbiting {Center}") + "&k=2")
    assert status == 200 and list(text["result"]["results"]) == ["tinyrel"]
    assert _get(base + "search?id=99999")[0] == 400
    assert _get(base + "search?id=3&analogy=maybe")[0] == 400
    assert _get(base + "search")[0] == 400
    status, err = _get(base + "search?text=x&analogy=1")
    assert status == 400 and "image query" in err["error"]


def _hit_ids(b: Browser, encoder: str) -> list[int]:
    return b.eval(f"[...document.querySelectorAll('#rows section[data-encoder=\"{encoder}\"] a.hit')]"
                  ".map(a => +a.dataset.id)")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless Chromium not installed at {CHROMIUM}")
def test_click_toggle_and_caption_in_chromium(served, tmp_path):
    b = Browser(tmp_path / "profile")
    try:
        b.open(served.url + "#id=2")
        b.wait_for("document.querySelectorAll('#rows a.hit').length > 0")
        first = _hit_ids(b, "tinyrel")
        assert first[0] == 2 and len(first) == K
        assert b.eval("document.querySelectorAll('#rows section').length") == 2
        assert b.eval("!!document.querySelector('#rows .qcap')")  # the query's caption is shown

        # click a thumbnail that is not the query: the rows change to that image's neighbours
        target = next(i for i in _hit_ids(b, "tinycolor") if i != 2)
        b.eval(f"document.querySelector('#rows section[data-encoder=\"tinycolor\"] a.hit[data-id=\"{target}\"] img')"
               ".click()")
        b.wait_for(f"document.getElementById('rows').dataset.query === 'id:{target}'")
        after = _hit_ids(b, "tinyrel")
        assert after[0] == target and after != first
        assert b.eval("location.hash") == f"#id={target}"

        # toggles change the columns
        b.eval("document.getElementById('analogy').click()")
        b.wait_for("!!document.querySelector('#rows section[data-encoder=\"analogy\"]')")
        assert b.eval("[...document.querySelectorAll('#rows section')].map(s => s.dataset.encoder)") == \
            ["tinyrel", "analogy", "tinycolor"]
        assert b.eval("document.querySelectorAll('#rows .why').length") == 0
        b.eval("document.getElementById('explain').click()")
        b.wait_for("document.querySelectorAll('#rows .why').length > 0")
        assert b.eval("document.querySelectorAll('#rows section[data-encoder=\"tinycolor\"] .why').length") == 0
        b.eval("document.getElementById('analogy').click()")
        b.wait_for("!document.querySelector('#rows section[data-encoder=\"analogy\"]')")

        # a caption typed into the text box searches the relational column
        b.eval("document.getElementById('text').value = '{Object}s arranged in a ring around a central {Center}';"
               "document.querySelector('#textform button').click()")
        b.wait_for("(document.getElementById('rows').dataset.query || '').startsWith('text:')")
        assert b.eval("[...document.querySelectorAll('#rows section')].map(s => s.dataset.encoder)") == ["tinyrel"]
        assert "query caption" in b.eval("document.querySelector('#rows .query').textContent")
        assert b.console == []
    finally:
        b.close()


# ---- the collection grid ---------------------------------------------------------------------
@pytest.fixture
def gridded(tmp_path, monkeypatch):
    """An index of 12 images with known modification times (image i is i hours old)."""
    import os
    import time

    from relsearch.view import grid

    monkeypatch.setattr(grid, "PAGE_SIZE", 5)
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=12, size=48)
    now = time.time()
    for i, p in enumerate(paths):
        os.utime(p, (now - 3600 * i, now - 3600 * i))
    index = tmp_path / "index"
    build_index(coll, index, BuildOptions(encoders="tinyrel,tinycolor", progress=False, workers=1))
    server = make_server(index, port=0, k=K, captions=str(shipped_bank_path()))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, [str(p) for p in paths]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _tile_paths(html_text: str) -> list[str]:
    import html
    import re

    return [html.unescape(t).split("\n")[0] for t in re.findall(r'<a class="hit tile"[^>]* title="([^"]*)"', html_text)]


def test_browse_pages_the_collection_newest_first(gridded):
    server, paths = gridded
    status, first = _get(server.url + "browse")
    assert status == 200 and (first["total"], first["pages"], first["page"]) == (12, 3, 0)
    assert _tile_paths(first["html"]) == paths[:5]  # image 0 is the newest
    status, last = _get(server.url + "browse?page=2")
    assert status == 200 and _tile_paths(last["html"]) == paths[10:]
    assert 'class="name">sub/img_000.png<' in first["html"]  # folders shown, relative to the collection
    for bad in ("page=3", "page=-1", "page=x"):
        status, err = _get(server.url + "browse?" + bad)
        assert status == 400 and "page" in err["error"]


def test_page_css_never_breaks_a_word():
    from relsearch.view.browse import STATIC
    from relsearch.view.html import STYLE

    css = STYLE + (STATIC / "browse.css").read_text(encoding="utf-8")
    assert "break-all" not in css and "anywhere" not in css and "break-word" not in css


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless Chromium not installed at {CHROMIUM}")
def test_grid_opens_the_page_and_a_click_searches_in_chromium(gridded, tmp_path):
    server, paths = gridded
    tiles = "[...document.querySelectorAll('#grid a.tile')]"
    b = Browser(tmp_path / "profile")
    try:
        b.open(server.url)
        b.wait_for(f"{tiles}.length === 5")
        assert b.eval("document.querySelectorAll('#rows a.hit').length") == 0  # nothing searched yet
        assert b.eval(f"{tiles}.map(a => a.title.split('\\n')[0])") == paths[:5]
        assert "12 images" in b.eval("document.getElementById('gridinfo').textContent")
        assert b.eval("document.getElementById('newer').disabled") is True

        b.eval("document.getElementById('older').click()")
        b.wait_for(f"{tiles}.length && {tiles}[0].title.startsWith({json.dumps(paths[5])})")
        assert b.eval("document.getElementById('pageno').textContent") == "page 2 of 3"

        # a click on a thumbnail searches with that image
        target = b.eval(f"+{tiles}[1].dataset.id")
        b.eval(f"{tiles}[1].querySelector('img').click()")
        b.wait_for(f"document.getElementById('rows').dataset.query === 'id:{target}'")
        assert _hit_ids(b, "tinyrel")[0] == target
        assert b.eval("location.hash") == f"#id={target}"

        # the status line names what ran: with explain off, no "explain"
        line = b.eval("document.getElementById('status').textContent")
        assert " ms (" in line and "explain" not in line and "caption" in line
        b.eval("document.getElementById('explain').click()")
        b.wait_for("document.getElementById('status').textContent.includes('explain')")

        # captions and names wrap between words or are cut with an ellipsis, never inside a word
        styles = b.eval("[...document.querySelectorAll('#rows *, #grid *')].map(e => getComputedStyle(e))"
                        ".map(s => s.wordBreak + ' ' + s.overflowWrap)")
        assert styles and not [s for s in styles if "break-all" in s or "anywhere" in s or "break-word" in s]
        assert b.eval("getComputedStyle(document.querySelector('#grid .name')).textOverflow") == "ellipsis"
        assert b.console == []
    finally:
        b.close()
