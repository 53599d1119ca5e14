"""Analogy mode: relationally close, attribute far (the Earth for a peach).

Rule: take the relational column's top ``pool`` candidates (FAISS), look up each
candidate's stored attribute vector, and rank by

    analogy = relational cosine - weight * max(0, attribute cosine - m)

(both cosines against the query; ``m`` the median attribute cosine over the pool:
rule ``above_median``, the default). Why a subtraction rather than excluding the
attribute top-M: it needs no cut-off that depends on the collection's size or how many
look-alikes it holds, it pushes a look-alike down in proportion to how much it looks
alike, and ``weight = 0`` is exactly the relational column. Why only the part above the
median: candidates that look no more alike than the pool's typical one keep their
relational order, where the plain ``linear`` rule (``relational - weight * attribute``,
kept as ``--analogy-rule linear``) reshuffles them by attribute noise and costs
precision for nothing. Only the relational pool is re-ranked, so a hit can never be
relationally *far*: precision stays near that of the relational column while
look-alikes (same objects, "attribute twins") drop out.

Rule and weight were chosen on grouped benchmarks (every object set rendered in every
relation family, so each query has look-alikes of other relations and analogies of other
objects): ``relsearch bench relational`` sweeps both rules; at weight 1 ``above_median``
removed as many twins as ``linear`` on every set, at slightly higher precision
(benchmarks/README.md, "Analogy row and explanation accuracy").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from relsearch.errors import RelsearchError
from relsearch.results import Hit

#: Default for ``--analogy-weight`` (see the module docstring for how it was chosen).
DEFAULT_WEIGHT = 1.0
#: Default penalty rule (:data:`RULES`).
DEFAULT_RULE = "above_median"
#: Relational candidates re-ranked per query: ``max(POOL_FACTOR * k, MIN_POOL)``.
POOL_FACTOR = 5
MIN_POOL = 100
#: A candidate this close to the query in *both* columns is the query's own image (or a copy):
#: an analogy of nothing, so it is left out of the analogy column.
SAME_IMAGE = 0.999


def analogy_columns(kinds: dict[str, str], order: list[str]) -> tuple[str, str]:
    """The first relational and the first attribute column; a clear error when one is missing."""
    rel = next((n for n in order if kinds.get(n) == "relational"), None)
    attr = next((n for n in order if kinds.get(n) != "relational"), None)
    if rel is None or attr is None:
        have = ", ".join(f"{n} ({kinds.get(n, 'attribute')})" for n in order) or "none"
        missing = "relational" if rel is None else "attribute"
        raise RelsearchError(f"--analogy needs a relational and an attribute column; this query has no "
                             f"{missing} column (columns: {have})")
    return rel, attr


def pool_size(k: int, ntotal: int) -> int:
    return max(1, min(ntotal, max(POOL_FACTOR * k, MIN_POOL)))


#: How the attribute cosine is turned into a penalty (see :func:`analogy_scores`).
RULES = ("linear", "above_median")


def analogy_scores(rel_scores: np.ndarray, attr_scores: np.ndarray, weight: float,
                   rule: str = DEFAULT_RULE) -> np.ndarray:
    """The analogy score of each pool candidate.

    ``linear``: ``rel - weight * attr``. ``above_median``: ``rel - weight * max(0, attr - m)``
    with ``m`` the median attribute cosine over the pool: only candidates that look more
    alike than the pool's typical one are pushed down, so the relational order among the
    rest is kept (a linear penalty also reshuffles them by attribute noise).
    """
    check_rule(rule)
    if rule == "above_median" and len(attr_scores):
        penalty = np.maximum(0.0, attr_scores - np.median(attr_scores))
    else:
        penalty = attr_scores
    return rel_scores - weight * penalty


def check_rule(rule: str) -> None:
    if rule not in RULES:
        raise RelsearchError(f"unknown analogy rule {rule!r}; use one of {', '.join(RULES)}")


def add_analogy(searcher: Any, result: Any, k: int, weight: float = DEFAULT_WEIGHT, rule: str = DEFAULT_RULE) -> None:
    """Fill ``result.analogy`` (hits ranked by the analogy score) and ``result.analogy_of``."""
    if not np.isfinite(weight) or weight < 0:
        raise RelsearchError(f"--analogy-weight must be a number >= 0, got {weight}")
    check_rule(rule)
    kinds = {n: e.kind for n, e in searcher.encoders.items()}  # the index's columns, not only the result's
    rel, attr = analogy_columns(kinds, sorted(kinds, key=lambda n: kinds[n] != "relational"))
    if rel not in result.vectors or attr not in result.vectors:
        raise RelsearchError("--analogy needs an image query (a caption has no attribute vector)")
    pool = searcher.search_vectors(rel, result.vectors[rel][None, :], pool_size(k, searcher.indexes[rel].ntotal))[0]
    if not pool:
        result.analogy, result.analogy_of = [], {"relational": rel, "attribute": attr, "weight": weight, "rule": rule}
        return
    entry = searcher.opened.manifest.encoders[attr]
    ids = np.asarray([h.id for h in pool], dtype=np.int64)
    attr_vecs = searcher.opened.store.get_vectors(attr, ids, entry.dim)
    attr_scores = attr_vecs @ np.asarray(result.vectors[attr], dtype=np.float32)
    rel_scores = np.asarray([h.score for h in pool], dtype=np.float32)
    same = (rel_scores >= SAME_IMAGE) & (attr_scores >= SAME_IMAGE)
    scores = analogy_scores(rel_scores, attr_scores, weight, rule)
    order = [j for j in np.argsort(-scores, kind="stable") if not same[j]][:k]
    result.analogy = [Hit(r + 1, float(scores[j]), pool[j].path, pool[j].id, list(pool[j].paths))
                      for r, j in enumerate(order)]
    result.analogy_of = {"relational": rel, "attribute": attr, "weight": weight, "rule": rule}
