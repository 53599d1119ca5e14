"""Relational retrieval on real photographs, hand-labelled into relation groups.

The labels file (``benchmarks/realphoto/labels_test.jsonl``) holds one JSON line per
photograph installed by a Debian package: ``{"path", "package", "split", "relation",
"look", "sha256", "note"}``. ``relation`` names one entry of ``relations.json`` (beside
the labels: one anonymous caption per relation; ``none`` for photographs with none of
them); ``look`` groups photographs that look alike (same subject, palette or scene
type) whatever their relation. Photographs are never fetched: a missing one is counted
with the package that installs it, and one whose bytes changed is left out.

Per encoder and relation it reports, over the 10 nearest photographs (query excluded;
``none`` photographs are distractors, never queries):

- P@10 and mAP@10 of the query's relation;
- leakage@10: share of the 10 nearest with the query's ``look`` but another relation;
- for an encoder with a caption (text) tower, caption -> image P@10 of the relation's
  caption from ``relations.json``;

beside the label-free health of each encoder's vectors (:mod:`relsearch.bench.health`),
and a contact sheet: a few queries, one row each, with each encoder's top 5.

    relsearch bench realphoto [--labels benchmarks/realphoto/labels_test.jsonl] [--encoders relsim-mini,imagenet]
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.bench.photos import Label, embed_paths, encoder_specs, read_labels
from relsearch.errors import RelsearchError
from relsearch.retrieval_metrics import (
    NONE_FAMILY,
    bootstrap_ci,
    neighbours,
    query_precisions,
    retrieval_report,
    text_to_image_precision,
)

K = 10
DEFAULT_LABELS = os.path.join("benchmarks", "realphoto", "labels_test.jsonl")
RELATIONS_NAME = "relations.json"
#: Queries shown on the contact sheet, and neighbours per encoder in each row.
SHEET_QUERIES = 6
SHEET_TOP = 5


def read_relations(path: str | os.PathLike[str]) -> dict[str, str]:
    """relation -> caption from ``relations.json``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return {str(name): str(entry["caption"]) for name, entry in data.items()}
    except FileNotFoundError:
        raise RelsearchError(f"relations file {p} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RelsearchError(f"{p}: not a relations file of {{name: {{\"caption\": ...}}}} ({exc})") from exc


def check_photos(labels: list[Label]) -> tuple[list[Label], dict[str, Any]]:
    """The labels whose photograph is there with the recorded bytes, and what is not.

    Nothing is fetched: missing photographs are counted with the packages that install them.
    """
    from relsearch.collection.scan import sha256_file

    present: list[Label] = []
    missing: list[Label] = []
    changed: list[str] = []
    for lab in labels:
        if not os.path.isfile(lab.path):
            missing.append(lab)
        elif lab.sha256 and sha256_file(lab.path) != lab.sha256:
            changed.append(lab.path)
        else:
            present.append(lab)
    packages = sorted({m.package for m in missing if m.package})
    check: dict[str, Any] = {"labelled": len(labels), "present": len(present), "missing": len(missing),
                             "missing_packages": packages, "changed": len(changed), "changed_paths": changed[:20]}
    if packages:
        check["install"] = "apt-get install " + " ".join(packages)
    return present, check


def score_encoder(encoder: Any, vecs: np.ndarray, labels: list[Label], relations: dict[str, str],
                  per_query: np.ndarray | None = None) -> dict[str, Any]:
    """P@10, mAP@10 and leakage@10 overall and per relation; caption -> image P@10 with a text tower.

    ``per_query``: the queries' P@10 when the caller already has them (no second search).
    """
    from relsearch.encoders.base import TextEncoder

    rels = [lab.relation for lab in labels]
    looks = [[lab.look] if lab.look else [] for lab in labels]
    qrels = query_relations(labels)
    rep = retrieval_report(vecs, qrels, looks, k=K)
    lo, hi = bootstrap_ci(query_precisions(vecs, qrels, K) if per_query is None else per_query)
    out: dict[str, Any] = {
        "queries": rep["queries"], "k": rep["k"],
        "precision_at_10": round(rep["precision_at_k"], 4), "precision_at_10_ci95": [round(lo, 4), round(hi, 4)],
        "map_at_10": round(rep["map_at_k"], 4),
        "leakage_at_10": round(rep["leakage_at_k"], 4),
        "per_relation": {r: {"images": rels.count(r), "precision_at_10": round(v["precision_at_k"], 4),
                             "map_at_10": round(v["map_at_k"], 4), "leakage_at_10": round(v["leakage_at_k"], 4)}
                         for r, v in rep["per_family"].items()},
    }
    asked = [r for r in out["per_relation"] if r in relations]
    if isinstance(encoder, TextEncoder) and asked:
        t2i = text_to_image_precision(encoder.embed_text([relations[r] for r in asked]), asked, vecs, rels, k=K)
        out["text_to_image_precision_at_10"] = round(t2i["precision_at_k"], 4)
        for r, v in t2i["per_family"].items():
            out["per_relation"][r]["text_to_image_precision_at_10"] = round(v, 4)
    return out


def query_relations(labels: list[Label]) -> list[str]:
    """Each photograph's relation, ``none`` for a relation of one photograph: alone in its relation
    it has nothing to find, so it is a distractor, not a query."""
    lonely = singletons(labels)
    return [NONE_FAMILY if lab.relation in lonely else lab.relation for lab in labels]


def paired_differences(per_query: dict[str, np.ndarray]) -> dict[str, Any]:
    """P@10 of every other encoder against the first, query by query: mean difference and its
    bootstrap 95 % interval (the queries are the same photographs, so the pairing removes their spread)."""
    names = list(per_query)
    out: dict[str, Any] = {}
    for other in names[1:]:
        diff = per_query[names[0]] - per_query[other]
        lo, hi = bootstrap_ci(diff)
        out[f"{names[0]} - {other}"] = {"precision_at_10": round(float(diff.mean()), 4),
                                        "ci95": [round(lo, 4), round(hi, 4)]}
    return out


def singletons(labels: list[Label]) -> set[str]:
    """Relations (other than ``none``) with a single photograph."""
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab.relation] = counts.get(lab.relation, 0) + 1
    return {r for r, c in counts.items() if c == 1 and r != NONE_FAMILY}


def known_shares(spec: str, vecs: np.ndarray, labels: list[Label], device: str | None = None) -> dict[str, Any]:
    """How often the query verdict (:func:`relsearch.explain.relation_verdict`) says "a relation I
    know", for photographs labelled with a relation and for ``none`` ones; empty without a bank."""
    from relsearch.explain import bank_for, relation_verdict

    try:
        bank = bank_for(spec, device=device)
        known = np.array([relation_verdict(bank, v).known for v in vecs])
    except RelsearchError:
        return {}
    is_none = np.array([lab.relation == NONE_FAMILY for lab in labels])
    share = {"relation_photos": known[~is_none], "none_photos": known[is_none]}
    out: dict[str, Any] = {k: round(float(v.mean()), 4) if len(v) else None for k, v in share.items()}
    # does the verdict pick the queries whose neighbours are right? P@10 of each side
    rels = np.asarray([lab.relation for lab in labels], dtype=object)
    query = ~is_none & ~np.isin(rels, sorted(singletons(labels)))
    prec = (rels[neighbours(vecs, K)] == rels[:, None]).mean(axis=1)
    for name, side in (("known", query & known), ("unknown", query & ~known)):
        out[f"precision_at_10_{name}_queries"] = round(float(prec[side].mean()), 4) if side.any() else None
        out[f"{name}_queries"] = int(side.sum())
    return out


SECOND_NAME = "labels_second.jsonl"
#: What a second labeller writes for a picture that is no photograph (left out of agreement).
DROP = "drop"


def agreement(labels: list[Label], second: str | os.PathLike[str]) -> dict[str, Any]:
    """Raw agreement and Cohen's kappa between ``labels`` and an independent labelling.

    ``second`` holds rows ``{"path", "relation", "labeller"}``; photographs either labeller
    left out (not in ``labels``, or ``drop``) are counted apart, per labeller and overall.
    """
    first = {lab.path: lab.relation for lab in labels}
    groups: dict[str, list[tuple[str, str]]] = {}
    dropped: dict[str, int] = {}
    with open(second, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                path, rel, who = row["path"], row["relation"], str(row.get("labeller", "second"))
            except (ValueError, KeyError, TypeError) as exc:
                raise RelsearchError(f"{second} line {n}: not a label row ({exc})") from None
            if path not in first or rel == DROP:
                dropped[who] = dropped.get(who, 0) + 1
                continue
            groups.setdefault(who, []).append((first[path], rel))
            groups.setdefault("all", []).append((first[path], rel))
    out = {who: _kappa(pairs) for who, pairs in groups.items()}
    for who, n in dropped.items():
        out.setdefault(who, {})["left_out"] = n
    return out


def _kappa(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[k] * second[k] for k in first) / (n * n)
    kappa = (observed - expected) / (1 - expected) if expected < 1 else 1.0
    both_none = sum(a == b == "none" for a, b in pairs)
    return {"photos": n, "agreement": round(observed, 3), "kappa": round(kappa, 3),
            "both_none": both_none, "disagreements": Counter(f"{a}/{b}" for a, b in pairs if a != b).most_common(5)}


def sheet_queries(labels: list[Label], n: int = SHEET_QUERIES) -> list[int]:
    """One query per relation (its first photograph), relations in first-seen order; ``none`` and
    relations of one photograph left out."""
    seen: dict[str, int] = {}
    lonely = singletons(labels)
    for i, lab in enumerate(labels):
        if lab.relation != NONE_FAMILY and lab.relation not in seen and lab.relation not in lonely:
            seen[lab.relation] = i
    return list(seen.values())[:n]


def run_realphoto(labels: str | os.PathLike[str] | None = None, encoders: str = "relsim-mini,imagenet",
                  relations: str | os.PathLike[str] | None = None, device: str | None = None,
                  results_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Score every encoder on the labelled photographs; writes ``realphoto.json`` and ``realphoto.png``."""
    from relsearch.bench import RESULTS_DIR
    from relsearch.bench.health import encoder_health

    labels_path = Path(labels or DEFAULT_LABELS)
    rows = read_labels(labels_path)
    loaded = encoder_specs(encoders, device)  # a bad name fails before any photograph is hashed
    beside = labels_path.parent / RELATIONS_NAME
    captions = read_relations(relations or (beside if beside.is_file() else Path(DEFAULT_LABELS).parent / RELATIONS_NAME))
    present, check = check_photos(rows)
    if len(present) < 3:
        raise RelsearchError(f"only {len(present)} of {len(rows)} labelled photographs are there (need 3)"
                             + (f"; install them with: {check['install']}" if "install" in check else ""))
    unknown = sorted({lab.relation for lab in present} - set(captions))
    report: dict[str, Any] = {"labels": str(labels_path), "k": K, "photos": check,
                              "relations": sorted({lab.relation for lab in present}), "unknown_relations": unknown,
                              "singletons": sorted(singletons(present)),
                              "encoders": {}, "health": {}}
    second = labels_path.parent / SECOND_NAME
    if second.is_file():
        report["agreement"] = agreement(rows, second)
    paths = [lab.path for lab in present]
    queries = sheet_queries(present)
    top: dict[str, np.ndarray] = {}
    per_query: dict[str, np.ndarray] = {}
    qrels = query_relations(present)
    for spec, enc in loaded:
        vecs = embed_paths(enc, paths)
        per_query[enc.name] = query_precisions(vecs, qrels, K)
        report["encoders"][enc.name] = score_encoder(enc, vecs, present, captions, per_query[enc.name])
        report["health"][enc.name] = encoder_health(enc, spec, vecs, device)
        verdicts = known_shares(spec, vecs, present, device)
        if verdicts:
            report["encoders"][enc.name]["relation_known"] = verdicts
        top[enc.name] = neighbours(vecs, SHEET_TOP)[queries]
        del enc
    if len(per_query) > 1:
        report["paired"] = paired_differences(per_query)
    out = Path(results_dir or RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "realphoto.png"
    write_contact_sheet(present, queries, top, png)
    js = out / "realphoto.json"
    report["png"] = str(png)
    js.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["json"] = str(js)
    return report


def write_contact_sheet(labels: list[Label], queries: list[int], top: dict[str, np.ndarray], path: Path,
                        cell: int = 96) -> Path:
    """One row per query: the query, then each encoder's top neighbours, each labelled with its relation."""
    from PIL import Image, ImageDraw

    from relsearch.view.sheet import load_font as font
    from relsearch.view.sheet import thumbnail

    pad, gap, text_h, head = 10, 6, 30, 22
    names = list(top)
    group_w = SHEET_TOP * (cell + gap) + 2 * gap
    width = 2 * pad + cell + 3 * gap + len(names) * group_w
    row_h = head + cell + text_h
    sheet = Image.new("RGB", (width, pad + max(1, len(queries)) * (row_h + gap) + pad), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    big, small = font(13), font(10)
    for r, q in enumerate(queries):
        y = pad + r * (row_h + gap)
        want = labels[q].relation
        draw.text((pad, y), "query", fill=(0, 0, 0), font=big)
        _cell(sheet, draw, labels[q], (pad, y + head), cell, (0, 0, 0), small, thumbnail)
        for g, name in enumerate(names):
            x0 = pad + cell + 3 * gap + g * group_w
            draw.text((x0, y), name, fill=(0, 0, 0), font=big)
            for j, hit in enumerate(top[name][r][:SHEET_TOP]):
                lab = labels[int(hit)]
                colour = (20, 140, 60) if lab.relation == want else (200, 50, 40)
                _cell(sheet, draw, lab, (x0 + j * (cell + gap), y + head), cell, colour, small, thumbnail)
    sheet.save(path, format="PNG", optimize=True)
    return path


def _cell(sheet: Any, draw: Any, lab: Label, at: tuple[int, int], cell: int, colour: tuple[int, int, int],
          small: Any, thumbnail: Any) -> None:
    x, y = at
    t = thumbnail(lab.path, cell)
    sheet.paste(t, (x + (cell - t.width) // 2, y + (cell - t.height) // 2))
    draw.rectangle((x - 1, y - 1, x + cell, y + cell), outline=colour, width=2)
    name = lab.relation if len(lab.relation) <= 17 else lab.relation[:16] + "\u2026"
    draw.text((x + 1, y + cell + 3), name, fill=colour, font=small)


def format_table(report: dict[str, Any]) -> str:
    """Markdown: photos found, one row per encoder, then per relation and encoder."""
    from relsearch.bench.health import format_health

    ph = report["photos"]
    lines = [f"{ph['present']} of {ph['labelled']} labelled photographs ({ph['missing']} missing, "
             f"{ph['changed']} changed)" + (f"; missing ones: {ph['install']}" if "install" in ph else "")]
    lines += ["", "| encoder | queries | P@10 (95 % interval) | mAP@10 | leakage@10 | caption -> image P@10 |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, e in report["encoders"].items():
        t2i = e.get("text_to_image_precision_at_10")
        ci = e.get("precision_at_10_ci95")
        p10 = f"{e['precision_at_10']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
        lines.append(f"| {name} | {e['queries']} | {p10} | {e['map_at_10']:.3f} | "
                     f"{e['leakage_at_10']:.3f} | {'-' if t2i is None else f'{t2i:.3f}'} |")
    for pair, d in report.get("paired", {}).items():
        lines.append(f"P@10 {pair}: {d['precision_at_10']:+.3f} (95 % bootstrap interval over the same queries "
                     f"{d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})")
    for name, e in report["encoders"].items():
        if e.get("relation_known"):
            kn = e["relation_known"]
            lines.append(f"{name} query verdict 'a relation it knows': {_pct(kn['relation_photos'])} of photographs "
                         f"labelled with a relation, {_pct(kn['none_photos'])} of 'none' ones; P@10 of known "
                         f"queries {_num(kn['precision_at_10_known_queries'])} ({kn['known_queries']}), of "
                         f"unknown ones {_num(kn['precision_at_10_unknown_queries'])} ({kn['unknown_queries']})")
    lines += ["", "| relation | images | " + " | ".join(f"{n} P@10 / leak / t2i" for n in report["encoders"]) + " |",
              "| --- | --- | " + " | ".join("---" for _ in report["encoders"]) + " |"]
    for rel in report["relations"]:
        if rel == NONE_FAMILY or rel in report.get("singletons", ()):
            continue
        cells, count = [], 0
        for e in report["encoders"].values():
            v = e["per_relation"].get(rel, {})
            count = v.get("images", count)
            t2i = v.get("text_to_image_precision_at_10")
            cells.append(f"{v.get('precision_at_10', 0):.2f} / {v.get('leakage_at_10', 0):.2f} / "
                         + ("-" if t2i is None else f"{t2i:.2f}"))
        lines.append(f"| {rel} | {count} | " + " | ".join(cells) + " |")
    for who, a in report.get("agreement", {}).items():
        if "photos" in a:
            lines.append(f"label agreement ({who}): {a['agreement']:.2f} raw, Cohen's kappa {a['kappa']:.2f} over "
                         f"{a['photos']} photographs both labellers kept ({a.get('left_out', 0)} left out)")
    lines += ["", "health (no labels used):", format_health(report["health"])]
    if report.get("singletons"):
        lines.append("relations of one photograph (distractors, not queries): " + ", ".join(report["singletons"]))
    if report.get("unknown_relations"):
        lines.append("relations not in relations.json (no caption query): " + ", ".join(report["unknown_relations"]))
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
