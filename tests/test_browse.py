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
