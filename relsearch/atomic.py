"""Atomic file replacement: the one helper every writer of a file that must never be
half-written uses (manifest, FAISS files, training checkpoints, cached art).

A temp file in the destination's folder is written, flushed (and fsynced), then renamed
over the destination with ``os.replace``; a failure at any point removes the temp file
and leaves the previous file as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], durable: bool = True, mode: int | None = None) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` is replaced only on a clean exit.

    ``durable`` fsyncs the file and its folder so the new content survives a power cut;
    caches that can be rebuilt pass False and skip the two syncs. The file is created
    owner-only (0o600); ``mode`` sets other permissions (0o644 for shipped weights).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview, durable: bool = True,
                       mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (see :func:`atomic_write`), creating its folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, durable=durable, mode=mode) as f:
        f.write(data)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename inside ``directory`` durable; a no-op where the platform cannot."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
