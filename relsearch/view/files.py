"""Reading a record's file for the local page: the bytes it was indexed from, or nothing.

A path in the index is only a name; between the build and the request the file may
have been edited, replaced by another picture, by a FIFO, or by a symlink to
``/etc/passwd``. So a file is served only when its content hash is the record's
``sha256``, and a file reached outside the collection folder (through a link) only
when, in addition, its size and mtime are those the build stored for that path,
i.e. when it was indexed through that very link.

The file is opened once, checked and read through the same descriptor, so a swap
between check and read cannot slip another file in.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from relsearch.store import PathEntry, Record

_CHUNK = 1 << 20
#: /proc/self/fd/N names the open file itself (Linux); elsewhere the path is reopened.
_FD_DIR = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else None


class FileRefused(Exception):
    """No path of the record holds what was indexed; ``reason`` says why (first path's)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class OpenedFile:
    """A verified open file: ``path`` as indexed, ``fd_path`` to reopen exactly this file."""

    path: str
    fd: int
    fd_path: str
    sha256: str


class _Verified:
    """(dev, inode, size, mtime, ctime) -> sha256 already computed: repeat requests skip the hash.

    ctime changes on every write, rename or chmod and cannot be set by a user, so
    a file edited in place after hashing never matches its old entry.
    """

    def __init__(self, size: int = 4096) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._size = size

    def get(self, key: tuple[int, ...]) -> str | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[int, ...], sha: str) -> None:
        with self._lock:
            self._items[key] = sha
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_VERIFIED = _Verified()


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def read_fd(fd: int) -> bytes:
    """The whole file behind ``fd``, from offset 0."""
    parts = []
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _real_path(fd: int, path: str) -> str:
    if _FD_DIR is not None:
        try:
            return os.readlink(f"{_FD_DIR}/{fd}")
        except OSError:
            pass
    return os.path.realpath(path)


def _check_one(path: str, record: Record, entry: PathEntry | None, roots: list[str],
               check_hash: bool) -> tuple[int, str]:
    """Open ``path`` and prove it holds ``record``; returns (fd, reason-if-refused).

    Without ``check_hash`` the caller hashes what it reads itself.
    """
    try:
        # O_NONBLOCK: a FIFO put in place of an image must not hang the request.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return -1, f"{path} cannot be read ({exc.strerror or exc})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _refuse(fd, f"{path} is no longer a regular file")
        if st.st_size != record.size:
            return _refuse(fd, f"{path} has changed since it was indexed; rebuild the index")
        real = _real_path(fd, path)
        if not any(_inside(real, root) for root in roots):
            # Outside the collection: only the very file the build read through this link.
            if entry is None or (entry.size, entry.mtime_ns) != (st.st_size, st.st_mtime_ns):
                return _refuse(fd, f"{path} has changed since it was indexed (it now leads outside "
                                   "the collection); rebuild the index")
        if not check_hash:
            return fd, ""
        key = _identity(st)
        sha = _VERIFIED.get(key)
        if sha is None:
            sha = _hash_fd(fd)
            if _identity(os.fstat(fd)) == key:  # not written to while we hashed it
                _VERIFIED.put(key, sha)
        if sha != record.sha256:
            return _refuse(fd, f"{path} has changed since it was indexed; rebuild the index")
        return fd, ""
    except OSError as exc:
        return _refuse(fd, f"{path} cannot be read ({exc.strerror or exc})")
    except BaseException:
        os.close(fd)
        raise


def _refuse(fd: int, reason: str) -> tuple[int, str]:
    os.close(fd)
    return -1, reason


@contextmanager
def open_indexed(record: Record, path_entry: Callable[[str], PathEntry | None],
                 collection: str | list[str], check_hash: bool = True) -> Iterator[OpenedFile]:
    """Open the first path of ``record`` that still holds its indexed content.

    ``path_entry(path)`` gives what the build stored for a path (size, mtime);
    ``collection`` is the collection folder (or its folders). Raises :class:`FileRefused` when no
    path qualifies. The descriptor is closed on leaving the block. With
    ``check_hash=False`` the content is not hashed here: the caller must.
    """
    roots = [os.path.realpath(c) for c in ([collection] if isinstance(collection, str) else collection)]
    first_reason = ""
    for path in record.paths:
        fd, reason = _check_one(path, record, path_entry(path), roots, check_hash)
        if fd < 0:
            first_reason = first_reason or reason
            continue
        try:
            fd_path = f"{_FD_DIR}/{fd}" if _FD_DIR is not None else path
            yield OpenedFile(path, fd, fd_path, record.sha256)
        finally:
            os.close(fd)
        return
    raise FileRefused(first_reason or f"record {record.id} has no file")


def read_indexed(record: Record, path_entry: Callable[[str], PathEntry | None],
                 collection: str | list[str]) -> tuple[str, bytes]:
    """(path, bytes) of the record's file; the bytes returned are the bytes hashed."""
    first_reason = ""
    for path in record.paths:
        # One path at a time, so an edited first copy falls back to an intact second.
        single = Record(**{**record.__dict__, "paths": [path]})
        try:
            with open_indexed(single, path_entry, collection, check_hash=False) as opened:
                data = read_fd(opened.fd)
        except FileRefused as exc:
            first_reason = first_reason or exc.reason
            continue
        if hashlib.sha256(data).hexdigest() == record.sha256:
            return path, data
        first_reason = first_reason or f"{path} has changed since it was indexed; rebuild the index"
    raise FileRefused(first_reason or f"record {record.id} has no file")


class _Thumbs:
    """sha256 + size -> JPEG: a thumbnail belongs to content, not to a path."""

    def __init__(self, size: int = 2048) -> None:
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._size = size

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[str, int], data: bytes) -> None:
        with self._lock:
            self._items[key] = data
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_THUMBS = _Thumbs()


def indexed_thumbnail(record: Record, path_entry: Callable[[str], PathEntry | None],
                      collection: str | list[str], size: int) -> bytes:
    """JPEG thumbnail of the record's indexed content; :class:`FileRefused` when no path holds it."""
    from relsearch.collection import DecodeError, load_image
    from relsearch.view.html import encode_jpeg

    key = (record.sha256, size)
    cached = _THUMBS.get(key)
    with open_indexed(record, path_entry, collection) as opened:
        if cached is not None:
            return cached
        before = _identity(os.fstat(opened.fd))
        try:
            data = encode_jpeg(load_image(opened.fd_path, max_side=max(size * 2, 64)), size)
        except (DecodeError, OSError, ValueError) as exc:
            raise FileRefused(f"{opened.path} cannot be decoded ({exc})") from exc
        if _identity(os.fstat(opened.fd)) != before:
            raise FileRefused(f"{opened.path} changed while it was read; try again")
        _THUMBS.put(key, data)
        return data
