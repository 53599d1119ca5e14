"""Reading files that someone else may have replaced: never hang, never read without bound.

Every file the tool reads from an index directory or a collection (FAISS files, refine
stores, manifests, ignore files, images to embed) is opened here. The open is
non-blocking, so a FIFO put in place of a file returns at once instead of waiting for
a writer; the opened descriptor (not the name, which can change between a check and an
open) must be a regular file, which also refuses ``/dev/zero`` and other devices behind
a symlink; and a read stops at the size the file had when it was opened, or at a limit
for files that are small by nature.

Refusals are :class:`OSError` subclasses, so callers that already report ``OSError`` as
one line ("cannot read X: <strerror>") need no new handler.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from relsearch.errors import RelsearchError

#: Small text files (ignore files, manifests, stored exclusions) never need more.
SMALL_FILE_LIMIT = 16 << 20
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_BLOCK = 1 << 20


class NotRegularFile(OSError):
    """The path is a FIFO, a device, a socket or a folder where a file was expected."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({kind})", path)


class FileTooLarge(OSError):
    """The file is larger than the caller's bound."""

    def __init__(self, path: str, limit: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {limit} bytes", path)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a file"


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """``(fd, stat)`` of ``path`` opened read-only, non-blocking; the caller closes ``fd``.

    Raises :class:`NotRegularFile` unless the opened file is a regular file.
    """
    name = os.fspath(path)
    fd = os.open(name, _FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(str(name), _kind(st.st_mode))
        # a regular file ignores O_NONBLOCK, but clear it for the libraries handed the fd
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def regular_opener(path: str, flags: int) -> int:
    """An ``opener`` for the built-in ``open``: ``open(p, "rb", opener=regular_opener)``
    opens non-blocking and refuses anything but a regular file (see :func:`open_regular`)."""
    if flags & (os.O_WRONLY | os.O_RDWR):
        raise ValueError("regular_opener is for reading")
    return open_regular(path)[0]


def read_fd(fd: int, size: int, path: str, limit: int | None = None) -> bytes:
    """At most ``size`` bytes of ``fd`` from its current offset (fewer if it shrank)."""
    if limit is not None and size > limit:
        raise FileTooLarge(path, limit)
    parts = []
    left = size
    while left > 0:
        chunk = os.read(fd, min(left, _BLOCK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_regular(path: str | os.PathLike[str], limit: int | None = SMALL_FILE_LIMIT) -> bytes:
    """The bytes of the regular file ``path``, as large as it was when opened.

    ``limit`` (None: the file's own size is the bound) raises :class:`FileTooLarge`
    for a bigger file. A FIFO, device or folder raises :class:`NotRegularFile`.
    """
    fd, st = open_regular(path)
    try:
        return read_fd(fd, st.st_size, os.fspath(path), limit)
    finally:
        os.close(fd)


def jsonl_lines(path: str | os.PathLike[str], what: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of every non-blank line of a UTF-8 ``.jsonl`` file; a missing or
    unreadable file is a one-line error naming it as ``what`` ("labels file", "caption bank")."""
    p = Path(path)
    if not p.is_file():
        raise RelsearchError(f"{what} {p} does not exist")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RelsearchError(f"cannot read {what} {p}: {exc}") from exc
    return ((n, line) for n, line in enumerate(lines, 1) if line.strip())
