"""Compose a relational corpus: sample scenes, render them (optionally in parallel), write labels.

Output layout of ``out_dir``::

    images/000000.jpg ...   (or .png)
    labels.jsonl     {"path", "family", "objects", "split", "group", "caption"} per image
    captions.jsonl   {"image", "caption"} per image (the trainer's caption format)
    summary.json     what was composed, with the render rate

Every scene is a pure function of (seed, its index, its group), so the output is byte-identical
for a seed whatever the number of worker processes.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from relsearch.corpus.art import (
    BACKGROUND_KINDS,
    PHOTO_POOLS,
    SPLITS,
    ArtLibrary,
    ArtObject,
    add_photo_things,
    render_background,
    render_photo_background,
)
from relsearch.corpus.captions import TEMPLATES, sample_caption
from relsearch.corpus.families import FAMILIES, MAX_OBJECTS, NONE_FAMILY, RENDERERS
from relsearch.corpus.realism import Style, degrade, draw_style, drawing_style, jpeg_bytes
from relsearch.errors import RelsearchError

# Stream tags keep the random streams of different uses independent.
_CANVAS, _SCENE, _OBJECTS, _BACKGROUND, _GROUP, _STYLE, _FINISH, _THINGS = 1, 2, 3, 4, 5, 6, 7, 8
MAX_ASPECT = 1.75
IMAGE_FORMATS = ("jpg", "png")
#: Background modes: "default" (plain, gradient, texture or a washed-out sample photo, the first
#: corpus's mix), "plain" (no photos), "photo" (wallpaper photographs only), "mixed" (wallpaper
#: photographs for about half the scenes, the default mix for the rest).
BACKGROUND_MODES = ("default", "plain", "photo", "mixed")
PHOTO_SHARE_MIXED = 0.55
# PNG encoding costs more than drawing a scene; JPEG at quality 95 is far cheaper and smaller,
# with artefacts far below what the relations depend on.
JPEG_QUALITY = 95
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class ComposeConfig:
    """What to compose; validated on construction."""

    out_dir: Path
    n_per_family: int
    split: str
    seed: int
    grouped: bool = False
    n_groups: int = 0
    art_dirs: tuple[str, ...] | None = None
    distractors: int = 0
    size_range: tuple[int, int] = (192, 384)
    workers: int = 1
    families: tuple[str, ...] = field(default=FAMILIES)
    image_format: str = "jpg"
    #: see :data:`BACKGROUND_MODES`
    backgrounds: str = "default"
    #: which wallpaper packages photographs come from: "train" or "eval" (never in training)
    photos: str = "train"
    #: the nuisances of real files: drop shadows, objects cut by the frame, resize, blur, noise,
    #: colour casts, JPEG at varied quality
    realism: bool = False
    #: photographed things (cut-out photographs) stand in each photograph, under the scene's
    #: objects; photo backgrounds only
    things: bool = False

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.n_per_family < 0:
            raise ValueError(f"n_per_family must be >= 0, got {self.n_per_family}")
        if self.n_groups < 0:
            raise ValueError(f"n_groups must be >= 0, got {self.n_groups}")
        if self.grouped and self.n_groups == 0 and self.n_per_family == 0:
            raise ValueError("grouped mode needs n_groups > 0")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")
        lo, hi = self.size_range
        if not 32 <= lo <= hi <= 4096:
            raise ValueError(f"size_range must satisfy 32 <= lo <= hi <= 4096, got {self.size_range}")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {self.image_format!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.backgrounds not in BACKGROUND_MODES:
            raise ValueError(f"backgrounds must be one of {BACKGROUND_MODES}, got {self.backgrounds!r}")
        if self.photos not in PHOTO_POOLS:
            raise ValueError(f"photos must be one of {tuple(PHOTO_POOLS)}, got {self.photos!r}")
        if self.things and self.backgrounds != "photo":
            raise ValueError("things stand in photographs: they need photo backgrounds (--backgrounds photo)")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"unknown families {unknown}; choose from {FAMILIES}")

    @property
    def groups(self) -> int:
        return (self.n_groups or self.n_per_family) if self.grouped else 0


@dataclass(frozen=True)
class SceneTask:
    index: int
    family: str
    # Non-grouped scenes own their canvas, background and objects; grouped scenes share them.
    key: tuple[int, ...]
    group: int | None


class _LazyObjects:
    """``take(n)``: the first n objects of a scene, drawn one batch at a time on demand."""

    def __init__(self, library: ArtLibrary, rng: np.random.Generator, split: str) -> None:
        self._library, self._rng, self._split = library, rng, split
        self._objects: list[ArtObject] = []

    def __call__(self, n: int) -> list[ArtObject]:
        if n > len(self._objects):
            self._objects += self._library.draw(
                self._rng, self._split, n - len(self._objects), exclude=self._objects
            )
        return self._objects[:n]


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _canvas_size(rng: np.random.Generator, size_range: tuple[int, int]) -> tuple[int, int]:
    lo, hi = size_range
    w = int(rng.integers(lo, hi + 1))
    h = int(rng.integers(lo, hi + 1))
    h = int(np.clip(h, max(lo, w / MAX_ASPECT), min(hi, w * MAX_ASPECT)))
    return w, h


def _background(cfg: ComposeConfig, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    if cfg.backgrounds == "default":
        return render_background(rng, w, h)
    if cfg.backgrounds == "plain":
        return render_background(rng, w, h, kinds=BACKGROUND_KINDS[:3])
    if cfg.backgrounds == "photo" or rng.random() < PHOTO_SHARE_MIXED:
        return render_photo_background(rng, w, h, cfg.photos)
    return render_background(rng, w, h)


def _scene_setup(
    cfg: ComposeConfig, library: ArtLibrary, task: SceneTask
) -> tuple[Image.Image, _LazyObjects]:
    """Canvas with background, and the object source, for one scene."""
    key = (_GROUP, task.group) if task.group is not None else task.key
    w, h = _canvas_size(_rng(cfg.seed, _CANVAS, *key), cfg.size_range)
    canvas = _background(cfg, _rng(cfg.seed, _BACKGROUND, *key), w, h)
    if cfg.things:
        add_photo_things(canvas, _rng(cfg.seed, _THINGS, *key))
    take = _LazyObjects(library, _rng(cfg.seed, _OBJECTS, *key), cfg.split)
    if task.group is not None:
        take(MAX_OBJECTS)  # a group's object list is fixed up front, same for all its scenes
    return canvas, take


def _caption(family: str, objects: list[str], rng: np.random.Generator) -> str:
    if family != NONE_FAMILY:
        return sample_caption(family, rng)
    options = TEMPLATES[NONE_FAMILY]
    # Match the caption to what a no-relation scene shows: nothing, one object, or a scatter.
    if not objects:
        pool = [t for t in options if "{" not in t]
    elif len(objects) == 1:
        pool = [t for t in options if "alone" in t]
    else:
        pool = [t for t in options if "scattered" in t]
    return pool[int(rng.integers(len(pool)))]


def render_scene(cfg: ComposeConfig, library: ArtLibrary, task: SceneTask) -> dict:
    """Render one scene to ``images/`` and return its label record."""
    canvas, take = _scene_setup(cfg, library, task)
    rng = _rng(cfg.seed, _SCENE, *task.key)
    # Realism draws from streams of its own: the relation, objects and layout stay the same.
    style = draw_style(_rng(cfg.seed, _STYLE, *task.key)) if cfg.realism else Style()
    with drawing_style(style):
        objects = RENDERERS[task.family](canvas, take, rng)
    caption = _caption(task.family, objects, rng)
    rel = f"images/{task.index:06d}.{cfg.image_format}"
    buf = io.BytesIO()
    if cfg.realism:
        finish = _rng(cfg.seed, _FINISH, *task.key)
        image = degrade(canvas, finish)
        if cfg.image_format == "png":
            image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        else:
            buf.write(jpeg_bytes(image, finish))
    elif cfg.image_format == "png":
        canvas.convert("RGB").save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        canvas.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    (cfg.out_dir / rel).write_bytes(buf.getvalue())
    return {
        "path": rel,
        "family": task.family,
        "objects": objects,
        "split": cfg.split,
        "group": task.group,
        "caption": caption,
    }


def plan_scenes(cfg: ComposeConfig) -> list[SceneTask]:
    """The ordered list of scenes a config composes (families interleaved)."""
    tasks: list[SceneTask] = []
    fam_ids = {f: FAMILIES.index(f) for f in cfg.families}
    if cfg.grouped:
        for g in range(cfg.groups):
            for f in cfg.families:
                tasks.append(SceneTask(len(tasks), f, (_GROUP, g, fam_ids[f]), g))
        for d in range(cfg.distractors):
            g = d % cfg.groups
            tasks.append(SceneTask(len(tasks), NONE_FAMILY, (_GROUP, g, 100 + d), g))
    else:
        for i in range(cfg.n_per_family):
            for f in cfg.families:
                tasks.append(SceneTask(len(tasks), f, (0, fam_ids[f], i), None))
        for d in range(cfg.distractors):
            tasks.append(SceneTask(len(tasks), NONE_FAMILY, (0, 100, d), None))
    return tasks


# Worker state: set before forking (inherited) or by the pool initializer (spawn).
_WORKER: tuple[ComposeConfig, ArtLibrary] | None = None


def _init_worker(cfg: ComposeConfig) -> None:
    global _WORKER
    if _WORKER is None or _WORKER[0] != cfg:
        _WORKER = (cfg, ArtLibrary(cfg.art_dirs))


def _render_in_worker(task: SceneTask) -> dict:
    assert _WORKER is not None
    cfg, library = _WORKER
    return render_scene(cfg, library, task)


def compose(
    out_dir: str | Path,
    n_per_family: int,
    split: str,
    seed: int,
    grouped: bool = False,
    n_groups: int = 0,
    art_dirs: Sequence[str | Path] | None = None,
    distractors: int = 0,
    size_range: tuple[int, int] = (192, 384),
    workers: int = 1,
    families: Sequence[str] | None = None,
    image_format: str = "jpg",
    backgrounds: str = "default",
    photos: str = "train",
    realism: bool = False,
    things: bool = False,
) -> dict:
    """Compose a corpus into ``out_dir`` and return a summary dict.

    ``n_per_family`` scenes of every family (or, with ``grouped``, ``n_groups`` groups, each
    rendered once in every family with one shared object set, background and canvas), plus
    ``distractors`` scenes of family ``"none"``. Objects come from ``split`` of the art identities
    ("all" ignores the split, for art folders never used in training). ``art_dirs`` replaces the
    default openclipart tree. Images are written as ``image_format`` ("jpg" or "png").
    ``backgrounds`` picks the background mode (:data:`BACKGROUND_MODES`), ``photos`` the wallpaper
    pool ("train", or "eval" for sets never used in training), ``realism`` the nuisances of real
    files (shadows, cut edges, resize, blur, noise, colour casts, JPEG at varied quality), ``things``
    photographed things standing in the photographs (a group's scenes share them, like the photograph).
    Output is byte-identical for a seed, whatever ``workers``.
    """
    try:
        cfg = ComposeConfig(
            out_dir=Path(out_dir),
            n_per_family=n_per_family,
            split=split,
            seed=seed,
            grouped=grouped,
            n_groups=n_groups,
            art_dirs=tuple(str(d) for d in art_dirs) if art_dirs else None,
            distractors=distractors,
            size_range=(int(size_range[0]), int(size_range[1])),
            workers=workers,
            families=tuple(families) if families else FAMILIES,
            image_format=image_format,
            backgrounds=backgrounds,
            photos=photos,
            realism=realism,
            things=things,
        )
    except ValueError as exc:
        raise RelsearchError(str(exc)) from exc
    library = ArtLibrary(cfg.art_dirs)
    check_sources(cfg, library)
    (cfg.out_dir / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records = render_all(cfg, library, plan_scenes(cfg))
    return write_corpus(cfg, records, time.perf_counter() - start)


def check_sources(cfg: ComposeConfig, library: ArtLibrary) -> None:
    """Fail before rendering anything: an empty split, missing photographs or things, a foreign folder."""
    library.ids(cfg.split)  # fail early on an empty split
    if cfg.backgrounds in ("photo", "mixed"):
        from relsearch.corpus.art import photo_pool

        if not photo_pool(cfg.photos):  # fail early, and decode the photos once before forking
            missing = " ".join(PHOTO_POOLS[cfg.photos])
            raise RelsearchError(f"no wallpaper photos in pool {cfg.photos!r}: apt-get install {missing}")
    if cfg.things:
        from relsearch.corpus.art import require_photo_things

        require_photo_things()  # likewise
    if cfg.out_dir.exists() and any(cfg.out_dir.iterdir()):
        if not (cfg.out_dir / "labels.jsonl").is_file():
            raise RelsearchError(f"output folder is not empty and holds no corpus: {cfg.out_dir}")


def render_all(cfg: ComposeConfig, library: ArtLibrary, tasks: list) -> list[dict]:
    """Render every planned scene, in ``cfg.workers`` processes; label rows in plan order."""
    global _WORKER
    _WORKER = (cfg, library)
    if cfg.workers > 1 and len(tasks) > 1:
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with mp.get_context(method).Pool(cfg.workers, _init_worker, (cfg,)) as pool:
            return list(pool.imap(_render_in_worker, tasks, chunksize=8))
    return [render_scene(cfg, library, t) for t in tasks]


def write_corpus(cfg: ComposeConfig, records: list[dict], seconds: float) -> dict:
    """Write ``labels.jsonl``, ``captions.jsonl`` and ``summary.json``; return the summary."""
    with open(cfg.out_dir / "labels.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, sort_keys=True) + "\n")
    with open(cfg.out_dir / "captions.jsonl", "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps({"image": r["path"], "caption": r["caption"]}) + "\n")
    summary = {
        "out_dir": str(cfg.out_dir),
        "images": len(records),
        "families": dict(sorted(Counter(r["family"] for r in records).items())),
        "objects": len({o for r in records for o in r["objects"]}),
        "split": cfg.split,
        "seed": cfg.seed,
        "grouped": cfg.grouped,
        "groups": cfg.groups,
        "size_range": list(cfg.size_range),
        "image_format": cfg.image_format,
        "backgrounds": cfg.backgrounds,
        "photos": cfg.photos,
        "realism": cfg.realism,
        "things": cfg.things,
        "workers": cfg.workers,
        "seconds": round(seconds, 3),
        "scenes_per_second": round(len(records) / seconds, 1) if seconds > 0 else None,
    }
    # Timing differs run to run; keep it out of the deterministic files.
    stable = {
        k: v for k, v in summary.items() if k not in ("seconds", "scenes_per_second", "workers", "out_dir")
    }
    (cfg.out_dir / "summary.json").write_text(json.dumps(stable, indent=2, sort_keys=True) + "\n")
    return summary
