"""PNG contact sheet of a :class:`~relsearch.query.QueryResult`: query on top, one band per encoder."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from relsearch.view.names import copies_note

CELL = 128
GAP = 8
CAPTION = 18
PAD = 12
HEADER = 24
#: Thumbnails per line; a k=20 sheet wraps each encoder onto two lines and stays ~1.4k px wide.
COLUMNS = 10
BACKGROUND = (250, 250, 250)
RELATIONAL = (46, 120, 200)
ATTRIBUTE = (150, 150, 150)
ANALOGY = (224, 150, 60)
#: The verdict line above a relational band, and its colour when the column knows no relation.
RELATION_LINE = 30
NO_RELATION = (190, 40, 30)
#: ``--explain``: the shared caption under each thumbnail, wrapped to this many lines.
WHY_LINES = 3
WHY_LINE = 13
WHY_CHARS = 22
#: The file name under each thumbnail (relative to the collection, shortened in the middle).
NAME_LINE = 13
NAME_CHARS = 21


def load_font(size: int) -> Any:
    # Pillow's bundled font at a size (FreeType build); the bitmap default otherwise.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def thumbnail(path: str, size: int) -> Image.Image:
    from relsearch.collection import DecodeError, load_image

    try:
        img = load_image(path, max_side=size * 2).convert("RGB")
        # fit the cell both ways: small images are enlarged so every row reads alike
        scale = size / max(img.width, img.height)
        return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                          Image.Resampling.LANCZOS)
    except (DecodeError, OSError, ValueError):
        box = Image.new("RGB", (size, size), (221, 221, 221))
        d = ImageDraw.Draw(box)
        d.line((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(150, 150, 150), width=5)
        d.line((3 * size // 4, size // 4, size // 4, 3 * size // 4), fill=(150, 150, 150), width=5)
        return box


def _why_lines(text: str) -> list[str]:
    lines = textwrap.wrap(text, WHY_CHARS)
    if len(lines) > WHY_LINES:
        lines = lines[:WHY_LINES]
        lines[-1] = lines[-1][: WHY_CHARS - 1] + "\u2026"
    return lines


def render_sheet(result: Any, k: int | None = None, columns: int = COLUMNS) -> Image.Image:
    """The contact sheet as a PIL image (with ``--explain``, a caption line under each relational hit)."""
    from relsearch.view.html import columns as display_columns
    from relsearch.view.html import hit_caption, query_caption, relation_of

    cols_info = display_columns(result)
    names = [c[0] for c in cols_info]
    kinds = {c[0]: c[1] for c in cols_info}
    notes = {c[0]: c[2] for c in cols_info}
    rows = {c[0]: c[3][: k if k is not None else None] for c in cols_info}
    explained = result.explain is not None
    caption_h = CAPTION + NAME_LINE + (WHY_LINES * WHY_LINE if explained else 0)
    cols = max(1, min(columns, max((len(h) for h in rows.values()), default=1)))
    width = 2 * PAD + cols * CELL + (cols - 1) * GAP
    width = max(width, 560)
    query_px = 2 * CELL
    is_image = bool(result.query) and os.path.isfile(result.query)
    q = thumbnail(result.query, query_px) if is_image else None
    text_h = HEADER + 16 * (min(6, len(textwrap.wrap(result.query, 80))) + (5 if query_caption(result) else 0))
    top = PAD + max(q.height if q is not None else 3 * HEADER, text_h) + PAD
    bands = []
    for n in names:
        lines = max(1, -(-len(rows[n]) // cols))
        note_h = RELATION_LINE if relation_of(result, n) is not None else 0
        bands.append((n, HEADER + note_h + lines * (CELL + caption_h + GAP)))
    height = top + sum(h for _, h in bands) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    big, small = load_font(15), load_font(11)

    x_text = PAD
    if q is not None:
        sheet.paste(q, (PAD, PAD))
        draw.rectangle((PAD - 1, PAD - 1, PAD + q.width, PAD + q.height), outline=(120, 120, 120))
        x_text = PAD + q.width + PAD
    draw.text((x_text, PAD), "query image" if is_image else "query caption", fill=(0, 0, 0), font=big)
    chars = max(20, (width - x_text - PAD) // 7)
    label = textwrap.wrap(result.query, chars)[:6]
    for i, line in enumerate(label):
        draw.text((x_text, PAD + HEADER + i * 16), line, fill=(80, 80, 80), font=small)
    qcap = query_caption(result)
    if qcap is not None:
        y_cap = PAD + HEADER + (len(label) + 1) * 16
        draw.text((x_text, y_cap), f"reads as ({qcap.score:.3f}):", fill=(0, 0, 0), font=small)
        for i, line in enumerate(textwrap.wrap(qcap.text, chars)[:3]):
            draw.text((x_text, y_cap + (i + 1) * 16), line, fill=RELATIONAL, font=small)

    y = top
    for name, band_h in bands:
        kind = kinds[name]
        colour = {"relational": RELATIONAL, "analogy": ANALOGY}.get(kind, ATTRIBUTE)
        draw.rectangle((PAD, y + 3, PAD + 6, y + HEADER - 5), fill=colour)
        title = f"{name}  ({kind}{': ' + notes[name] if notes[name] else ''})"
        draw.text((PAD + 12, y + 2), title, fill=(0, 0, 0), font=big)
        y0 = y + HEADER
        verdict = relation_of(result, name)
        if verdict is not None:
            _relation_note(draw, verdict, name, (PAD + 12, y0 - 2), width - 2 * PAD - 12, small)
            y0 += RELATION_LINE
        for j, hit in enumerate(rows[name]):
            cx = PAD + (j % cols) * (CELL + GAP)
            cy = y0 + (j // cols) * (CELL + caption_h + GAP)
            cap = hit_caption(result, name, hit) if explained else None
            _draw_hit(sheet, draw, hit, (cx, cy), colour, getattr(result, "roots", []), cap, small)
        if not rows[name]:
            draw.text((PAD, y0 + 4), "no neighbours", fill=(120, 120, 120), font=small)
        y += band_h
    return sheet


def _draw_hit(sheet: Image.Image, draw: Any, hit: Any, at: tuple[int, int], colour: tuple[int, int, int],
              roots: list[str], cap: Any, font: Any) -> None:
    """One thumbnail with its rank, score, copies, file name and (``--explain``) shared caption."""
    cx, cy = at
    t = thumbnail(hit.path, CELL)
    sheet.paste(t, (cx + (CELL - t.width) // 2, cy + (CELL - t.height) // 2))
    draw.rectangle((cx - 1, cy - 1, cx + CELL, cy + CELL), outline=colour)
    more = copies_note(hit)
    draw.text((cx + 2, cy + CELL + 2), f"#{hit.rank}  {hit.score:.3f}" + (f"  {more}" if more else ""),
              fill=(30, 30, 30), font=font)
    draw.text((cx + 2, cy + CELL + CAPTION), name_line(hit, roots, draw, font), fill=(90, 90, 90), font=font)
    if cap is not None:
        for i, line in enumerate(_why_lines(cap.text)):
            draw.text((cx + 2, cy + CELL + CAPTION + NAME_LINE + i * WHY_LINE), line, fill=RELATIONAL, font=font)


def name_line(hit: Any, roots: list[str], draw: Any = None, font: Any = None) -> str:
    """The file name under a thumbnail: its path relative to the collection, shortened in the
    middle to fit the cell (measured with ``font`` when given)."""
    from relsearch.view.html import shown
    from relsearch.view.names import relative, shorten

    name = shown(relative(hit.path, roots))
    width = min(len(name), NAME_CHARS * 2)
    while width > 4 and draw is not None and draw.textlength(shorten(name, width), font=font) > CELL - 4:
        width -= 1
    return shorten(name, width if draw is not None else NAME_CHARS)


def relation_text(verdict: Any, column: str) -> str:
    """The verdict line above a relational band."""
    if verdict.known:
        return f"reads a relation: {verdict.caption} ({verdict.score:.3f})"
    return (f"NO RELATION {column} KNOWS in this query: the neighbours share no relation it knows "
            f"({verdict.why}; nearest caption: {verdict.caption}, {verdict.score:.3f})")


def _relation_note(draw: Any, verdict: Any, column: str, at: tuple[int, int], width: int, font: Any) -> None:
    lines = textwrap.wrap(relation_text(verdict, column), max(20, width // 6))
    if len(lines) > 2:
        lines = lines[:2]
        lines[-1] = lines[-1][:-1] + "\u2026"
    for i, line in enumerate(lines):
        draw.text((at[0], at[1] + i * 13), line, fill=RELATIONAL if verdict.known else NO_RELATION, font=font)


def write_sheet(result: Any, path: str | os.PathLike[str], k: int | None = None) -> Path:
    """Write :func:`render_sheet` of ``result`` as a PNG to ``path``."""
    from relsearch.errors import RelsearchError

    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        render_sheet(result, k=k).save(out, format="PNG", optimize=True)
    except OSError as exc:
        raise RelsearchError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out
