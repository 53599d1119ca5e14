"""Query modes on top of the side-by-side result: ``--analogy`` and ``--explain``.

Kept apart from :mod:`relsearch.query` so the search core stays small; the CLI, the
page and the benchmarks call :func:`apply_modes` after a search.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from relsearch.analogy import DEFAULT_RULE, DEFAULT_WEIGHT


@dataclass(frozen=True)
class Modes:
    """What to add to a result: an analogy column, explanations, or both."""

    analogy: bool = False
    explain: bool = False
    analogy_weight: float = DEFAULT_WEIGHT
    analogy_rule: str = DEFAULT_RULE
    captions: str | os.PathLike[str] | None = None
    #: what each relational column reads the query as, and whether it knows that relation
    relation: bool = True

    def __bool__(self) -> bool:
        return self.analogy or self.explain or self.relation


def apply_modes(searcher: Any, result: Any, k: int, modes: Modes) -> Any:
    """Fill ``result.analogy`` / ``result.relation`` / ``result.explain`` as ``modes`` asks; returns ``result``."""
    import time

    if modes.analogy:
        from relsearch.analogy import add_analogy

        t = time.perf_counter()
        add_analogy(searcher, result, k, weight=modes.analogy_weight, rule=modes.analogy_rule)
        result.timings_ms["analogy"] = (time.perf_counter() - t) * 1e3
    if modes.relation:
        from relsearch.explain import add_relations

        t = time.perf_counter()
        add_relations(searcher, result, modes.captions)
        result.timings_ms["relation"] = (time.perf_counter() - t) * 1e3
    if modes.explain:
        from relsearch.explain import explain_result

        t = time.perf_counter()
        result.explain = explain_result(searcher, result, modes.captions)
        result.timings_ms["explain"] = (time.perf_counter() - t) * 1e3
    return result
