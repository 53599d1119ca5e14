"""What a scan leaves out: ``--exclude-dir`` patterns, defaults, ``.relsearchignore`` files.

Two kinds of rule:

- **folder patterns** (``--exclude-dir NAME_OR_GLOB`` and :data:`DEFAULT_EXCLUDES`): a
  pattern without ``/`` is matched against every folder's *name* at any depth; one with
  ``/`` against the folder's path relative to the collection root. Matching ignores
  case, because the folders these defaults target come from FAT/NTFS drives and NAS
  boxes, where ``$Recycle.Bin`` and ``$RECYCLE.BIN`` are the same folder.
- **ignore files**: a ``.relsearchignore`` in any folder of the collection holds
  gitignore-syntax patterns relative to that folder (matched by
  :mod:`relsearch.collection.wildmatch` in linear time, with git's negation, anchoring
  and ``dir/`` rules); a deeper file's verdict overrides a shallower one's, as in git.

Folder patterns are stored with the index (see :func:`read_stored` / :func:`write_stored`)
and re-applied by every later build, so a build run without the flag does not bring
the excluded files back; ignore files live in the collection and are re-read by each
scan.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relsearch.collection.wildmatch import BadPattern, Rule, compile_line
from relsearch.safe_io import read_regular

log = logging.getLogger(__name__)

#: Folders left out unless ``--no-default-excludes``: NAS thumbnail folders (Synology
#: ``@eaDir``), desktop and Windows recycle bins, Windows' restore-point store,
#: JavaScript dependency trees and git metadata.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "@eaDir", ".Trash-*", "System Volume Information", "$RECYCLE.BIN", "node_modules", ".git",
)
IGNORE_FILE = ".relsearchignore"
#: An ignore file is a short list of patterns; a larger one is refused unread.
IGNORE_FILE_LIMIT = 1 << 20
#: Where an index keeps the folder patterns it was built with.
STORED_NAME = "exclusions.json"


@dataclass(frozen=True)
class Exclusions:
    """Folder patterns a scan prunes; ``defaults`` adds :data:`DEFAULT_EXCLUDES`."""

    dirs: tuple[str, ...] = ()
    defaults: bool = True
    ignore_files: bool = True

    def __post_init__(self) -> None:
        clean = []
        for pat in self.dirs:
            if not isinstance(pat, str) or not pat.strip().strip("/"):
                raise ValueError(f"--exclude-dir needs a folder name or glob, got {pat!r}")
            p = pat.strip().replace(os.sep, "/").strip("/")
            if os.path.isabs(pat) or p.split("/")[0] == "..":
                raise ValueError(
                    f"--exclude-dir {pat!r} must be a folder name or a path relative to the collection"
                )
            if p not in clean:
                clean.append(p)
        object.__setattr__(self, "dirs", tuple(clean))

    @property
    def patterns(self) -> tuple[str, ...]:
        """Every folder pattern in force, defaults first."""
        return (DEFAULT_EXCLUDES if self.defaults else ()) + self.dirs

    def dir_rule(self, rel: str, name: str) -> str | None:
        """The pattern that excludes the folder at ``rel`` (``/``-separated), else None."""
        lname, lrel = name.lower(), rel.lower()
        for pat in self.patterns:
            lp = pat.lower()
            if fnmatch.fnmatchcase(lrel if "/" in lp else lname, lp):
                return pat
        return None

    def merged(self, extra: tuple[str, ...] | list[str] = (), defaults: bool | None = None) -> Exclusions:
        """These exclusions plus ``extra`` folder patterns (and ``defaults`` if given)."""
        return Exclusions(tuple(self.dirs) + tuple(extra), self.defaults if defaults is None else defaults,
                          self.ignore_files)

    def to_dict(self) -> dict[str, Any]:
        return {"dirs": list(self.dirs), "defaults": self.defaults}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Exclusions:
        dirs = d.get("dirs", [])
        if not isinstance(dirs, list) or not isinstance(d.get("defaults", True), bool):
            raise ValueError(f"bad exclusions record: {d!r}")
        return cls(tuple(dirs), bool(d.get("defaults", True)))


@dataclass
class IgnoreFile:
    """One ``.relsearchignore``: its folder and its compiled patterns."""

    folder: str
    rules: tuple[Rule, ...]
    #: lines left out, each "FILE:LINE: pattern 'p' left out: why" (also logged as a warning)
    bad_lines: tuple[str, ...] = ()

    def verdict(self, path: str, is_dir: bool) -> bool | None:
        """True: ignore ``path``; False: re-included by a ``!`` pattern; None: no pattern matches."""
        parts = path[len(self.folder) :].lstrip(os.sep).split(os.sep)
        for rule in reversed(self.rules):  # the last matching line decides, as in git
            if rule.matches(parts, is_dir):
                return not rule.negate
        return None


def read_ignore_file(folder: str) -> IgnoreFile:
    """The ``.relsearchignore`` of ``folder`` compiled; OSError when it cannot be read
    (also when it is not a regular file or is larger than :data:`IGNORE_FILE_LIMIT`).

    A line git could not use either (a trailing backslash, a bare ``!``, an unclosed
    ``[``) is left out with a warning naming the file and line; the others still apply,
    as in git. Matching is linear-time (:mod:`relsearch.collection.wildmatch`), so no
    pattern can stall a scan.
    """
    path = os.path.join(folder, IGNORE_FILE)
    text = read_regular(path, limit=IGNORE_FILE_LIMIT).decode("utf-8", errors="surrogateescape")
    rules: list[Rule] = []
    bad: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            rule = compile_line(line)
        except BadPattern as exc:
            bad.append(f"{path}:{number}: pattern {line[:80]!r} left out: {exc}")
            log.warning("%s", bad[-1])
            continue
        if rule is not None:
            rules.append(rule)
    return IgnoreFile(folder, tuple(rules), tuple(bad))


def ignored_by(chain: tuple[IgnoreFile, ...], path: str, is_dir: bool) -> IgnoreFile | None:
    """The ignore file whose verdict leaves ``path`` out; deeper files override shallower ones."""
    for rules in reversed(chain):
        v = rules.verdict(path, is_dir)
        if v is not None:
            return rules if v else None
    return None


@dataclass
class Excluded:
    """What a scan left out on purpose: pruned folders and ignored image files."""

    folders: list[tuple[str, str]] = field(default_factory=list)  # (path, rule)
    files: list[tuple[str, str]] = field(default_factory=list)

    def matcher(self) -> Callable[[str], bool]:
        """A test: is a path an excluded file, or under an excluded folder?"""
        prefixes = tuple(f.rstrip(os.sep) + os.sep for f, _ in self.folders)
        files = {f for f, _ in self.files}
        return lambda path: path in files or path.startswith(prefixes)

    def counts(self) -> dict[str, int]:
        return {"folders": len(self.folders), "files": len(self.files)}


# ---- stored with the index ---------------------------------------------------------------
def read_stored(index: str | os.PathLike[str]) -> Exclusions:
    """The folder patterns an index was built with (defaults only for a new index)."""
    path = Path(index) / STORED_NAME
    if not path.exists():
        return Exclusions()
    from relsearch.errors import RelsearchError

    try:
        return Exclusions.from_dict(json.loads(read_regular(path)))  # a FIFO here must not block
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise RelsearchError(f"corrupt {path}: {reason}; fix it with: relsearch verify --repair --index {index}") \
            from None


def write_stored(index: str | os.PathLike[str], exclusions: Exclusions) -> None:
    """Record ``exclusions`` in the index directory, atomically."""
    from relsearch.atomic import atomic_write_bytes

    atomic_write_bytes(Path(index) / STORED_NAME, (json.dumps(exclusions.to_dict(), indent=2) + "\n").encode())


def effective(index: str | os.PathLike[str] | None, add: tuple[str, ...] | list[str] = (),
              defaults: bool | None = None, forget: bool = False) -> Exclusions:
    """The folder patterns a build applies: the index's stored ones (none when ``forget``
    or for a new index) plus ``add``; ``defaults`` None keeps the stored choice.

    Raises :class:`RelsearchError` on a bad pattern.
    """
    from relsearch.errors import RelsearchError

    base = Exclusions() if forget or index is None else read_stored(index)
    try:
        return base.merged(tuple(add), defaults)
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
