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
import re
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError

#: Images one composed query may upload.
MAX_IMAGES = 2
#: Nesting a compose body may have: ``{"images": [...]}`` needs 2. Deeper bodies are refused
#: before parsing (a parser recursing into a deep one runs out of stack).
MAX_JSON_DEPTH = 8
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')


def json_depth(body: bytes) -> int:
    """How deep ``[`` and ``{`` nest in a JSON text (brackets inside strings do not count).

    Linear in the body, whatever it holds: escapes go first, so that a string is then
    simply quote, no quote, quote (a pattern for strings with escapes in them rescans the
    rest of the body from every quote of an unterminated one).
    """
    bare = np.frombuffer(_STRING.sub(b"", _ESCAPE.sub(b"", body)), dtype=np.uint8)
    depth = deepest = 0
    for start in range(0, bare.size, 1 << 20):
        part = bare[start : start + (1 << 20)]
        step = np.isin(part, (ord("["), ord("{"))).astype(np.int32) - np.isin(part, (ord("]"), ord("}")))
        run = np.cumsum(step, dtype=np.int64) + depth
        deepest, depth = max(deepest, int(run.max())), int(run[-1])
    return deepest


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def parse_compose(body: bytes) -> tuple[list[bytes], str, list[float] | None, int | None]:
    """``(images, caption, weights, k)`` from a ``/compose`` body; RelsearchError when malformed."""
    if json_depth(body) > MAX_JSON_DEPTH:
        raise RelsearchError(f"compose body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        data = json.loads(body, parse_constant=_refuse_constant)  # no NaN / Infinity
    except (ValueError, RecursionError):
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
    if weights is not None and (not isinstance(weights, list) or not all(_is_number(w) for w in weights)):
        raise RelsearchError("weights must be a list of numbers")
    k = data.get("k")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool)):
        raise RelsearchError("k must be an integer")
    if not images and not text.strip():
        raise RelsearchError("give an image or a caption to compose")
    return images, text.strip(), weights, k


def compose_answer(searcher: Any, decoded: dict[str, Any], text: str, weights: list[float] | None,
                   k: int) -> dict[str, Any]:
    """Search ``searcher`` with the decoded uploads (by label, e.g. ``"image 1"``) and the caption combined."""
    from relsearch.composed import parse_terms, search_composed
    from relsearch.view.html import render_query, render_rows

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
