"""How a result's files are named on screen: relative to the collection, shortened in the middle.

Folders carry meaning in a photo collection (``2023/trip/``), so a long path loses
characters from its middle and keeps both the first folder and the file name.
"""

from __future__ import annotations

import os
from typing import Any

ELLIPSIS = "\u2026"


def relative(path: str, roots: str | list[str]) -> str:
    """``path`` relative to the collection folder it is under; unchanged when under none.

    With several collection folders (one library over ``DIR1 DIR2``) the folder's own
    name is kept in front, so the two are told apart. The index stores the folders
    resolved and the files as the folder was named when built (through a symlink, say),
    so the file's real parent folder is tried too.
    """
    roots = [roots] if isinstance(roots, str) else list(roots)
    roots = [r for r in roots if r]
    candidates = (path, os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)))
    for candidate in candidates:
        for root in roots:
            if candidate.startswith(root.rstrip(os.sep) + os.sep):
                base = root if len(roots) == 1 else os.path.dirname(root.rstrip(os.sep))
                return os.path.relpath(candidate, base)
    return path


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters by dropping its middle (never its start or end)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    tail = (width - 1) // 2 + (width - 1) % 2
    head = width - 1 - tail
    return text[:head] + ELLIPSIS + text[len(text) - tail :]


def copies_note(hit: Any) -> str:
    """``+N copies`` for a hit whose bytes are also in other files, else ``""``."""
    n = len(hit.copies) if hasattr(hit, "copies") else max(0, len(getattr(hit, "paths", [])) - 1)
    return f"+{n} cop{'y' if n == 1 else 'ies'}" if n else ""


def hit_label(hit: Any, roots: str | list[str], width: int | None = None) -> str:
    """A hit's path relative to the collection (:func:`relative`) with its ``+N copies`` note, within ``width`` characters
    (the path is shortened, the note kept)."""
    note = copies_note(hit)
    name = relative(hit.path, roots)
    if width is None:
        return f"{name} {note}" if note else name
    room = width - (len(note) + 1 if note else 0)
    return f"{shorten(name, max(room, 8))} {note}" if note else shorten(name, width)
