"""Find the image files of a collection folder and hash their content.

The scan is a pure listing: it stats files but never opens them as images, so a
rebuild of an unchanged folder costs one ``stat`` per file. Decoding lives in
:mod:`relsearch.collection.decode`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from relsearch.collection.exclude import (
    IGNORE_FILE,
    Excluded,
    Exclusions,
    IgnoreFile,
    ignored_by,
    read_ignore_file,
)
from relsearch.errors import RelsearchError
from relsearch.safe_io import open_regular

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class FileEntry:
    """One image file as reached from the scan root (symlinks kept, not resolved)."""

    path: str
    size: int
    mtime_ns: int

    def __post_init__(self) -> None:
        if not os.path.isabs(self.path):
            raise ValueError(f"FileEntry path must be absolute, got {self.path!r}")
        if self.size < 0:
            raise ValueError(f"FileEntry size must be >= 0, got {self.size!r}")


@dataclass
class ScanResult:
    """Image files sorted by path, and what was passed over with the reason."""

    files: list[FileEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: Excluded = field(default_factory=Excluded)


def is_image_name(name: str) -> bool:
    """True when ``name`` carries one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _short(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _duplicate_reason(parent: str, first: str) -> str:
    # pointing at a folder that holds the link is a loop; anything else is a
    # second way into a folder already listed
    if parent == first or parent.startswith(first.rstrip(os.sep) + os.sep):
        return f"symlink loop (points to {first})"
    return f"folder already scanned as {first}"


def scan(root: str | Path, exclude: Exclusions | None = None) -> ScanResult:
    """List the image files under ``root``, recursively.

    Hidden files and folders (name starting with ``.``) are skipped silently.
    Symlinks to files and folders are followed; each real folder is listed once,
    so a link back to an ancestor cannot loop. Paths are absolute and normalised
    but keep the names they were reached by. Unreadable folders, broken links and
    folders reached twice are reported in ``skipped``; an empty result is not an
    error here (the caller decides).

    ``exclude`` (default: :class:`Exclusions` with the default folder patterns) prunes
    folders by name or relative path, and ``.relsearchignore`` files prune folders and
    files; what they left out is listed in ``excluded`` (folders are not descended into,
    so the files under them are not counted).

    Raises :class:`RelsearchError` when ``root`` is missing or not a folder.
    """
    top = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if not os.path.exists(top):
        raise RelsearchError(f"collection folder not found: {top}")
    if not os.path.isdir(top):
        raise RelsearchError(f"not a folder: {top}")

    result = ScanResult()
    exclude = exclude if exclude is not None else Exclusions()
    # ignore files in force for each folder still to list (its own is added when listed)
    rules: dict[str, tuple[IgnoreFile, ...]] = {}
    # real path of every folder listed -> the path it was listed under
    seen: dict[str, str] = {os.path.realpath(top): top}
    # Folders reached without crossing a symlink are listed before any linked
    # folder, so when a link points inside the tree the plain path wins and the
    # link is the one reported as a duplicate, whatever the names sort to.
    plain: deque[str] = deque([top])
    linked: deque[tuple[str, str]] = deque()  # (link path, folder holding it)

    while plain or linked:
        if plain:
            folder, parent = plain.popleft(), None
        else:
            folder, parent = linked.popleft()
        chain = rules.pop(folder, ())  # ignore files of the folders above this one
        if parent is not None:
            real = os.path.realpath(folder)
            if real in seen:
                result.skipped.append((folder, _duplicate_reason(parent, seen[real])))
                continue
            seen[real] = folder
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            result.skipped.append((folder, f"unreadable folder: {_short(err)}"))
            continue
        if exclude.ignore_files and any(e.name == IGNORE_FILE for e in entries):
            try:
                own = read_ignore_file(folder)
            except OSError as err:
                result.skipped.append((os.path.join(folder, IGNORE_FILE), f"unreadable: {_short(err)}"))
                own = None
            if own is not None:
                chain = (*chain, own)

        for entry in entries:
            if _is_hidden(entry.name):
                continue
            path = os.path.join(folder, entry.name)
            is_link = False
            try:
                is_link = entry.is_symlink()
                st = os.stat(path)  # follows links
            except OSError as err:
                if is_link:
                    # A dangling link with an unrelated extension (lib.so -> ...)
                    # is noise; one that looks like an image or a folder is not.
                    ext = os.path.splitext(entry.name)[1]
                    if is_image_name(entry.name) or not ext:
                        result.skipped.append((path, "broken symlink"))
                else:
                    result.skipped.append((path, f"cannot stat: {_short(err)}"))
                continue

            if stat.S_ISDIR(st.st_mode):
                why = _excluded_dir(exclude, chain, top, path, entry.name)
                if why is not None:
                    result.excluded.folders.append((path, why))
                    continue
                rules[path] = chain
                if is_link:
                    linked.append((path, folder))
                    continue
                real = os.path.realpath(path)
                if real in seen:  # a bind mount can repeat a folder without any link
                    result.skipped.append((path, _duplicate_reason(folder, seen[real])))
                    continue
                seen[real] = path
                plain.append(path)
            elif is_image_name(entry.name):
                hit = ignored_by(chain, path, is_dir=False) if chain else None
                if hit is not None:
                    result.excluded.files.append((path, _ignore_rule(hit)))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    result.skipped.append((path, "not a regular file"))
                    continue
                result.files.append(FileEntry(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns))

    result.files.sort(key=lambda f: f.path)
    return result


def _excluded_dir(exclude: Exclusions, chain: tuple[IgnoreFile, ...], top: str, path: str,
                  name: str) -> str | None:
    rel = path[len(top) :].lstrip(os.sep).replace(os.sep, "/")
    pat = exclude.dir_rule(rel, name)
    if pat is not None:
        return f"exclude-dir {pat}"
    hit = ignored_by(chain, path, is_dir=True) if chain else None
    return _ignore_rule(hit) if hit is not None else None


def _ignore_rule(hit: IgnoreFile) -> str:
    return os.path.join(hit.folder, IGNORE_FILE)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-sized pieces.

    Only a regular file is read (a FIFO swapped in after the scan raises
    :class:`~relsearch.safe_io.NotRegularFile` at once instead of blocking), and only as
    far as the size it had when opened.
    """
    digest = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    fd, st = open_regular(path)
    with open(fd, "rb", buffering=0) as fh:
        left = st.st_size
        while left > 0 and (n := fh.readinto(view[: min(chunk, left)])):
            digest.update(view[:n])
            left -= n
    return digest.hexdigest()
