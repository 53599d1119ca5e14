"""Results scoped to one folder of the collection: ``relsearch query --here``.

An index may hold several folders (``build-index DIR1 DIR2``) or one large one; a scope
keeps the hits with a file under the folder you stand in. FAISS knows nothing of folders,
so a scoped search asks for more neighbours than it needs and filters them, asking again
for more (up to the whole column) until it has ``k`` hits under the folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from relsearch.collection.roots import is_under, within
from relsearch.errors import RelsearchError
from relsearch.results import Hit

#: Neighbours asked for first, per hit wanted, when a scope filters them.
OVERFETCH = 4


def here(collection_roots: Sequence[str], cwd: str | None = None) -> list[str]:
    """The scope of ``--here``: the working folder, by its real path and by the name the shell
    gave it (``$PWD``, when that is the same folder reached through a link).

    Raises :class:`RelsearchError` when the folder holds no part of the collection.
    """
    real = os.path.realpath(cwd or os.getcwd())
    names = [real]
    pwd = os.environ.get("PWD")
    if cwd is None and pwd and os.path.isabs(pwd) and pwd != real and os.path.realpath(pwd) == real:
        names.append(os.path.normpath(pwd))
    roots = [os.path.realpath(r) for r in collection_roots] + list(collection_roots)
    if not any(is_under(n, r) or is_under(r, n) for n in names for r in roots):
        raise RelsearchError(f"--here: {names[-1]} is not in the index's collection "
                             f"({', '.join(collection_roots)}); cd into it, or leave out --here")
    return names


def scoped(hits: list[Hit], scope: Sequence[str]) -> list[Hit]:
    """The hits with a file under one of ``scope``, re-ranked, each shown by that file."""
    out: list[Hit] = []
    for h in hits:
        path = next((p for p in [h.path, *h.paths] if any(within([p], s) for s in scope)), None)
        if path is not None:
            out.append(Hit(len(out) + 1, h.score, path, h.id, list(h.paths)))
    return out


def scoped_search(search: Callable[[str, np.ndarray, int], list[list[Hit]]], name: str, vectors: np.ndarray,
                  k: int, scope: Sequence[str], total: int) -> list[list[Hit]]:
    """``search(name, vectors, n)`` filtered to ``scope``: ``k`` hits per row where the column has them."""
    fetch = min(max(k * OVERFETCH, 64), max(total, 1))
    while True:
        rows = [scoped(hits, scope) for hits in search(name, vectors, fetch)]
        if fetch >= total or all(len(r) >= k for r in rows):
            return [r[:k] for r in rows]
        fetch = min(fetch * OVERFETCH, total)
