"""Local page for browsing an index: drop or pick an image, see one row per encoder.

Standard library HTTP only, no outside resources. Endpoints:

- ``GET /``            the page (inline CSS and JS; see :mod:`relsearch.view.browse`);
- ``POST /query?k=N&analogy=0|1&explain=0|1``  body = the image bytes; answers
  ``{"html", "result", "timings_ms"}``;
- ``GET /search?id=ID|text=CAPTION&k=N&analogy=0|1&explain=0|1``  the same answer for an
  indexed image (clicked on the page) or an anonymous caption;
- ``GET /thumb/ID``    JPEG thumbnail of a record of the index;
- ``GET /file/ID``     the record's file itself.

Only files that are records of the index can be read through it (by id, never by path).
It binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import mimetypes
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from relsearch.errors import RelsearchError
from relsearch.view import browse
from relsearch.view.html import (
    QUERY_PX,
    STYLE,
    THUMB_PX,
    encode_jpeg,
    file_mtime_ns,
    jpeg_data_uri,
    thumbnail_jpeg,
)

#: Largest upload accepted, in bytes: bigger than any photo, small enough to hold in memory.
MAX_UPLOAD = 32 * 1024 * 1024
MAX_K = 200

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

    def record_path(self, record_id: int) -> str | None:
        with self.lock:
            rec = self.searcher.opened.store.get_records([record_id]).get(record_id)
        return rec.path if rec is not None else None

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
            if "id" in params:
                try:
                    record_id = int(params["id"][0])
                except ValueError:
                    raise RelsearchError("id must be an integer") from None
                result = browse.record_result(self.searcher, record_id, k)
                label, src = result.query, f"thumb/{record_id}"
            elif params.get("text", [""])[0].strip():
                label, src = params["text"][0].strip(), None
                result = self.searcher.query_text(label, k)
            else:
                raise RelsearchError("search needs id=IMAGE_ID or text=CAPTION")
            result, show = browse.finish(self.searcher, result, k, analogy, explain, self.captions)
        return browse.answer(result, src, label, show)

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

        def _record(self, raw: str) -> str | None:
            try:
                return app.record_path(int(raw))
            except ValueError:
                return None

        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            url = urlsplit(self.path)
            parts = url.path.strip("/").split("/")
            if url.path in ("/", "/index.html"):
                self._send(200, app.page().encode(), "text/html; charset=utf-8")
            elif url.path.rstrip("/") == "/search":
                self._search(parse_qs(url.query))
            elif len(parts) == 2 and parts[0] in ("thumb", "file"):
                path = self._record(parts[1])
                if path is None:
                    self._json(404, {"error": "no such image in this index"})
                elif parts[0] == "thumb":
                    data = thumbnail_jpeg(path, THUMB_PX, file_mtime_ns(path))
                    if data is None:
                        self._json(404, {"error": f"{path} cannot be read"})
                    else:
                        self._send(200, data, "image/jpeg", cache=True)
                else:
                    try:
                        data = Path(path).read_bytes()
                    except OSError:
                        self._json(404, {"error": f"{path} cannot be read"})
                        return
                    self._send(200, data, mimetypes.guess_type(path)[0] or "application/octet-stream")
            else:
                self._json(404, {"error": f"no page {url.path}"})

        def do_POST(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            if url.path.rstrip("/") != "/query":
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
