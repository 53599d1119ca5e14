"""The local page under hostile conditions: swapped files, forged hosts, bad ids, many clients."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
from engine_helpers import image_query, make_collection
from PIL import Image

from relsearch.build import BuildOptions, build_index
from relsearch.view.server import make_server

ids: dict[Path, int] = {}  # record id of each collection file, found before the server opens the index


@pytest.fixture
def served(tmp_path):
    """A running server over a 10-image index: (server, collection paths, tmp_path)."""
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=10, size=40)
    index = tmp_path / "index"
    build_index(coll, index, BuildOptions(encoders="tinycolor", progress=False, workers=1))
    ids.update({p: _id_of(index, p) for p in paths})
    server = make_server(index, host="127.0.0.1", port=0, k=5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, paths, index
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _get(server, path: str, host: str | None = "127.0.0.1:{port}", headers: dict | None = None,
         method: str = "GET", body: bytes | None = None) -> tuple[int, bytes, str]:
    """One request with full control over the Host header (None: send none)."""
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host.format(port=port))
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type", "")
    finally:
        conn.close()


def _id_of(index: Path, path: Path) -> int:
    if path in ids:
        return ids[path]
    hits = image_query(str(path), index, k=1).results["tinycolor"]
    assert os.path.samefile(hits[0].path, path)
    return hits[0].id


# ---- identity of the served file ------------------------------------------------------------

def test_file_replaced_by_symlink_to_outside_is_refused(served, tmp_path):
    server, paths, index = served
    victim = paths[3]
    rid = _id_of(index, victim)
    assert _get(server, f"/file/{rid}")[0] == 200
    secret = tmp_path / "secret.png"  # outside the collection, named like an image
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    victim.unlink()
    victim.symlink_to(secret)
    for kind in ("file", "thumb"):
        status, body, ctype = _get(server, f"/{kind}/{rid}")
        assert status == 404, (kind, status, ctype)
        assert b"root:x" not in body
        assert "changed since it was indexed" in json.loads(body)["error"]


def test_symlink_to_system_file_is_refused(served):
    server, paths, index = served
    victim = paths[4]
    rid = _id_of(index, victim)
    victim.unlink()
    victim.symlink_to("/etc/passwd")
    status, body, ctype = _get(server, f"/file/{rid}")
    assert status == 404 and not ctype.startswith("image/")
    assert b"root:" not in body


def test_file_edited_after_indexing_is_refused(served):
    server, paths, index = served
    victim = paths[5]
    rid = _id_of(index, victim)
    original = victim.read_bytes()
    Image.new("RGB", (40, 40), (250, 0, 0)).save(victim)  # a different, valid picture
    status, body, _ = _get(server, f"/file/{rid}")
    assert status == 404 and body != victim.read_bytes()
    assert _get(server, f"/thumb/{rid}")[0] == 404
    victim.write_bytes(original)  # the indexed content is back: served again
    status, body, ctype = _get(server, f"/file/{rid}")
    assert status == 200 and body == original and ctype == "image/png"
    status, body, ctype = _get(server, f"/thumb/{rid}")
    assert status == 200 and ctype == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_fifo_in_place_of_a_file_is_refused_without_hanging(served):
    server, paths, index = served
    victim = paths[6]
    rid = _id_of(index, victim)
    victim.unlink()
    os.mkfifo(victim)
    status, body, _ = _get(server, f"/file/{rid}")  # would block forever on open() without O_NONBLOCK
    assert status == 404


def test_duplicate_content_is_served_from_a_path_that_still_holds_it(tmp_path):
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=4, size=40)
    twin = coll / "zz_twin.png"
    shutil.copyfile(paths[1], twin)
    index = tmp_path / "index"
    build_index(coll, index, BuildOptions(encoders="tinycolor", progress=False, workers=1))
    rid = _id_of(index, paths[1])
    original = paths[1].read_bytes()
    Image.new("RGB", (40, 40), (0, 0, 250)).save(paths[1])  # the first path no longer holds it
    server = make_server(index, port=0, k=5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        status, body, _ = _get(server, f"/file/{rid}")
        assert status == 200 and body == original
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_link_that_was_indexed_as_a_link_is_served(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    make_collection(outside, n=2, size=40, seed=7)
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=3, size=40)
    (coll / "linked.png").symlink_to(outside / "img_001.png")
    index = tmp_path / "index"
    build_index(coll, index, BuildOptions(encoders="tinycolor", progress=False, workers=1))
    rid = _id_of(index, coll / "linked.png")
    plain = _id_of(index, paths[0])
    server = make_server(index, port=0, k=5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        status, body, _ = _get(server, f"/file/{rid}")
        assert status == 200 and body == (outside / "img_001.png").read_bytes()
        # the same link, retargeted at another outside file with other content: refused
        (coll / "linked.png").unlink()
        (coll / "linked.png").symlink_to(outside / "img_000.png")
        assert _get(server, f"/file/{rid}")[0] == 404
        # the first file's content again, but a copy with another mtime outside: refused too
        copy = tmp_path / "copy.png"
        shutil.copyfile(outside / "img_001.png", copy)
        os.utime(copy, ns=(1, 1))
        (coll / "linked.png").unlink()
        (coll / "linked.png").symlink_to(copy)
        assert _get(server, f"/file/{rid}")[0] == 404
        assert _get(server, f"/file/{plain}")[0] == 200  # plain files are still served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---- Host header (DNS rebinding), Origin ----------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "LOCALHOST:{port}"])
def test_loopback_hosts_are_accepted(served, host):
    server, paths, index = served
    status, body, _ = _get(server, "/", host=host)
    assert status == 200 and b'id="drop"' in body


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1:1", "127.0.0.1",
                                  "localhost.evil.example:{port}", "127.0.0.1:{port}@evil", "", None,
                                  "127.0.0.2:{port}", "[::1]:{port}x"])
def test_foreign_or_missing_host_is_refused(served, host):
    server, paths, index = served
    rid = _id_of(index, paths[0])
    for path in ("/", f"/file/{rid}", f"/thumb/{rid}"):
        status, body, _ = _get(server, path, host=host)
        assert status == 400, (path, host, status)
        assert b"Host" in body and b"PNG" not in body
    status, _, _ = _get(server, "/query", host=host, method="POST", body=paths[0].read_bytes())
    assert status == 400


def test_cross_origin_post_is_refused(served):
    server, paths, index = served
    body = paths[0].read_bytes()
    status, answer, _ = _get(server, "/query?k=2", method="POST", body=body,
                             headers={"Origin": "http://evil.example"})
    assert status == 403 and "origin" in json.loads(answer)["error"]
    port = server.server_address[1]
    status, answer, _ = _get(server, "/query?k=2", method="POST", body=body,
                             headers={"Origin": f"http://127.0.0.1:{port}"})
    assert status == 200 and len(json.loads(answer)["result"]["results"]["tinycolor"]) == 2


# ---- record ids -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["99999999999999999999999", str(2**64), str(2**63), "-1", "abc", "1.5",
                                 "%EF%BC%91", "+1", "1_0", "%201", "0x10", ""])
def test_malformed_or_out_of_range_id_is_400(served, raw):
    server, paths, index = served
    for kind in ("file", "thumb"):
        status, body, ctype = _get(server, f"/{kind}/{raw}")
        assert status == 400, (kind, raw, status)
        assert ctype == "application/json" and "id" in json.loads(body)["error"]


def test_search_by_bad_id_is_400(served):
    server, paths, index = served
    for raw in (str(2**64), "-3", "x"):
        status, body, _ = _get(server, f"/search?id={raw}&k=2")
        assert status == 400 and "id" in json.loads(body)["error"], (raw, status)
    status, body, _ = _get(server, f"/search?id={_id_of(index, paths[1])}&k=2")
    assert status == 200 and json.loads(body)["result"]["results"]["tinycolor"][0]["path"] == str(paths[1])


def test_absent_id_in_range_is_404(served):
    server, paths, index = served
    assert _get(server, "/file/987654")[0] == 404
    assert _get(server, f"/thumb/{2**63 - 1}")[0] == 404


# ---- many clients at once -------------------------------------------------------------------

def test_64_concurrent_clients_are_all_answered(served):
    server, paths, index = served
    rid = _id_of(index, paths[0])
    port = server.server_address[1]
    n = 64
    start = threading.Barrier(n)
    answers: list[object] = [None] * n

    def client(i: int) -> None:
        start.wait()
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            with sock:
                sock.sendall(f"GET /thumb/{rid} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            answers[i] = data.split(b"\r\n", 1)[0]
        except OSError as exc:  # a reset or a refused connection
            answers[i] = exc

    # Hold the accept loop while the 64 connect, so they all wait in the listen queue at once
    # (as they do behind a slow request on a busy machine).
    with server_paused(server):
        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
    for t in threads:
        t.join(timeout=60)
    failed = [a for a in answers if not (isinstance(a, bytes) and b" 200 " in a)]
    assert not failed, failed[:5]


class server_paused:
    """Keep ``serve_forever`` from accepting for a moment, as a slow request on a busy machine would."""

    def __init__(self, server, seconds: float = 1.5) -> None:
        self.server, self.seconds = server, seconds
        self.gate = threading.Event()

    def __enter__(self) -> None:
        real = self.server.get_request

        def gated():
            self.gate.wait()
            return real()

        self.server.get_request = gated  # serve_forever calls it once per ready connection

    def __exit__(self, *exc: object) -> None:
        import time

        time.sleep(self.seconds)  # the 64 connects wait in the listen queue meanwhile
        self.gate.set()


@pytest.mark.parametrize(("header", "bound", "ok"), [
    ("192.168.1.20:8765", "0.0.0.0", True),   # bound to every interface: any address is the server's
    ("[fe80::1]:8765", "::", True),
    ("myhost.local:8765", "0.0.0.0", False),  # a DNS name may be rebound: refused
    ("192.168.1.20:8765", "127.0.0.1", False),
    ("192.168.1.20:8765", "192.168.1.20", True),  # bound to that address explicitly
    ("192.168.1.20:9999", "0.0.0.0", False),
    ("localhost", "127.0.0.1", False),        # no port means 80
])
def test_host_rule_for_other_bindings(header, bound, ok):
    from relsearch.view.server import host_allowed

    assert host_allowed(header, 8765, bound) is ok
