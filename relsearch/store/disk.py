"""One-line messages for failed writes: which disk, which path, how full.

LMDB reports a full disk as ``Input/output error`` or ``No space left on device``
from deep inside a commit; FAISS and the manifest as ``OSError``. Each becomes a
:class:`~relsearch.errors.RelsearchError` naming the mount point and the path, so
the user sees what to free, never a traceback. Nothing is half-written: LMDB aborts
the transaction and every file is replaced atomically, so the previous index stays.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from relsearch.errors import RelsearchError


def mount_point(path: str | os.PathLike[str]) -> Path:
    """The mount point holding ``path`` (the nearest existing ancestor's file system)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    dev = p.stat().st_dev
    while p != p.parent and p.parent.stat().st_dev == dev:
        p = p.parent
    return p


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def write_error(path: str | os.PathLike[str], exc: BaseException) -> RelsearchError:
    """A one-line error for a failed write to ``path`` naming its disk and free space."""
    reason = _reason(exc)
    try:
        disk = mount_point(path)
        free = shutil.disk_usage(disk).free
        where = f"disk {disk} ({free / 1e6:.1f} MB free)"
    except OSError:
        where = "its disk"
    full = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "No space left" in reason or "Input/output error" in reason
    hint = "free space there and run the build again" if full else "check the disk and run the build again"
    return RelsearchError(f"cannot write {path}: {reason} on {where}; the index keeps answering from its last "
                          f"finished build; {hint}")


def is_write_failure(exc: BaseException) -> bool:
    """An OSError a write can raise when the disk is full or failing."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG)
