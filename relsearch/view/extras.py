"""Page answers for composed queries (a second image and a caption) and duplicate groups.

- ``POST /compose``  JSON ``{"images": [base64, ...], "text": CAPTION, "weights": [...], "k": N}``:
  the uploaded images (one or two) and the caption are combined as in
  ``relsearch query A B "text:..."`` (:mod:`relsearch.composed`);
- ``GET /dupes?threshold=T``  exact and near-duplicate groups (:mod:`relsearch.dupes`), as
  rows of thumbnails.

The HTTP plumbing stays in :mod:`relsearch.view.server`.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import os
import tempfile
from typing import Any

from relsearch.errors import RelsearchError

#: Images one composed query may upload.
MAX_IMAGES = 2


def parse_compose(body: bytes) -> tuple[list[bytes], str, list[float] | None, int | None]:
    """``(images, caption, weights, k)`` from a ``/compose`` body; RelsearchError when malformed."""
    try:
        data = json.loads(body)
    except ValueError:
        raise RelsearchError("compose body must be JSON") from None
    if not isinstance(data, dict):
        raise RelsearchError("compose body must be a JSON object")
    raw = data.get("images", [])
    if not isinstance(raw, list) or len(raw) > MAX_IMAGES or not all(isinstance(x, str) for x in raw):
        raise RelsearchError(f"images must be a list of at most {MAX_IMAGES} base64 strings")
    try:
        images = [base64.b64decode(x, validate=True) for x in raw]
    except (binascii.Error, ValueError):
        raise RelsearchError("images must be base64") from None
    text = data.get("text") or ""
    if not isinstance(text, str):
        raise RelsearchError("text must be a string")
    weights = data.get("weights")
    if weights is not None and (not isinstance(weights, list)
                                or not all(isinstance(w, (int, float)) for w in weights)):
        raise RelsearchError("weights must be a list of numbers")
    k = data.get("k")
    if k is not None and not isinstance(k, int):
        raise RelsearchError("k must be an integer")
    if not images and not text.strip():
        raise RelsearchError("give an image or a caption to compose")
    return images, text.strip(), weights, k


def compose_answer(searcher: Any, images: list[bytes], text: str, weights: list[float] | None,
                   k: int) -> dict[str, Any]:
    """Search ``searcher`` with the uploaded images and the caption combined."""
    from relsearch.collection import DecodeError, load_image
    from relsearch.composed import parse_terms, search_composed
    from relsearch.view.html import render_query, render_rows

    decoded: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="relsearch-compose-") as tmp:
        for i, data in enumerate(images, 1):
            path = os.path.join(tmp, f"image{i}")
            with open(path, "wb") as fh:
                fh.write(data)
            try:
                decoded[f"image {i}"] = load_image(path, max_side=512)
            except DecodeError as exc:
                raise RelsearchError(f"image {i} is not a readable image ({exc.reason})") from exc
    queries = list(decoded) + ([f"text:{text}"] if text else [])
    terms = parse_terms(queries, weights)
    result = search_composed(searcher, terms, k, images=decoded)
    rows = render_rows(result, src=lambda h: f"thumb/{h.id}", href=lambda h: f"file/{h.id}")
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in result.notes)
    return {"html": render_query(result.query, None, None) + notes + rows, "result": result.to_dict(),
            "kinds": result.kinds, "timings_ms": result.timings_ms}


def dupes_answer(index: str | os.PathLike[str], threshold: float) -> dict[str, Any]:
    """Duplicate groups of ``index`` as HTML rows of thumbnails, and as the CLI's JSON."""
    from relsearch.dupes import find_dupes

    result = find_dupes(index, threshold=threshold)
    parts = [f'<p class="meta">{len(result.groups)} groups among {result.images} images '
             f'({html.escape(result.encoder)} column, threshold {result.threshold:g})</p>']
    for g in result.groups:
        thumbs = "".join(
            f'<a class="hit" href="file/{i}" data-id="{i}"><img src="thumb/{i}" loading="lazy" alt=""></a>'
            for i in g.ids)
        names = html.escape(", ".join(os.path.basename(p) for p in g.paths))
        parts.append(f'<section class="dupes {g.kind}"><h3>{g.kind} {g.score:.3f} &middot; {len(g.paths)} files'
                     f'</h3><div class="cells">{thumbs}</div><p class="names">{names}</p></section>')
    return {"html": "".join(parts), "result": result.to_dict()}


#: Controls the browse page shows under its own (see ``static/compose.js``).
CONTROLS = (
    '<form id="composeform" class="compose">combine the image above with '
    '<input id="second" type="file" accept="image/*" title="a second image"> and the caption '
    '<input id="addtext" type="search" placeholder="text: an anonymous caption (optional)"> '
    '<button type="submit">search combined</button></form>'
    '<div class="compose">near-duplicates at '
    '<input id="dupethreshold" type="number" min="0.5" max="1" step="0.01" style="width:5em"> '
    '<button id="dupesbtn" type="button">show duplicate groups</button></div>'
)
