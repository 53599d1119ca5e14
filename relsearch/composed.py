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
        if not math.isfinite(self.weight) or self.weight <= 0:
            raise ValueError(f"query weights must be positive numbers (use --not to subtract), got {self.weight!r}")

    @property
    def is_text(self) -> bool:
        return self.query.startswith(TEXT_PREFIX)

    @property
    def caption(self) -> str:
        return self.query[len(TEXT_PREFIX) :] if self.is_text else ""

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


def _exclude_ids(searcher: Searcher, terms: list[QueryTerm]) -> set[int]:
    """Record ids of negative images that are in the collection (same sha256)."""
    from relsearch.collection import sha256_file

    store = searcher.opened.store
    out: set[int] = set()
    for t in terms:
        if t.negative and not t.is_text:
            rid = store.id_for_hash(sha256_file(t.query))
            if rid is not None:
                out.add(rid)
    return out


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

    ``images`` maps image terms to already-decoded images (loaded here otherwise).
    """
    if not any(not t.negative for t in terms):
        raise RelsearchError("give at least one query (an image path or text:CAPTION) besides --not")
    images = dict(images or {})
    for t in terms:
        if not t.is_text and t.query not in images:
            images[t.query] = load_query_image(t.query)
    drop = _exclude_ids(searcher, terms)
    result = ComposedResult(query=label(terms), results={}, terms=list(terms))
    scale = _weight_scale(terms)
    for name, entry in searcher.encoders.items():
        t0 = time.perf_counter()
        enc = searcher.encoder(name)
        has_text = isinstance(enc, TextEncoder)
        notes: list[str] = []
        total = np.zeros(entry.dim, dtype=np.float64)
        positives, mass = 0, 0.0
        for t in terms:
            if t.is_text and not has_text:
                notes.append(f"{t.query!r} skipped: {name} has no caption (text) tower")
                continue
            vec = enc.embed_text([t.caption])[0] if t.is_text else enc.embed([images[t.query]])[0]
            coef = -1.0 if t.negative else t.weight / scale
            total += coef * np.asarray(vec, dtype=np.float64)
            positives += not t.negative
            mass += abs(coef)
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


def composed_query(
    queries: list[str],
    index: str | os.PathLike[str],
    k: int = 20,
    encoders: str | None = None,
    weights: str | list[float] | None = None,
    negatives: list[str] | None = None,
    device: str | None = None,
    modes: Any = None,
) -> ComposedResult:
    """Neighbours of a composed query in every column of ``index`` (see the module doc).

    ``modes`` (:class:`relsearch.modes.Modes`) adds the analogy column and explanations.
    """
    from relsearch.modes import apply_modes
    from relsearch.threads import use_query_threads

    use_query_threads()
    if k < 1:
        raise RelsearchError(f"-k must be at least 1, got {k}")
    terms = parse_terms(queries, weights, negatives)
    # a bad path fails before any model loads
    images = {t.query: load_query_image(t.query) for t in terms if not t.is_text}
    with Searcher(index, encoders=encoders, device=device) as searcher:
        result = search_composed(searcher, terms, k, images)
        return apply_modes(searcher, result, k, modes) if modes else result
