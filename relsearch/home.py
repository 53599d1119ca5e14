"""Where relsearch keeps things for a user: the index home and the cache.

``relsearch`` runs from any folder, so nothing it keeps may depend on the working
directory. Indexes built without ``--index`` go to ``<home>/indexes/<name of DIR>``
and are found there; ``<home>`` is ``$RELSEARCH_HOME``, else ``$XDG_DATA_HOME/relsearch``,
else ``~/.local/share/relsearch`` (the XDG base-directory rules). Derived files that can
be rebuilt at any time (embedded caption banks) go to ``<home>/cache`` when
``$RELSEARCH_HOME`` is set (so a demo or a test stays inside one folder), else to
``$XDG_CACHE_HOME/relsearch``, else ``~/.cache/relsearch``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from relsearch.atomic import atomic_write_bytes
from relsearch.errors import RelsearchError

log = logging.getLogger(__name__)

ENV_HOME = "RELSEARCH_HOME"
MANIFEST = "manifest.json"


def _xdg(var: str, fallback: str) -> Path:
    raw = os.environ.get(var, "").strip()
    # The spec: a relative path in an XDG variable is invalid and is ignored.
    if raw and os.path.isabs(raw):
        return Path(raw)
    return Path.home() / fallback


def relsearch_home() -> Path:
    """``$RELSEARCH_HOME``, else the XDG data dir's ``relsearch`` folder (not created here)."""
    raw = os.environ.get(ENV_HOME, "").strip()
    if raw:
        return Path(raw).expanduser().resolve()
    return _xdg("XDG_DATA_HOME", ".local/share") / "relsearch"


def index_home() -> Path:
    """The folder indexes go to when ``--index`` is not given."""
    return relsearch_home() / "indexes"


def cache_dir() -> Path:
    """Folder for rebuildable derived files (created on first use)."""
    if os.environ.get(ENV_HOME, "").strip():
        path = relsearch_home() / "cache"
    else:
        path = _xdg("XDG_CACHE_HOME", ".cache") / "relsearch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_index_path(collection: str | os.PathLike[str]) -> Path:
    """``<index home>/<name of DIR>``: where ``build-index DIR`` writes without ``--index``."""
    name = Path(collection).resolve().name or "root"
    return index_home() / name


def _built_at(index: Path) -> float:
    """When an index was last built: the manifest's ``updated``, else the file's mtime."""
    path = index / MANIFEST
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("updated")
        if isinstance(value, (int, float)):
            return float(value)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def home_indexes() -> list[Path]:
    """Index directories in the index home, most recently built first."""
    from relsearch.indexdir import find_indexes  # lazily: encoders import this module on their cold path

    return sorted(find_indexes(index_home()), key=lambda p: (-_built_at(p), p.name))


@dataclass(frozen=True)
class Chosen:
    """The index a command uses without ``--index``, and why (to tell the user)."""

    path: Path
    reason: str


def choose_index() -> Chosen:
    """The only index in the home, else the most recently built one; a clear error if none."""
    from relsearch.indexdir import index_problem

    found = home_indexes()
    if not found:
        raise RelsearchError(f"no index in {index_home()}; build one with: relsearch build-index DIR "
                             f"(or pass --index; ${ENV_HOME} moves the home)")
    if len(found) == 1:
        return Chosen(found[0], f"the only index in {index_home()}")
    # A damaged index must not stand in the way of the others: take the newest that opens.
    problems = []
    for path in found:
        problem = index_problem(path)
        if problem is None:
            break
        problems.append(problem)
    else:
        raise RelsearchError(f"all {len(found)} indexes in {index_home()} are damaged; the newest: {problems[0]}")
    skipped = f" that opens (skipped {len(problems)} damaged: relsearch info lists them)" if problems else ""
    return Chosen(path, f"the most recently built of {len(found)} indexes in {index_home()}{skipped}; "
                        "--index picks another")


def file_identity(path: str | os.PathLike[str]) -> str:
    """``path:inode:size:mtime_ns:ctime_ns``: a rewritten or replaced file gets a new identity."""
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def cached_fingerprint(key: str, compute: Callable[[], str]) -> str:
    """A weight fingerprint remembered under ``key`` (built from :func:`file_identity` of every file
    the weights come from), so a cold process does not hash tens of MB of tensors again.

    The cache is advisory: unreadable or missing entries are recomputed, and a failed write is
    ignored (a read-only home still works).
    """
    import hashlib

    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    try:
        path = cache_dir() / "fingerprints" / f"{digest}.txt"
        text = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    except OSError:
        path, text = None, ""
    if len(text) == 16 and all(c in "0123456789abcdef" for c in text):
        return text
    value = compute()
    if path is not None:
        try:
            atomic_write_bytes(path, (value + "\n").encode("utf-8"), durable=False)  # a rebuildable cache
        except OSError as exc:
            log.debug("cannot cache a fingerprint in %s: %s", path, exc)
    return value
