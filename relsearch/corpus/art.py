"""Art sources for composed scenes: object art (clip art, any image folder) and backgrounds.

An object identity is one image file. Objects are cropped to their alpha bounding box and
downscaled once, then kept in memory; images without transparency get a simple flat-background
removal, or stay rectangular tiles when their border is not flat. Identities are split into
train / val / test by a hash of the identity, so the split of an object never depends on which
other files sit beside it.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from relsearch.atomic import atomic_write
from relsearch.errors import RelsearchError

OPENCLIPART_DIR = Path("/usr/share/openclipart/png")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test", "all")
# Percent buckets of the identity hash: 80 / 10 / 10.
_SPLIT_BUCKETS = {"train": (0, 80), "val": (80, 90), "test": (90, 100), "all": (0, 100)}
# Folders of openclipart that hold fills and textures rather than objects.
_SKIP_FOLDERS = frozenset({"gradients", "patterns"})
# Some leaf folders hold hundreds of near-identical files (1,378 star variants): cap each
# folder so one shape does not dominate the object pool.
MAX_PER_FOLDER = 150
MAX_SIDE = 224
MAX_PIXELS = 12_000_000
# Decoded objects kept in memory per process; the disk cache holds the rest.
MEMORY_CACHE = 1500


@dataclass(frozen=True)
class ArtObject:
    """One object identity, cropped to its visible pixels.

    ``fill`` is the share of the bounding box that is opaque (containers and covers read better
    when it is high); ``asym_x`` / ``asym_y`` measure how much the silhouette changes under a
    left-right / top-bottom flip (a mirror of a symmetric object looks like a plain copy).
    """

    ident: str
    image: Image.Image  # RGBA
    fill: float
    asym_x: float
    asym_y: float

    @property
    def aspect(self) -> float:
        return self.image.width / self.image.height


def split_of(ident: str) -> str:
    """The split ("train", "val" or "test") an object identity belongs to."""
    bucket = int(hashlib.sha1(ident.encode("utf-8")).hexdigest()[:8], 16) % 100
    for name in ("train", "val", "test"):
        lo, hi = _SPLIT_BUCKETS[name]
        if lo <= bucket < hi:
            return name
    raise AssertionError(bucket)  # pragma: no cover - buckets cover 0..99


def _list_images(root: Path, skip_folders: frozenset[str]) -> list[str]:
    by_folder: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_folders)
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                by_folder.setdefault(rel_dir, []).append(rel.replace(os.sep, "/"))
    out: list[str] = []
    for folder in sorted(by_folder):
        files = by_folder[folder]
        if len(files) > MAX_PER_FOLDER:
            # Keep a hash-ordered subset: deterministic and not biased to the alphabet.
            files = sorted(files, key=lambda f: hashlib.sha1(f.encode()).hexdigest())[:MAX_PER_FOLDER]
        out.extend(sorted(files))
    return out


def _remove_flat_background(rgb: np.ndarray) -> np.ndarray:
    """Alpha for an opaque image: cut a flat border colour away, else keep the whole tile."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.float32)
    if border.std(axis=0).max() > 14.0:
        return np.full(rgb.shape[:2], 255, np.uint8)
    bg = np.median(border, axis=0)
    dist = np.abs(rgb.astype(np.float32) - bg).max(axis=2)
    return (np.clip((dist - 18.0) / 24.0, 0.0, 1.0) * 255).astype(np.uint8)


def load_object(path: Path, ident: str, max_side: int = MAX_SIDE) -> ArtObject | None:
    """Decode, crop to the visible bounding box and downscale; None when unusable."""
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if im.width * im.height > MAX_PIXELS:
                return None  # a poster-sized file: too slow to decode for one small object
            im.draft("RGB", (max_side * 2, max_side * 2))  # JPEG: decode at reduced size
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            rgba = np.asarray(im.convert("RGBA"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if rgba.ndim != 3 or min(rgba.shape[:2]) < 8:
        return None
    alpha = rgba[..., 3]
    if not has_alpha or alpha.min() == 255:
        alpha = _remove_flat_background(rgba[..., :3])
    visible = alpha > 24
    if visible.sum() < 400:
        return None  # near-empty
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = y1 - y0, x1 - x0
    if min(h, w) < 24 or max(h / w, w / h) > 4.0:
        return None  # tiny or a thin sliver
    if float(visible[y0:y1, x0:x1].mean()) < 0.08:
        return None
    crop = rgba[y0:y1, x0:x1].copy()
    crop[..., 3] = alpha[y0:y1, x0:x1]
    image = Image.fromarray(crop, "RGBA")
    # Every object is brought to the same longest side, so the checks below and the drawing
    # sizes in scenes do not depend on the source resolution.
    scale = max_side / max(h, w)
    resample = Image.BILINEAR if scale < 1.0 else Image.BICUBIC
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    # Line drawings (outlines, hatching) vanish when eroded; they make poor objects at the
    # sizes scenes draw them, so keep only shapes with a solid body.
    eroded = np.asarray(image.getchannel("A").filter(ImageFilter.MinFilter(5))) > 128
    if eroded.mean() < 0.12:
        return None
    return _describe(image, ident)


def _describe(image: Image.Image, ident: str) -> ArtObject:
    a = np.asarray(image)[..., 3] > 24
    fill = float(a.mean())
    denom = max(1, int(a.sum()))
    asym_x = float((a ^ a[:, ::-1]).sum() / denom)
    asym_y = float((a ^ a[::-1, :]).sum() / denom)
    return ArtObject(ident=ident, image=image, fill=fill, asym_x=asym_x, asym_y=asym_y)


class ArtLibrary:
    """Object identities from one or more folders, loaded lazily and kept in memory.

    With no folders given, the Debian ``openclipart-png`` tree is used. Identities are
    ``<source>/<relative path>``, where the source is ``openclipart`` for the default tree and the
    folder's name otherwise.
    """

    def __init__(
        self,
        art_dirs: Sequence[str | Path] | None = None,
        max_side: int = MAX_SIDE,
        cache_dir: str | Path | None = None,
    ):
        dirs = [Path(d) for d in art_dirs] if art_dirs else [OPENCLIPART_DIR]
        self.max_side = max_side
        self._paths: dict[str, Path] = {}
        for d in dirs:
            if not d.is_dir():
                hint = " (install the Debian package openclipart-png)" if d == OPENCLIPART_DIR else ""
                raise RelsearchError(f"art folder not found: {d}{hint}")
            source = "openclipart" if d.resolve() == OPENCLIPART_DIR.resolve() else d.resolve().name
            skip = _SKIP_FOLDERS if source == "openclipart" else frozenset()
            for rel in _list_images(d, skip):
                self._paths[f"{source}/{rel}"] = d / rel
        if not self._paths:
            raise RelsearchError(f"no images found in art folders: {', '.join(map(str, dirs))}")
        self._ids = sorted(self._paths)
        self._cache: OrderedDict[str, ArtObject | None] = OrderedDict()
        self._disk = _resolve_cache_dir(cache_dir, max_side)
        self._by_split: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, split: str) -> list[str]:
        """Candidate identities of a split (before the usability checks of :meth:`get`)."""
        if split not in SPLITS:
            raise RelsearchError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        if split not in self._by_split:
            self._by_split[split] = (
                list(self._ids) if split == "all" else [i for i in self._ids if split_of(i) == split]
            )
        return self._by_split[split]

    def get(self, ident: str) -> ArtObject | None:
        """The prepared object, or None when the file is unusable as an object."""
        if ident in self._cache:
            self._cache.move_to_end(ident)
            return self._cache[ident]
        obj = self._load(ident)
        self._cache[ident] = obj
        if len(self._cache) > MEMORY_CACHE:
            self._cache.popitem(last=False)
        return obj

    def _load(self, ident: str) -> ArtObject | None:
        path = self._paths[ident]
        if self._disk is None:
            return load_object(path, ident, self.max_side)
        st = path.stat()
        key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
        cached = self._disk / f"{key}.png"
        if cached.is_file():
            if cached.stat().st_size == 0:
                return None  # known unusable
            try:
                with Image.open(cached) as im:
                    return _describe(im.convert("RGBA"), ident)
            except OSError:
                pass  # a damaged cache entry: rebuild it
        obj = load_object(path, ident, self.max_side)
        try:
            self._disk.mkdir(parents=True, exist_ok=True)
            # atomic: parallel workers may write the same entry; a rebuildable cache needs no fsync
            with atomic_write(cached, durable=False) as f:
                if obj is not None:
                    obj.image.save(f, format="PNG", compress_level=1)
        except OSError:
            pass  # a read-only cache only costs speed
        return obj

    def draw(
        self,
        rng: np.random.Generator,
        split: str,
        n: int,
        exclude: Sequence[ArtObject] = (),
    ) -> list[ArtObject]:
        """``n`` usable objects of ``split`` not in ``exclude``, drawn with ``rng``.

        Deterministic for a given generator state. When a small art folder runs out of distinct
        usable objects, identities repeat rather than fail.
        """
        pool = self.ids(split)
        if not pool:
            raise RelsearchError(f"no art objects in split {split!r}; try --split all")
        taken = {o.ident for o in exclude}
        chosen: list[ArtObject] = []
        tries = 0
        while len(chosen) < n:
            tries += 1
            if tries > 60 * n + 200:
                have = list(exclude) + chosen
                if not have:
                    raise RelsearchError(f"no usable art objects in split {split!r}")
                chosen.append(have[len(chosen) % len(have)])
                continue
            ident = pool[int(rng.integers(len(pool)))]
            if ident in taken:
                continue
            obj = self.get(ident)
            if obj is not None:
                taken.add(ident)
                chosen.append(obj)
        return chosen


def _resolve_cache_dir(cache_dir: str | Path | None, max_side: int) -> Path | None:
    """Disk cache of prepared objects: argument, else $RELSEARCH_ART_CACHE, else ~/.cache.

    The value "off" disables it.
    """
    raw = str(cache_dir) if cache_dir is not None else os.environ.get("RELSEARCH_ART_CACHE")
    if raw is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        raw = str(base / "relsearch" / "art")
    if raw.lower() == "off":
        return None
    return Path(raw).expanduser() / f"v1-{max_side}"


# ---------------------------------------------------------------------------------------------
# Backgrounds


def _photo_dir() -> Path | None:
    """Bundled scikit-image sample photos, when scikit-image is installed (no download)."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("skimage")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "data"
    return d if d.is_dir() else None


_PHOTO_NAMES = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "hubble_deep_field.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "camera.png",
    "text.png",
    "page.png",
)
_photos: list[Image.Image] | None = None


def background_photos() -> list[Image.Image]:
    """Photos usable as background crops (empty when scikit-image is absent)."""
    global _photos
    if _photos is None:
        d = _photo_dir()
        found: list[Image.Image] = []
        if d is not None:
            for name in _PHOTO_NAMES:
                p = d / name
                if p.is_file():
                    with Image.open(p) as im:
                        im = im.convert("RGB")
                        im.thumbnail((640, 640), Image.BILINEAR)
                        found.append(im)
        _photos = found
    return _photos


BACKGROUND_KINDS = ("plain", "gradient", "texture", "photo")


def _random_colour(rng: np.random.Generator, light: bool | None = None) -> np.ndarray:
    if light is None:
        light = bool(rng.random() < 0.7)
    lo, hi = (150, 256) if light else (20, 140)
    return rng.integers(lo, hi, size=3).astype(np.float32)


def render_background(
    rng: np.random.Generator, width: int, height: int, kinds: Sequence[str] = BACKGROUND_KINDS
) -> Image.Image:
    """A random plain, gradient, texture or photo-crop background (RGBA, opaque).

    ``kinds`` limits the kinds drawn from; "photo" needs scikit-image's sample photos.
    """
    photos = background_photos() if "photo" in kinds else []
    kinds = tuple(kinds) if photos else tuple(k for k in kinds if k != "photo")
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "plain":
        arr = np.broadcast_to(_random_colour(rng), (height, width, 3))
    elif kind == "gradient":
        c0, c1 = _random_colour(rng), _random_colour(rng)
        theta = rng.uniform(0, 2 * np.pi)
        xs = np.arange(width, dtype=np.float32)[None, :] * np.float32(np.cos(theta) / width)
        ys = np.arange(height, dtype=np.float32)[:, None] * np.float32(np.sin(theta) / height)
        t = xs + ys
        t = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        arr = c0 + (c1 - c0) * t[..., None]
    elif kind == "texture":
        base = _random_colour(rng)
        cells = int(rng.integers(3, 24))
        amp = rng.uniform(10, 45)
        coarse = rng.normal(0, amp, size=(cells, cells, 3)).astype(np.float32)
        low = np.asarray(
            Image.fromarray(np.clip(base + coarse, 0, 255).astype(np.uint8)).resize(
                (width, height), Image.BICUBIC
            ),
            np.float32,
        )
        grain = rng.standard_normal((height, width, 1), dtype=np.float32) * rng.uniform(0, 12)
        arr = low + grain
    else:
        photo = photos[int(rng.integers(len(photos)))]
        scale = rng.uniform(0.4, 1.0)
        cw = max(16, min(photo.width, int(photo.width * scale)))
        ch = max(16, min(photo.height, int(cw * height / width)))
        x0 = int(rng.integers(0, photo.width - cw + 1))
        y0 = int(rng.integers(0, photo.height - ch + 1))
        crop = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, height), Image.BILINEAR)
        # Wash the photo out so objects stay the figure and the photo the ground.
        wash = rng.uniform(0.35, 0.7)
        tint = _random_colour(rng, light=True)
        arr = np.asarray(crop, np.float32) * (1 - wash) + tint * wash
    rgb = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("RGBA")


def export_sample_art(out_dir: str | Path) -> int:
    """Write scikit-image's bundled sample images to ``out_dir`` as an unseen-art folder.

    Returns how many were written. Useful to benchmark on object art never used in training.
    """
    d = _photo_dir()
    if d is None:
        raise RelsearchError("scikit-image is not installed: pip install scikit-image")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in sorted(d.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.name not in _PHOTO_NAMES:
            try:
                with Image.open(p) as im:
                    im.convert("RGBA").save(out / f"{p.stem}.png")
                n += 1
            except OSError:
                continue
    return n


EMOJI_FONTS = (
    Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"),
    Path("/usr/share/fonts/noto/NotoColorEmoji.ttf"),
)


def export_emoji_art(
    out_dir: str | Path, font_path: str | Path | None = None, limit: int | None = None
) -> int:
    """Render every single-code-point pictograph of a colour emoji font to PNGs in ``out_dir``.

    A second art source, drawn in a style unlike clip art (Debian ``fonts-noto-color-emoji``).
    Returns how many were written (at most ``limit`` when given).
    """
    path = Path(font_path) if font_path else next((p for p in EMOJI_FONTS if p.is_file()), None)
    if path is None or not path.is_file():
        raise RelsearchError("no colour emoji font found: apt-get install fonts-noto-color-emoji")
    try:
        from fontTools.ttLib import TTFont
    except ImportError as exc:
        raise RelsearchError("exporting emoji needs fontTools: pip install fonttools") from exc
    from PIL import ImageDraw, ImageFont

    codepoints = sorted(c for c in TTFont(str(path)).getBestCmap() if c >= 0x1F300)
    font = ImageFont.truetype(str(path), 109)  # the one bitmap size the font carries
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for cp in codepoints:
        if limit is not None and n >= limit:
            break
        canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((10, 10), chr(cp), font=font, embedded_color=True)
        box = canvas.getchannel("A").getbbox()
        if box is None:
            continue
        canvas.crop(box).save(out / f"u{cp:05x}.png")
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# Photographic backgrounds from Debian packages (desktop wallpapers, sample photographs)
#
# Wallpaper packages ship real photographs (meadows, flowers, mountains, city streets) next to
# rendered abstract art; two other packages add photographs of things and places. Scenes composed
# over them look like what people's folders hold, and the packages are split by name: the
# training corpus never sees the evaluation packages' images.

#: Packages whose images may appear in training scenes. The wallpaper packages are mostly rendered
#: abstract art and landscapes; Tux Paint's templates (bark, rocks, sheep, a lighthouse) and
#: OpenCV's sample photographs (a room, fruit, a table of things, buildings) add real photographs of
#: things and places, which is what the evaluation photographs and people's folders show.
TRAIN_PHOTO_PACKAGES = ("mate-backgrounds", "ukui-wallpapers", "gnome-backgrounds", "plasma-workspace-wallpapers",
                        "tuxpaint-data", "opencv-doc")
#: Cut-out photographs of things (animals, fruit, tools, vehicles: Tux Paint's stamps, with alpha),
#: stood in training photographs by ``compose(things=True)``.
THINGS_PACKAGE = "tuxpaint-stamps-default"
#: Packages kept apart for evaluation only (photographs by other photographers).
EVAL_PHOTO_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
PHOTO_POOLS = {"train": TRAIN_PHOTO_PACKAGES, "eval": EVAL_PHOTO_PACKAGES}
_DPKG_INFO = Path("/var/lib/dpkg/info")
_PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
# Photos are decoded once and kept at this longest side: scenes are at most a few hundred px.
PHOTO_SIDE = 768
# Packages that hold photographs among other images (icons, diagrams, screenshots): only this
# folder of theirs is used, and only the named files in it when names are given.
_PHOTO_SELECTION: dict[str, tuple[str, frozenset[str] | None]] = {
    "tuxpaint-data": ("/usr/share/tuxpaint/templates/", None),
    THINGS_PACKAGE: ("/usr/share/tuxpaint/stamps/", None),
    "opencv-doc": ("/usr/share/doc/opencv-doc/examples/data/", frozenset(
        "aero1.jpg aero3.jpg aloeL.jpg apple.jpg baboon.jpg basketball1.png box_in_scene.png building.jpg "
        "butterfly.jpg ela_original.jpg fruits.jpg graf1.png home.jpg leuvenA.jpg messi5.jpg orange.jpg "
        "pca_test1.jpg rubberwhale1.png smarties.png squirrel_cls.jpg stuff.jpg".split())),
}
# Some packages ship the same picture at several resolutions (Elephants_3840x2160.jpg): keep one.
_RESOLUTION_SUFFIX = ("_3840x2160", "_5640x3172", "_2560x1440", "_1920x1080")


def package_files(package: str) -> list[Path]:
    """Image files a Debian package installed (empty when it is not installed), one per picture."""
    listing = _DPKG_INFO / f"{package}.list"
    if not listing.is_file():
        return []
    folder, names = _PHOTO_SELECTION.get(package, ("/", None))
    out = []
    # KDE-style packages ship each picture as <Name>/contents/images/<W>x<H>.<ext> at many
    # sizes: keep the largest of each <Name> (screenshots are previews, not pictures).
    sized: dict[Path, tuple[int, Path]] = {}
    for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
        p = Path(line.strip())
        if p.suffix.lower() not in _PHOTO_EXTENSIONS or p.stem.endswith(_RESOLUTION_SUFFIX) or not p.is_file():
            continue
        if not str(p).startswith(folder) or (names is not None and p.name not in names):
            continue
        size = re.fullmatch(r"(\d+)x(\d+)", p.stem)
        if size is None:
            if "screenshot" not in p.stem.lower():
                out.append(p)
            continue
        area, key = int(size[1]) * int(size[2]), p.parent.parent.parent
        if area > sized.get(key, (0, p))[0]:
            sized[key] = (area, p)
    return sorted(out + [p for _, p in sized.values()])


def missing_photo_packages(pool: str) -> list[str]:
    """Packages of a photo pool that are not installed."""
    return [p for p in PHOTO_POOLS[pool] if not package_files(p)]


def _load_photo(path: Path) -> Image.Image | None:
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.draft("RGB", (PHOTO_SIDE, PHOTO_SIDE))
            rgb = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    rgb.thumbnail((PHOTO_SIDE, PHOTO_SIDE), Image.BILINEAR)
    # A near-uniform image (a plain colour wallpaper) is no photograph.
    if float(np.asarray(rgb.resize((32, 32)), np.float32).std()) < 12.0:
        return None
    return rgb


_photo_pools: dict[str, list[Image.Image]] = {}


def photo_pool(pool: str) -> list[Image.Image]:
    """Decoded wallpaper photos of a pool ("train" or "eval"), cached per process and on disk."""
    if pool not in PHOTO_POOLS:
        raise RelsearchError(f"unknown photo pool {pool!r}; choose one of {', '.join(PHOTO_POOLS)}")
    if pool in _photo_pools:
        return _photo_pools[pool]
    disk = _resolve_cache_dir(None, PHOTO_SIDE)
    photos: list[Image.Image] = []
    for package in PHOTO_POOLS[pool]:
        for path in package_files(package):
            st = path.stat()
            key = hashlib.sha1(f"photo|{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
            cached = disk / f"{key}.jpg" if disk is not None else None
            im = None
            if cached is not None and cached.is_file():
                try:
                    with Image.open(cached) as c:
                        im = c.convert("RGB") if cached.stat().st_size else None
                    if im is None:
                        continue  # known unusable
                except OSError:
                    im = None
            if im is None:
                im = _load_photo(path)
                if cached is not None:
                    try:
                        disk.mkdir(parents=True, exist_ok=True)
                        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                        if im is None:
                            tmp.write_bytes(b"")
                        else:
                            im.save(tmp, format="JPEG", quality=95)
                        os.replace(tmp, cached)
                    except OSError:
                        pass
            if im is not None:
                photos.append(im)
    _photo_pools[pool] = photos
    return photos


def crop_photo(photo: Image.Image, rng: np.random.Generator, width: int, height: int,
               scale: tuple[float, float] = (0.35, 1.0)) -> Image.Image:
    """A random crop of ``photo`` (a ``scale`` share of its width) with the aspect of ``width`` x
    ``height``, resized to it and mirrored half of the time."""
    aspect = width / height
    cw = max(16, min(photo.width, int(photo.width * float(rng.uniform(*scale)))))
    ch = int(cw / aspect)
    if ch > photo.height:
        ch = photo.height
        cw = max(16, min(photo.width, int(ch * aspect)))
    x0 = int(rng.integers(0, photo.width - cw + 1))
    y0 = int(rng.integers(0, photo.height - ch + 1))
    crop = photo.crop((x0, y0, x0 + cw, y0 + ch)).resize((width, height), Image.BILINEAR)
    return crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop


def render_photo_background(
    rng: np.random.Generator, width: int, height: int, pool: str = "train"
) -> Image.Image:
    """A random crop of a wallpaper photograph, barely washed out (RGBA, opaque)."""
    photos = photo_pool(pool)
    if not photos:
        missing = ", ".join(PHOTO_POOLS[pool])
        raise RelsearchError(f"no wallpaper photos for pool {pool!r}: apt-get install {missing}")
    photo = photos[int(rng.integers(len(photos)))]
    arr = np.asarray(crop_photo(photo, rng, width, height), np.float32)
    # Most photos stay as they are; some get a light veil, as a faded print or a poster would.
    if rng.random() < 0.35:
        wash = float(rng.uniform(0.1, 0.35))
        arr = arr * (1 - wash) + _random_colour(rng) * wash
    rgb = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(rgb), "RGB").convert("RGBA")


def paste_clipped(canvas: Image.Image, im: Image.Image, x: int, y: int) -> None:
    """Alpha-composite ``im`` (RGBA) onto ``canvas`` with its top-left corner at (x, y), clipped to the canvas."""
    sx0, sy0 = max(0, -x), max(0, -y)
    sx1, sy1 = min(im.width, canvas.width - x), min(im.height, canvas.height - y)
    if sx1 > sx0 and sy1 > sy0:
        canvas.alpha_composite(im, (x + sx0, y + sy0), (sx0, sy0, sx1, sy1))


# ---------------------------------------------------------------------------------------------
# Photographed things stood in a photograph
#
# The evaluation photographs are pictures *of things*: a red bowl with a fig, hanging lamps, a dog
# on a porch. Such things look like a scene's objects, and a relation (a row of lamps, a fig in a
# bowl) can seem to hold among them. Standing cut-out photographs of things in the training
# photographs teaches the encoder to read the relation among the scene's objects and let the
# photograph's own things be; which things, how large, where and how sharp stays random.

#: Stamps drawn as cartoons, letters, signs and holiday symbols are drawings, not photographs.
_THINGS_SKIP = ("/cartoon/", "/symbols/", "/seasonal/")
#: Stamps are decoded once at this longest side (a thing covers at most 90% of a canvas side).
THING_SIDE = 384
_things: list[Image.Image] | None = None


def _is_photographed(im: Image.Image) -> bool:
    """A cut-out photograph: a real alpha cut and the colour variety of a photograph, not flat paint."""
    small = np.asarray(im.resize((96, 96), Image.BILINEAR))
    solid = small[..., 3] > 200
    if solid.mean() < 0.05 or solid.mean() > 0.97:
        return False
    colours = np.unique(small[..., :3][solid] // 4, axis=0)
    return len(colours) >= 0.15 * int(solid.sum())


def photo_things() -> list[Image.Image]:
    """The photographed things (RGBA), decoded once per process; empty when the package is absent."""
    global _things
    if _things is None:
        found = []
        for path in package_files(THINGS_PACKAGE):
            if any(part in str(path) for part in _THINGS_SKIP) or path.stem.endswith(("_mirror", "_flip")):
                continue
            try:
                with Image.open(path) as im:
                    if im.mode != "RGBA":
                        continue  # greyscale and palette stamps are line art
                    rgba = im.convert("RGBA")
            except (OSError, ValueError):
                continue
            rgba.thumbnail((THING_SIDE, THING_SIDE), Image.BILINEAR)
            if _is_photographed(rgba):
                found.append(rgba)
        _things = found
    return _things


def require_photo_things() -> list[Image.Image]:
    """:func:`photo_things`, or a user error naming the package to install."""
    things = photo_things()
    if not things:
        raise RelsearchError(f"no photographed things: apt-get install {THINGS_PACKAGE}")
    return things


def add_photo_things(canvas: Image.Image, rng: np.random.Generator) -> None:
    """Stand one to three photographed things in ``canvas`` (RGBA, in place), some out of focus."""
    things = require_photo_things()
    w, h = canvas.size
    for _ in range(int(rng.choice((1, 2, 3), p=(0.45, 0.35, 0.2)))):
        thing = things[int(rng.integers(len(things)))]
        scale = float(rng.uniform(0.3, 0.9)) * min(w, h) / max(thing.size)
        im = thing.resize((max(8, round(thing.width * scale)), max(8, round(thing.height * scale))), Image.BILINEAR)
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if rng.random() < 0.5:  # behind the scene's objects, as a shallow depth of field leaves it
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 3.0))))
        # Up to a third of a thing may stand outside the frame, as in a photograph.
        x = int(rng.integers(-im.width // 3, max(-im.width // 3, w - 2 * im.width // 3) + 1))
        y = int(rng.integers(-im.height // 3, max(-im.height // 3, h - 2 * im.height // 3) + 1))
        paste_clipped(canvas, im, x, y)
