"""Local page for browsing an index: drop or pick an image, see one row per encoder.

Standard library HTTP only, no outside resources. Endpoints:

- ``GET /``            the page (inline CSS and JS; see :mod:`relsearch.view.browse`);
- ``POST /query?k=N&analogy=0|1&explain=0|1``  body = the image bytes; answers
  ``{"html", "result", "timings_ms"}``;
- ``GET /search?id=ID|text=CAPTION&k=N&analogy=0|1&explain=0|1``  the same answer for an
  indexed image (clicked on the page) or an anonymous caption;
- ``POST /compose``, ``GET /dupes``  a second image and a caption beside the first, and the
  duplicate groups (:mod:`relsearch.view.extras`);
- ``GET /browse?page=N``  a page of the collection grid, newest first (:mod:`relsearch.view.grid`);
- ``GET /thumb/ID``    JPEG thumbnail of a record of the index;
- ``GET /file/ID``     the record's file itself.

Only files that are records of the index can be read through it (by id, never by path),
and only while they still hold the content that was indexed (:mod:`relsearch.view.files`).
It binds 127.0.0.1 unless told otherwise, and answers only requests whose ``Host`` names
the server itself (loopback name and port): a page on another site that rebinds its DNS
name to 127.0.0.1 sends its own name and is refused.

Every request is bounded: a body must arrive within ``REQUEST_TIMEOUT`` (408), be at most
``MAX_UPLOAD`` bytes (413, told to the client before the rest of the body is dropped) and, for
``/compose``, nest at most a few levels; uploads decode ``DECODE_SLOTS`` at a time under the
query pixel budget (413); at most ``MAX_HANDLERS`` connections hold a thread (503 beyond).
Refusals are JSON ``{"error": one line}``; nothing reaches stderr as a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import mimetypes
import os
import re
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from relsearch.errors import RelsearchError, first_line
from relsearch.view import browse, extras
from relsearch.view.files import FileRefused, indexed_thumbnail, read_indexed
from relsearch.view.html import (
    QUERY_PX,
    STYLE,
    THUMB_PX,
    encode_jpeg,
    jpeg_data_uri,
)

log = logging.getLogger(__name__)
# \x00-\x1f and \x7f-\x9f written as \xNN, as http.server does from Python 3.12 on
_CONTROL_CHARS = {c: rf"\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}

#: Largest upload accepted, in bytes: bigger than any photo, small enough to hold in memory.
MAX_UPLOAD = 32 * 1024 * 1024
MAX_K = 200
#: Listen queue: a page of thumbnails opens dozens of connections at once; the standard
#: library's 5 drops (then resets) most of them while one slow query holds the server.
LISTEN_BACKLOG = 256
#: Seconds a request may take to arrive (each read, and the whole body): a client that
#: stalls mid-upload would otherwise hold its thread for ever.
REQUEST_TIMEOUT = 30.0
#: Connections handled at once; more are answered 503 at once (each holds a thread).
MAX_HANDLERS = 64
#: Uploads decoded at once: a decode holds the full-size image, the searches are serialised anyway.
DECODE_SLOTS = 2
#: Body bytes read and dropped after refusing a request, so the client sees the refusal
#: rather than a reset; a bigger body is cut off.
MAX_DRAIN = 2 * MAX_UPLOAD
#: Seconds a refused connection stays open after our answer, reading what the client still sends.
LINGER = 2.0
#: Record ids are 8-byte keys in the store: plain decimal digits below 2**63.
_ID = re.compile(r"[0-9]{1,19}")
_LENGTH = re.compile(r"[0-9]{1,18}")
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


class Refused(RelsearchError):
    """A request the page answers with ``status`` (400 by default) and the message."""

    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class TooLarge(Refused):
    status = 413


class Busy(Refused):
    status = 503


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
        self._tiles: tuple[int, list[Any]] | None = None  # (generation, grid tiles) of the last /browse
        self.searcher = Searcher(index, encoders=encoders, device=device)
        # One query at a time: torch, FAISS and the LMDB reader are shared by all handler threads.
        self.lock = threading.Lock()
        self.decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
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
        return read_indexed(rec, store.get_path, self.searcher.opened.manifest.collection_roots())

    def record_thumbnail(self, record_id: int) -> bytes | None:
        """JPEG thumbnail of a record's indexed content; None for no such record."""
        store = self.searcher.opened.store
        rec = store.get_records([record_id]).get(record_id)
        if rec is None:
            return None
        return indexed_thumbnail(rec, store.get_path, self.searcher.opened.manifest.collection_roots(), THUMB_PX)

    def decode_upload(self, data: bytes, what: str = "the upload", name: str = "") -> Any:
        """An uploaded image, decoded as a query image is; at most DECODE_SLOTS at a time.

        ``name`` is the file name the page sent: its extension, where it is an image format's
        (a camera RAW is told by its extension), names the temporary file.

        Raises :class:`TooLarge` past the query pixel budget, :class:`Busy` when no decode
        slot frees up in time, :class:`Refused` for anything that is not an image.
        """
        from relsearch.collection import DecodeError, load_image
        from relsearch.collection.decode import TooManyPixels
        from relsearch.collection.formats import IMAGE_EXTENSIONS
        from relsearch.query import QUERY_MAX_PIXELS

        if not self.decode_slots.acquire(timeout=REQUEST_TIMEOUT):
            raise Busy("the server is decoding other uploads; try again")
        try:
            # The decoder works on files (EXIF, modes, draft mode), so the upload takes a
            # short trip through a private temporary folder.
            with tempfile.TemporaryDirectory(prefix="relsearch-upload-") as tmp:
                ext = os.path.splitext(name)[1].lower()
                path = os.path.join(tmp, "query" + (ext if ext in IMAGE_EXTENSIONS else ""))
                with open(path, "wb") as fh:
                    fh.write(data)
                return load_image(path, max_side=512, max_pixels=QUERY_MAX_PIXELS)
        except TooManyPixels as exc:
            raise TooLarge(f"{what} is too large to search with ({exc.reason})") from exc
        except DecodeError as exc:
            raise Refused(f"{what} is not a readable image ({exc.reason})") from exc
        finally:
            self.decode_slots.release()

    def query_bytes(self, data: bytes, k: int, name: str = "upload", analogy: bool = False,
                    explain: bool = False) -> dict[str, Any]:
        """Search with an uploaded image; the answer carries the rendered rows."""
        from relsearch.composed import search_image

        image = self.decode_upload(data, name=name)
        with self.lock:
            result = search_image(self.searcher, image, k, label=name)
            result, show = browse.finish(self.searcher, result, k, analogy, explain, self.captions)
        return browse.answer(result, jpeg_data_uri(encode_jpeg(image, QUERY_PX)), name, show)

    def search(self, params: dict[str, list[str]], k: int) -> dict[str, Any]:
        """``GET /search``: an indexed image (``id``) or a caption (``text``)."""
        from relsearch.composed import TEXT_PREFIX, QueryTerm, search_composed

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
                result = search_composed(self.searcher, [QueryTerm(TEXT_PREFIX + label)], k)
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
        decoded = {f"image {i}": self.decode_upload(data, f"image {i}") for i, data in enumerate(images, 1)}
        with self.lock:
            self.searcher.refresh()
            return extras.compose_answer(self.searcher, decoded, text, weights, k)

    def dupes(self, params: dict[str, list[str]]) -> dict[str, Any]:
        """``GET /dupes?threshold=T``: exact and near-duplicate groups of the index."""
        from relsearch.dupes import DEFAULT_THRESHOLD

        try:
            threshold = float(params.get("threshold", [DEFAULT_THRESHOLD])[0])
        except ValueError:
            raise RelsearchError("threshold must be a number in (0, 1]") from None
        return extras.dupes_answer(self.index, threshold)

    def browse(self, params: dict[str, list[str]]) -> dict[str, Any]:
        """``GET /browse?page=N``: one page of the collection grid, most recent first."""
        from relsearch.view import grid

        raw = params.get("page", ["0"])[0]
        if not raw.isdigit() or len(raw) > 9:
            raise RelsearchError(f"page must be a number, got {raw!r}")
        with self.lock:
            self.searcher.refresh()
            generation = self.searcher.generation
            if self._tiles is None or self._tiles[0] != generation:  # listed once per build
                self._tiles = (generation, grid.tiles(self.searcher.opened.store.all_paths()))
            tiles = self._tiles[1]
            roots = self.searcher.opened.manifest.collection_roots()
        return grid.page_of(tiles, int(raw), roots)

    def close(self) -> None:
        self.searcher.close()


class _Handler(BaseHTTPRequestHandler):
    """One connection of the page; the app is ``self.server.app``."""

    server_version = "relsearch"
    server: _Server
    #: body bytes announced by the request and not read yet (drained after a refusal)
    _unread = 0
    _answered = False

    def setup(self) -> None:
        self.timeout = self.server.request_timeout  # every read and write on this socket
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (base-class name)
        # Request lines at DEBUG (``relsearch -vv view``), so the terminal stays quiet by default;
        # errors reach the page as JSON. Control characters in a hostile request line are escaped.
        if log.isEnabledFor(logging.DEBUG):
            message = (format % args).translate(_CONTROL_CHARS)
            log.debug("%s %s", self.address_string(), message)

    def _send(self, status: int, body: bytes, ctype: str, cache: bool = False) -> None:
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, default=str).encode(), "application/json")

    def _refuse(self, status: int, message: str) -> None:
        """Answer an error, then read what is left of the body (bounded) and close.

        Closing a socket with unread data resets the connection, and the client would see
        the reset instead of the answer: so the body is drained first, and the close lingers.
        """
        self.close_connection = True
        try:
            if not self._answered:
                self._json(status, {"error": message})
                self.wfile.flush()
            self._drain()
        except OSError:
            pass  # the client is gone or stalled: nothing more to tell it

    def _drain(self) -> None:
        if self.command != "POST":
            return
        left, deadline = min(self._unread, MAX_DRAIN), time.monotonic() + self.server.request_timeout
        while left > 0 and time.monotonic() < deadline:
            chunk = self.rfile.read1(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
        self._unread = 0
        self.connection.shutdown(socket.SHUT_WR)  # our answer is complete: the client reads it to EOF
        self.connection.settimeout(LINGER)
        end = time.monotonic() + LINGER
        while time.monotonic() < end and self.connection.recv(1 << 16):
            pass

    def _guarded(self, answer: Any) -> None:
        """Run ``answer``; every failure becomes a JSON error, never a traceback on stderr."""
        try:
            answer()
        except RelsearchError as exc:
            self._refuse(getattr(exc, "status", 400), str(exc))
        except TimeoutError:
            self._unread = 0  # a stalled client: no waiting for the rest of its body
            self._refuse(408, f"the request did not arrive within {self.server.request_timeout:g} s")
        except ConnectionError:
            self.close_connection = True  # the client left
        except Exception as exc:
            log.error("%s %s failed: %s: %s", self.command, self.path[:200], type(exc).__name__, first_line(exc))
            log.debug("traceback of the failed request", exc_info=True)
            self._refuse(500, f"internal error: {type(exc).__name__}")

    def _check_request(self) -> None:
        """Refuse requests for another host name, from another site's page, or with doubled headers."""
        bound, port = self.server.server_address[:2]
        hosts = self.headers.get_all("Host") or []
        if len(hosts) > 1:  # which one would a proxy in front have checked? (RFC 9112: 400)
            raise Refused("more than one Host header")
        if len(self.headers.get_all("Content-Length") or []) > 1:
            raise Refused("more than one Content-Length header")
        if not host_allowed(hosts[0] if hosts else None, port, bound):
            raise Refused("unknown Host header: this page answers only to "
                          f"127.0.0.1:{port}, localhost:{port} or [::1]:{port}")
        origin = self.headers.get("Origin")
        if origin is not None:
            o = urlsplit(origin)
            if o.scheme not in ("http", "https") or not host_allowed(o.netloc, port, bound):
                raise Refused(f"requests from another origin ({origin}) are refused", status=403)

    def _record_file(self, kind: str, raw: str) -> None:
        app = self.server.app
        record_id = parse_record_id(raw)
        if record_id is None:
            raise Refused(f"bad image id {raw!r}: expected a number below 2**63")
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
            raise Refused(exc.reason, status=404) from None
        raise Refused("no such image in this index", status=404)

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _get(self) -> None:
        app = self.server.app
        self._check_request()
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if url.path in ("/", "/index.html"):
            # "replace": an index folder whose name is not UTF-8 shows with a replacement character
            self._send(200, app.page().encode("utf-8", "replace"), "text/html; charset=utf-8")
        elif url.path.rstrip("/") == "/search":
            params = parse_qs(url.query)
            self._json(200, app.search(params, _k(params, app.k)))
        elif url.path.rstrip("/") == "/browse":
            self._json(200, app.browse(parse_qs(url.query)))
        elif url.path.rstrip("/") == "/dupes":
            self._json(200, app.dupes(parse_qs(url.query)))
        elif len(parts) in (1, 2) and parts[0] in ("thumb", "file"):
            self._record_file(parts[0], unquote(parts[1]) if len(parts) == 2 else "")
        else:
            raise Refused(f"no page {url.path}", status=404)

    def _post(self) -> None:
        app = self.server.app
        lengths = self.headers.get_all("Content-Length") or []
        length = int(lengths[0]) if len(lengths) == 1 and _LENGTH.fullmatch(lengths[0].strip()) else None
        self._unread = length or 0
        self._check_request()
        url = urlsplit(self.path)
        endpoint = url.path.rstrip("/")
        if endpoint not in ("/query", "/compose"):
            raise Refused(f"no endpoint {url.path}", status=404)
        if length is None:
            raise Refused("Content-Length required", status=411)
        if length == 0:
            raise Refused("empty upload")
        if length > MAX_UPLOAD:
            raise TooLarge(f"upload larger than {MAX_UPLOAD // 2**20} MB")
        query = parse_qs(url.query)
        k = None if endpoint == "/compose" else _k(query, app.k)
        data = self._body(length)
        if endpoint == "/compose":
            self._json(200, app.compose(data))
            return
        name = query.get("name", ["upload"])[0]
        self._json(200, app.query_bytes(data, k, name, browse.flag(query, "analogy"), browse.flag(query, "explain")))

    def _body(self, length: int) -> bytes:
        """The request body, within REQUEST_TIMEOUT in all (a trickle does not reset the clock)."""
        deadline = time.monotonic() + self.server.request_timeout
        parts: list[bytes] = []
        while self._unread > 0:
            if time.monotonic() > deadline:
                raise TimeoutError
            chunk = self.rfile.read1(min(self._unread, 1 << 20))
            if not chunk:
                raise Refused(f"the upload ended after {length - self._unread} of {length} bytes")
            parts.append(chunk)
            self._unread -= len(chunk)
        return b"".join(parts)


def _k(params: dict[str, list[str]], default: int) -> int:
    try:
        k = int(params.get("k", [default])[0])
    except ValueError:
        k = 0
    if not 1 <= k <= MAX_K:
        raise Refused(f"k must be an integer between 1 and {MAX_K}")
    return k


def make_server(
    index: str | os.PathLike[str],
    host: str = "127.0.0.1",
    port: int = 8765,
    encoders: str | None = None,
    device: str | None = None,
    k: int = 20,
    captions: str | None = None,
    request_timeout: float = REQUEST_TIMEOUT,
) -> ThreadingHTTPServer:
    """A ready (not yet serving) HTTP server for ``index``; ``port=0`` picks a free one.

    Call ``serve_forever()``; ``shutdown()`` then ``server_close()`` stop it (the latter
    also closes the index). ``request_timeout`` bounds how long a request may take to arrive.
    """
    app = ViewApp(index, encoders=encoders, device=device, k=k, captions=captions)
    try:
        server = _Server((host, port), _Handler)
    except OSError as exc:
        app.close()
        raise RelsearchError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    server.app = app
    server.request_timeout = request_timeout
    return server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG
    app: ViewApp
    request_timeout = REQUEST_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handlers = threading.BoundedSemaphore(MAX_HANDLERS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._handlers.acquire(blocking=False):
            # Full: answer at once rather than queue a thread per connection without end.
            try:
                request.settimeout(1.0)
                body = json.dumps({"error": "the server is busy; try again"}).encode()
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._handlers.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._handlers.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The standard library prints a traceback on stderr; one line (and a dropped
        # connection is not even news).
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("connection from %s ended: %s", client_address, exc)
        else:
            log.error("connection from %s failed: %s: %s", client_address, type(exc).__name__, first_line(exc))
        log.debug("traceback", exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        if getattr(self, "app", None) is not None:
            self.app.close()
            self.app = None  # type: ignore[assignment]

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"
