"""The page's composed query (a second image and a caption) and duplicate groups, over HTTP."""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import make_collection
from PIL import Image

from relsearch.build import BuildOptions, build_index
from relsearch.composed import composed_query
from relsearch.view.server import make_server


def _request(url: str, data: bytes | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def served(tmp_path):
    root, index = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 12, seed=6, size=48)
    Image.open(paths[3]).resize((40, 40), Image.BILINEAR).save(root / "smaller.png")
    shutil.copyfile(paths[7], root / "same_bytes.png")
    build_index(root, index, BuildOptions(encoders="tinycolor", progress=False, workers=1))
    server = make_server(index, host="127.0.0.1", port=0, k=5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.url, index, root, paths
    finally:
        server.shutdown()
        server.server_close()


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


def test_page_has_the_controls_and_composes_two_images(served) -> None:
    base, index, _, paths = served
    with urllib.request.urlopen(base, timeout=30) as resp:
        page = resp.read().decode()
    assert 'id="second"' in page and 'id="addtext"' in page and 'id="dupesbtn"' in page
    body = json.dumps({"images": [_b64(paths[1]), _b64(paths[9])], "weights": [1, 0.5], "k": 4}).encode()
    status, answer = _request(base + "compose", body)
    assert status == 200, answer
    got = [h["path"] for h in answer["result"]["results"]["tinycolor"]]
    # the same as the CLI's composition of the two files
    want = composed_query([str(paths[1]), str(paths[9])], index, k=4, weights=[1, 0.5]).results["tinycolor"]
    assert got == [h.path for h in want]
    assert [q["weight"] for q in answer["result"]["queries"]] == [1.0, 0.5]
    assert len(re.findall(r'<img class="thumb"', answer["html"])) == 4


def test_caption_on_a_column_without_text_tower_is_said_on_the_page(served) -> None:
    base, _, _, paths = served
    body = json.dumps({"images": [_b64(paths[2])], "text": "{Object}s in a ring"}).encode()
    status, answer = _request(base + "compose", body)
    assert status == 200, answer
    assert answer["result"]["skipped"]["tinycolor"][0].endswith("no caption (text) tower")
    assert 'class="note"' in answer["html"] and "caption (text) tower" in answer["html"]


@pytest.mark.parametrize("body, needle", [
    (b"not json", "JSON"),
    (json.dumps({"images": ["@@@"]}).encode(), "base64"),
    (json.dumps({"images": []}).encode(), "image or a caption"),
    (json.dumps({"images": [base64.b64encode(b"not an image").decode()]}).encode(), "not a readable image"),
    (json.dumps({"images": ["", "", ""]}).encode(), "at most 2"),
])
def test_bad_compose_bodies_are_400(served, body: bytes, needle: str) -> None:
    status, answer = _request(served[0] + "compose", body)
    assert status == 400 and needle in answer["error"]


def test_dupes_page_shows_exact_and_near_groups(served) -> None:
    base, _, root, paths = served
    status, answer = _request(base + "dupes")
    assert status == 200, answer
    groups = {g["kind"]: g for g in answer["result"]["groups"]}
    assert sorted(groups["exact"]["paths"]) == sorted([str(paths[7]), str(root / "same_bytes.png")])
    assert sorted(groups["near"]["paths"]) == sorted([str(paths[3]), str(root / "smaller.png")])
    assert answer["html"].count('<section class="dupes') == 2
    ids = [int(x) for x in re.findall(r'src="thumb/(\d+)"', answer["html"])]
    assert len(ids) == 3 and np.all(np.asarray(ids) >= 0)
    status, answer = _request(base + "dupes?threshold=abc")
    assert status == 400 and "threshold" in answer["error"]


def test_controls_work_in_chromium(tmp_path) -> None:
    from cdp import CHROMIUM, Browser
    from mode_helpers import register

    if not Path(CHROMIUM).exists():
        pytest.skip(f"headless Chromium not installed at {CHROMIUM}")
    register()
    root, index = tmp_path / "col", tmp_path / "idx"
    paths = make_collection(root, 10, seed=2, size=48)
    shutil.copyfile(paths[4], root / "again.png")
    build_index(root, index, BuildOptions(encoders="tinyrel,tinycolor", progress=False, workers=1))
    server = make_server(index, host="127.0.0.1", port=0, k=3)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    b = Browser(tmp_path / "profile")
    try:
        b.open(server.url)
        b.wait_for("!!document.getElementById('dupesbtn')")
        b.eval("document.getElementById('dupesbtn').click()")
        b.wait_for("document.querySelectorAll('#rows section.dupes').length > 0")
        assert b.eval("document.querySelectorAll('#rows section.dupes.exact img').length") == 1
        # a caption alone through the combine form: the text column answers, the other is noted
        b.eval("document.getElementById('addtext').value = '{Object}s arranged in a ring';"
               "document.querySelector('#composeform button').click()")
        b.wait_for("(document.getElementById('rows').dataset.query || '').startsWith('combined')")
        assert b.eval("[...document.querySelectorAll('#rows section.row')].map(s => s.dataset.encoder)") == ["tinyrel"]
        assert "tinycolor" in b.eval("document.querySelector('#rows p.note').textContent")
        assert b.console == []
    finally:
        b.close()
        server.shutdown()
        server.server_close()
