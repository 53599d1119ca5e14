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
from relsearch.collection.formats import IMAGE_EXTENSIONS, is_raw_name, is_vector_name
from relsearch.errors import RelsearchError
from relsearch.safe_io import open_regular

__all__ = ["IMAGE_EXTENSIONS", "FileEntry", "ScanResult", "is_image_name", "scan", "sha256_file"]


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
    """Image files sorted by path, and what was passed over with the reason.

    ``vector`` lists SVG files (not indexed); ``raw_beside`` lists camera RAW files left
    out because a developed image of the same name sits in the same folder, with it.
    """

    files: list[FileEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    excluded: Excluded = field(default_factory=Excluded)
    vector: list[str] = field(default_factory=list)
    raw_beside: list[tuple[str, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        """One line for each kind of file passed over on purpose (for a build's summary)."""
        out = []
        if self.vector:
            out.append(f"{len(self.vector)} SVG file{'s' if len(self.vector) != 1 else ''} skipped: "
                       "vector images are not indexed")
        if self.raw_beside:
            raw, beside = self.raw_beside[0]
            n = len(self.raw_beside)
            out.append(f"{n} camera RAW file{'s' if n != 1 else ''} skipped: the same photograph beside it "
                       f"(JPEG, HEIC...) is indexed instead, e.g. {os.path.basename(raw)} beside "
                       f"{os.path.basename(beside)}")
        return out


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
            chain = _with_own_rules(result, folder, chain)

        for path, is_link in _take_entries(result, exclude, top, folder, entries, chain):
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

    result.files.sort(key=lambda f: f.path)
    return result


def _take_entries(result: ScanResult, exclude: Exclusions, top: str, folder: str, entries: list[os.DirEntry[str]],
                  chain: tuple[IgnoreFile, ...]) -> list[tuple[str, bool]]:
    """Add the files of one listed folder to ``result``; its subfolders still to list, ``(path, is a link)``."""
    developed = _developed_stems(entries)
    folders = []
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        path = os.path.join(folder, entry.name)
        found = _stat(result, entry, path)
        if found is None:
            continue
        st, is_link = found
        if not stat.S_ISDIR(st.st_mode):
            _add_file(result, chain, developed, entry.name, path, st)
            continue
        why = _excluded_dir(exclude, chain, top, path, entry.name)
        if why is not None:
            result.excluded.folders.append((path, why))
        else:
            folders.append((path, is_link))
    return folders


def _with_own_rules(result: ScanResult, folder: str, chain: tuple[IgnoreFile, ...]) -> tuple[IgnoreFile, ...]:
    """``chain`` plus the ignore file of ``folder`` (an unreadable one is reported, not applied)."""
    try:
        own = read_ignore_file(folder)
    except OSError as err:
        result.skipped.append((os.path.join(folder, IGNORE_FILE), f"unreadable: {_short(err)}"))
        return chain
    return chain if own is None else (*chain, own)


def _stat(result: ScanResult, entry: os.DirEntry[str], path: str) -> tuple[os.stat_result, bool] | None:
    """``(stat following links, is a symlink)``, or None (reported when it matters) when it fails."""
    is_link = False
    try:
        is_link = entry.is_symlink()
        return os.stat(path), is_link
    except OSError as err:
        if is_link:
            # A dangling link with an unrelated extension (lib.so -> ...)
            # is noise; one that looks like an image or a folder is not.
            ext = os.path.splitext(entry.name)[1]
            if is_image_name(entry.name) or not ext:
                result.skipped.append((path, "broken symlink"))
        else:
            result.skipped.append((path, f"cannot stat: {_short(err)}"))
        return None


def _add_file(result: ScanResult, chain: tuple[IgnoreFile, ...], developed: dict[str, str], name: str,
              path: str, st: os.stat_result) -> None:
    """File ``name`` of a folder: listed if an image, counted if a vector image, else passed over."""
    if is_image_name(name):
        hit = ignored_by(chain, path, is_dir=False) if chain else None
        if hit is not None:
            result.excluded.files.append((path, _ignore_rule(hit)))
        elif not stat.S_ISREG(st.st_mode):
            result.skipped.append((path, "not a regular file"))
        elif is_raw_name(name) and (sibling := developed.get(os.path.splitext(name)[0].lower())) is not None:
            result.raw_beside.append((path, os.path.join(os.path.dirname(path), sibling)))
        else:
            result.files.append(FileEntry(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns))
    elif is_vector_name(name) and stat.S_ISREG(st.st_mode):
        if not (chain and ignored_by(chain, path, is_dir=False) is not None):
            result.vector.append(path)


def _developed_stems(entries: list[os.DirEntry[str]]) -> dict[str, str]:
    """Lower-case stem -> name of the non-RAW images of one folder: a camera RAW with the
    same stem is the same photograph, already there developed (the camera's or an edit)."""
    if not any(is_raw_name(e.name) for e in entries):
        return {}
    return {os.path.splitext(e.name)[0].lower(): e.name for e in entries
            if not _is_hidden(e.name) and is_image_name(e.name) and not is_raw_name(e.name)}


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
