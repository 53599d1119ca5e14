"""The CLI and the page under hostile input: a k in the billions, extreme weights, pixel bombs,
deep JSON, stalled and oversized uploads, doubled headers.

Each case ends with a status (or exit code) and a one-line message, in bounded time and memory,
with no traceback on stderr, and the index or page still answers afterwards.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import resource
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
import zlib
from pathlib import Path

import pytest
from engine_helpers import make_collection, run_cli
from PIL import Image

from relsearch.build import BuildOptions, build_index
from relsearch.errors import RelsearchError

N = 12
TESTS = Path(__file__).resolve().parent


# ---- helpers ----------------------------------------------------------------------------------

def _blank_png(path: Path, width: int, height: int, bit_depth: int = 8) -> Path:
    """A grey PNG of zeros, written row by row: small on disk, ``width * height`` pixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + width * bit_depth // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as fh:  # "5": reset the peak resident size
        fh.write("5")


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"{field}:\s+(\d+)", fh.read()).group(1))


@pytest.fixture
def index(tmp_path) -> tuple[Path, list[Path]]:
    coll = tmp_path / "coll"
    paths = make_collection(coll, n=N, size=40)
    idx = tmp_path / "index"
    build_index(coll, idx, BuildOptions(encoders="tinycolor", progress=False, workers=1))
    return idx, sorted(paths)


@pytest.fixture
def page(index, capfd, caplog):
    """A running page over the index: (server, collection paths). Afterwards: no traceback on
    stderr, no error logged, and the page still answers."""
    from relsearch.view.server import make_server

    idx, paths = index
    server = make_server(idx, host="127.0.0.1", port=0, k=5)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with warnings.catch_warnings(record=True) as seen:  # the filters as they are: nothing added
            yield server, paths
        assert _alive(server, paths)
        assert not [w for w in seen if issubclass(w.category, Image.DecompressionBombWarning)]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Warning" not in err, err[-2000:]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text[-2000:]


def _request(server, method: str, path: str, body: bytes | None = None, headers: list | None = None,
             hosts: tuple[str, ...] = ("127.0.0.1:{port}",), timeout: float = 30) -> tuple[int, dict]:
    """One request with full control over its headers; (status, JSON answer or {})."""
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for h in hosts:
            conn.putheader("Host", h.format(port=port))
        for k, v in headers or []:
            conn.putheader(k, v)
        if body is not None and not any(k.lower() == "content-length" for k, _ in headers or []):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        is_json = resp.getheader("Content-Type", "") == "application/json"
        return resp.status, json.loads(data) if is_json else {}
    finally:
        conn.close()


def _alive(server, paths: list[Path]) -> bool:
    status, _ = _request(server, "GET", "/")
    qs, answer = _request(server, "POST", "/query?k=3", body=paths[0].read_bytes())
    return status == 200 and qs == 200 and len(answer["result"]["results"]["tinycolor"]) == 3


def _one_line(answer: dict, *words: str) -> str:
    msg = answer["error"]
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


_CHILD = """
import atexit, sys
sys.path.insert(0, {tests!r})
def peak():
    with open({peak!r}, "w") as fh:
        fh.write([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0])
atexit.register(peak)
from relsearch import encoders
encoders.REGISTRY.setdefault("tinycolor", "engine_helpers:load_tinycolor")
from relsearch.cli import main
main(sys.argv[1:])
"""


def _cli_limited(tmp_path: Path, *argv: str, limit: int = 3 << 30, timeout: float = 180):
    """``relsearch ARGV`` in a child limited to ``limit`` bytes of data; (result, peak RSS bytes).

    RLIMIT_DATA rather than RLIMIT_AS: importing torch reserves 3.5 GB of address space, and
    LMDB maps its whole map size, neither of which is memory used.
    """
    peak = tmp_path / "peak.txt"

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "RELSEARCH_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", _CHILD.format(tests=str(TESTS), peak=str(peak)), *argv],
                         capture_output=True, text=True, timeout=timeout, preexec_fn=cap, env=env)
    return out, int(re.search(r"(\d+)", peak.read_text()).group(1)) * 1024


# ---- A: k beyond the collection -------------------------------------------------------------

def test_huge_k_from_the_cli_is_capped_at_the_collection(index, tmp_path):
    idx, paths = index
    t = time.monotonic()
    out, peak = _cli_limited(tmp_path, "query", str(paths[0]), "-k", "1000000000", "--index", str(idx), "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    hits = json.loads(out.stdout)["results"]["tinycolor"]
    assert len(hits) == N and hits[0]["path"] == str(paths[0])
    assert time.monotonic() - t < 120 and peak < 1 << 30
    # the table, composed with a negative, and an analogy-free text table
    out, _ = _cli_limited(tmp_path, "query", str(paths[0]), str(paths[1]), "--not", str(paths[2]),
                          "-k", "100000000", "--index", str(idx))
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    ranks = [line for line in out.stdout.splitlines() if re.match(r"\s+\d+\s", line)]
    # every image but the negative and the two query images themselves (shown as the query)
    assert len(ranks) == N - 3 and not [r for r in ranks if any(paths[i].name in r for i in (0, 1, 2))]


def test_huge_k_in_the_library_allocates_nothing_for_it(index):
    import tracemalloc

    from engine_helpers import image_query

    from relsearch.composed import composed_query

    idx, paths = index
    image_query(str(paths[3]), idx, k=1)  # imports done before tracing (tracing torch's import is slow)
    tracemalloc.start()
    try:
        plain = image_query(str(paths[3]), idx, k=10**12)
        composed = composed_query([str(paths[3]), str(paths[4])], idx, k=2**62, negatives=[str(paths[5])])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    assert len(plain.results["tinycolor"]) == N
    assert len(composed.results["tinycolor"]) == N - 1


# ---- B: weights and k as numbers ------------------------------------------------------------

def _scores(capsys, *argv: str) -> list[tuple[str, float]]:
    code = run_cli("query", *argv, "--json")
    out = capsys.readouterr()
    assert code == 0, out.err
    return [(h["path"], h["score"]) for h in json.loads(out.out)["results"]["tinycolor"]]


@pytest.mark.parametrize("weights", ["1e300", "1e-320", "1.7976931348623157e308", "5e-324"])
def test_one_weight_of_any_finite_size_is_the_plain_query(index, capsys, weights):
    idx, paths = index
    plain = _scores(capsys, str(paths[0]), "--index", str(idx))
    weighted = _scores(capsys, str(paths[0]), "--weights", weights, "--index", str(idx))
    assert [p for p, _ in weighted] == [p for p, _ in plain]
    assert [s for _, s in weighted] == pytest.approx([s for _, s in plain]) and weighted[0][1] > 0.5


def test_weights_are_scale_free_with_negatives(index, capsys):
    idx, paths = index
    a, b, c = (str(p) for p in paths[:3])
    base = _scores(capsys, a, b, "--weights", "1,0.5", "--not", c, "--index", str(idx))
    for ws in ("2,1", "2e300,1e300", "2e-310,1e-310", "1e308,5e307"):
        got = _scores(capsys, a, b, "--weights", ws, "--not", c, "--index", str(idx))
        assert [p for p, _ in got] == [p for p, _ in base], ws
        assert [s for _, s in got] == pytest.approx([s for _, s in base]), ws


@pytest.mark.parametrize("weights", ["nan", "inf", "-1", "0", "1e400", "true", "1,2"])
def test_bad_weights_are_one_line_errors(index, capsys, weights):
    idx, paths = index
    code = run_cli("query", str(paths[0]), "--weights", weights, "--index", str(idx))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_booleans_are_not_weights():
    from relsearch.composed import parse_terms

    for bad in ([True], [False], [1, True], [10**400]):
        with pytest.raises(RelsearchError, match="weights"):
            parse_terms(["a.png"] * len(bad), bad)
    assert [t.weight for t in parse_terms(["a.png", "b.png"], [2, 0.5])] == [2.0, 0.5]


def _compose_body(paths: list[Path], **fields) -> bytes:
    import base64

    images = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    return json.dumps({"images": images, **fields}).encode()


@pytest.mark.parametrize(("fields", "word"), [
    ({"k": True}, "k"), ({"k": 1.5}, "k"), ({"weights": [True]}, "weights"),
    ({"weights": [1, False]}, "weights"), ({"weights": ["1"]}, "weights"),
])
def test_compose_refuses_booleans_as_numbers(page, fields, word):
    server, paths = page
    status, answer = _request(server, "POST", "/compose", _compose_body(paths[:len(fields.get("weights", [1]))],
                                                                         **fields))
    assert status == 400
    _one_line(answer, word)


@pytest.mark.parametrize("raw", [b"[NaN]", b"[Infinity]", b"[1e400]", b"[" + b"9" * 400 + b"]"])
def test_compose_refuses_non_finite_weights(page, raw):
    server, paths = page
    body = _compose_body(paths[:1]).replace(b"}", b', "weights": ' + raw + b"}")
    status, answer = _request(server, "POST", "/compose", body)
    assert status == 400 and answer["error"]


def test_compose_with_huge_weights_scores_as_with_ones(page):
    server, paths = page
    scores = {}
    for ws in ([1, 1], [1e308, 1e308], [5e-324, 5e-324]):
        status, answer = _request(server, "POST", "/compose", _compose_body(paths[:2], weights=ws, k=4))
        assert status == 200, answer
        scores[str(ws)] = [h["score"] for h in answer["result"]["results"]["tinycolor"]]
    first, *rest = scores.values()
    assert all(s == pytest.approx(first) for s in rest) and max(first) > 0.5


# ---- C: pixel bombs -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """12000 x 12000 grey pixels in a few hundred KB (over PIL's warning size, under its error)."""
    return _blank_png(tmp_path_factory.mktemp("bomb") / "bomb.png", 12000, 12000)


def test_pixel_bombs_uploaded_at_once_are_refused_in_bounded_memory(page, bomb):
    server, paths = page
    data = bomb.read_bytes()
    assert len(data) < 1 << 20
    answers: list = [None] * 4

    def upload(i: int) -> None:
        answers[i] = _request(server, "POST", "/query?k=3", body=data)

    rss = _rss_kb("VmRSS")
    _peak_rss_reset()
    threads = [threading.Thread(target=upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    grown = (_rss_kb("VmHWM") - rss) * 1024
    assert [a[0] for a in answers] == [413] * 4
    _one_line(answers[0][1], "too large", "12000 x 12000")
    assert grown < 300 << 20, grown
    # in a composed query too
    status, answer = _request(server, "POST", "/compose", _compose_body([paths[0], bomb]))
    assert status == 413
    _one_line(answer, "image 2", "too large")


def test_uploads_are_decoded_two_at_a_time(page, monkeypatch):
    import relsearch.collection as collection
    from relsearch.view.server import DECODE_SLOTS

    server, paths = page
    real, lock = collection.load_image, threading.Lock()
    state = {"now": 0, "most": 0}

    def counting(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(0.2)
            return real(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(collection, "load_image", counting)
    answers: list = [None] * 6
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(
        i, _request(server, "POST", "/query?k=2", body=paths[i].read_bytes())[0])) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == [200] * 6 and state["most"] == DECODE_SLOTS == 2


def test_sixteen_bit_bomb_from_the_cli_is_one_line_in_bounded_memory(index, tmp_path):
    idx, _ = index
    big = _blank_png(tmp_path / "deep.png", 13000, 13000, bit_depth=16)
    out, peak = _cli_limited(tmp_path, "query", str(big), "--index", str(idx))
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "too large" in out.stderr and "Warning" not in out.stderr
    assert peak < 1 << 30


def test_large_jpeg_decodes_reduced_without_a_warning_line(index, tmp_path):
    idx, paths = index
    big = tmp_path / "big.jpg"
    Image.new("L", (10000, 10000), 90).save(big, quality=50)  # over PIL's warning size; JPEG decodes at 1/8
    out, peak = _cli_limited(tmp_path, "query", str(big), "-k", "2", "--index", str(idx), "--json")
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]
    assert len(json.loads(out.stdout)["results"]["tinycolor"]) == 2 and peak < 1 << 30


# ---- D: deep bodies, stalled and oversized uploads ------------------------------------------

def test_json_depth_ignores_brackets_inside_strings():
    from relsearch.view.extras import json_depth

    assert json_depth(b'{"a": [1, [2]], "b": "[[[[\\"[[["}') == 3
    assert json_depth(b"[" * 1000 + b"]" * 1000) == 1000
    assert json_depth(b"") == 0
    assert json_depth(b'"\\\\" [[ "') == 2  # an escaped backslash ends the string
    t = time.monotonic()
    assert json_depth(b'["' + b'\\"' * 1_000_000) == 1  # an unterminated string of escaped quotes
    assert time.monotonic() - t < 5


@pytest.mark.parametrize("body", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"text": "x", "weights": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"text": "x", "k": ' + b"{" * 100_000,
])
def test_deep_json_is_refused_quickly(page, body):
    server, paths = page
    t = time.monotonic()
    status, answer = _request(server, "POST", "/compose", body)
    assert status == 400 and time.monotonic() - t < 10
    _one_line(answer, "deeper")


def _raw_post(port: int, length: int, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(f"POST /query HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {length}\r\n\r\n".encode()
                 + sent)
    return sock


def _read_all(sock: socket.socket, seconds: float) -> bytes:
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionError):
        pass
    return data


def test_stalled_uploads_time_out_and_hold_a_bounded_number_of_threads(page):
    from relsearch.view.server import MAX_HANDLERS

    server, paths = page
    server.request_timeout = 1.0
    port = server.server_address[1]
    before = threading.active_count()
    socks = [_raw_post(port, 100_000, b"x" * 10) for _ in range(200)]
    try:
        time.sleep(0.5)
        assert threading.active_count() - before <= MAX_HANDLERS + 2
        t = time.monotonic()
        answers = [_read_all(s, 10).split(b"\r\n", 1)[0] for s in socks]
        assert time.monotonic() - t < 15
    finally:
        for s in socks:
            s.close()
    assert all(a.startswith(b"HTTP/1.0 408") or a.startswith(b"HTTP/1.0 503") for a in answers), set(answers)
    assert sum(a.startswith(b"HTTP/1.0 408") for a in answers) >= MAX_HANDLERS // 2
    time.sleep(0.5)
    assert threading.active_count() - before <= 2


def test_a_trickled_upload_is_cut_off_by_the_total_deadline(page):
    server, paths = page
    server.request_timeout = 1.0
    sock = _raw_post(server.server_address[1], 1000, b"")
    t = time.monotonic()
    try:
        # a byte every 0.1 s: each read is quick, the whole upload never arrives
        while not select.select([sock], [], [], 0.1)[0] and time.monotonic() - t < 10:
            sock.sendall(b"x")
        assert time.monotonic() - t < 4
        assert _read_all(sock, 5).startswith(b"HTTP/1.0 408")
    finally:
        sock.close()


@pytest.mark.parametrize("attempt", range(3))
def test_oversized_upload_sees_the_413(page, attempt):
    server, paths = page
    from relsearch.view.server import MAX_UPLOAD

    status, answer = _request(server, "POST", "/query", body=b"\0" * (MAX_UPLOAD + (1 << 20)))
    assert status == 413
    _one_line(answer, "larger than")


def test_a_claimed_huge_upload_is_answered_without_waiting_for_it(page):
    server, paths = page
    sock = _raw_post(server.server_address[1], 10**12, b"x" * 1000)
    try:
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.0 413")  # while the client still "uploads"
    finally:
        sock.close()


def test_server_fills_at_max_handlers_and_recovers(page):
    from relsearch.view.server import MAX_HANDLERS

    server, paths = page
    server.request_timeout = 2.0
    port = server.server_address[1]
    socks = [_raw_post(port, 1000, b"") for _ in range(MAX_HANDLERS)]
    try:
        time.sleep(0.5)
        status, answer = _request(server, "GET", "/")
        assert status == 503 and "busy" in answer["error"]
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while _request(server, "GET", "/")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)


# ---- E: doubled headers ---------------------------------------------------------------------

@pytest.mark.parametrize("hosts", [("127.0.0.1:{port}", "evil.example"), ("127.0.0.1:{port}", "127.0.0.1:{port}"),
                                   ("localhost:{port}", "[::1]:{port}")])
def test_two_host_headers_are_400(page, hosts):
    server, paths = page
    status, answer = _request(server, "GET", "/", hosts=hosts)
    assert status == 400
    _one_line(answer, "Host")
    status, answer = _request(server, "POST", "/query", body=paths[0].read_bytes(), hosts=hosts)
    assert status == 400


def test_two_content_lengths_are_400(page):
    server, paths = page
    body = paths[0].read_bytes()
    status, answer = _request(server, "POST", "/query", body=body,
                              headers=[("Content-Length", str(len(body))), ("Content-Length", "5")])
    assert status == 400
    _one_line(answer, "Content-Length")
