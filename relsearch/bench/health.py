"""Label-free health of an encoder's vectors on a set of photographs.

An encoder that collapses on a kind of input (every real photograph mapped near one
point) still returns unit vectors and a full neighbour list, so nothing fails; it shows
only in the geometry of the vectors:

- effective rank: ``exp`` of the entropy of the normalised singular values of the
  centred matrix (how many directions the set really spreads over);
- pairwise cosines (mean and percentiles over all pairs): a set whose typical pair is
  near 1 has neighbours that are near-ties;
- for an encoder with a caption bank, which bank caption is nearest to each photo: a
  set that mostly reads as the bank's ``none`` captions is one the encoder has no
  relation for.

    relsearch bench health --photos DIR_OR_LABELS.jsonl [--encoders relsim-mini,imagenet]

``bench realphoto`` reports the same beside its labelled metrics.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.errors import RelsearchError

NONE_FAMILY = "none"
#: A set whose 90th-percentile pair cosine reaches this is mostly near-ties.
NEAR_TIE_COSINE = 0.95
#: Effective rank below this (or below a quarter of what the set could span) is a collapse.
MIN_EFFECTIVE_RANK = 10.0
PERCENTILES = (50, 90, 99)


def effective_rank(vectors: np.ndarray) -> float:
    """``exp(entropy)`` of the normalised singular values of the centred rows of ``vectors``."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        return 0.0
    s = np.linalg.svd(x - x.mean(axis=0, keepdims=True), compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(-(p * np.log(p)).sum()))


def pair_cosines(vectors: np.ndarray) -> np.ndarray:
    """Cosines of every unordered pair of rows (rows normalised here)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sims = x @ x.T
    return sims[np.triu_indices(len(x), k=1)]


def health(vectors: np.ndarray) -> dict[str, Any]:
    """Effective rank and pair-cosine statistics of ``vectors`` [N, d], and a verdict.

    ``collapsed`` is true when the typical pairs are near-ties or the set spans too few
    directions; ``reasons`` says which.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise RelsearchError(f"health needs at least 3 vectors, got {x.shape[0] if x.ndim == 2 else 0}")
    rank = effective_rank(x)
    cos = pair_cosines(x)
    out: dict[str, Any] = {"n": int(x.shape[0]), "dim": int(x.shape[1]), "effective_rank": round(rank, 2),
                           "cosine_mean": round(float(cos.mean()), 4)}
    for q in PERCENTILES:
        out[f"cosine_p{q}"] = round(float(np.percentile(cos, q)), 4)
    out["near_tie_share"] = round(float((cos >= NEAR_TIE_COSINE).mean()), 4)
    # a small set cannot span many directions, so the rank floor shrinks with it
    floor = min(MIN_EFFECTIVE_RANK, 0.25 * min(x.shape[0] - 1, x.shape[1]))
    reasons = []
    if out["cosine_p90"] >= NEAR_TIE_COSINE:
        reasons.append(f"90th-percentile pair cosine {out['cosine_p90']:.3f} >= {NEAR_TIE_COSINE}: "
                       f"{100 * out['near_tie_share']:.0f} % of all pairs are near-ties")
    if rank < floor:
        reasons.append(f"effective rank {rank:.1f} < {floor:.1f}: the set spans few directions")
    out["collapsed"] = bool(reasons)
    out["reasons"] = reasons
    return out


def caption_histogram(vectors: np.ndarray, bank: Any) -> dict[str, Any]:
    """Which family's caption of ``bank`` is nearest to each row: share of ``none`` and per family."""
    idx, score = bank.nearest(np.asarray(vectors, dtype=np.float32))
    fams = [bank.families[i] or "?" for i in idx]
    counts = Counter(fams)
    n = len(fams)
    return {
        "none_share": round(counts.get(NONE_FAMILY, 0) / n, 4) if n else 0.0,
        "per_family": {f: round(c / n, 4) for f, c in counts.most_common()},
        "best_score_mean": round(float(np.mean(score)), 4) if n else 0.0,
    }


def encoder_health(encoder: Any, spec: str, vectors: np.ndarray, device: str | None = None) -> dict[str, Any]:
    """:func:`health` of ``vectors`` plus, for a relational encoder with a bank, its caption histogram."""
    from relsearch.explain import bank_for

    out = health(vectors)
    if getattr(encoder, "kind", "") == "relational":
        try:
            out["captions"] = caption_histogram(vectors, bank_for(spec, device=device))
        except RelsearchError as exc:  # no bank for this encoder: the geometry still stands
            out["captions"] = {"skipped": str(exc)}
    return out


def photo_paths(photos: str | Path, limit: int | None = None) -> list[str]:
    """Image files of a folder (recursive, sorted) or the ``path`` fields of a labels ``.jsonl``."""
    from relsearch.collection.scan import is_image_name

    p = Path(photos)
    if p.is_dir():
        paths = sorted(str(f) for f in p.rglob("*") if f.is_file() and is_image_name(f.name))
    elif p.is_file() and p.suffix == ".jsonl":
        from relsearch.bench.photos import read_labels

        paths = [r.path for r in read_labels(p) if Path(r.path).is_file()]
    elif p.is_file():
        raise RelsearchError(f"--photos {p} is neither a folder nor a labels .jsonl")
    else:
        raise RelsearchError(f"--photos {p} does not exist")
    if not paths:
        raise RelsearchError(f"no image files in {p}")
    return paths[:limit] if limit else paths


def run_health(photos: str | Path, encoders: str = "relsim-mini,imagenet", limit: int | None = None,
               device: str | None = None, results_dir: str | Path | None = None) -> dict[str, Any]:
    """Embed the photos with every encoder and report :func:`encoder_health`; writes ``health.json``."""
    import json

    from relsearch.bench import RESULTS_DIR
    from relsearch.bench.photos import embed_paths, encoder_specs

    loaded = encoder_specs(encoders, device)
    paths = photo_paths(photos, limit)
    report: dict[str, Any] = {"photos": str(photos), "images": len(paths), "encoders": {}}
    for spec, enc in loaded:
        vecs = embed_paths(enc, paths)
        report["encoders"][enc.name] = encoder_health(enc, spec, vecs, device)
        del enc
    out = Path(results_dir or RESULTS_DIR) / "health.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["json"] = str(out)
    return report


def format_health(encoders: dict[str, Any]) -> str:
    """Markdown table: one row per encoder."""
    lines = ["| encoder | n | effective rank | cosine mean | p50 | p90 | p99 | nearest caption `none` | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, h in encoders.items():
        caps = h.get("captions", {})
        none = f"{100 * caps['none_share']:.0f} %" if "none_share" in caps else "-"
        verdict = "COLLAPSED" if h["collapsed"] else "ok"
        lines.append(f"| {name} | {h['n']} | {h['effective_rank']:.1f} | {h['cosine_mean']:.3f} | "
                     f"{h['cosine_p50']:.3f} | {h['cosine_p90']:.3f} | {h['cosine_p99']:.3f} | {none} | {verdict} |")
    return "\n".join(lines)


#: Held-out composed sets for :func:`calibrate_relation` (test-split art, evaluation photographs,
#: seeds no benchmark set uses).
CALIBRATION_SETS = {
    "photo12_cal": {"families": "all", "backgrounds": "photo", "photos": "eval", "realism": True, "seed": 301,
                    "n_groups": 6, "distractors": 12},
    "plain9_cal": {"families": "classic", "seed": 302, "n_groups": 5, "distractors": 10},
}


def calibrate_relation(root: str | Path, photos: str | Path, thresholds: Sequence[float] = (0.5, 0.55, 0.58, 0.6, 0.62, 0.64),
                       results_dir: str | Path | None = None, encoder: str = "relsim-mini") -> dict[str, Any]:
    """Best bank-caption scores of ``encoder`` on held-out composed scenes and on real photographs,
    and what each candidate :data:`relsearch.explain.KNOWN_MIN_SCORE` keeps; writes
    ``relation_threshold.json``. With a labels ``.jsonl`` for ``photos``, each threshold also gets the
    share of photographs whose verdict (known or not) agrees with their label (a relation or ``none``)."""
    import json

    from relsearch.bench import RESULTS_DIR
    from relsearch.bench.photos import embed_paths, encoder_specs
    from relsearch.explain import bank_for

    (spec, enc), = encoder_specs(encoder, None)
    bank = bank_for(spec)
    scenes = _calibration_scenes(root, enc, bank)
    paths = photo_paths(photos)
    idx, score = bank.nearest(embed_paths(enc, paths))
    real = [(float(s), str(bank.families[i])) for i, s in zip(idx, score)]
    rel = np.array([s for f, s, _ in scenes if f != NONE_FAMILY])
    real_rel = np.array([s for s, f in real if f != NONE_FAMILY])
    report: dict[str, Any] = {
        "encoder": spec, "composed_relation_scenes": len(rel), "photos": len(real),
        "composed_nearest_is_own_family": round(float(np.mean([f == n for f, _, n in scenes if f != NONE_FAMILY])), 4),
        "photos_nearest_none": round(float(np.mean([f == NONE_FAMILY for _, f in real])), 4),
        "composed_score_percentiles": {q: round(float(np.percentile(rel, q)), 4) for q in (1, 2, 5, 50)},
        "photo_score_percentiles_not_none": {q: round(float(np.percentile(real_rel, q)), 4) for q in (5, 25, 50)}
        if len(real_rel) else {},
        "thresholds": {f"{t:g}": {"composed_known": round(float((rel >= t).mean()), 4),
                                  "photos_known": round(float((real_rel >= t).sum() / len(real)), 4)}
                       for t in thresholds},
    }
    labelled = _photo_relations(photos, paths)
    if labelled is not None:
        has = np.array([r != NONE_FAMILY for r in labelled])
        for t in thresholds:
            known = np.array([f != NONE_FAMILY and s >= t for s, f in real])
            report["thresholds"][f"{t:g}"]["photos_verdict_agrees_with_label"] = round(float((known == has).mean()), 4)
    out = Path(results_dir or RESULTS_DIR) / "relation_threshold.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["json"] = str(out)
    return report


def _calibration_scenes(root: str | Path, enc: Any, bank: Any) -> list[tuple[str, float, str]]:
    """(true family, best caption score, nearest family) of every scene of :data:`CALIBRATION_SETS`."""
    import json

    from relsearch.bench.photos import embed_paths
    from relsearch.corpus.compose import compose
    from relsearch.corpus.families import CLASSIC_FAMILIES, FAMILIES

    scenes: list[tuple[str, float, str]] = []
    for name, recipe in CALIBRATION_SETS.items():
        kw = dict(recipe, families=FAMILIES if recipe["families"] == "all" else CLASSIC_FAMILIES)
        folder = Path(root) / name
        if not (folder / "labels.jsonl").is_file():
            compose(folder, n_per_family=0, split="test", grouped=True, **kw)
        rows = [json.loads(x) for x in (folder / "labels.jsonl").read_text(encoding="utf-8").splitlines() if x]
        idx, score = bank.nearest(embed_paths(enc, [str(folder / r["path"]) for r in rows]))
        scenes += [(r["family"], float(s), str(bank.families[i])) for r, i, s in zip(rows, idx, score)]
    return scenes


def _photo_relations(photos: str | Path, paths: list[str]) -> list[str] | None:
    """The labelled relation of each of ``paths`` when ``photos`` is a labels ``.jsonl``, else None."""
    p = Path(photos)
    if not (p.is_file() and p.suffix == ".jsonl"):
        return None
    from relsearch.bench.photos import read_labels

    by_path = {r.path: r.relation for r in read_labels(p)}
    return [by_path[x] for x in paths]
