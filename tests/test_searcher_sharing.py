"""Long-lived readers: many searchers of one index in one process, and rebuilds under them."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from engine_helpers import image_query, make_collection
from PIL import Image

import relsearch.index as index_mod
from relsearch.build import BuildOptions, build_index
from relsearch.composed import search_image
from relsearch.query import Searcher
from relsearch.store import envs
from relsearch.view.server import make_server

OPTS = BuildOptions(encoders="tinycolor", progress=False, workers=1)


@pytest.fixture
def indexed(tmp_path):
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=12, size=40)
    index = tmp_path / "index"
    build_index(coll, index, OPTS)
    return coll, index, paths


def _new_image(coll: Path, name: str, colour: tuple[int, int, int]) -> Path:
    path = coll / name
    img = Image.new("RGB", (40, 40), colour)
    img.paste(Image.new("RGB", (20, 20), tuple(255 - c for c in colour)), (0, 0))
    img.save(path)
    return path


def _top(searcher: Searcher, path: Path) -> str:
    return search_image(searcher, Image.open(path), k=1).results["tinycolor"][0].path


def test_two_searchers_and_a_query_call_share_one_index(indexed):
    coll, index, paths = indexed
    store_dir = index / "meta.lmdb"
    a = Searcher(index)
    b = Searcher(index)  # today: "environment ... is already open in this process"
    try:
        assert envs.refs(store_dir) == 2
        r = image_query(str(paths[3]), index, k=3)  # a third, short-lived opener
        assert r.results["tinycolor"][0].path == str(paths[3])
        assert envs.refs(store_dir) == 2
        a.close()
        a.close()  # idempotent: must not drop b's reference
        assert envs.refs(store_dir) == 1
        assert _top(b, paths[5]) == str(paths[5])  # b still reads after a closed the shared handle
    finally:
        a.close()
        b.close()
    assert envs.refs(store_dir) == 0


def test_long_lived_searcher_follows_a_rebuild(indexed):
    coll, index, paths = indexed
    with Searcher(index) as s:
        assert s.generation == 1 and s.indexes["tinycolor"].ntotal == 12
        new = _new_image(coll, "new.png", (10, 200, 30))
        paths[0].unlink()
        rep = build_index(coll, index, OPTS)  # in the same process, while s holds the index
        assert rep.generation == 2 and rep.added == 1 and rep.removed == 1
        assert _top(s, new) == str(new)  # today: the old FAISS file, which lacks it
        assert s.generation == 2 and s.indexes["tinycolor"].ntotal == 12
        assert s.opened.manifest.generation == 2
        assert not s.refresh()  # nothing new since


def test_generation_replaced_while_loading_is_retried(indexed, monkeypatch):
    coll, index, paths = indexed
    real = index_mod.VectorIndex.load
    calls: list[str] = []

    def racing_load(path):
        # The first load reads generation 1 ... and a build replaces it (deleting its
        # files) just before the FAISS file is opened.
        calls.append(Path(path).name)
        if len(calls) == 1:
            _new_image(coll, "late.png", (200, 30, 200))
            assert build_index(coll, index, OPTS).generation == 2
        return real(path)

    monkeypatch.setattr(index_mod.VectorIndex, "load", staticmethod(racing_load))
    with Searcher(index) as s:
        # (the build's own incremental load of generation 1 sits in between)
        assert calls[0] == "tinycolor.1.faiss" and calls[-1] == "tinycolor.2.faiss"
        assert s.generation == 2 and s.indexes["tinycolor"].ntotal == 13


def test_running_page_follows_a_rebuild(indexed):
    coll, index, paths = indexed
    server = make_server(index, port=0, k=3)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        new = _new_image(coll, "fresh.png", (250, 250, 0))
        build_index(coll, index, OPTS)
        with urllib.request.urlopen(server.url, timeout=20) as resp:
            assert b"13 images" in resp.read()
        req = urllib.request.Request(server.url + "query?k=1", data=new.read_bytes(), method="POST")
        with urllib.request.urlopen(req, timeout=20) as resp:
            hit = json.loads(resp.read())["result"]["results"]["tinycolor"][0]
        assert hit["path"] == str(new) and hit["score"] > 0.999
        with urllib.request.urlopen(server.url + f"file/{hit['id']}", timeout=20) as resp:
            assert resp.read() == new.read_bytes()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert envs.refs(index / "meta.lmdb") == 0


def test_many_searchers_across_threads_beside_builds(indexed):
    coll, index, paths = indexed
    shared = Searcher(index)
    errors: list[BaseException] = []
    stop = threading.Event()
    rounds = [0] * 6

    def reader(i: int) -> None:
        try:
            while not stop.is_set():
                if i % 2:  # open, query, close: exercises the reference count
                    with Searcher(index) as s:
                        assert _top(s, paths[i]) == str(paths[i])
                else:  # one long-lived searcher shared by threads
                    hits = shared.search_vectors(
                        "tinycolor", shared.encoder("tinycolor").embed([Image.open(paths[i])]), 1)[0]
                    assert hits[0].path == str(paths[i])
                rounds[i] += 1
        except BaseException as exc:  # reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    try:
        for b in range(3):  # builds in the same process, while the readers run
            _new_image(coll, f"added_{b}.png", (40 * b, 90, 250 - 40 * b))
            assert build_index(coll, index, OPTS).generation == 2 + b
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors[:3]
    assert all(n > 0 for n in rounds), rounds
    shared.refresh()
    assert shared.generation == 4 and shared.indexes["tinycolor"].ntotal == 15
    shared.close()
    assert envs.refs(index / "meta.lmdb") == 0


_BUILDER = """
import sys
sys.path.insert(0, {tests!r})
from relsearch import encoders
encoders.REGISTRY.setdefault("tinycolor", "engine_helpers:load_tinycolor")
from PIL import Image
from relsearch.build import BuildOptions, build_index
for b in range(4):
    Image.new("RGB", (40, 40), (60 * b, 250 - 60 * b, 90)).save({coll!r} + f"/proc_{{b}}.png")
    build_index({coll!r}, {index!r}, BuildOptions(encoders="tinycolor", progress=False, workers=1))
"""


def test_searcher_follows_builds_of_another_process(indexed):
    import subprocess
    import sys

    coll, index, paths = indexed
    code = _BUILDER.format(tests=str(Path(__file__).parent), coll=str(coll), index=str(index))
    seen: set[int] = set()
    with Searcher(index) as s:
        proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        try:
            while proc.poll() is None:  # query all the while: every generation must load or be skipped
                assert _top(s, paths[2]) == str(paths[2])
                seen.add(s.generation)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err[-2000:]
        s.refresh()
        assert s.generation == 5 and s.indexes["tinycolor"].ntotal == 16
        assert _top(s, coll / "proc_3.png") == str(coll / "proc_3.png")
    assert len(seen) >= 2, seen  # it did switch generations while the other process built
