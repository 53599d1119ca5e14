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
    paths: list[str] = field(default_factory=list)


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

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "query": self.query,
            "results": {name: [{"rank": h.rank, "score": h.score, "path": h.path, "id": h.id} for h in hits]
                        for name, hits in self.results.items()},
        }
        if self.analogy is not None:
            out["analogy"] = [{"rank": h.rank, "score": h.score, "path": h.path, "id": h.id} for h in self.analogy]
        if self.explain is not None:
            out["explain"] = self.explain.to_dict(self)
        if self.relation:
            out["relation"] = {name: v.to_dict() for name, v in self.relation.items()}
        return out

    def ordered(self) -> list[str]:
        """Encoder names, relational columns first."""
        return sorted(self.results, key=lambda n: (self.kinds.get(n) != "relational",))
