"""Duplicate groups to look at: an HTML page and a PNG sheet of a :class:`~relsearch.dupes.DupesResult`.

One row per group, its pictures side by side, each with its file name, its score (the
picture similarity of its best match in the group, 1 for same bytes) and ``+N copies``
when other files hold the same bytes.
"""

from __future__ import annotations

import html
import os
import textwrap
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from relsearch.errors import RelsearchError

CELL = 160
GAP = 10
PAD = 12
HEADER = 26
CAPTION = 34
#: Pictures per line of a group; a bigger group wraps.
COLUMNS = 8
BACKGROUND = (250, 250, 250)
NEAR = (46, 120, 200)
EXACT = (90, 160, 90)

PAGE_STYLE = """
section.group{margin:12px 0 22px}
section.group h2{font-size:15px;margin:0 0 6px}
section.group.exact h2 .kind{background:#e2f3de;color:#2f6b28}
section.group.near h2 .kind{background:#d8ecff;color:#0b4f8a}
section.group h2 .kind{font-weight:normal;font-size:12px;padding:1px 6px;border-radius:8px;margin-right:6px}
a.hit{width:172px}
a.hit img{width:168px;height:168px}
a.hit .name{max-width:168px;white-space:normal;word-break:break-all}
a.hit .copies{font-size:10px;color:#2f6b28}
"""


def _cells(group: Any) -> list[tuple[str, str, str, list[str]]]:
    """``(path, score, "+N copies", copies)`` per picture shown; every file of an exact group."""
    if group.kind == "exact":
        return [(p, "same bytes", "", []) for p in group.paths]
    out = []
    for m in group.members:
        n = len(m.copies)
        out.append((m.path, f"{m.score:.3f}", f"+{n} cop{'y' if n == 1 else 'ies'}" if n else "", m.copies))
    return out


def _short(path: str) -> str:
    """The file name under its folder's name: enough to tell two folders apart on a sheet."""
    parts = path.replace(os.sep, "/").rstrip("/").split("/")
    return "/".join(parts[-2:])


def _group_title(group: Any) -> str:
    files = len(group.paths)
    pictures = len(group.members)
    if group.kind == "exact":
        return f"{files} files with the same bytes"
    extra = f", {files} files" if files != pictures else ""
    return f"{pictures} pictures{extra}, similarity >= {group.score:.3f}"


def render_dupes_page(result: Any) -> str:
    """A self-contained HTML page of ``result`` (thumbnails inline, links to the files)."""
    from relsearch.view.html import STYLE, breakable, file_data_uri, file_uri, shown

    parts = []
    for n, g in enumerate(result.groups, 1):
        cells = []
        for path, score, copies, others in _cells(g):
            tip = html.escape("\n".join(shown(p) for p in (path, *others)))
            cells.append(
                f'<a class="hit" href="{html.escape(file_uri(path))}" title="{tip}">'
                f'<img src="{file_data_uri(path, CELL)}" loading="lazy" alt="">'
                f'<span class="cap">{score}</span><span class="name">{breakable(shown(path))}</span>'
                + (f'<span class="copies">{html.escape(copies)}</span>' if copies else "") + "</a>")
        parts.append(f'<section class="group {g.kind}"><h2><span class="kind">{g.kind}</span>#{n}: '
                     f'{html.escape(_group_title(g))}</h2><div class="hits">{"".join(cells)}</div></section>')
    body = "".join(parts) or '<p class="empty">no duplicate groups</p>'
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>relsearch dupes: {html.escape(shown(result.index))}</title>"
        f"<style>{STYLE}{PAGE_STYLE}</style></head><body>"
        f"<h1>relsearch &mdash; duplicate groups of {breakable(shown(result.index))}</h1>"
        f'<p class="relation">{html.escape(_summary(result))}</p>\n<main id="rows">{body}</main></body></html>\n'
    )


def _summary(result: Any) -> str:
    near = sum(g.kind == "near" for g in result.groups)
    return (f"{result.images} images: {len(result.groups) - near} exact and {near} near-duplicate groups "
                       f"(candidates from the {result.encoder} column, pictures compared at >= "
                       f"{result.threshold:g})")


def render_dupes_sheet(result: Any, columns: int = COLUMNS) -> Image.Image:
    """The groups as one PNG: a title line per group, then its pictures with names and scores."""
    from relsearch.view.sheet import load_font, thumbnail

    cells = [_cells(g) for g in result.groups]
    cols = max(1, min(columns, max((len(c) for c in cells), default=1)))
    width = max(2 * PAD + cols * CELL + (cols - 1) * GAP, 640)
    bands = [HEADER + -(-len(c) // cols) * (CELL + CAPTION + GAP) for c in cells]
    summary = textwrap.wrap(_summary(result), max(40, (width - 2 * PAD) // 8))
    top = PAD + 18 * len(summary) + 8
    sheet = Image.new("RGB", (width, top + (sum(bands) if bands else HEADER) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    big, small = load_font(15), load_font(11)
    for k, line in enumerate(summary):
        draw.text((PAD, PAD + 18 * k), line, fill=(0, 0, 0), font=big)
    if not result.groups:
        draw.text((PAD, top), "no duplicate groups", fill=(120, 120, 120), font=small)
    y = top
    for n, (g, shown_cells, band) in enumerate(zip(result.groups, cells, bands), 1):
        colour = EXACT if g.kind == "exact" else NEAR
        draw.rectangle((PAD, y + 4, PAD + 6, y + HEADER - 6), fill=colour)
        draw.text((PAD + 12, y + 3), f"#{n} {g.kind}: {_group_title(g)}", fill=(0, 0, 0), font=big)
        for k, (path, score, copies, _) in enumerate(shown_cells):
            cx = PAD + (k % cols) * (CELL + GAP)
            cy = y + HEADER + (k // cols) * (CELL + CAPTION + GAP)
            t = thumbnail(path, CELL)
            sheet.paste(t, (cx + (CELL - t.width) // 2, cy + (CELL - t.height) // 2))
            draw.rectangle((cx - 1, cy - 1, cx + CELL, cy + CELL), outline=colour)
            draw.text((cx + 2, cy + CELL + 2), f"{score}  {copies}", fill=(30, 30, 30), font=small)
            draw.text((cx + 2, cy + CELL + 16), _fit(_short(path), CELL, small), fill=(90, 90, 90), font=small)
        y += band
    return sheet


def _fit(text: str, width: int, font: Any) -> str:
    """``text`` cut in the middle (``ab…yz``) to fit ``width`` pixels: both ends of a name stay visible."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    if measure(text, font=font) <= width - 4:
        return text
    keep = len(text)
    while keep > 4 and measure(text[: keep // 2] + "\u2026" + text[len(text) - keep // 2 :], font=font) > width - 4:
        keep -= 1
    return text[: keep // 2] + "\u2026" + text[len(text) - keep // 2 :]


def write_dupes_page(result: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_dupes_page` of ``result`` to ``path``."""
    from relsearch.atomic import atomic_write_bytes

    out = Path(path)
    try:
        atomic_write_bytes(out, render_dupes_page(result).encode("utf-8"), durable=False, mode=0o644)
    except OSError as exc:
        raise RelsearchError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out


def write_dupes_sheet(result: Any, path: str | os.PathLike[str]) -> Path:
    """Write :func:`render_dupes_sheet` of ``result`` as a PNG to ``path``."""
    import io

    from relsearch.atomic import atomic_write_bytes

    out = Path(path)
    buf = io.BytesIO()
    render_dupes_sheet(result).save(buf, format="PNG", optimize=True)
    try:
        atomic_write_bytes(out, buf.getvalue(), durable=False, mode=0o644)
    except OSError as exc:
        raise RelsearchError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out
