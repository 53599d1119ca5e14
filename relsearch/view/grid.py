"""The collection grid of ``relsearch view``: every indexed image, most recent first, paged.

The page opens on it (nothing to upload first); a click on a thumbnail searches with that
image's stored vectors. Order: the newest modification time among a record's files, as
the last build stored it (no file is touched to list the grid).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relsearch.errors import RelsearchError

#: Thumbnails per page of the grid.
PAGE_SIZE = 60


@dataclass(frozen=True)
class Tile:
    """One indexed image of the grid: its record, the file shown, and how many files hold it."""

    id: int
    path: str
    mtime_ns: int
    files: int


def tiles(paths: dict[str, Any]) -> list[Tile]:
    """One tile per record of ``paths`` (the store's path -> (id, size, mtime) table), newest first."""
    newest: dict[int, tuple[int, str]] = {}
    files: dict[int, int] = {}
    for path, entry in paths.items():
        files[entry.id] = files.get(entry.id, 0) + 1
        best = newest.get(entry.id)
        if best is None or (entry.mtime_ns, path) > best:
            newest[entry.id] = (entry.mtime_ns, path)
    out = [Tile(rid, path, mtime, files[rid]) for rid, (mtime, path) in newest.items()]
    out.sort(key=lambda t: (-t.mtime_ns, t.path))
    return out


def shown_path(path: str, roots: Sequence[str]) -> str:
    """``path`` relative to its collection folder (prefixed by that folder's name when the
    index has several), so folders stay visible; the full path when it lies in none."""
    for root in roots:
        root = root.rstrip(os.sep)
        if path.startswith(root + os.sep):
            rel = path[len(root) + 1:]
            return os.path.join(os.path.basename(root), rel) if len(roots) > 1 else rel
    return path


def page_of(all_tiles: list[Tile], page: int, roots: Sequence[str], size: int | None = None) -> dict[str, Any]:
    """The JSON the page renders for grid page ``page`` (0-based): ``html``, ``page``, ``pages``, ``total``."""
    size = size or PAGE_SIZE
    pages = max(1, -(-len(all_tiles) // size))
    if not 0 <= page < pages:
        raise RelsearchError(f"page must be between 0 and {pages - 1}, got {page}")
    chosen = all_tiles[page * size:(page + 1) * size]
    return {"html": render_tiles(chosen, roots), "page": page, "pages": pages, "total": len(all_tiles)}


def render_tiles(chosen: list[Tile], roots: Sequence[str]) -> str:
    """One ``<a class="hit tile">`` per tile: thumbnail, then the file name cut at its end."""
    from relsearch.view.html import shown

    cells = []
    for t in chosen:
        rel = shown(shown_path(t.path, roots))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.mtime_ns / 1e9))
        more = f" (+{t.files - 1} copies)" if t.files > 1 else ""
        title = f"{shown(t.path)}{more}\nmodified {when}"
        cells.append(
            f'<a class="hit tile" data-id="{t.id}" href="file/{t.id}" title="{html.escape(title)}" target="_blank">'
            f'<img class="thumb" alt="" loading="lazy" src="thumb/{t.id}">'
            f'<span class="name">{html.escape(rel)}</span></a>'
        )
    return "".join(cells) if cells else '<span class="empty">the index holds no images</span>'
