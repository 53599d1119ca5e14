"""PNG contact sheet of a :class:`~relsearch.query.QueryResult`: query on top, one band per encoder."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

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


def _font(size: int) -> Any:
    # Pillow's bundled font at a size (FreeType build); the bitmap default otherwise.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _thumb(path: str, size: int) -> Image.Image:
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


def render_sheet(result: Any, k: int | None = None, columns: int = COLUMNS) -> Image.Image:
    """The contact sheet as a PIL image."""
    names = result.ordered()
    rows = {n: result.results[n][: k if k is not None else None] for n in names}
    cols = max(1, min(columns, max((len(h) for h in rows.values()), default=1)))
    width = 2 * PAD + cols * CELL + (cols - 1) * GAP
    width = max(width, 560)
    query_px = 2 * CELL
    is_image = bool(result.query) and os.path.isfile(result.query)
    q = _thumb(result.query, query_px) if is_image else None
    top = PAD + (q.height if q is not None else 3 * HEADER) + PAD
    bands = []
    for n in names:
        lines = max(1, -(-len(rows[n]) // cols))
        bands.append((n, HEADER + lines * (CELL + CAPTION + GAP)))
    height = top + sum(h for _, h in bands) + PAD
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    big, small = _font(15), _font(11)

    x_text = PAD
    if q is not None:
        sheet.paste(q, (PAD, PAD))
        draw.rectangle((PAD - 1, PAD - 1, PAD + q.width, PAD + q.height), outline=(120, 120, 120))
        x_text = PAD + q.width + PAD
    draw.text((x_text, PAD), "query image" if is_image else "query caption", fill=(0, 0, 0), font=big)
    chars = max(20, (width - x_text - PAD) // 7)
    for i, line in enumerate(textwrap.wrap(result.query, chars)[:6]):
        draw.text((x_text, PAD + HEADER + i * 16), line, fill=(80, 80, 80), font=small)

    y = top
    for name, band_h in bands:
        kind = result.kinds.get(name, "attribute")
        colour = RELATIONAL if kind == "relational" else ATTRIBUTE
        draw.rectangle((PAD, y + 3, PAD + 6, y + HEADER - 5), fill=colour)
        draw.text((PAD + 12, y + 2), f"{name}  ({kind})", fill=(0, 0, 0), font=big)
        y0 = y + HEADER
        for j, hit in enumerate(rows[name]):
            cx = PAD + (j % cols) * (CELL + GAP)
            cy = y0 + (j // cols) * (CELL + CAPTION + GAP)
            t = _thumb(hit.path, CELL)
            sheet.paste(t, (cx + (CELL - t.width) // 2, cy + (CELL - t.height) // 2))
            draw.rectangle((cx - 1, cy - 1, cx + CELL, cy + CELL), outline=colour)
            draw.text((cx + 2, cy + CELL + 2), f"#{hit.rank}  {hit.score:.3f}", fill=(30, 30, 30), font=small)
        if not rows[name]:
            draw.text((PAD, y0 + 4), "no neighbours", fill=(120, 120, 120), font=small)
        y += band_h
    return sheet


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
