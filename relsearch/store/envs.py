"""One LMDB environment per store per process, shared and reference-counted.

LMDB allows a process to open an environment once: its locks are POSIX ``fcntl``
locks owned by the (process, file) pair, so a second handle would share them and
closing it would drop the first handle's locks (py-lmdb refuses the second open:
"already open in this process"). A web app or a notebook opens the same index many
times, and a build may run beside searchers, so every :class:`~relsearch.store.Store`
takes its environment from here and gives it back on close; the last one closes it.

An environment is identified, like py-lmdb does, by its data file's (device, inode):
an index deleted and rebuilt at the same path while an old handle is still open gets
a fresh environment, and two paths to the same files share one.

Handles are opened read-write whenever the folder is writable, even for readers
(readers never begin a write transaction; :class:`~relsearch.store.Store` enforces
that), so a build in the same process can share a searcher's handle. Where the folder
is read-only the handle is read-only, and so would any build there be.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from relsearch.errors import RelsearchError

DATA_FILE = "data.mdb"
#: Smallest map a shared handle gets. Growing the map (``set_mapsize``) replaces it under
#: every open transaction of the process, which a searcher thread reading beside a build
#: must never see; 64 GiB of address space (not of disk: the file grows as pages are
#: written) holds any index this project builds, so the map never has to grow in practice.
SHARED_MAP_SIZE = 1 << 36


@dataclass
class _Shared:
    env: lmdb.Environment
    key: tuple[int, int]
    writable: bool
    refs: int
    dbs: dict[str, Any] = field(default_factory=dict)  # named-database handles, committed


_LOCK = threading.Lock()
_OPEN: dict[tuple[int, int], _Shared] = {}
_BY_ENV: dict[int, _Shared] = {}


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path / DATA_FILE)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def acquire(path: str | os.PathLike[str], *, write: bool, create: bool, map_size: int, max_dbs: int,
            max_readers: int) -> lmdb.Environment:
    """The process's environment for the store folder ``path``, opened if need be.

    ``write``: the caller will write (fails when the shared handle is read-only).
    Raises :class:`lmdb.Error` from LMDB itself; pair every call with :func:`release`.
    """
    folder = Path(path)
    with _LOCK:
        key = _file_key(folder)
        shared = _OPEN.get(key) if key is not None else None
        if shared is None:
            writable = write or create or (os.access(folder, os.W_OK | os.X_OK)
                                           and os.access(folder / DATA_FILE, os.W_OK))
            # bytes: py-lmdb encodes a str path as strict UTF-8, which a non-UTF-8 folder name is not
            env = lmdb.open(os.fsencode(folder), map_size=max(map_size, SHARED_MAP_SIZE), max_dbs=max_dbs, readonly=not writable,
                            create=create, subdir=True, max_readers=max_readers)
            key = _file_key(folder)
            if key is None:  # LMDB made no data file: nothing to share it by
                env.close()
                raise RelsearchError(f"cannot open metadata store {folder}: no {DATA_FILE} after opening")
            shared = _Shared(env, key, writable, 0)
            _OPEN[key] = shared
            _BY_ENV[id(env)] = shared
        elif write and not shared.writable:
            raise RelsearchError(
                f"metadata store {folder} is open read-only in this process (no write permission when "
                "it was opened); it cannot be written here"
            )
        shared.refs += 1
        return shared.env


def release(env: lmdb.Environment) -> None:
    """Give back a handle from :func:`acquire`; the last release closes it."""
    with _LOCK:
        shared = _BY_ENV.get(id(env))
        if shared is None or shared.env is not env:
            return  # not ours (or already closed): nothing to do
        shared.refs -= 1
        if shared.refs > 0:
            return
        del _BY_ENV[id(env)]
        if _OPEN.get(shared.key) is shared:
            del _OPEN[shared.key]
        # Closed under the lock: a concurrent acquire must not reopen the files before
        # py-lmdb has forgotten this handle.
        env.close()


def open_db(env: lmdb.Environment, name: str, create: bool) -> Any:
    """The handle of named database ``name``, opened once per environment.

    Raises :class:`lmdb.NotFoundError` when it does not exist and ``create`` is False.
    Call outside any transaction of this thread (inside one, open with that txn).
    """
    with _LOCK:
        shared = _BY_ENV.get(id(env))
    if shared is None or not shared.writable:
        return env.open_db(name.encode(), create=create and shared is None)
    handle = shared.dbs.get(name)
    if handle is not None:
        return handle
    # A name opened in a read txn of a writable environment is dropped when that txn
    # ends, so it takes a write txn. begin() waits for the writer lock with the GIL
    # released; py-lmdb's open_db(txn=None) waits holding it, which deadlocks against a
    # build thread that holds the lock and needs the GIL to finish.
    with env.begin(write=True) as txn:
        handle = env.open_db(name.encode(), txn=txn, create=create)
    shared.dbs[name] = handle  # published only once committed
    return handle


def refs(path: str | os.PathLike[str]) -> int:
    """How many stores share the environment of ``path`` now (0 when it is not open)."""
    with _LOCK:
        key = _file_key(Path(path))
        shared = _OPEN.get(key) if key is not None else None
        return shared.refs if shared is not None else 0
