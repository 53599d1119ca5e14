"""Composed queries: several images and captions at once, with weights and negatives.

``relsearch query A.jpg "text:{Object}s arranged in a ring" --weights 1,0.5 --not B.jpg``

Per column, each term is embedded by that column's encoder and the query vector is
``sum(weight * positive) - sum(negative)``, L2-normalised, with the weights divided by the
largest one first: only their ratios count (``2,1`` is ``1,0.5``). A caption (``text:...``)
needs a caption (text) tower: in a column whose encoder has none (attribute columns,
e.g. ``imagenet``) the caption is left out of that column's sum and the result says
so (``skipped``), instead of failing or silently searching with less than was asked.
A column where no positive term applies, or where the terms cancel out, is not
searched, again with a note.

A negative that is an image of the indexed collection (same bytes) is also dropped
from the results, so ``--not A`` never lists A itself, whatever the sums give.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from relsearch.encoders.base import TextEncoder
from relsearch.errors import RelsearchError
from relsearch.query import Searcher, load_query_image
from relsearch.results import Hit, QueryResult

TEXT_PREFIX = "text:"
#: An indexed image by its record id (the ``id`` of ``--json``) or by its path relative to
#: the collection: searched with its stored vectors, the file itself is not needed.
ID_PREFIX = "id:"
PATH_PREFIX = "path:"
#: Below this norm (per unit of summed |weight|) the weighted sum is "the terms cancel out".
_MIN_NORM = 1e-6


@dataclass(frozen=True)
class QueryTerm:
    """One part of a composed query: an image path or ``text:CAPTION``."""

    query: str
    weight: float = 1.0
    negative: bool = False

    def __post_init__(self) -> None:
        if not self.query or (self.is_text and not self.caption.strip()):
            raise ValueError(f"empty query {self.query!r}; give an image path or text:CAPTION")
        if self.query.startswith(ID_PREFIX) and not self.query[len(ID_PREFIX) :].isdigit():
            raise ValueError(f"{self.query!r}: id:N takes the number of an indexed image (the id in --json)")
        if self.query == PATH_PREFIX:
            raise ValueError("path: needs the image's path relative to the collection, e.g. path:trips/beach.jpg")
        if not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"query weights must be positive numbers (use --not to subtract), got {self.weight!r}")

    @property
    def is_text(self) -> bool:
        return self.query.startswith(TEXT_PREFIX)

    @property
    def caption(self) -> str:
        return self.query[len(TEXT_PREFIX) :] if self.is_text else ""

    @property
    def is_stored(self) -> bool:
        """An indexed image named by ``id:N`` or ``path:REL`` (its stored vectors are used)."""
        return self.query.startswith((ID_PREFIX, PATH_PREFIX))

    @property
    def is_file(self) -> bool:
        """An image file to decode and embed."""
        return not (self.is_text or self.is_stored)

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "weight": self.weight, "negative": self.negative}


def parse_terms(queries: list[str], weights: str | list[float] | None = None,
                negatives: list[str] | None = None) -> list[QueryTerm]:
    """Terms from the command line: positive ``queries`` (weighted), then ``negatives``.

    ``weights`` is one number per positive query, as a list or "1,0.5". Raises
    :class:`RelsearchError` on a bad combination.
    """
    if not queries:
        raise RelsearchError("give at least one query (an image path or text:CAPTION) besides --not")
    if weights is None or weights == "":
        ws = [1.0] * len(queries)
    else:
        raw = weights.split(",") if isinstance(weights, str) else list(weights)
        try:
            if any(isinstance(w, bool) for w in raw):  # float(True) is 1.0: a flag is not a weight
                raise ValueError
            ws = [float(w) for w in raw]
        except (ValueError, TypeError, OverflowError):
            raise RelsearchError(f"--weights must be comma-separated numbers, got {weights!r}") from None
        if len(ws) != len(queries):
            raise RelsearchError(f"--weights has {len(ws)} numbers for {len(queries)} queries; give one per query")
    try:
        return [QueryTerm(q, w) for q, w in zip(queries, ws)] + [QueryTerm(q, 1.0, True) for q in negatives or []]
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc


def label(terms: list[QueryTerm]) -> str:
    """A readable one-line form: ``a.jpg + 0.5*text:... - b.jpg`` (one plain term: itself)."""
    if len(terms) == 1 and not terms[0].negative:
        return terms[0].caption or terms[0].query
    parts = []
    for t in terms:
        w = "" if t.weight == 1.0 else f"{t.weight:g}*"
        parts.append(("- " if t.negative else "+ ") + w + t.query)
    return " ".join(parts).removeprefix("+ ")


@dataclass
class ComposedResult(QueryResult):
    """A :class:`QueryResult` that also lists its terms and what each column left out."""

    terms: list[QueryTerm] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # column -> notes

    @property
    def notes(self) -> list[str]:
        return [f"{name}: {note}" for name, notes in self.skipped.items() for note in notes]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["queries"] = [t.to_dict() for t in self.terms]
        out["skipped"] = {name: list(notes) for name, notes in self.skipped.items()}
        return out


def _store_of(searcher: Any) -> Any:
    """The LMDB store behind ``searcher`` (None for a backend without one, e.g. Milvus)."""
    opened = getattr(searcher, "opened", None)
    return getattr(opened, "store", None)


def _file_record(store: Any, path: str) -> int | None:
    """Record id of the indexed content with the same bytes as the file ``path``."""
    from relsearch.collection import sha256_file

    try:
        return store.id_for_hash(sha256_file(path))
    except OSError:  # gone or unreadable since it was decoded: nothing to match
        return None


def _resolve_stored(searcher: Any, terms: list[QueryTerm]) -> dict[str, Any]:
    """The record of each ``id:N`` / ``path:REL`` term; :class:`RelsearchError` when the index has none."""
    stored = [t for t in terms if t.is_stored]
    if not stored:
        return {}
    store = _store_of(searcher)
    if store is None:
        raise RelsearchError("id:N and path:REL queries need the faiss backend (the index directory)")
    roots = searcher.opened.manifest.collection_roots()
    out: dict[str, Any] = {}
    for t in stored:
        if t.query.startswith(ID_PREFIX):
            rid: int | None = int(t.query[len(ID_PREFIX) :])
            where = f"no image {t.query} in this index (ids are in the --json output)"
        else:
            rel = t.query[len(PATH_PREFIX) :]
            rid = _path_record(store, roots, rel)
            where = f"no indexed image at {t.query} (paths are relative to the collection {', '.join(roots)})"
        rec = store.get_records([rid]).get(rid) if rid is not None and rid < 2**63 else None
        if rec is None:
            raise RelsearchError(where)
        out[t.query] = rec
    return out


def _path_record(store: Any, roots: list[str], rel: str) -> int | None:
    """Record id of the file at ``rel``: relative to a collection folder (or, with several, to
    the folder holding it, as results show it), or absolute."""
    rel = os.path.expanduser(rel)
    bases = roots + ([os.path.dirname(r.rstrip(os.sep)) for r in roots] if len(roots) > 1 else [])
    wanted = [os.path.normpath(os.path.join(base, rel)) for base in bases]
    for full in wanted:
        entry = store.get_path(full)
        if entry is not None:
            return int(entry.id)
    # the build lists files under the folder as it was named (a symlink, say), the manifest
    # under its real path: compare real parent folders
    real = {os.path.realpath(w) for w in wanted}
    for path, entry in store.all_paths().items():
        if os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path)) in real:
            return int(entry.id)
    return None


def _marked_ids(searcher: Any, terms: list[QueryTerm], stored: dict[str, Any]) -> tuple[set[int], set[int]]:
    """``(negatives, queries)``: record ids of the ``--not`` images that are indexed (never
    listed) and of the positive query images themselves (shown as the query, not as a match)."""
    store = _store_of(searcher)
    negatives: set[int] = set()
    queries: set[int] = set()
    for t in terms:
        if t.is_text or (store is None and not t.is_stored) or t.query == DECODED_IMAGE:
            continue
        rid = stored[t.query].id if t.is_stored else _file_record(store, t.query)
        if rid is not None:
            (negatives if t.negative else queries).add(rid)
    return negatives, queries - negatives


def _weight_scale(terms: list[QueryTerm]) -> float:
    """What the positive weights are divided by: their largest, so only their ratios count.

    Weights are scale-free (``2,1`` is ``1,0.5``); without this, huge weights overflow the
    sum (every score 0) and tiny ones fall under the cancel-out threshold. Weights already
    at most 1 with a largest of 1, the default, are left as they are.
    """
    return max((t.weight for t in terms if not t.negative), default=1.0)


def search_composed(searcher: Searcher, terms: list[QueryTerm], k: int = 20,
                    images: dict[str, Any] | None = None) -> ComposedResult:
    """Search every column of ``searcher`` with the composed vector of ``terms``.

    The one search path of the engine: the CLI, the page, the Milvus backend and the
    benchmarks all query through it (a plain image query is the composed query of one
    image). ``searcher`` is a :class:`~relsearch.query.Searcher` or anything with its
    ``refresh``, ``encoders``, ``encoder`` and ``search_vectors`` (the Milvus backend's).
    ``images`` maps image terms to already-decoded images (loaded here otherwise).
    ``id:N`` / ``path:REL`` terms use the record's stored vectors: a column loads its
    encoder only when some term must be embedded. An indexed query image (same bytes) stays
    among the hits and is named in ``query_in_collection``, so views can show it as the query.
    """
    if not any(not t.negative for t in terms):
        raise RelsearchError("give at least one query (an image path or text:CAPTION) besides --not")
    searcher.refresh()  # a build switched generations since the last query: search the new one
    images = dict(images or {})
    for t in terms:
        if t.is_file and t.query not in images:
            images[t.query] = load_query_image(t.query)
    stored = _resolve_stored(searcher, terms)
    drop, itself = _marked_ids(searcher, terms, stored)
    result = ComposedResult(query=label(terms), results={}, terms=list(terms))
    if len(terms) == 1 and stored:
        result.query = next(iter(stored.values())).path
    if _store_of(searcher) is not None:
        result.roots = searcher.opened.manifest.collection_roots()
        if itself:
            result.query_in_collection = {i: list(r.paths) for i, r in _store_of(searcher).get_records(itself).items()}
    scale = _weight_scale(terms)
    for name, entry in searcher.encoders.items():
        t0 = time.perf_counter()
        total, positives, mass, notes = _column_sum(searcher, name, entry.dim, terms, images, stored, scale)
        t_embed = time.perf_counter()
        norm = float(np.linalg.norm(total))
        # relative to what went in, so a column of small weights is not mistaken for a cancellation
        cancelled = not norm > _MIN_NORM * mass
        if positives == 0:
            notes.append("not searched: no query applies to this column")
        elif cancelled:
            notes.append("not searched: the queries cancel out in this column")
        if notes:
            result.skipped[name] = notes
        if positives == 0 or cancelled:
            continue
        q = (total / norm).astype(np.float32)[None, :]
        result.vectors[name] = q[0]  # what --analogy / --explain compare against
        hits = searcher.search_vectors(name, q, k + len(drop))[0]
        kept = [h for h in hits if h.id not in drop][:k]
        result.results[name] = [Hit(r + 1, h.score, h.path, h.id, h.paths) for r, h in enumerate(kept)]
        result.kinds[name] = entry.kind
        result.timings_ms[f"{name}.embed"] = (t_embed - t0) * 1e3
        result.timings_ms[f"{name}.search+lookup"] = (time.perf_counter() - t_embed) * 1e3
    if not result.results:
        if all(t.is_text for t in terms if not t.negative):
            raise RelsearchError(
                "text queries need a relational encoder with a caption tower (e.g. relsim-mini); "
                f"this index has: {', '.join(searcher.encoders)}"
            )
        raise RelsearchError("no column of this index could be searched: " + "; ".join(result.notes))
    return result


def _column_sum(searcher: Any, name: str, dim: int, terms: list[QueryTerm], images: dict[str, Any],
                stored: dict[str, Any], scale: float) -> tuple[np.ndarray, int, float, list[str]]:
    """``(weighted sum, positive terms used, sum of |weights|, notes)`` of one column."""
    kept = _stored_vectors(searcher, name, dim, stored)
    enc = None
    notes: list[str] = []
    total = np.zeros(dim, dtype=np.float64)
    positives, mass = 0, 0.0
    for t in terms:
        vec = kept.get(t.query)
        if vec is None:
            enc = enc if enc is not None else searcher.encoder(name)
            if t.is_text and not isinstance(enc, TextEncoder):
                notes.append(f"{t.query!r} skipped: {name} has no caption (text) tower")
                continue
            if t.is_stored and t.query not in images:  # no stored vector in this column: embed its file
                images[t.query] = load_query_image(stored[t.query].path)
            vec = enc.embed_text([t.caption])[0] if t.is_text else enc.embed([images[t.query]])[0]
        coef = -1.0 if t.negative else t.weight / scale
        total += coef * np.asarray(vec, dtype=np.float64)
        positives += not t.negative
        mass += abs(coef)
    return total, positives, mass, notes


def _stored_vectors(searcher: Any, name: str, dim: int, stored: dict[str, Any]) -> dict[str, np.ndarray]:
    """The stored vector of each ``id:`` / ``path:`` term in column ``name`` (left out where missing)."""
    if not stored:
        return {}
    queries = list(stored)
    ids = np.asarray([stored[q].id for q in queries], dtype=np.int64)
    vecs = searcher.opened.store.get_vectors(name, ids, dim)
    return {q: v for q, v in zip(queries, vecs) if np.any(v)}


#: The term of :func:`search_image`: an image known by its pixels alone (an upload), never a path.
DECODED_IMAGE = "image"


def search_image(searcher: Searcher, image: Any, k: int = 20, label: str = "") -> ComposedResult:
    """Neighbours of one decoded image: the composed query of that image alone.

    ``label`` is what the result calls the query (a file name, an upload's name); it is
    never read as a path or a caption.
    """
    result = search_composed(searcher, [QueryTerm(DECODED_IMAGE)], k, images={DECODED_IMAGE: image})
    result.query = label or DECODED_IMAGE
    return result


def composed_query(
    queries: list[str],
    index: str | os.PathLike[str],
    k: int = 20,
    encoders: str | None = None,
    weights: str | list[float] | None = None,
    negatives: list[str] | None = None,
    device: str | None = None,
    modes: Any = None,
    here: bool = False,
) -> ComposedResult:
    """Neighbours of a composed query in every column of ``index`` (see the module doc).

    ``modes`` (:class:`relsearch.modes.Modes`) adds the analogy column and explanations;
    ``here`` keeps the hits under the working folder (:func:`relsearch.scope.here`).
    """
    from relsearch.modes import apply_modes
    from relsearch.threads import use_query_threads

    use_query_threads()
    if k < 1:
        raise RelsearchError(f"-k must be at least 1, got {k}")
    terms = parse_terms(queries, weights, negatives)
    # a bad path fails before any model loads
    images = {t.query: load_query_image(t.query) for t in terms if t.is_file}
    with Searcher(index, encoders=encoders, device=device, preload=bool(images)) as searcher:
        if here:
            from relsearch.scope import here as here_scope

            searcher.scope = here_scope(searcher.opened.manifest.collection_roots())
        result = search_composed(searcher, terms, k, images)
        return apply_modes(searcher, result, k, modes) if modes else result
