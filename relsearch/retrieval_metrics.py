"""Retrieval metrics of relational search (numpy only), shared by the trainer's validation and `bench relational`.

Items carry a family label (``"none"`` for scenes without a relation) and a set of object
identities. For every query (an item whose family is not ``"none"``) the ranked neighbours
exclude the query itself; ``"none"`` items stay in the database as distractors.

- precision@k: share of the top k in the query's family.
- mAP@k: average precision over the top k, normalised by min(k, relevant items).
- recall@k: share of all other items of the query's family found in the top k.
- leakage@k: share of the top k that shares an object with the query but is in another family
  (attribute twins pulled up by what the objects look like).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

NONE_FAMILY = "none"


def neighbours(emb: np.ndarray, k: int, database: np.ndarray | None = None) -> np.ndarray:
    """Top-k neighbour ids [N, k] by inner product, each query excluding itself.

    ``emb`` holds L2-normalised rows; with ``database`` given, queries are ``emb`` and neighbours
    come from ``database`` (no self-exclusion).
    """
    emb = np.asarray(emb, dtype=np.float32)
    db = emb if database is None else np.asarray(database, dtype=np.float32)
    sims = emb @ db.T
    if database is None:
        np.fill_diagonal(sims, -np.inf)
    k = min(k, db.shape[0] - (1 if database is None else 0))
    # Stable sort by descending similarity: ties resolve by index, so results are reproducible.
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _as_neighbours(emb_or_nn: np.ndarray, k: int) -> np.ndarray:
    arr = np.asarray(emb_or_nn)
    if np.issubdtype(arr.dtype, np.integer):
        return arr[:, :k]
    return neighbours(arr, k)


def _queries(families: Sequence[str]) -> np.ndarray:
    return np.array([f != NONE_FAMILY for f in families])


def _per_query(
    nn: np.ndarray, families: Sequence[str], objects: Sequence[Iterable[str]] | None
) -> dict[str, np.ndarray]:
    fam = np.asarray(families, dtype=object)
    n = len(fam)
    if nn.shape[0] != n:
        raise ValueError(f"neighbour rows ({nn.shape[0]}) != number of items ({n})")
    hit = fam[nn] == fam[:, None]  # [N, k]
    k = nn.shape[1]
    counts = {f: int((fam == f).sum()) for f in set(fam.tolist())}
    relevant = np.array([counts[f] - 1 for f in fam])  # other items of the same family
    prec = hit.mean(axis=1) if k else np.zeros(n)
    cum = np.cumsum(hit, axis=1)
    ranks = np.arange(1, k + 1)
    denom = np.maximum(1, np.minimum(k, relevant))
    ap = (hit * (cum / ranks)).sum(axis=1) / denom
    rec = hit.sum(axis=1) / np.maximum(1, relevant)
    out = {"precision": prec, "map": ap, "recall": rec}
    if objects is not None:
        sets = [frozenset(o) for o in objects]
        if len(sets) != n:
            raise ValueError(f"object sets ({len(sets)}) != number of items ({n})")
        leak = np.zeros(n)
        for i in range(n):
            if k and sets[i]:
                leak[i] = np.mean([bool(sets[i] & sets[j]) and not hit[i, c] for c, j in enumerate(nn[i])])
        out["leakage"] = leak
    return out


def _mean_over_queries(values: np.ndarray, families: Sequence[str]) -> float:
    q = _queries(families)
    return float(values[q].mean()) if q.any() else 0.0


def precision_at_k(emb_or_nn: np.ndarray, families: Sequence[str], k: int = 10) -> float:
    """Mean share of each query's top k that is in the query's family."""
    nn = _as_neighbours(emb_or_nn, k)
    return _mean_over_queries(_per_query(nn, families, None)["precision"], families)


def query_precisions(emb_or_nn: np.ndarray, families: Sequence[str], k: int = 10) -> np.ndarray:
    """Precision@k of every query row (the rows ``precision_at_k`` averages), in row order."""
    nn = _as_neighbours(emb_or_nn, k)
    return _per_query(nn, families, None)["precision"][_queries(families)]


def bootstrap_ci(values: np.ndarray, rounds: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (queries resampled with replacement)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(rounds, v.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    return (float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail)))


def recall_at_k(emb_or_nn: np.ndarray, families: Sequence[str], k: int = 10) -> float:
    """Mean share of each query's other family members found in its top k."""
    nn = _as_neighbours(emb_or_nn, k)
    return _mean_over_queries(_per_query(nn, families, None)["recall"], families)


def leakage_at_k(
    emb_or_nn: np.ndarray, families: Sequence[str], objects: Sequence[Iterable[str]], k: int = 10
) -> float:
    """Mean share of each query's top k sharing an object with it but in another family."""
    nn = _as_neighbours(emb_or_nn, k)
    return _mean_over_queries(_per_query(nn, families, objects)["leakage"], families)


def retrieval_report(
    emb: np.ndarray,
    families: Sequence[str],
    objects: Sequence[Iterable[str]] | None = None,
    k: int = 10,
) -> dict:
    """All image-to-image metrics at k, overall and per family.

    ``emb`` is [N, d] L2-normalised embeddings or an integer [N, >=k] neighbour-id array.
    """
    nn = _as_neighbours(emb, k)
    per = _per_query(nn, families, objects)
    fam = np.asarray(families, dtype=object)
    q = _queries(families)
    names = {
        "precision": "precision_at_k",
        "map": "map_at_k",
        "recall": "recall_at_k",
        "leakage": "leakage_at_k",
    }
    report: dict = {"k": int(nn.shape[1]), "queries": int(q.sum()), "items": len(fam)}
    for key, vals in per.items():
        report[names[key]] = float(vals[q].mean()) if q.any() else 0.0
    report["per_family"] = {
        f: {names[key]: float(vals[fam == f].mean()) for key, vals in per.items()}
        for f in sorted(set(fam[q].tolist()))
    }
    return report


def text_to_image_precision(
    text_emb: np.ndarray,
    text_families: Sequence[str],
    image_emb: np.ndarray,
    image_families: Sequence[str],
    k: int = 10,
) -> dict:
    """Precision@k of caption queries: share of each text's top-k images in the text's family.

    Returns {"precision_at_k": mean over texts, "per_family": mean per text family}.
    """
    nn = neighbours(text_emb, k, database=image_emb)
    img_fam = np.asarray(image_families, dtype=object)
    txt_fam = np.asarray(text_families, dtype=object)
    if nn.shape[0] != len(txt_fam):
        raise ValueError(f"text rows ({nn.shape[0]}) != text families ({len(txt_fam)})")
    prec = (img_fam[nn] == txt_fam[:, None]).mean(axis=1)
    return {
        "k": int(nn.shape[1]),
        "precision_at_k": float(prec.mean()) if len(prec) else 0.0,
        "per_family": {f: float(prec[txt_fam == f].mean()) for f in sorted(set(txt_fam.tolist()))},
    }
