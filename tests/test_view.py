"""The result views: static HTML (checked in headless Chromium), PNG sheet, local server."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import image_query, make_collection
from PIL import Image
from typer.testing import CliRunner

from relsearch.build import BuildOptions, build_index
from relsearch.cli import app
from relsearch.view import render_page, write_html, write_sheet
from relsearch.view.server import make_server

CHROMIUM = "/usr/bin/chromium"
K = 5


@pytest.fixture
def indexed(tmp_path):
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=14, size=48)
    index = tmp_path / "index"
    build_index(coll, index, BuildOptions(encoders="tinycolor", progress=False, workers=1))
    return coll, index, paths


def _two_column_result(index, image):
    """A result with two columns (one marked relational) from the one-encoder index."""
    result = image_query(str(image), index, k=K)
    hits = result.results["tinycolor"]
    result.results["twin"] = list(reversed(hits))
    result.kinds["twin"] = "relational"
    return result


def _rows(page: str) -> dict[str, int]:
    """encoder -> number of thumbnails, in page order."""
    out = {}
    for m in re.finditer(r'<section class="row [^"]*" data-encoder="([^"]+)".*?</section>', page, re.S):
        out[m.group(1)] = len(re.findall(r'<img class="thumb"', m.group(0)))
    return out


def test_html_rows_relational_first_and_self_contained(indexed, tmp_path):
    coll, index, paths = indexed
    result = _two_column_result(index, paths[2])
    out = write_html(result, tmp_path / "sub" / "out.html")
    page = out.read_text(encoding="utf-8")
    assert list(_rows(page).items()) == [("twin", K), ("tinycolor", K)]
    # every thumbnail is inline and links to its file; nothing is fetched from a network
    assert page.count("data:image/jpeg;base64,") == 2 * K + 1  # + the query image
    assert Path(paths[2]).resolve().as_uri() in page
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "#1 &middot; 1.000" in page  # the query itself is its own first hit
    assert len(page) < 100_000  # small thumbnails, not the originals


def test_html_missing_file_gets_placeholder(indexed):
    coll, index, paths = indexed
    result = image_query(str(paths[0]), index, k=K)
    victim = Path(result.results["tinycolor"][1].path)
    victim.unlink()
    page = render_page(result)
    assert page.count("data:image/svg+xml;base64,") == 1
    assert _rows(page) == {"tinycolor": K}


def _chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chrome-profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless Chromium not installed at {CHROMIUM}")
def test_html_in_headless_chromium(indexed, tmp_path):
    coll, index, paths = indexed
    result = _two_column_result(index, paths[4])
    page = write_html(result, tmp_path / "page.html")
    url = page.resolve().as_uri()

    dom = _chromium(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _rows(dom.stdout) == {"twin": K, "tinycolor": K}

    shot = tmp_path / "shot.png"
    run = _chromium([f"--screenshot={shot}", "--window-size=1100,700", url], tmp_path)
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (700, 1100)
    assert pixels.std() > 20  # not a blank page
    # the coloured thumbnails were decoded and drawn: many saturated pixels in the row area
    sat = pixels.max(axis=2) - pixels.min(axis=2)
    assert (sat[150:] > 60).mean() > 0.05


def test_sheet_png(indexed, tmp_path):
    coll, index, paths = indexed
    result = _two_column_result(index, paths[1])
    out = write_sheet(result, tmp_path / "sheet.png")
    img = Image.open(out)
    assert img.format == "PNG"
    w, h = img.size
    assert w >= K * 128 and h > 2 * 128 + 256
    px = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert px.std() > 20
    # the query image sits top left, enlarged: its colours match the source picture's
    src = np.asarray(Image.open(paths[1]).convert("RGB").resize((4, 4), Image.NEAREST), dtype=np.float32)
    corner = px[12 + 16, 12 + 16]  # centre of the query's first 4x4 cell (256 px / 4 = 64)
    assert np.abs(corner - src[0, 0]).max() < 25


def test_query_cli_writes_html_and_sheet(indexed, tmp_path):
    coll, index, paths = indexed
    html, sheet = tmp_path / "q.html", tmp_path / "q.png"
    r = CliRunner().invoke(app, ["query", str(paths[3]), "--index", str(index), "-k", "4",
                                 "--html", str(html), "--sheet", str(sheet)])
    assert r.exit_code == 0, r.output
    assert _rows(html.read_text(encoding="utf-8")) == {"tinycolor": 4}
    assert Image.open(sheet).size[0] > 4 * 128


def _request(url: str, data: bytes | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def test_server_answers_posted_image(indexed, tmp_path):
    coll, index, paths = indexed
    server = make_server(index, host="127.0.0.1", port=0, k=K)
    assert server.server_address[0] == "127.0.0.1" and server.server_address[1] > 0
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        base = server.url
        status, body, ctype = _request(base)
        assert status == 200 and ctype.startswith("text/html")
        page = body.decode()
        assert 'id="drop"' in page and 'type="file"' in page
        assert not re.search(r'(src|href)="(https?:)?//', page)

        status, body, _ = _request(base + "query?k=3", Path(paths[5]).read_bytes())
        assert status == 200
        answer = json.loads(body)
        hits = answer["result"]["results"]["tinycolor"]
        assert len(hits) == 3 and hits[0]["score"] > 0.999
        assert os.path.samefile(hits[0]["path"], paths[5])
        assert _rows(answer["html"]) == {"tinycolor": 3}
        assert "tinycolor.embed" in answer["timings_ms"]

        status, body, ctype = _request(base + f"thumb/{hits[1]['id']}")
        assert status == 200 and ctype == "image/jpeg" and body[:2] == b"\xff\xd8"
        status, body, _ = _request(base + f"file/{hits[1]['id']}")
        assert status == 200 and body == Path(hits[1]["path"]).read_bytes()

        assert _request(base + "thumb/987654")[0] == 404
        assert _request(base + "file/..%2F..%2Fetc%2Fpasswd")[0] == 400  # not an id
        status, body, _ = _request(base + "query", b"not an image at all")
        assert status == 400 and "not a readable image" in json.loads(body)["error"]
        assert _request(base + "query?k=0", Path(paths[5]).read_bytes())[0] == 400
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_server_logs_request_lines_at_debug(indexed, caplog):
    _, index, _ = indexed
    server = make_server(index, host="127.0.0.1", port=0, k=K)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.INFO, logger="relsearch.view.server"):
            assert _request(server.url + "thumb/987654")[0] == 404
        assert not [r for r in caplog.records if "GET /thumb/987654" in r.getMessage()]
        with caplog.at_level(logging.DEBUG, logger="relsearch.view.server"):
            assert _request(server.url + "thumb/987654")[0] == 404
            with socket.create_connection(server.server_address[:2], timeout=20) as sock:
                sock.sendall(b"GET /thumb/\x1b[2J HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert sock.recv(64).startswith(b"HTTP/1.")  # answered, so the line was logged
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    lines = [r.getMessage() for r in caplog.records
             if r.name == "relsearch.view.server" and r.levelno == logging.DEBUG]
    assert any("GET /thumb/987654" in line and "HTTP/1.1" in line for line in lines), lines
    assert not any("\x1b" in line for line in lines), lines


def test_view_cli_bad_index_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["view", "--index", str(tmp_path / "nope"), "--no-browser", "--port", "0"])
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "no index at" in r.output


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"headless Chromium not installed at {CHROMIUM}")
def test_served_page_renders_in_chromium(indexed, tmp_path):
    coll, index, paths = indexed
    server = make_server(index, port=0, k=K)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        # console messages reach stderr with logging on: a script error would show as "Uncaught"
        dom = _chromium(["--enable-logging=stderr", "--v=0", "--dump-dom", server.url], tmp_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="drop"' in dom.stdout and "14 images" in dom.stdout
    assert "Uncaught" not in dom.stderr, [line for line in dom.stderr.splitlines() if "CONSOLE" in line]


def test_view_cli_no_browser_binds_loopback_and_serves(indexed, monkeypatch):
    import time

    import relsearch.view.server as server_mod

    coll, index, paths = indexed
    made = []
    real = server_mod.make_server

    def capture(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(server_mod, "make_server", capture)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "r", CliRunner().invoke(app, ["view", "--index", str(index), "--port", "0", "--no-browser", "-k", "3"])),
        daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not made and time.monotonic() < deadline:
        time.sleep(0.05)
    assert made, "server did not start"
    server = made[0]
    try:
        assert server.server_address[0] == "127.0.0.1"
        status, body, _ = _request(server.url)
        assert status == 200 and b"14 images" in body
        status, body, _ = _request(server.url + "query", Path(paths[0]).read_bytes())
        assert status == 200 and len(json.loads(body)["result"]["results"]["tinycolor"]) == 3
    finally:
        server.shutdown()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert result["r"].exit_code == 0 and f"at {server.url}" in result["r"].output


def test_page_and_sheet_show_a_name_that_is_not_utf8(tmp_path):
    """Paths are stored surrogate-escaped (issue 8): the page must still write, showing the bytes."""
    from relsearch.results import Hit, QueryResult

    raw = os.fsencode(str(tmp_path)) + b"/bad_\xff\xfe.png"
    Image.new("RGB", (40, 30), "red").save(raw.decode("utf-8", "surrogateescape"))
    path = os.fsdecode(raw)
    result = QueryResult(query=path, results={"imagenet": [Hit(1, 1.0, path, 0, [path])]},
                         kinds={"imagenet": "attribute"})
    out = write_html(result, tmp_path / "page.html")
    text = out.read_text(encoding="utf-8")
    assert "bad_\\xff\\xfe.png" in text
    assert "bad_%FF%FE.png" in text  # the file:// link keeps the raw bytes
    write_sheet(result, tmp_path / "sheet.png")
    assert (tmp_path / "sheet.png").stat().st_size > 0
