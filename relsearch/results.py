"""Query result types shared by ``query``, ``composed`` and the query modes.

They live apart from :mod:`relsearch.query` so that the modes (``analogy``, ``explain``)
can build hits without importing the searcher that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Hit:
    rank: int
    score: float
    path: str
    id: int
    #: every file holding this content (``path`` first): exact copies are one hit
    paths: list[str] = field(default_factory=list)

    @property
    def copies(self) -> list[str]:
        """The other files with the same bytes as ``path``."""
        return [p for p in self.paths if p != self.path]

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "path": self.path, "id": self.id, "copies": self.copies}


@dataclass
class QueryResult:
    query: str
    results: dict[str, list[Hit]]
    kinds: dict[str, str] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: the query's vector per column (analogy and explanations need them)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    #: ``--analogy`` (relsearch.analogy): its hits, and which columns and weight made them
    analogy: list[Hit] | None = None
    analogy_of: dict[str, Any] = field(default_factory=dict)
    #: ``--explain`` (relsearch.explain.Explanation)
    explain: Any = None
    #: per relational column, what the query reads as (relsearch.explain.RelationVerdict)
    relation: dict[str, Any] = field(default_factory=dict)
    #: the collection folders of the index (paths are shown relative to them); empty when unknown
    roots: list[str] = field(default_factory=list)
    #: indexed records holding a query image's own bytes (id -> its paths): the query itself,
    #: which views show as the query and not as a match (``is_query`` in the JSON)
    query_in_collection: dict[int, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "query": self.query,
            "results": {name: [self._hit_dict(h) for h in hits] for name, hits in self.results.items()},
            "query_in_collection": [{"id": i, "path": paths[0] if paths else "", "copies": paths[1:]}
                                    for i, paths in self.query_in_collection.items()],
        }
        if self.roots:
            out["collection_roots"] = list(self.roots)
        if self.analogy is not None:
            out["analogy"] = [self._hit_dict(h) for h in self.analogy]
        if self.explain is not None:
            out["explain"] = self.explain.to_dict(self)
        if self.relation:
            out["relation"] = {name: v.to_dict() for name, v in self.relation.items()}
        return out

    def _hit_dict(self, hit: Hit) -> dict[str, Any]:
        return {**hit.to_dict(), "is_query": hit.id in self.query_in_collection}

    def ordered(self) -> list[str]:
        """Encoder names, relational columns first."""
        return sorted(self.results, key=lambda n: (self.kinds.get(n) != "relational",))
