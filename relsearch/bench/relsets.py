"""The relational benchmark sets of relsim-mini, and their evaluation.

Every set is grouped (each group renders one object set, background and canvas in every family,
so each query has attribute twins) with objects never seen in training, plus no-relation
distractors. The sets differ in what a user's folder would add:

- ``plain9``: the nine first families on plain, gradient and texture backgrounds, JPEG at 95
  (the first benchmark, byte for byte);
- ``photo9``: the same nine families over wallpaper photographs kept apart for evaluation, with
  the nuisances of real files (JPEG at quality 35-95, resize, blur, noise, colour casts, shadows);
- ``photo12``: all twelve families, as ``photo9``;
- ``unseen_art12``: all twelve families drawn with colour-emoji art (never used in training)
  over the evaluation photographs.

    relsearch bench relsets --root data_bench [--relsim-mini WEIGHTS_DIR]

composes the sets that are missing, embeds them with relsim-mini and the imagenet attribute
baseline, and writes ``benchmarks/results/relsim_mini_sets.json``. ``NAME@SEED`` (``--sets
photo9@121,photo9@122``) is another draw of a set's recipe: same families, photographs, art and
nuisances, other groups, objects and layouts; it tells how much one set's numbers owe to its draw.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from relsearch.corpus.captions import TEMPLATES
from relsearch.corpus.families import CLASSIC_FAMILIES, FAMILIES
from relsearch.errors import RelsearchError

K = 10
RESULTS_NAME = "relsim_mini_sets.json"


@dataclass(frozen=True)
class BenchSet:
    """One benchmark set: how it is composed."""

    name: str
    families: tuple[str, ...]
    seed: int
    backgrounds: str = "default"
    photos: str = "eval"
    realism: bool = False
    art: str | None = None  # None: openclipart test split; "emoji": exported colour-emoji art
    groups: int = 40
    distractors: int = 40

    def compose_kwargs(self, art_dir: Path | None) -> dict[str, Any]:
        return dict(
            n_per_family=0,
            split="all" if self.art else "test",
            seed=self.seed,
            grouped=True,
            n_groups=self.groups,
            distractors=self.distractors,
            art_dirs=[art_dir] if art_dir else None,
            families=self.families,
            backgrounds=self.backgrounds,
            photos=self.photos,
            realism=self.realism,
        )


SETS: dict[str, BenchSet] = {
    s.name: s
    for s in (
        BenchSet("plain9", CLASSIC_FAMILIES, seed=2),
        # 24 groups: each query still has 23 relational matches, at 60 % of the embedding time.
        BenchSet("photo9", CLASSIC_FAMILIES, seed=21, backgrounds="photo", realism=True, groups=24, distractors=24),
        BenchSet("photo12", FAMILIES, seed=22, backgrounds="photo", realism=True, groups=24, distractors=24),
        BenchSet("unseen_art12", FAMILIES, seed=23, backgrounds="photo", realism=True, art="emoji", groups=24,
                 distractors=24),
    )
}


def resolve_set(name: str) -> BenchSet:
    """A set by name; ``NAME@SEED`` is the named set's recipe composed with another seed."""
    base, sep, seed = name.partition("@")
    if base not in SETS:
        raise RelsearchError(f"unknown benchmark set {base!r}; choose from {', '.join(SETS)} (NAME@SEED for "
                             "another draw)")
    if not sep:
        return SETS[base]
    if not seed.isdigit():
        raise RelsearchError(f"benchmark set {name!r}: the part after '@' is a seed, a whole number")
    return dataclasses.replace(SETS[base], name=f"{base}@{int(seed)}", seed=int(seed))


def ensure_set(root: Path, bench: BenchSet, workers: int = 1) -> Path:
    """Compose ``bench`` under ``root`` unless it is there already; returns its folder."""
    from relsearch.corpus.art import export_emoji_art
    from relsearch.corpus.compose import compose

    out = root / bench.name
    if (out / "labels.jsonl").is_file():
        return out
    art_dir = None
    if bench.art == "emoji":
        art_dir = root / "_art" / "emoji"
        if not art_dir.is_dir() or not any(art_dir.iterdir()):
            export_emoji_art(art_dir)
    compose(out, workers=workers, **bench.compose_kwargs(art_dir))
    return out


def _read(folder: Path) -> tuple[list[str], list[str], list[list[str]]]:
    rows = [json.loads(x) for x in (folder / "labels.jsonl").read_text(encoding="utf-8").splitlines() if x]
    return [str(folder / r["path"]) for r in rows], [r["family"] for r in rows], [r["objects"] for r in rows]


def _embed(encoder: Any, paths: list[str], batch: int = 32) -> np.ndarray:
    from PIL import Image

    out = []
    for i in range(0, len(paths), batch):
        ims = []
        for p in paths[i : i + batch]:
            with Image.open(p) as im:
                ims.append(im.convert("RGB"))
        out.append(encoder.embed(ims))
    return np.concatenate(out).astype(np.float32)


def _rounded(report: dict[str, Any]) -> dict[str, Any]:
    per = {f: round(v["precision_at_k"], 3) for f, v in report["per_family"].items()}
    return {
        "precision_at_10": round(report["precision_at_k"], 3),
        "leakage_at_10": round(report.get("leakage_at_k", 0.0), 3),
        "map_at_10": round(report["map_at_k"], 3),
        "per_family": per,
    }


def evaluate(root: Path, relsim_mini: str | None, names: Sequence[str], workers: int = 1,
             baseline: bool = True) -> dict[str, Any]:
    """Compose (when missing) and score every named set; returns the report dict."""
    from relsearch import retrieval_metrics as metrics
    from relsearch.encoders.imagenet import load as load_imagenet
    from relsearch.encoders.relsim_mini import load as load_mini

    benches = [resolve_set(name) for name in names]  # every name checked before any work
    mini = load_mini(relsim_mini)
    encoders: dict[str, Any] = {"relsim-mini": mini}
    if baseline:
        encoders["imagenet"] = load_imagenet(device="cpu")
    captions = [(f, t) for f in FAMILIES for t in TEMPLATES[f]]
    report: dict[str, Any] = {"k": K, "relsim_mini": relsim_mini or "shipped", "fingerprint": mini.fingerprint,
                              "sets": {}}
    for bench in benches:
        folder = ensure_set(root, bench, workers)
        paths, families, objects = _read(folder)
        entry: dict[str, Any] = {"images": len(paths), "families": len(bench.families), "encoders": {}}
        for enc_name, enc in encoders.items():
            started = time.perf_counter()
            emb = _embed(enc, paths)
            seconds = time.perf_counter() - started
            res = _rounded(metrics.retrieval_report(emb, families, objects, k=K))
            res["images_per_second"] = round(len(paths) / seconds, 1)
            if enc_name == "relsim-mini":
                fams = [f for f, _ in captions if f in bench.families]
                texts = [t for f, t in captions if f in bench.families]
                t2i = metrics.text_to_image_precision(enc.embed_text(texts), fams, emb, families, k=K)
                res["text_to_image_precision_at_10"] = round(t2i["precision_at_k"], 3)
                res["text_to_image_per_family"] = {f: round(v, 3) for f, v in t2i["per_family"].items()}
                # Which family the wrong neighbours come from, per query family (the weak ones'
                # confusions are what the training changes target).
                entry["confusions"] = _confusions(emb, families)
            entry["encoders"][enc_name] = res
        report["sets"][bench.name] = entry
    return report


def _confusions(emb: np.ndarray, families: list[str], k: int = K) -> dict[str, dict[str, int]]:
    from relsearch import retrieval_metrics as metrics

    nn = metrics.neighbours(emb, k)
    fam = np.asarray(families, dtype=object)
    out: dict[str, dict[str, int]] = {}
    for q in range(len(fam)):
        if fam[q] == metrics.NONE_FAMILY:
            continue
        for j in nn[q]:
            if fam[j] != fam[q]:
                row = out.setdefault(str(fam[q]), {})
                row[str(fam[j])] = row.get(str(fam[j]), 0) + 1
    return {f: dict(sorted(r.items(), key=lambda kv: -kv[1])) for f, r in sorted(out.items())}


def format_table(report: dict[str, Any]) -> str:
    """Markdown table: one row per set and encoder."""
    lines = ["| set | images | encoder | precision@10 | leakage@10 | text -> image P@10 | weakest families |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in report["sets"].items():
        for enc, res in entry["encoders"].items():
            weak = sorted(res["per_family"].items(), key=lambda kv: kv[1])[:3]
            t2i = res.get("text_to_image_precision_at_10")
            lines.append(
                f"| {name} | {entry['images']} | {enc} | {res['precision_at_10']:.3f} | {res['leakage_at_10']:.3f} | "
                f"{'-' if t2i is None else f'{t2i:.3f}'} | {', '.join(f'{f} {v:.2f}' for f, v in weak)} |"
            )
    return "\n".join(lines)


def run_relsets(root: Path, relsim_mini: str | None = None, sets: str | None = None, workers: int = 1,
                baseline: bool = True, results_dir: str | Path | None = None) -> dict[str, Any]:
    """Compose the missing sets under ``root``, score them, write ``relsim_mini_sets.json``."""
    from relsearch.bench import RESULTS_DIR

    names = [s.strip() for s in (sets or ",".join(SETS)).split(",") if s.strip()]
    report = evaluate(Path(root), relsim_mini, names, workers, baseline)
    out = Path(results_dir or RESULTS_DIR) / RESULTS_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["json"] = str(out)
    return report
