"""Local page for browsing an index: drop or pick an image, see one row per encoder.

Standard library HTTP only, no outside resources. Endpoints:

- ``GET /``            the page (inline CSS and JS; see :mod:`relsearch.view.browse`);
- ``POST /query?k=N&analogy=0|1&explain=0|1``  body = the image bytes; answers
  ``{"html", "result", "timings_ms"}``;
- ``GET /search?id=ID|text=CAPTION&k=N&analogy=0|1&explain=0|1``  the same answer for an
  indexed image (clicked on the page) or an anonymous caption;
- ``POST /compose``, ``GET /dupes``  a second image and a caption beside the first, and the
  duplicate groups (:mod:`relsearch.view.extras`);
- ``GET /thumb/ID``    JPEG thumbnail of a record of the index;
- ``GET /file/ID``     the record's file itself.

Only files that are records of the index can be read through it (by id, never by path),
and only while they still hold the content that was indexed (:mod:`relsearch.view.files`).
It binds 127.0.0.1 unless told otherwise, and answers only requests whose ``Host`` names
the server itself (loopback name and port): a page on another site that rebinds its DNS
name to 127.0.0.1 sends its own name and is refused.
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes
import os
import re
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from relsearch.errors import RelsearchError
from relsearch.view import browse, extras
from relsearch.view.files import FileRefused, indexed_thumbnail, read_indexed
from relsearch.view.html import (
    QUERY_PX,
    STYLE,
    THUMB_PX,
    encode_jpeg,
    jpeg_data_uri,
)

#: Largest upload accepted, in bytes: bigger than any photo, small enough to hold in memory.
MAX_UPLOAD = 32 * 1024 * 1024
MAX_K = 200
#: Listen queue: a page of thumbnails opens dozens of connections at once; the standard
#: library's 5 drops (then resets) most of them while one slow query holds the server.
LISTEN_BACKLOG = 256
#: Record ids are 8-byte keys in the store: plain decimal digits below 2**63.
_ID = re.compile(r"[0-9]{1,19}")
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_HOST = re.compile(r"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9.-]+))(?::(?P<port>[0-9]{1,5}))?")


def parse_record_id(raw: str) -> int | None:
    """The record id in a URL segment, or None when it is not one (sign, spaces, too big...)."""
    if not _ID.fullmatch(raw):
        return None
    value = int(raw)
    return value if value < 2**63 else None


def host_allowed(header: str | None, port: int, bound: str) -> bool:
    """Whether a request's ``Host`` header names this server.

    Accepted: ``127.0.0.1``, ``localhost`` or ``[::1]`` with the server's port, the
    address it was bound to, and, when bound to every interface, any IP address
    (a rebinding attack always arrives with a DNS name, never with an address).
    """
    if not header:
        return False
    m = _HOST.fullmatch(header.strip().lower())
    if m is None:
        return False
    given = m.group("port")
    if (int(given) if given else 80) != port:
        return False
    name = m.group("v6") or m.group("name") or ""
    bound = bound.strip("[]").lower()
    if name in _LOOPBACK_NAMES or (bound not in _WILDCARDS and name == bound):
        return True
    if bound in _WILDCARDS:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return False


class ViewApp:
    """What the HTTP handler needs: a warm :class:`~relsearch.query.Searcher` behind a lock."""

    def __init__(self, index: str | os.PathLike[str], encoders: str | None = None, device: str | None = None,
                 k: int = 20, captions: str | None = None) -> None:
        from relsearch.query import Searcher

        if not 1 <= k <= MAX_K:
            raise RelsearchError(f"-k must be between 1 and {MAX_K}, got {k}")
        self.index = Path(index)
        self.k = k
        self.captions = captions
        self.searcher = Searcher(index, encoders=encoders, device=device)
        # One query at a time: torch, FAISS and the LMDB reader are shared by all handler threads.
        self.lock = threading.Lock()
        from relsearch.threads import use_query_threads

        use_query_threads()  # one image per request: see relsearch.threads
        for name in self.searcher.encoders:  # load weights now, not on the first upload
            self.searcher.encoder(name)

    def page(self) -> str:
        kinds = {n: e.kind for n, e in self.searcher.encoders.items()}
        with self.lock:
            count = self.searcher.opened.store.count("records")
        return browse.page_html(str(self.index), kinds, count, self.k, MAX_K, STYLE)

    def record_file(self, record_id: int) -> tuple[str, bytes] | None:
        """(path, bytes) of a record's file as indexed; None for no such record.

        Raises :class:`~relsearch.view.files.FileRefused` when no path holds it any more.
        """
        # LMDB readers are safe across threads: no need to wait behind a running query.
        store = self.searcher.opened.store
        rec = store.get_records([record_id]).get(record_id)
        if rec is None:
            return None
        return read_indexed(rec, store.get_path, self.searcher.opened.manifest.collection)

    def record_thumbnail(self, record_id: int) -> bytes | None:
        """JPEG thumbnail of a record's indexed content; None for no such record."""
        store = self.searcher.opened.store
        rec = store.get_records([record_id]).get(record_id)
        if rec is None:
            return None
        return indexed_thumbnail(rec, store.get_path, self.searcher.opened.manifest.collection, THUMB_PX)

    def query_bytes(self, data: bytes, k: int, name: str = "upload", analogy: bool = False,
                    explain: bool = False) -> dict[str, Any]:
        """Search with an uploaded image; the answer carries the rendered rows."""
        from relsearch.collection import DecodeError, load_image

        # The decoder works on files (EXIF, modes, draft mode), so the upload takes a short
        # trip through a private temporary folder.
        with tempfile.TemporaryDirectory(prefix="relsearch-upload-") as tmp:
            path = os.path.join(tmp, "query")
            with open(path, "wb") as fh:
                fh.write(data)
            try:
                image = load_image(path, max_side=512)
            except DecodeError as exc:
                raise RelsearchError(f"the upload is not a readable image ({exc.reason})") from exc
        with self.lock:
            result = self.searcher.query_image(image, k=k, label=name)
            result, show = browse.finish(self.searcher, result, k, analogy, explain, self.captions)
        return browse.answer(result, jpeg_data_uri(encode_jpeg(image, QUERY_PX)), name, show)

    def search(self, params: dict[str, list[str]], k: int) -> dict[str, Any]:
        """``GET /search``: an indexed image (``id``) or a caption (``text``)."""
        analogy, explain = browse.flag(params, "analogy"), browse.flag(params, "explain")
        with self.lock:
            self.searcher.refresh()  # a rebuild since the last query: search the new generation
            if "id" in params:
                record_id = parse_record_id(params["id"][0])
                if record_id is None:
                    raise RelsearchError(f"bad image id {params['id'][0]!r}: expected a number below 2**63")
                result = browse.record_result(self.searcher, record_id, k)
                label, src = result.query, f"thumb/{record_id}"
            elif params.get("text", [""])[0].strip():
                label, src = params["text"][0].strip(), None
                result = self.searcher.query_text(label, k)
            else:
                raise RelsearchError("search needs id=IMAGE_ID or text=CAPTION")
            result, show = browse.finish(self.searcher, result, k, analogy, explain, self.captions)
        return browse.answer(result, src, label, show)

    def compose(self, body: bytes) -> dict[str, Any]:
        """``POST /compose``: uploaded images and a caption, combined (see :mod:`relsearch.view.extras`)."""
        images, text, weights, k = extras.parse_compose(body)
        k = self.k if k is None else k
        if not 1 <= k <= MAX_K:
            raise RelsearchError(f"k must be an integer between 1 and {MAX_K}")
        with self.lock:
            self.searcher.refresh()
            return extras.compose_answer(self.searcher, images, text, weights, k)

    def dupes(self, params: dict[str, list[str]]) -> dict[str, Any]:
        """``GET /dupes?threshold=T``: exact and near-duplicate groups of the index."""
        from relsearch.dupes import DEFAULT_THRESHOLD

        try:
            threshold = float(params.get("threshold", [DEFAULT_THRESHOLD])[0])
        except ValueError:
            raise RelsearchError("threshold must be a number in (0, 1]") from None
        return extras.dupes_answer(self.index, threshold)

    def close(self) -> None:
        self.searcher.close()


def _handler(app: ViewApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "relsearch"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (base-class name)
            pass  # a quiet terminal; errors reach the page as JSON

        def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: Any) -> None:
            self._send(status, json.dumps(obj, default=str).encode(), "application/json")

        def _discard_body(self) -> None:
            # Answering before the upload is read would make the close reset the connection,
            # and the client would see the reset instead of our answer.
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                return
            while 0 < length <= MAX_UPLOAD:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)

        def _trusted(self) -> bool:
            """Refuse (and answer) requests for another host name or from another site's page."""
            bound, port = self.server.server_address[:2]
            refusal: tuple[int, str] | None = None
            origin = self.headers.get("Origin")
            if not host_allowed(self.headers.get("Host"), port, bound):
                refusal = (400, "unknown Host header: this page answers only to "
                                f"127.0.0.1:{port}, localhost:{port} or [::1]:{port}")
            elif origin is not None:
                o = urlsplit(origin)
                if o.scheme not in ("http", "https") or not host_allowed(o.netloc, port, bound):
                    refusal = (403, f"requests from another origin ({origin}) are refused")
            if refusal is None:
                return True
            if self.command == "POST":
                self._discard_body()
            self._json(refusal[0], {"error": refusal[1]})
            return False

        def _record_file(self, kind: str, raw: str) -> None:
            record_id = parse_record_id(raw)
            if record_id is None:
                self._json(400, {"error": f"bad image id {raw!r}: expected a number below 2**63"})
                return
            try:
                if kind == "thumb":
                    thumb = app.record_thumbnail(record_id)
                    if thumb is not None:
                        self._send(200, thumb, "image/jpeg", cache=True)
                        return
                else:
                    found = app.record_file(record_id)
                    if found is not None:
                        path, data = found
                        self._send(200, data, mimetypes.guess_type(path)[0] or "application/octet-stream")
                        return
            except FileRefused as exc:
                self._json(404, {"error": exc.reason})
                return
            self._json(404, {"error": "no such image in this index"})

        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            if not self._trusted():
                return
            url = urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if url.path in ("/", "/index.html"):
                self._send(200, app.page().encode(), "text/html; charset=utf-8")
            elif url.path.rstrip("/") == "/search":
                self._search(parse_qs(url.query))
            elif url.path.rstrip("/") == "/dupes":
                try:
                    self._json(200, app.dupes(parse_qs(url.query)))
                except RelsearchError as exc:
                    self._json(400, {"error": str(exc)})
            elif len(parts) in (1, 2) and parts[0] in ("thumb", "file"):
                self._record_file(parts[0], unquote(parts[1]) if len(parts) == 2 else "")
            else:
                self._json(404, {"error": f"no page {url.path}"})

        def do_POST(self) -> None:  # noqa: N802
            if not self._trusted():
                return
            url = urlsplit(self.path)
            if url.path.rstrip("/") not in ("/query", "/compose"):
                self._discard_body()
                self._json(404, {"error": f"no endpoint {url.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._json(411, {"error": "Content-Length required"})
                return
            if length <= 0:
                self._json(400, {"error": "empty upload"})
                return
            if length > MAX_UPLOAD:
                self._json(413, {"error": f"upload larger than {MAX_UPLOAD // 2**20} MB"})
                return
            data = self.rfile.read(length)
            if url.path.rstrip("/") == "/compose":
                try:
                    self._json(200, app.compose(data))
                except RelsearchError as exc:
                    self._json(400, {"error": str(exc)})
                return
            query = parse_qs(url.query)
            try:
                k = int(query.get("k", [app.k])[0])
                if not 1 <= k <= MAX_K:
                    raise ValueError
            except ValueError:
                self._json(400, {"error": f"k must be an integer between 1 and {MAX_K}"})
                return
            name = query.get("name", ["upload"])[0]
            try:
                self._json(200, app.query_bytes(data, k, name, browse.flag(query, "analogy"),
                                                browse.flag(query, "explain")))
            except RelsearchError as exc:
                self._json(400, {"error": str(exc)})

        def _search(self, params: dict[str, list[str]]) -> None:
            try:
                k = int(params.get("k", [app.k])[0])
                if not 1 <= k <= MAX_K:
                    raise ValueError
            except ValueError:
                self._json(400, {"error": f"k must be an integer between 1 and {MAX_K}"})
                return
            try:
                self._json(200, app.search(params, k))
            except RelsearchError as exc:
                self._json(400, {"error": str(exc)})

    return Handler


def make_server(
    index: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8765,
    encoders: str | None = None,
    device: str | None = None,
    k: int = 20,
    captions: str | None = None,
) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server for ``index``; ``port=0`` picks a free one.

    Call ``serve_forever()``; ``shutdown()`` then ``server_close()`` stop it (the latter
    also closes the index).
    """
    app = ViewApp(index, encoders=encoders, device=device, k=k, captions=captions)
    try:
        server = _Server((host, port), _handler(app))
    except OSError as exc:
        app.close()
        raise RelsearchError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    server.app = app
    return server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    app: ViewApp

    def server_close(self) -> None:
        super().server_close()
        if getattr(self, "app", None) is not None:
            self.app.close()
            self.app = None  # type: ignore[assignment]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"
