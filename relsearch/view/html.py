"""Static HTML page of a :class:`~relsearch.query.QueryResult`: the query, then one row per encoder.

Thumbnails are embedded as small JPEG data URIs, so the page still works when it is
moved or mailed; each thumbnail links to the original file (``file://``). The same
row markup serves the local ``view`` page, where thumbnails come from the server.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from relsearch.view.names import hit_label

#: Longest side of an embedded thumbnail, in pixels. At JPEG quality 70 one thumbnail
#: is 3-6 kB, so a k=20 page with two encoders stays around a quarter of a megabyte.
THUMB_PX = 128
THUMB_QUALITY = 70
QUERY_PX = 256
#: Characters of the file name under a thumbnail (the path is shortened in the middle).
NAME_CHARS = 24

#: Shown for a hit whose file has gone or no longer decodes (grey box with a cross).
MISSING_SRC = "data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128">'
    b'<rect width="128" height="128" fill="#ddd"/>'
    b'<path d="M32 32L96 96M96 32L32 96" stroke="#999" stroke-width="6"/></svg>'
).decode()

STYLE = """
body{font-family:system-ui,-apple-system,'DejaVu Sans',sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:18px;margin:0 0 8px}
.query{display:flex;gap:16px;align-items:flex-start;margin-bottom:16px}
.query img{max-width:256px;max-height:256px;border:1px solid #bbb;background:#fff}
.query .label{font-size:13px;color:#555;word-break:normal;overflow-wrap:normal;max-width:60ch}
.row{margin:12px 0 20px}
.row h2{font-size:15px;margin:0 0 6px}
.row h2 .kind{font-weight:normal;font-size:12px;padding:1px 6px;border-radius:8px;margin-left:6px}
.row.relational h2 .kind{background:#d8ecff;color:#0b4f8a}
.row.attribute h2 .kind{background:#eee;color:#555}
.row.analogy h2 .kind{background:#fde7c8;color:#8a4b0b}
.row.analogy a.hit img{border-color:#e0a24a}
a.hit .why{font-size:10px;color:#0b4f8a;max-width:128px;line-height:1.2;text-align:center;margin-top:1px;word-break:normal;overflow-wrap:normal;hyphens:none}
.query .qcap{font-size:13px;color:#0b4f8a;margin-top:6px}
.hits{display:flex;flex-wrap:wrap;gap:8px}
a.hit{display:flex;flex-direction:column;align-items:center;width:132px;text-decoration:none;color:#222}
a.hit img{width:128px;height:128px;object-fit:contain;background:#fff;border:1px solid #ccc}
.row.relational a.hit img{border-color:#6aa7e0}
a.hit .cap{font-size:11px;font-variant-numeric:tabular-nums;margin-top:2px}
a.hit .name{font-size:10px;color:#777;max-width:128px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.empty{color:#888;font-size:13px}
.relation{font-size:12px;margin:0 0 6px}
.relation.known{color:#0b4f8a}
.relation.unknown{color:#8a1f0b;background:#fde8e4;border:1px solid #e8a99c;border-radius:4px;padding:4px 8px}
.row[data-relation=unknown] a.hit img{opacity:.6}
"""


def encode_jpeg(image: Any, size: int) -> bytes:
    img = image.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=THUMB_QUALITY, optimize=True)
    return buf.getvalue()


@lru_cache(maxsize=1024)
def thumbnail_jpeg(path: str, size: int = THUMB_PX, mtime_ns: int = 0) -> bytes | None:
    """JPEG bytes of ``path`` shrunk to ``size`` on its longer side; None if it cannot be read.

    ``mtime_ns`` is only part of the cache key, so an edited file gets a fresh thumbnail.
    """
    from relsearch.collection import DecodeError, load_image

    try:
        return encode_jpeg(load_image(path, max_side=max(size * 2, 64)), size)
    except (DecodeError, OSError, ValueError):
        return None


def file_mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def jpeg_data_uri(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


def file_data_uri(path: str, size: int = THUMB_PX) -> str:
    """Thumbnail of ``path`` as a data URI (a grey placeholder when unreadable)."""
    data = thumbnail_jpeg(path, size, file_mtime_ns(path))
    return jpeg_data_uri(data) if data is not None else MISSING_SRC


def file_uri(path: str) -> str:
    return Path(os.path.abspath(path)).as_uri()


def columns(result: Any) -> list[tuple[str, str, str, list[Any]]]:
    """``(column, kind, title note, hits)`` in display order: relational, analogy, attribute.

    The analogy column (``--analogy``) sits between the relational columns it re-ranks
    and the attribute columns it pushes away from.
    """
    names = result.ordered()
    rel = [n for n in names if result.kinds.get(n) == "relational"]
    out = [(n, "relational", "", result.results[n]) for n in rel]
    analogy = result.analogy
    if analogy is not None:
        of = result.analogy_of
        note = (f"{of.get('relational', '?')} - {of.get('weight', 0):g} x {of.get('attribute', '?')}"
                if of else "")
        out.append(("analogy", "analogy", note, analogy))
    out += [(n, result.kinds.get(n, "attribute"), "", result.results[n]) for n in names if n not in rel]
    return out


def hit_caption(result: Any, column: str, hit: Any) -> Any:
    """The shared caption ``--explain`` found for ``hit`` in ``column`` (None without one)."""
    explain = result.explain
    return explain.caption(column, hit.id) if explain is not None else None


def relation_of(result: Any, column: str) -> Any:
    """What ``column`` reads the query as (a RelationVerdict), or None without a verdict."""
    return getattr(result, "relation", {}).get(column)


def relation_line(result: Any, column: str) -> str | None:
    """One line for the head of a relational column: the relation it reads, or that it knows none."""
    v = relation_of(result, column)
    if v is None:
        return None
    if v.known:
        return f"{column} reads a relation: {v.caption}  ({v.score:.3f})"
    return (f"{column}: no relation it knows in this query ({v.why}; nearest caption: {v.caption}, "
            f"{v.score:.3f}); its neighbours share no relation it knows")


def render_rows(
    result: Any,
    src: Callable[[Any], str],
    href: Callable[[Any], str],
    k: int | None = None,
    captions: bool = True,
) -> str:
    """HTML of one ``<section class="row">`` per column (relational, analogy, attribute).

    ``src(hit)`` and ``href(hit)`` give each thumbnail's image source and link target;
    with explanations in ``result`` (and ``captions``) each relational thumbnail gets a
    line with the caption it shares with the query.
    """
    parts = []
    for name, kind, note, all_hits in columns(result):
        hits = all_hits[: k if k is not None else None]
        cells = []
        for h in hits:
            roots = getattr(result, "roots", [])
            base = hit_label(h, roots, NAME_CHARS) if roots else os.path.basename(h.path)
            tip = "\n".join([h.path, *(f"copy: {c}" for c in getattr(h, "copies", []))])
            cap = hit_caption(result, name, h) if captions else None
            why = (f'<span class="why" title="shared caption, cosine {cap.score:.3f}">{html.escape(cap.text)}</span>'
                   if cap is not None else "")
            cells.append(
                f'<a class="hit" data-id="{h.id}" href="{html.escape(href(h))}" title="{html.escape(shown(tip))}" '
                f'target="_blank">'
                f'<img class="thumb" alt="rank {h.rank}" loading="eager" src="{html.escape(src(h))}">'
                f'<span class="cap">#{h.rank} &middot; {h.score:.3f}</span>'
                f'<span class="name">{html.escape(shown(base))}</span>{why}</a>'
            )
        body = "".join(cells) if cells else '<span class="empty">no neighbours</span>'
        label = html.escape(kind + (f": {note}" if note else ""))
        parts.append(
            f'<section class="row {html.escape(kind)}" data-encoder="{html.escape(name)}" data-kind="{html.escape(kind)}"'
            f'{_relation_attr(result, name)}>'
            f'<h2>{html.escape(name)}<span class="kind">{label}</span></h2>{_relation_block(result, name)}'
            f'<div class="hits">{body}</div></section>'
        )
    return "\n".join(parts)


def _relation_attr(result: Any, column: str) -> str:
    v = relation_of(result, column)
    return "" if v is None else f' data-relation="{"known" if v.known else "unknown"}"'


def _relation_block(result: Any, column: str) -> str:
    """The verdict above a relational row: the relation it reads, or a warning that it knows none."""
    v = relation_of(result, column)
    if v is None:
        return ""
    cap = f"<i>{html.escape(v.caption)}</i> ({v.score:.3f})"
    if v.known:
        return f'<div class="relation known">reads a relation: {cap}</div>'
    return (f'<div class="relation unknown"><b>no relation {html.escape(column)} knows in this query</b> '
            f'({html.escape(v.why)}; nearest caption: {cap}): the neighbours below are '
            "not relational matches</div>")


def shown(text: str) -> str:
    """A path as page text: a name that is not UTF-8 (stored surrogate-escaped) shows its bytes as \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")


def breakable(text: str) -> str:
    """``text`` escaped for HTML, with line-break chances after each ``/`` only: a long path
    wraps between folders, never inside a name."""
    return "/<wbr>".join(html.escape(part) for part in text.split("/"))


def render_query(label: str, src: str | None, caption: Any = None) -> str:
    """The query block: its image (when there is one), its label, and its nearest caption."""
    img = f'<img class="query-img" alt="query" src="{html.escape(src)}">' if src else ""
    what = "query image" if src else "query caption"
    cap = (f'<div class="qcap">reads as: <i>{html.escape(caption.text)}</i> ({caption.score:.3f})</div>'
           if caption is not None else "")
    return (f'<div class="query">{img}<div class="label"><b>{what}</b><br>{breakable(shown(label))}{cap}</div></div>')


def query_caption(result: Any) -> Any:
    explain = result.explain
    return explain.query_caption if explain is not None else None


def render_page(result: Any, k: int | None = None, thumb_px: int = THUMB_PX) -> str:
    """A self-contained HTML page of ``result`` (thumbnails inline, links to the files)."""
    is_image = bool(result.query) and os.path.isfile(result.query)
    query_src = file_data_uri(result.query, QUERY_PX) if is_image else None
    rows = render_rows(result, src=lambda h: file_data_uri(h.path, thumb_px), href=lambda h: file_uri(h.path), k=k)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>relsearch: {html.escape(shown(os.path.basename(result.query)) or 'query')}</title>"
        f"<style>{STYLE}</style></head><body>"
        "<h1>relsearch &mdash; relational neighbours beside attribute neighbours</h1>"
        f"{render_query(result.query, query_src, query_caption(result))}{_indexed_as(result)}"
        f"\n<main id=\"rows\">{rows}</main>"
        "</body></html>\n"
    )


def _indexed_as(result: Any) -> str:
    """A line under the query for each indexed file holding its bytes (not listed as matches)."""
    from relsearch.view.names import relative

    lines = []
    for paths in getattr(result, "query_in_collection", {}).values():
        shown_paths = [shown(relative(p, getattr(result, "roots", []))) for p in paths]
        lines.append('<div class="indexed-as">the query is indexed as '
                     + ", ".join(html.escape(p) for p in shown_paths) + "</div>")
    return "".join(lines)


def write_html(result: Any, path: str | os.PathLike[str], k: int | None = None) -> Path:
    """Write :func:`render_page` of ``result`` to ``path`` (parent folders created)."""
    from relsearch.errors import RelsearchError

    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_page(result, k=k), encoding="utf-8")
    except OSError as exc:
        raise RelsearchError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return out
