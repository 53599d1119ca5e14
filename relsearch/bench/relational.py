"""Relational retrieval benchmark: family precision of each encoder's neighbours.

Indexes a labelled collection (``labels.jsonl``: ``path`` relative to the collection,
``family``, ``objects``) with every encoder, then queries the index with the stored
vector of every labelled image (itself excluded; family ``"none"`` images are
distractors, never queries) and reports per encoder precision@k, mAP@k and
recall@k of the query's family, and attribute leakage@k (a neighbour sharing an
object with the query but showing another relation).

    relsearch compose --out data/bench --split test --grouped --groups 30 --seed 1
    relsearch bench relational --collection data/bench --encoders imagenet,relsim-mini
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.bench import RESULTS_DIR, pyplot
from relsearch.errors import RelsearchError
from relsearch.retrieval_metrics import NONE_FAMILY, neighbours, retrieval_report

#: GPT-4o-judged relational similarity scores (0-10) reported in the relsim paper, for context
#: beside this benchmark's family precision (a different, label-based measure).
PAPER_SCORES = {"relsim": 6.77, "CLIP-I": 5.91, "DINO": 4.68, "dreamsim": 5.76, "LPIPS": 4.56,
                "LoRA-tuned CLIP": 6.02}


@dataclass
class Labelled:
    path: str  # as written in labels.jsonl (relative to the collection)
    abspath: str
    family: str
    objects: list[str]


def read_labels(labels: str | os.PathLike[str], collection: str | os.PathLike[str]) -> list[Labelled]:
    """Parse ``labels.jsonl``; one-line errors for a missing file or a bad line."""
    p = Path(labels)
    if not p.is_file():
        raise RelsearchError(f"labels file {p} does not exist")
    root = os.path.abspath(os.fspath(collection))
    items: list[Labelled] = []
    with p.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                path, family = str(row["path"]), str(row["family"])
                objects = [str(o) for o in row.get("objects", [])]
            except (ValueError, KeyError, TypeError) as exc:
                raise RelsearchError(f"{p}:{n}: not a label line with 'path' and 'family' ({exc})") from exc
            items.append(Labelled(path, os.path.normpath(os.path.join(root, path)), family, objects))
    if not items:
        raise RelsearchError(f"labels file {p} has no labels")
    if not any(i.family != NONE_FAMILY for i in items):
        raise RelsearchError(f"labels file {p} has no image with a relation family to query with")
    return items


def _neighbour_rows(searcher: Any, name: str, ids: np.ndarray, vecs: np.ndarray, k: int,
                    row_of_id: dict[int, int]) -> np.ndarray:
    """[N, k] rows into the labelled items: the index's own answer, self and unlabelled skipped."""
    n = len(ids)
    extra = len(searcher.opened.store.all_paths()) - n  # unlabelled images in the collection
    depth = min(k + 1 + min(max(0, extra), 1000), searcher.indexes[name].ntotal)
    hits = searcher.search_vectors(name, vecs, depth)
    out = np.full((n, k), -1, dtype=np.int64)
    short = []
    for q, row in enumerate(hits):
        got = [row_of_id[h.id] for h in row if h.id in row_of_id and h.id != ids[q]][:k]
        out[q, : len(got)] = got
        if len(got) < k:
            short.append(q)
    if short:  # an approximate index may return fewer: fill those rows exactly
        exact = neighbours(vecs, k)
        out[short] = exact[short]
    return out


def _labelled_records(searcher: Any, items: list[Labelled], root: Path) -> tuple[np.ndarray, list[Labelled]]:
    """Record ids of the labelled images in the index, and their labels (identical files share one record)."""
    paths = searcher.opened.store.all_paths()
    rid: dict[int, Labelled] = {}
    for it in items:
        entry = paths.get(it.abspath)
        if entry is not None and entry.id not in rid:
            rid[entry.id] = it
    if len(rid) < 2:
        raise RelsearchError(f"fewer than 2 labelled images of {root} are in the index; check --labels")
    return np.fromiter(rid, dtype=np.int64), list(rid.values())


def _report_head(root: Path, items: list[Labelled], used: list[Labelled], k: int, build_s: float,
                 build: Any) -> dict[str, Any]:
    """The set, the build and the chance precision (a random neighbour is in the query's family)."""
    families = [it.family for it in used]
    fam = np.asarray(families, dtype=object)
    counts = {f: int((fam == f).sum()) for f in set(families)}
    return {
        "collection": str(root.resolve()),
        "labels": len(items),
        "items": len(used),
        "queries": sum(f != NONE_FAMILY for f in families),
        "k": k,
        "families": sorted({f for f in families if f != NONE_FAMILY}),
        "build_s": build_s,
        "build_seconds": build.seconds,
        "build_embedded": build.embedded,
        "encoders": {},
        "chance_precision": float(np.mean([(counts[f] - 1) / (len(fam) - 1) for f in fam[fam != NONE_FAMILY]])),
    }


def _score_column(searcher: Any, name: str, entry: Any, ids: np.ndarray, used: list[Labelled], k: int,
                  row_of_id: dict[int, int], twin: Any) -> tuple[dict[str, Any], np.ndarray]:
    """One encoder column: its metrics row, and the [N, k] neighbour rows behind them."""
    from relsearch.bench import modes_eval

    families, objects = [it.family for it in used], [it.objects for it in used]
    t = time.perf_counter()
    vecs = searcher.opened.store.get_vectors(name, ids, entry.dim)
    nn = _neighbour_rows(searcher, name, ids, vecs, k, row_of_id)
    search_s = time.perf_counter() - t
    metrics = retrieval_report(nn, families, objects, k)
    return {
        "kind": entry.kind,
        "fingerprint": entry.fingerprint,
        "faiss": entry.faiss.get("spec"),
        **{m: metrics[m] for m in ("precision_at_k", "map_at_k", "recall_at_k", "leakage_at_k")},
        "twins_at_k": modes_eval.twins_at_k(nn, families, twin),
        "per_family": metrics["per_family"],
        "search_s": search_s,
    }, nn


def run_relational(
    collection: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    encoders: str | None = None,
    k: int = 10,
    index: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str | None = None,
    results_dir: str | os.PathLike[str] | None = RESULTS_DIR,
    analogy_weight: float | None = None,
    captions: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Index ``collection`` (or update ``index``), score every encoder; returns the report.

    With ``results_dir`` the report is also written there as ``relational.json`` and
    ``relational.png``; ``out`` gets one JSON line of neighbours per query and encoder.
    """
    from relsearch.build import BuildOptions, build_index
    from relsearch.query import Searcher

    if k < 1:
        raise RelsearchError(f"-k must be at least 1, got {k}")
    root = Path(collection)
    if not root.is_dir():
        raise RelsearchError(f"collection folder {root} does not exist")
    labels_path = labels if labels is not None else root / "labels.jsonl"
    items = read_labels(labels_path, root)

    with tempfile.TemporaryDirectory(prefix="relsearch-bench-") as tmp:
        index_path = Path(index) if index is not None else Path(tmp) / "index"
        t0 = time.perf_counter()
        build = build_index(root, index_path, BuildOptions(encoders=encoders, device=device, progress=False))
        build_s = time.perf_counter() - t0
        with Searcher(index_path, encoders=encoders, device=device) as searcher:
            ids, used = _labelled_records(searcher, items, root)
            families = [it.family for it in used]
            row_of_id = {int(i): r for r, i in enumerate(ids)}
            kk = min(k, len(ids) - 1)
            report = _report_head(root, items, used, kk, build_s, build)
            from relsearch.bench import modes_eval

            group_of = modes_eval.read_groups(labels_path)
            twin = modes_eval.twin_matrix([group_of.get(it.path) for it in used], [it.objects for it in used])
            nns = {}
            for name, entry in searcher.encoders.items():
                report["encoders"][name], nns[name] = _score_column(searcher, name, entry, ids, used, kk,
                                                                    row_of_id, twin)
            _add_mode_rows(report, searcher, ids, row_of_id, kk, families, twin, nns, analogy_weight, captions)
    lines = [json.dumps({"query": used[r].path, "encoder": name, "neighbours": [used[j].path for j in nn[r]]})
             for name, nn in nns.items() for r, f in enumerate(families) if f != NONE_FAMILY]
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(lines) + "\n", encoding="utf-8")
        report["out"] = str(out)
    report["paper_gpt4o_scores"] = PAPER_SCORES
    if results_dir is not None:
        report["json"], report["png"] = _write(report, Path(results_dir))
    return report


def _add_mode_rows(report: dict[str, Any], searcher: Any, ids: np.ndarray, row_of_id: dict[int, int], k: int,
                   families: list[str], twin: Any, nns: dict[str, np.ndarray], analogy_weight: float | None,
                   captions: str | os.PathLike[str] | None) -> None:
    """The analogy row and explanation accuracy (relsearch.bench.modes_eval), where the columns allow."""
    from relsearch.analogy import DEFAULT_WEIGHT
    from relsearch.bench import modes_eval

    enc = report["encoders"]
    rel = next((n for n in enc if enc[n]["kind"] == "relational"), None)
    attr = next((n for n in enc if enc[n]["kind"] != "relational"), None)
    if rel is not None and attr is not None:
        report["analogy"] = modes_eval.analogy_report(
            searcher, ids, row_of_id, k, families, twin, enc[rel], enc[attr],
            DEFAULT_WEIGHT if analogy_weight is None else analogy_weight)
    if rel is not None:
        try:
            report["explain"] = modes_eval.explain_report(searcher, rel, ids, nns[rel], families,
                                                          str(captions) if captions else None)
        except RelsearchError as exc:
            report["explain_error"] = str(exc)


def _write(report: dict[str, Any], results: Path) -> tuple[str, str]:
    results.mkdir(parents=True, exist_ok=True)
    json_path, png_path = results / "relational.json", results / "relational.png"
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    plot(report, png_path)
    return str(json_path), str(png_path)


def plot(report: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Bars per encoder (precision, mAP, recall, leakage) and per-family precision."""
    plt = pyplot()

    encs = sorted(report["encoders"], key=lambda n: (report["encoders"][n]["kind"] != "relational", n))
    keys = [("precision_at_k", "precision"), ("map_at_k", "mAP"), ("recall_at_k", "recall"),
            ("leakage_at_k", "leakage")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
    width = 0.8 / max(1, len(encs))
    x = np.arange(len(keys))
    for i, name in enumerate(encs):
        vals = [report["encoders"][name][key] for key, _ in keys]
        bars = ax1.bar(x + i * width, vals, width, label=f"{name} ({report['encoders'][name]['kind']})")
        ax1.bar_label(bars, fmt="%.2f", fontsize=7)
    ax1.axhline(report["chance_precision"], color="grey", ls="--", lw=1, label="chance precision")
    ax1.set_xticks(x + width * (len(encs) - 1) / 2, [label for _, label in keys])
    ax1.set_ylim(0, 1)
    ax1.set_title(f"@{report['k']}: {report['queries']} queries, {report['items']} images")
    ax1.legend(fontsize=7)
    fams = report["families"]
    xf = np.arange(len(fams))
    for i, name in enumerate(encs):
        per = report["encoders"][name]["per_family"]
        ax2.bar(xf + i * width, [per.get(f, {}).get("precision_at_k", 0) for f in fams], width, label=name)
    ax2.set_xticks(xf + width * (len(encs) - 1) / 2, fams, rotation=30, ha="right", fontsize=8)
    ax2.set_ylim(0, 1)
    ax2.set_title(f"precision@{report['k']} per family")
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(report: dict[str, Any]) -> str:
    k = report["k"]
    head = (f"{'encoder':<14}{'kind':<12}{f'P@{k}':>8}{f'mAP@{k}':>9}{f'R@{k}':>8}{f'leak@{k}':>9}"
            f"{f'twins@{k}':>9}")
    lines = [f"{report['queries']} queries, {report['items']} images, chance P@{k} "
             f"{report['chance_precision']:.3f}", head, "-" * len(head)]
    for name, r in sorted(report["encoders"].items(), key=lambda kv: (kv[1]["kind"] != "relational", kv[0])):
        lines.append(f"{name:<14}{r['kind']:<12}{r['precision_at_k']:>8.3f}{r['map_at_k']:>9.3f}"
                     f"{r['recall_at_k']:>8.3f}{r['leakage_at_k']:>9.3f}{r.get('twins_at_k', float('nan')):>9.3f}")
    from relsearch.bench.modes_eval import format_rows

    return "\n".join(lines + format_rows(report))
