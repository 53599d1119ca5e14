"""``bench relational`` rows for the query modes: analogy (precision vs attribute twins) and explanations.

Attribute twins: a neighbour rendered from the query's own object set. On a grouped set
(``labels.jsonl`` rows with ``group``: one object set, background and canvas rendered in
every family) that is "same group"; elsewhere "shares an object". A relational column
should find the query's relation in *other* objects, so twins are what analogy mode is
meant to push out.

Explanation accuracy (needs a bank with families, e.g. relsim-mini's shipped one):

* own caption: the share of queries whose nearest bank caption is of their family;
* shared caption: over (query, hit) pairs of one family among the relational column's
  top k, the share whose shared caption (nearest to the normalised mean) is of that family.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError
from relsearch.retrieval_metrics import NONE_FAMILY

#: Weights the analogy sweep reports beside the default, per penalty rule (relsearch.analogy.RULES).
SWEEP = {"linear": (0.0, 0.25, 0.5, 1.0, 1.5, 2.0), "above_median": (1.0, 2.0, 3.0, 5.0, 8.0)}
#: The bar for analogy mode against the relational column: precision drop and share of twins
#: (benchmarks/README.md, 'Analogy row and explanation accuracy').
MAX_PRECISION_DROP = 0.03
MAX_TWIN_SHARE = 0.5


def read_groups(labels: str | Path) -> dict[str, Any]:
    """``path`` (as written in labels.jsonl) -> its ``group`` (absent: no entry)."""
    out: dict[str, Any] = {}
    for line in Path(labels).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if row.get("group") is not None:
                out[str(row["path"])] = row["group"]
    return out


def twin_matrix(groups: list[Any] | None, objects: list[list[str]]) -> Any:
    """``is_twin(i, j)``: same group when every item has one, else a shared object."""
    if groups is not None and all(g is not None for g in groups):
        return lambda i, j: groups[i] == groups[j]
    sets = [frozenset(o) for o in objects]
    return lambda i, j: bool(sets[i] & sets[j])


def _scores(rows: list[list[int]], queries: list[int], families: list[str], twin: Any) -> tuple[float, float]:
    prec = [np.mean([families[j] == families[i] for j in r]) if r else 0.0 for i, r in zip(queries, rows)]
    tw = [np.mean([twin(i, j) for j in r]) if r else 0.0 for i, r in zip(queries, rows)]
    return float(np.mean(prec)), float(np.mean(tw))


def twins_at_k(nn: np.ndarray, families: list[str], twin: Any) -> float:
    queries = [i for i, f in enumerate(families) if f != NONE_FAMILY]
    return _scores([[int(j) for j in nn[i] if j >= 0] for i in queries], queries, families, twin)[1]


def analogy_rows(searcher: Any, ids: np.ndarray, row_of_id: dict[int, int], k: int, weight: float,
                 queries: list[int], rule: str | None = None) -> list[list[int]]:
    """Each query's analogy top k (engine code path; itself and unlabelled images skipped)."""
    from relsearch.analogy import DEFAULT_RULE, add_analogy
    from relsearch.results import QueryResult

    store = searcher.opened.store
    columns = {n: e for n, e in searcher.encoders.items()}
    vecs = {n: store.get_vectors(n, ids[queries], e.dim) for n, e in columns.items()}
    extra = max(0, searcher.indexes[next(iter(columns))].ntotal - len(ids))
    rows = []
    for r, i in enumerate(queries):
        res = QueryResult(query=str(ids[i]), results={n: [] for n in columns},
                          kinds={n: e.kind for n, e in columns.items()},
                          vectors={n: v[r] for n, v in vecs.items()})
        add_analogy(searcher, res, k + 1 + min(extra, 1000), weight=weight, rule=rule or DEFAULT_RULE)
        got = [row_of_id[h.id] for h in res.analogy if h.id in row_of_id and h.id != ids[i]]
        rows.append(got[:k])
    return rows


def analogy_report(searcher: Any, ids: np.ndarray, row_of_id: dict[int, int], k: int, families: list[str],
                   twin: Any, relational_row: dict[str, Any], attribute_row: dict[str, Any],
                   weight: float) -> dict[str, Any]:
    from relsearch.analogy import DEFAULT_RULE, RULES, analogy_columns, pool_size

    kinds = {n: e.kind for n, e in searcher.encoders.items()}
    rel, attr = analogy_columns(kinds, sorted(kinds, key=lambda n: kinds[n] != "relational"))
    queries = [i for i, f in enumerate(families) if f != NONE_FAMILY]
    sweep = []
    for rule in RULES:
        for w in sorted({*SWEEP[rule], weight} if rule == DEFAULT_RULE else SWEEP[rule]):
            p, t = _scores(analogy_rows(searcher, ids, row_of_id, k, w, queries, rule), queries, families, twin)
            sweep.append({"rule": rule, "weight": w, "precision_at_k": p, "twins_at_k": t})
    chosen = next(s for s in sweep if s["weight"] == weight and s["rule"] == DEFAULT_RULE)
    rp, rt = relational_row["precision_at_k"], relational_row["twins_at_k"]
    return {
        "relational": rel, "attribute": attr, "weight": weight, "rule": DEFAULT_RULE, "pool": pool_size(k, searcher.indexes[rel].ntotal),
        "precision_at_k": chosen["precision_at_k"], "twins_at_k": chosen["twins_at_k"],
        "relational_precision_at_k": rp, "relational_twins_at_k": rt,
        "attribute_precision_at_k": attribute_row["precision_at_k"],
        "attribute_twins_at_k": attribute_row["twins_at_k"],
        "precision_drop": rp - chosen["precision_at_k"],
        "meets": {"precision_within_0.03": rp - chosen["precision_at_k"] <= MAX_PRECISION_DROP,
                  "twins_at_most_half": chosen["twins_at_k"] <= MAX_TWIN_SHARE * rt},
        "sweep": sweep,
    }


def explain_report(searcher: Any, name: str, ids: np.ndarray, nn: np.ndarray, families: list[str],
                   captions: str | None = None) -> dict[str, Any]:
    """Own-caption and shared-caption accuracy of relational column ``name``."""
    from relsearch.explain import bank_for

    entry = searcher.opened.manifest.encoders[name]
    bank = bank_for(entry.spec, captions)
    if all(f is None for f in bank.families):
        raise RelsearchError(f"caption bank {bank.source} has no families: explanation accuracy needs them")
    vecs = searcher.opened.store.get_vectors(name, ids, entry.dim)
    queries = [i for i, f in enumerate(families) if f != NONE_FAMILY]
    own = bank.captions_of(vecs[queries])
    own_ok = [c.family == families[i] for c, i in zip(own, queries)]
    pairs = [(i, int(j)) for i in queries for j in nn[i] if j >= 0 and families[int(j)] == families[i]]
    shared_ok: list[bool] = []
    if pairs:
        a = vecs[[p[0] for p in pairs]]
        b = vecs[[p[1] for p in pairs]]
        shared_ok = [c.family == families[i] for c, (i, _) in zip(bank.shared(a, b), pairs)]
    per_family = {}
    for f in sorted({families[i] for i in queries}):
        sel = [ok for ok, i in zip(own_ok, queries) if families[i] == f]
        per_family[f] = float(np.mean(sel))
    return {"encoder": name, "bank": bank.source, "captions": len(bank.captions),
            "own_caption_accuracy": float(np.mean(own_ok)) if own_ok else 0.0,
            "shared_caption_accuracy": float(np.mean(shared_ok)) if shared_ok else 0.0,
            "queries": len(queries), "pairs": len(pairs), "own_per_family": per_family}


def format_rows(report: dict[str, Any]) -> list[str]:
    """Lines for ``bench relational``'s table: the analogy row and the explanation accuracy."""
    lines = []
    a = report.get("analogy")
    k = report["k"]
    if a:
        lines.append(f"{'analogy':<14}{'w=' + format(a['weight'], 'g'):<12}{a['precision_at_k']:>8.3f}"
                     f"{'':>9}{'':>8}{'':>9}{a['twins_at_k']:>9.3f}   ({a['relational']} - {a['weight']:g} x "
                     f"{a['attribute']}, pool {a['pool']})")
        lines.append(f"analogy vs relational: P@{k} drop {a['precision_drop']:+.3f} (<= 0.03: "
                     f"{a['meets']['precision_within_0.03']}), twins {a['twins_at_k']:.4f} vs "
                     f"{a['relational_twins_at_k']:.4f} (<= half: {a['meets']['twins_at_most_half']})")
        for rule in dict.fromkeys(s.get("rule", "linear") for s in a["sweep"]):
            lines.append(f"analogy sweep ({rule}): " + ", ".join(
                f"w={s['weight']:g} P {s['precision_at_k']:.3f} twins {s['twins_at_k']:.4f}"
                for s in a["sweep"] if s.get("rule", "linear") == rule))
    e = report.get("explain")
    if e:
        lines.append(f"explain ({e['encoder']}, {e['captions']} captions): own caption in family "
                     f"{e['own_caption_accuracy']:.3f} ({e['queries']} images), shared caption in family "
                     f"{e['shared_caption_accuracy']:.3f} ({e['pairs']} same-family pairs)")
    elif report.get("explain_error"):
        lines.append(f"explain: not measured ({report['explain_error']})")
    return lines


def modes_latency(root: Path, paths: list[str], encoders: str, k: int, analogy: bool, explain: bool,
                  index: Path, device: str | None = None, captions: str | None = None) -> dict[str, Any]:
    """Warm latency of a whole query with ``--analogy``/``--explain``: one index of all ``encoders``.

    Per query: decode, every column's embed + search + lookup, then the modes; p50/p95 of the
    total and of each part, after three warm-up queries.
    """
    import time

    from relsearch.bench import latency_ms
    from relsearch.build import BuildOptions, build_index
    from relsearch.composed import QueryTerm, search_composed
    from relsearch.modes import Modes, apply_modes
    from relsearch.query import Searcher, load_query_image

    build_index(root, index, BuildOptions(encoders=encoders, device=device, progress=False))
    modes = Modes(analogy=analogy, explain=explain, captions=captions)
    parts: dict[str, list[float]] = {"decode": [], "columns": [], "analogy": [], "explain": [], "total": []}
    with Searcher(index, device=device) as s:
        for name in s.encoders:
            s.encoder(name)
        for warm, p in enumerate([*paths[:3], *paths]):
            t0 = time.perf_counter()
            img = load_query_image(p)
            t1 = time.perf_counter()
            res = search_composed(s, [QueryTerm(str(p))], k, images={str(p): img})
            t2 = time.perf_counter()
            apply_modes(s, res, k, modes)
            t3 = time.perf_counter()
            if warm < 3:
                continue
            for key, v in (("decode", t1 - t0), ("columns", t2 - t1), ("total", t3 - t0),
                           ("analogy", res.timings_ms.get("analogy", 0.0) / 1e3),
                           ("explain", res.timings_ms.get("explain", 0.0) / 1e3)):
                parts[key].append(v)
    return {"encoders": encoders, "modes": [m for m, on in (("analogy", analogy), ("explain", explain)) if on],
            "queries": len(paths), "k": k,
            **{key: latency_ms(v) for key, v in parts.items()}}
