"""A library over several folders: the roots of one collection, scanned as one.

``relsearch build-index DIR1 DIR2 ...`` indexes several folders into one index; the
manifest keeps them (:meth:`relsearch.indexdir.Manifest.collection_roots`). A query can be
scoped to one folder of them (``relsearch query --here``): :func:`within`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from relsearch.collection.exclude import Exclusions
from relsearch.collection.scan import ScanResult, scan
from relsearch.errors import RelsearchError


def check_roots(folders: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The collection folders in the order given, as given (a folder reached through a link
    keeps the link's name in the paths the scan lists), repeats dropped.

    Raises :class:`RelsearchError` for a folder that is missing, is a file, or lies inside
    another of them (its files would be indexed twice).
    """
    given = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
    if not given:
        raise RelsearchError("give at least one collection folder")
    roots: dict[Path, Path] = {}  # resolved -> as given
    for folder in given:
        p = Path(folder).expanduser()
        if not p.exists():
            raise RelsearchError(f"collection folder {p} does not exist")
        if not p.is_dir():
            raise RelsearchError(f"collection path {p} is not a folder")
        roots.setdefault(p.resolve(), p)
    for a in roots:
        for b in roots:
            if a != b and is_under(str(a), str(b)):
                raise RelsearchError(f"collection folder {roots[a]} is inside {roots[b]}, also given: "
                                     f"give only {roots[b]}")
    return list(roots.values())


def is_under(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (by name: links are not followed)."""
    folder = folder.rstrip(os.sep) or os.sep
    return path == folder or path.startswith(folder if folder == os.sep else folder + os.sep)


def scan_roots(roots: Sequence[Path], exclude: Exclusions | None = None) -> ScanResult:
    """:func:`~relsearch.collection.scan.scan` of every root, merged (files sorted by path)."""
    if len(roots) == 1:
        return scan(roots[0], exclude)
    merged = ScanResult()
    for root in roots:
        _extend(merged, scan(root, exclude))
    merged.files.sort(key=lambda f: f.path)
    return merged


def _extend(into: Any, part: Any) -> None:
    """Append every list of the dataclass ``part`` (nested ones too) to those of ``into``."""
    for f in fields(part):
        value = getattr(part, f.name)
        if isinstance(value, list):
            getattr(into, f.name).extend(value)
        elif is_dataclass(value):
            _extend(getattr(into, f.name), value)


def merge_roots(stored: Iterable[str], given: Sequence[Path], index: str | os.PathLike[str]) -> list[str]:
    """The roots a build over ``given`` leaves in an index that held ``stored``.

    The stored folders first, in their order, then new ones: a library grows by naming
    one more folder. Leaving a stored folder out would drop its images, so that is refused.
    """
    stored = list(stored)
    names = [str(r) for r in given]
    missing = [s for s in stored if s not in names]
    if missing:
        raise RelsearchError(
            f"index {index} holds {_listed(stored)}, not {_listed(names)}; name every folder it holds "
            f"(relsearch build-index {' '.join(stored + [n for n in names if n not in stored])} --index {index}) "
            "or use another --index")
    return stored + [n for n in names if n not in stored]


def within(paths: Sequence[str], folder: str) -> str | None:
    """The first of ``paths`` under ``folder``, or None when none is."""
    return next((p for p in paths if is_under(p, folder)), None)


def _listed(roots: Sequence[str]) -> str:
    return f"collection {roots[0]}" if len(roots) == 1 else "collection folders " + ", ".join(roots)
