"""Relation-making edits of real photographs, and untouched photographs kept apart.

Composed scenes paste clip art over a photograph; the photograph itself never shows a relation.
People's photographs do: a lake mirrors the hills, a road runs to the horizon, a window frames a
street, one boat sits in an empty sea. Each edit here turns a training photograph into a picture
whose structure *is* one such relation (the relations of ``benchmarks/realphoto/relations.json``),
built from the photograph's own pixels, so the relation is the only thing the edits of one
photograph do not share. A group renders one photograph (with a second photograph and one cut-out
thing where an edit needs them) in every edit, plus the untouched crop: the plain photograph,
whose training target is not a caption but its neighbourhood under a pretrained attribute encoder
(``target: teacher``), so ordinary photographs stay apart instead of collapsing onto one
"no relation" point.

Output layout is the composer's (``images/``, ``labels.jsonl``, ``captions.jsonl``, ``summary.json``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from relsearch.corpus.art import crop_photo, paste_clipped, photo_pool, require_photo_things
from relsearch.corpus.captions import TEMPLATES, sample_caption
from relsearch.corpus.realism import degrade, jpeg_bytes
from relsearch.errors import RelsearchError

#: The untouched photograph's family; its rows carry ``"target": "teacher"``.
PLAIN_FAMILY = "photo"
_PICK, _EDIT, _FINISH, _PLAIN = 11, 12, 13, 14


@dataclass(frozen=True)
class Sources:
    """What one group's edits are made of."""

    photo: Image.Image
    other: Image.Image
    thing: Image.Image


def _rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def crop(photo: Image.Image, rng: np.random.Generator, w: int, h: int,
         scale: tuple[float, float] = (0.4, 1.0)) -> Image.Image:
    """A random crop of ``photo`` with the aspect of ``w`` x ``h``, resized to it."""
    return crop_photo(photo, rng, w, h, scale)


def _detail(im: Image.Image) -> float:
    g = np.asarray(im.convert("L").resize((48, 48)), np.float32)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())


def _bilinear(src: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample ``src`` (H, W, 3) at float pixel coordinates (u across, v down), wrapping around."""
    h, w = src.shape[:2]
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = (u - u0)[..., None], (v - v0)[..., None]
    u0, v0, u1, v1 = u0 % w, v0 % h, (u0 + 1) % w, (v0 + 1) % h
    top = src[v0, u0] * (1 - fu) + src[v0, u1] * fu
    bottom = src[v1, u0] * (1 - fu) + src[v1, u1] * fu
    return top * (1 - fv) + bottom * fv


def reflection(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """The scene above a horizon, mirrored upside down in dark rippled water below it."""
    horizon = max((h + 1) // 2, int(h * float(rng.uniform(0.5, 0.68))))
    top = np.asarray(crop(s.photo, rng, w, horizon), np.float32)
    below = top[::-1][: h - horizon]
    shift = (float(rng.uniform(1, 4)) * np.sin(np.arange(len(below)) * float(rng.uniform(0.3, 1.2)))).astype(int)
    below = np.stack([np.roll(row, k, axis=0) for row, k in zip(below, shift)])
    tint = np.array([rng.uniform(20, 50), rng.uniform(40, 70), rng.uniform(60, 90)], np.float32)
    dark = float(rng.uniform(0.55, 0.85))
    below = below * dark + tint * (1 - dark)
    water = _rgb(below).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    out = np.concatenate([top, np.asarray(water, np.float32)])
    return _rgb(out)


def symmetry(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """One half of a photograph and its mirror image about the vertical centre line."""
    half = np.asarray(crop(s.photo, rng, (w + 1) // 2, h), np.float32)
    return _rgb(np.concatenate([half, half[:, ::-1]], axis=1)[:, :w])


def repetition(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Many copies of one thing (or one patch of the photograph) in a regular grid."""
    cols = int(rng.integers(3, 8))
    rows = max(2, round(cols * h / w + float(rng.uniform(-0.5, 0.5))))
    cw, ch = w / cols, h / rows
    if rng.random() < 0.5:
        base = crop(s.other, rng, w, h).convert("RGBA")
        item = s.thing.copy()
        item.thumbnail((int(cw * 0.85), int(ch * 0.85)), Image.BILINEAR)
    else:
        grout = tuple(int(c) for c in rng.integers(0, 255, 3))
        base = Image.new("RGBA", (w, h), grout + (255,))
        gap = float(rng.uniform(0.04, 0.15))
        item = crop(s.photo, rng, max(4, int(cw * (1 - gap))), max(4, int(ch * (1 - gap))), (0.1, 0.3))
        item = item.convert("RGBA")
    for r in range(rows):
        for c in range(cols):
            x = int(c * cw + (cw - item.width) / 2)
            y = int(r * ch + (ch - item.height) / 2)
            paste_clipped(base, item, x, y)
    return base.convert("RGB")


def frame_within_frame(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A dark wall of one photograph with an opening through which another, bright one is seen."""
    wall = np.asarray(crop(s.photo, rng, w, h).filter(ImageFilter.GaussianBlur(3)), np.float32)
    wall = wall * float(rng.uniform(0.2, 0.45))
    view = np.asarray(crop(s.other, rng, w, h), np.float32)
    ow, oh = int(w * float(rng.uniform(0.35, 0.65))), int(h * float(rng.uniform(0.4, 0.7)))
    x0 = int(rng.integers(int(0.1 * w), w - ow - int(0.1 * w) + 1))
    y0 = int(rng.integers(int(0.1 * h), h - oh - int(0.05 * h) + 1))
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    arch = rng.random() < 0.4 and oh > ow  # an arch: a half disc on top of the opening
    draw.rectangle((x0, y0 + (ow // 2 if arch else 0), x0 + ow, y0 + oh), fill=255)
    if arch:
        draw.pieslice((x0, y0, x0 + ow, y0 + ow), 180, 360, fill=255)
    m = np.asarray(mask, np.float32)[..., None] / 255
    out = _rgb(wall * (1 - m) + view * m)
    edge = mask.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(5))
    frame = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(20, 200, 3)))
    out.paste(frame, (0, 0), edge)
    return out


def small_in_vast(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """One tiny thing alone in a wide empty expanse (the photograph's colours, blurred to nothing)."""
    base = crop(s.photo, rng, w, h).filter(ImageFilter.GaussianBlur(float(rng.uniform(12, 30))))
    arr = np.asarray(base, np.float32)
    arr = arr.mean((0, 1)) * 0.6 + arr * 0.4 + np.linspace(-15, 15, h)[:, None, None]
    canvas = _rgb(arr).convert("RGBA")
    item = s.thing.copy()
    side = int(min(w, h) * float(rng.uniform(0.08, 0.16)))
    item.thumbnail((side, side), Image.BILINEAR)
    x = int(rng.uniform(0.1, 0.9) * (w - item.width))
    y = int(rng.uniform(0.3, 0.85) * (h - item.height))
    paste_clipped(canvas, item, x, y)
    return canvas.convert("RGB")


def radial(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A slice of the photograph repeated around a centre: rays or petals spreading outward."""
    petals = int(rng.integers(6, 17))
    strip = np.asarray(crop(s.photo, rng, 64, 256, (0.2, 0.6)), np.float32)
    cx, cy = w * float(rng.uniform(0.35, 0.65)), h * float(rng.uniform(0.35, 0.65))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = (np.arctan2(yy - cy, xx - cx) / (2 * np.pi) + 0.5) * petals
    frac = angle - np.floor(angle)
    u = np.abs(frac - 0.5) * 2 * (strip.shape[1] - 1)  # each petal mirrored: no seam between petals
    radius = np.hypot(xx - cx, yy - cy) / np.hypot(w, h)
    v = np.minimum(radius * 2 * (strip.shape[0] - 1), strip.shape[0] - 1.001)
    return _rgb(_bilinear(strip, u, v))


def vanishing_point(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A ground plane of the photograph's texture with straight lanes converging to one point."""
    vy = int(h * float(rng.uniform(0.3, 0.5)))
    vx = w * float(rng.uniform(0.3, 0.7))
    sky = np.asarray(crop(s.other, rng, w, max(1, vy)), np.float32)
    tex = np.asarray(crop(s.photo, rng, 128, 128, (0.2, 0.5)), np.float32).copy()
    lanes = int(rng.integers(2, 7))
    colour = rng.uniform(150, 255, 3) if rng.random() < 0.6 else rng.uniform(0, 60, 3)
    for k in range(lanes):
        x = int((k + 0.5) * 128 / lanes)
        tex[:, x : x + 6] = colour
    ys = np.arange(vy, h, dtype=np.float32)[:, None] - vy + 1.0
    depth = h / ys
    xs = np.arange(w, dtype=np.float32)[None, :] - vx
    u = xs * depth * 0.35 + 64
    v = np.broadcast_to(depth * 40, u.shape)
    ground = _bilinear(tex, u, v)
    ground = ground * np.clip(ys / (h - vy), 0.35, 1.0)[..., None] ** 0.5
    if rng.random() < 0.35:  # a corridor: a ceiling mirroring the floor
        sky = ground[::-1][-vy:] * 0.8 if len(ground) >= vy else sky
    return _rgb(np.concatenate([sky, ground]))


def silhouette(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Black shapes of things and land against a bright sky."""
    sky = np.asarray(crop(s.photo, rng, w, h).filter(ImageFilter.GaussianBlur(6)), np.float32)
    glow = np.array([255, rng.uniform(140, 230), rng.uniform(40, 160)], np.float32)
    t = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    mix = float(rng.uniform(0.4, 0.8))
    sky = (sky * 0.4 + 150) * (1 - mix) + glow * mix * (0.6 + 0.4 * t)
    canvas = _rgb(sky)
    ground = int(h * float(rng.uniform(0.75, 0.92)))
    hills = ground + (np.sin(np.arange(w) * float(rng.uniform(0.01, 0.05))) * h * 0.04).astype(int)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([(0, h)] + [(x, int(y)) for x, y in enumerate(hills)] + [(w, h)], fill=(8, 8, 10))
    item = s.thing.copy()
    item.thumbnail((int(w * float(rng.uniform(0.25, 0.5))), int(h * float(rng.uniform(0.35, 0.6)))),
                   Image.BILINEAR)
    black = Image.new("RGB", item.size, (8, 8, 10))
    x = int(rng.integers(0, max(1, w - item.width)))
    canvas.paste(black, (x, max(0, ground - item.height + 4)), item.getchannel("A"))
    return canvas


def horizontal_bands(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Three to five layers of different photographs' textures stacked from bottom to top."""
    n = int(rng.integers(3, 6))
    cuts = np.sort(rng.uniform(0.12, 0.88, n - 1))
    edges = [0, *(int(c * h) for c in cuts), h]
    bands = []
    for i in range(n):
        bh = max(1, edges[i + 1] - edges[i])
        src = s.photo if i % 2 == 0 else s.other
        band = crop(src, rng, w, bh, (0.3, 0.9)) if bh * 4 < w else crop(src, rng, w, bh)
        bands.append(np.asarray(band.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2.5)))), np.float32))
    return _rgb(np.concatenate(bands)).resize((w, h))  # two cuts in one row would add a row


def close_texture(s: Sources, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A small, detailed patch of the photograph enlarged until it fills the frame."""
    tries = [crop(s.photo, rng, w // 3, h // 3, (0.05, 0.15)) for _ in range(6)]
    patch = max(tries, key=_detail)
    return patch.resize((w, h), Image.BICUBIC).filter(ImageFilter.UnsharpMask(2, 120, 2))


EDITS: dict[str, Callable[[Sources, np.random.Generator, int, int], Image.Image]] = {
    "reflection": reflection,
    "symmetry": symmetry,
    "repetition": repetition,
    "frame_within_frame": frame_within_frame,
    "small_in_vast": small_in_vast,
    "radial": radial,
    "vanishing_point": vanishing_point,
    "silhouette": silhouette,
    "horizontal_bands": horizontal_bands,
    "close_texture": close_texture,
}
PHOTO_FAMILIES = tuple(EDITS)


def _canvas_size(rng: np.random.Generator) -> tuple[int, int]:
    long_side = int(rng.integers(288, 417))
    aspect = float(rng.choice((0.67, 0.75, 1.0, 1.33, 1.5, 1.78)))
    return (long_side, int(long_side / aspect)) if aspect >= 1 else (int(long_side * aspect), long_side)


def _finish(im: Image.Image, rng: np.random.Generator) -> bytes:
    if rng.random() < 0.5:
        im = degrade(im, rng)
    return jpeg_bytes(im, rng)


def render_group(seed: int, group: int, photos: list[Image.Image], things: list[Image.Image],
                 out_dir: Path) -> list[dict]:
    """Every edit of one training photograph, plus its untouched crop; returns label rows."""
    pick = np.random.default_rng([seed, group, _PICK])
    i, j = pick.choice(len(photos), 2, replace=False)
    sources = Sources(photos[i], photos[j], things[int(pick.integers(len(things)))])
    size = _canvas_size(pick)
    rows = []
    for k, family in enumerate((*PHOTO_FAMILIES, PLAIN_FAMILY)):
        rng = np.random.default_rng([seed, group, k, _EDIT])
        if family == PLAIN_FAMILY:
            image, caption = crop(sources.photo, rng, *size, (0.5, 1.0)), TEMPLATES["none"][0]
        else:
            image, caption = EDITS[family](sources, rng, *size), sample_caption(family, rng)
        name = f"images/{group:05d}_{k:02d}.jpg"
        (out_dir / name).write_bytes(_finish(image, np.random.default_rng([seed, group, k, _FINISH])))
        row = {"path": name, "family": family, "caption": caption, "group": str(group),
               "objects": [f"photo{int(i)}"], "split": "train"}
        if family == PLAIN_FAMILY:
            row["target"] = "teacher"
        rows.append(row)
    return rows


def render_plain(seed: int, n: int, photos: list[Image.Image], out_dir: Path) -> dict:
    """One more untouched crop of a training photograph (no group: it stands alone in a batch)."""
    rng = np.random.default_rng([seed, n, _PLAIN])
    i = int(rng.integers(len(photos)))
    image = crop(photos[i], rng, *_canvas_size(rng), (0.3, 1.0))
    name = f"images/plain_{n:05d}.jpg"
    (out_dir / name).write_bytes(_finish(image, rng))
    return {"path": name, "family": PLAIN_FAMILY, "caption": TEMPLATES["none"][0], "objects": [f"photo{i}"],
            "split": "train", "target": "teacher"}


_WORK: tuple | None = None


def _task(task: tuple[str, int]) -> list[dict]:
    assert _WORK is not None
    seed, photos, things, out_dir = _WORK
    kind, n = task
    return render_group(seed, n, photos, things, out_dir) if kind == "group" else [render_plain(seed, n, photos, out_dir)]


def compose_photo_edits(out_dir: str | Path, n_groups: int, n_plain: int = 0, seed: int = 0,
                        workers: int = 1) -> dict:
    """Write ``n_groups`` edit groups and ``n_plain`` standalone plain crops of the training photographs."""
    if n_groups < 0 or n_plain < 0 or n_groups + n_plain == 0:
        raise RelsearchError("photo edits need --groups N (and/or --plain N) > 0")
    photos = photo_pool("train")
    if len(photos) < 2:
        raise RelsearchError("photo edits need the training wallpaper photographs: run tools/setup_realphoto.sh")
    things = require_photo_things()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "labels.jsonl").is_file():
        raise RelsearchError(f"output folder is not empty and holds no corpus: {out}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    global _WORK
    _WORK = (seed, photos, things, out)
    tasks = [("group", g) for g in range(n_groups)] + [("plain", n) for n in range(n_plain)]
    if workers > 1:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = list(pool.imap(_task, tasks, chunksize=4))
    else:
        parts = [_task(t) for t in tasks]
    rows = [r for part in parts for r in part]
    with open(out / "labels.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    summary = {"out_dir": str(out), "images": len(rows), "groups": n_groups, "plain": n_plain, "seed": seed,
               "families": dict(sorted(Counter(r["family"] for r in rows).items()))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
