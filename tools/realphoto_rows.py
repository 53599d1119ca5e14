"""Training rows from labelled real photographs (``benchmarks/realphoto/labels_*.jsonl``).

A photograph with a relation becomes ``--copies`` captioned rows, captions drawn from the
relation's templates (``relsearch.corpus.captions``); with ``--augment`` each copy after the
first is its own picture, written under ``OUT/images``: a crop, flip, colour change, blur and
JPEG re-encoding that keep the relation (no crop off a symmetry axis or a radial centre, a
quarter turn only for relations without an up). A ``none`` photograph becomes one teacher row
(``"target": "teacher"``: trained toward its neighbourhood under the teacher encoder); so do the
copies of a photograph whose relation is named in ``--teacher-relations``.

    python tools/realphoto_rows.py --labels benchmarks/realphoto/labels_train_extra.jsonl \
        --out runs/extra_rows --copies 20 --augment --seed 13

writes ``OUT/rows.jsonl``; append it to the composed rows for ``relsearch train --data``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from relsearch.corpus.captions import sample_caption

NONE = "none"
SIDE = 448
PLAIN = "a background with nothing arranged on it"
#: relations with no up: a quarter turn keeps them
TURNABLE = {"radial", "close_texture", "repetition"}
#: relations whose axis or centre sits in the middle: crops stay centred
CENTRED = {"symmetry", "radial", "frame_within_frame"}
#: relations whose point is a small part or the empty space around it: only mild crops
WHOLE = {"small_in_vast", "odd_one_out", "size_contrast", "frame_within_frame", "vanishing_point"}


def augment(im: Image.Image, relation: str, rng: np.random.Generator) -> Image.Image:
    """One relation-keeping variant of ``im`` (RGB)."""
    w, h = im.size
    lo = 0.85 if relation in WHOLE else 0.65
    s = float(np.sqrt(rng.uniform(lo, 1.0)))
    cw, ch = max(8, round(w * s)), max(8, round(h * s))
    if relation in CENTRED:
        cw, ch = cw - (w - cw) % 2, ch - (h - ch) % 2  # an even margin keeps the centre on a pixel edge
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    else:
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    im = im.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    if relation in TURNABLE and rng.random() < 0.5:
        im = im.rotate(90 * int(rng.integers(1, 4)), expand=True)
    im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.7, 1.3)))
    im = ImageEnhance.Contrast(im).enhance(float(rng.uniform(0.7, 1.3)))
    im = ImageEnhance.Color(im).enhance(float(rng.uniform(0.4, 1.5)))
    if rng.random() < 0.15:
        im = ImageOps.grayscale(im).convert("RGB")
    if rng.random() < 0.2:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(60, 96)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def fit(im: Image.Image, side: int = SIDE) -> Image.Image:
    im = im.convert("RGB")
    scale = side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BICUBIC)
    return im


def build(labels: Path, out: Path, copies: int, do_augment: bool, seed: int,
          teacher: frozenset[str] = frozenset()) -> list[dict]:
    rows: list[dict] = []
    rng = np.random.default_rng(seed)
    images = out / "images"
    if do_augment:
        images.mkdir(parents=True, exist_ok=True)
    lines = [json.loads(x) for x in labels.read_text(encoding="utf-8").splitlines() if x.strip()]
    for i, lab in enumerate(lines):
        rel, path = lab["relation"], lab["path"]
        base = {"objects": [lab.get("package", "")], "split": "train"}
        if rel == NONE:
            rows.append({**base, "caption": PLAIN, "family": "photo",
                         "group": f"real{i}", "path": path, "target": "teacher"})
            continue
        src = fit(Image.open(path)) if do_augment else None
        for c in range(copies):
            p = path
            if do_augment and c:
                p = str((images / f"real{i:04d}_{c:02d}.jpg").resolve())
                augment(src, rel, rng).save(p, "JPEG", quality=95)
            row = {**base, "caption": sample_caption(rel, rng), "family": rel, "group": f"real{i}_{c}", "path": p}
            if rel in teacher:  # same files (a feature cache stays valid), no caption target
                row.update(caption=PLAIN, family="photo", target="teacher")
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=Path, required=True, help="labels JSONL (path, relation, package)")
    ap.add_argument("--out", type=Path, required=True, help="folder for rows.jsonl (and images/)")
    ap.add_argument("--copies", type=int, default=20, help="rows per photograph with a relation")
    ap.add_argument("--augment", action="store_true", help="each copy after the first is its own variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--teacher-relations", default="",
                    help="comma-separated relations whose photographs become teacher rows, like `none`")
    a = ap.parse_args(argv)
    if a.copies < 1:
        print("error: --copies must be >= 1", file=sys.stderr)
        return 2
    try:
        a.out.mkdir(parents=True, exist_ok=True)
        rows = build(a.labels, a.out, a.copies, a.augment, a.seed,
                     frozenset(x.strip() for x in a.teacher_relations.split(",") if x.strip()))
    except (OSError, ValueError, KeyError) as exc:  # a missing file, bad JSON or a row without a key
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    with open(a.out / "rows.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"{len(rows)} rows -> {a.out / 'rows.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
