"""The browse page of ``relsearch view``: what it shows and the searches behind it.

The page (``static/browse.js``, inline, no outside resources) opens on a grid of the
collection, most recent first (:mod:`relsearch.view.grid`), and searches by an uploaded
image, by clicking any thumbnail (the record's stored vectors: nothing is re-embedded), or
by an anonymous caption typed into its text box; ``analogy`` and ``explain`` are toggles
and the query's own caption is shown above the rows. The HTTP plumbing stays in
:mod:`relsearch.view.server`; this module turns request parameters into answers.
"""

from __future__ import annotations

import html
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError
from relsearch.view.extras import CONTROLS  # composed queries and duplicate groups (i14)

STATIC = Path(__file__).resolve().parent / "static"


@lru_cache(maxsize=4)
def _static(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def page_html(index_label: str, kinds: dict[str, str], count: int, k: int, max_k: int, style: str) -> str:
    """The browse page: controls, the result area, the collection grid, the script."""
    cols = ", ".join(f"{html.escape(n)} ({html.escape(kind)})" for n, kind in kinds.items())
    has_rel = any(v == "relational" for v in kinds.values())
    has_attr = any(v != "relational" for v in kinds.values())
    analogy_ok = has_rel and has_attr

    def toggle(name: str, ok: bool, why: str) -> str:
        off = "" if ok else f' disabled title="{html.escape(why)}"'
        return (f'<label class="{"" if ok else "off"}"><input type="checkbox" id="{name}"{off}> {name}</label>')

    text_off = "" if has_rel else ' disabled placeholder="caption search needs a relational column"'
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>relsearch</title>"
        f"<style>{style}{_static('browse.css')}</style></head><body>"
        "<h1>relsearch &mdash; relational neighbours beside attribute neighbours</h1>"
        f"<p class=\"meta\">index {html.escape(index_label)} &middot; {count} images &middot; {cols}</p>"
        "<div id=\"drop\">Drop an image here, paste one, or "
        "<input id=\"pick\" type=\"file\" accept=\"image/*\"></div>"
        "<div id=\"controls\">"
        "<form id=\"textform\"><input id=\"text\" type=\"search\" "
        "placeholder=\"an anonymous caption, e.g. {Object}s arranged in a ring around a central {Center}\""
        f"{text_off}><button type=\"submit\"{' disabled' if not has_rel else ''}>search caption</button></form>"
        f"k <input id=\"k\" type=\"number\" min=\"1\" max=\"{max_k}\" value=\"{k}\" style=\"width:4em\">"
        + toggle("analogy", analogy_ok, "needs a relational and an attribute column")
        + toggle("explain", has_rel, "needs a relational column")
        + "</div>" + CONTROLS + "<div class=\"hint\">click an image to search with it; Ctrl-click opens the file</div>"
        "<div id=\"status\"></div><div id=\"result\"><main id=\"rows\"></main></div>"
        "<section id=\"gridbox\"><h2>the collection <span id=\"gridinfo\"></span></h2>"
        "<div class=\"hits\" id=\"grid\"></div><nav class=\"pager\"><button id=\"newer\" type=\"button\">"
        "&larr; newer</button> <span id=\"pageno\"></span> <button id=\"older\" type=\"button\">older &rarr;"
        "</button></nav></section>"
        f"<script>{_static('browse.js')}\n{_static('compose.js')}</script></body></html>\n"
    )


def flag(params: dict[str, list[str]], name: str) -> bool:
    """``?name=1`` / ``true`` / ``on`` -> True; absent or ``0`` -> False; anything else is an error."""
    raw = params.get(name, ["0"])[0].strip().lower()
    if raw in ("1", "true", "on", "yes"):
        return True
    if raw in ("0", "false", "off", "no", ""):
        return False
    raise RelsearchError(f"{name} must be 0 or 1, got {raw!r}")


def record_result(searcher: Any, record_id: int, k: int) -> Any:
    """Neighbours of an indexed image, from its stored vectors (no decoding, no model)."""
    from relsearch.results import QueryResult

    store = searcher.opened.store
    rec = store.get_records([record_id]).get(record_id)
    if rec is None:
        raise RelsearchError(f"no image #{record_id} in this index")
    result = QueryResult(query=rec.path, results={})
    for name, entry in searcher.encoders.items():
        vec = store.get_vectors(name, np.asarray([record_id], dtype=np.int64), entry.dim)
        result.vectors[name] = vec[0]
        result.results[name] = searcher.search_vectors(name, vec, k)[0]
        result.kinds[name] = entry.kind
    return result


def finish(searcher: Any, result: Any, k: int, analogy: bool, explain: bool,
           captions: str | None = None) -> tuple[Any, bool]:
    """Apply the toggles; the query's caption is looked up even with ``explain`` off.

    Returns ``(result, show_captions)``. Without a caption bank (an encoder with none
    shipped and no ``--captions``) the caption is left out unless ``explain`` was asked.
    """
    from relsearch.modes import Modes, apply_modes

    apply_modes(searcher, result, k, Modes(analogy=analogy, explain=False, captions=captions))
    has_rel = any(v == "relational" for v in result.kinds.values())
    if explain or has_rel:
        try:
            apply_modes(searcher, result, k, Modes(explain=True, captions=captions, relation=False))
        except RelsearchError:
            if explain:
                raise
        if not explain and "explain" in result.timings_ms:  # only the query's caption was looked up
            result.timings_ms["caption"] = result.timings_ms.pop("explain")
    return result, explain


def answer(result: Any, query_src: str | None, label: str, show_captions: bool) -> dict[str, Any]:
    """The JSON the page renders: rows HTML (query block first) and the result itself."""
    from relsearch.view.html import query_caption, render_query, render_rows

    rows = render_rows(result, src=lambda h: f"thumb/{h.id}", href=lambda h: f"file/{h.id}",
                       captions=show_captions)
    data = result.to_dict()
    if not show_captions:
        data.pop("explain", None)
        qc = query_caption(result)
        if qc is not None:
            data["query_caption"] = qc.to_dict()
    return {"html": render_query(label, query_src, query_caption(result)) + rows, "result": data,
            "kinds": result.kinds, "timings_ms": result.timings_ms}
