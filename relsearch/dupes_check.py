"""The second opinion on a near-duplicate candidate: the two pictures themselves.

Vectors put pictures of one style close together (six transparent overlays that all look
white once composited, two photographs of one sky), so every pair the vector stage of
``dupes`` proposes is checked here on pixels, with nothing fitted on the collection:

- the shapes must match: the two pictures are shrunk to grey squares, their detail (the
  picture less its blur) is correlated, and the crop box of one is moved a few percent
  per side (both ways round) to undo a small crop; pictures without detail compare their
  plain grey instead, and two flat pictures match when their colour does;
- the colours must match: a 4 x 4 grid of mean colours may differ by a slight brightness
  change, not by a recolouring or a dark/light variant;
- the shape must match: the aspect ratio may change by a small crop only;
- a picture with transparency is compared on white *and* on black, so overlays that
  differ only in their alpha are told apart.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

#: Side of the grey square kept per picture (crop boxes are resampled from it).
SIDE = 96
#: Side the detail is correlated at, and the blur (pixels at that side) it is taken against.
OUT = 48
BLUR = 3.0
#: Most of each side the crop search removes, and its steps (fractions of the side).
MAX_CROP = 0.06
STEPS = (0.02, 0.01, 0.005)
#: Below this unaligned correlation no crop search is tried: a crop of a few percent
#: keeps the unaligned detail correlated well above it.
SEARCH_FROM = 0.3
#: Largest difference of one colour-grid cell (0-255) between two copies.
COLOUR_MAX = 40.0
#: Largest change of log aspect ratio (a crop of a few percent changes it by a few hundredths).
ASPECT_MAX = 0.12
#: Grey standard deviation below which a picture is flat, and detail below which it is smooth.
FLAT = 1.5
DETAIL_MIN = 0.4
_GREY = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class Signature:
    """What the check keeps of one picture: per background, a grey square and a colour grid."""

    greys: tuple[np.ndarray, ...]  # float32 [SIDE, SIDE]
    colours: tuple[np.ndarray, ...]  # float32 [16, 3]
    aspect: float


def _planes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    grey = np.ascontiguousarray(rgb @ _GREY, dtype=np.float32)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    grid = np.asarray(img.resize((4, 4), Image.Resampling.BOX), dtype=np.float32).reshape(16, 3)
    return grey, grid


def _alpha_planes(path: str) -> tuple[list[np.ndarray], float] | None:
    """The picture composited on white and on black, and its aspect, when it has transparency."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
                return None
            img.draft("RGBA", (SIDE * 2, SIDE * 2))
            rgba = ImageOps.exif_transpose(img.convert("RGBA"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the plain decode says why, or reads what Pillow alone cannot
    a = np.asarray(rgba.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32)
    over = a[..., :3] * (a[..., 3:] / 255.0)
    return [over + 255.0 * (1.0 - a[..., 3:] / 255.0), over], rgba.width / max(1, rgba.height)


def signature(path: str | os.PathLike[str]) -> Signature:
    """The :class:`Signature` of one file; raises ``DecodeError`` when it cannot be read."""
    from PIL import Image

    from relsearch.collection import DecodeError, load_image
    from relsearch.safe_io import open_regular

    try:  # a FIFO or a device is refused before Pillow opens it
        os.close(open_regular(path)[0])
    except OSError as exc:
        raise DecodeError(exc.strerror or str(exc)) from None
    alpha = _alpha_planes(os.fspath(path))
    if alpha is not None:
        rgbs, aspect = alpha
    else:
        img = load_image(path, max_side=SIDE * 4)  # as the index saw it
        rgbs, aspect = [np.asarray(img.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32)], \
            img.width / max(1, img.height)
    planes = [_planes(x) for x in rgbs]
    return Signature(tuple(p[0] for p in planes), tuple(p[1] for p in planes), aspect)


_KERNELS: dict[int, np.ndarray] = {}


def _blur_matrix(n: int) -> np.ndarray:
    if n not in _KERNELS:
        x = np.arange(n, dtype=np.float64)
        k = np.exp(-0.5 * ((x[:, None] - x[None, :]) / BLUR) ** 2)
        _KERNELS[n] = (k / k.sum(axis=1, keepdims=True)).astype(np.float32)
    return _KERNELS[n]


def _view(grey: np.ndarray, box: tuple[float, float, float, float] | None, detail: bool) -> np.ndarray:
    """``grey`` (cropped to ``box``, fractions) at OUT x OUT: its detail, or the plain picture."""
    from PIL import Image

    s = grey.shape[0]
    px = None if box is None else (box[0] * s, box[1] * s, s - box[2] * s, s - box[3] * s)
    small = np.asarray(Image.fromarray(grey, mode="F").resize((OUT, OUT), Image.Resampling.BILINEAR, box=px),
                       dtype=np.float32)
    if detail:
        k = _blur_matrix(OUT)
        small = small - k @ small @ k.T
    return small


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float((a * b).sum()) / den if den > 1e-9 else 0.0


def _aligned(cropped: np.ndarray, full: np.ndarray, detail: bool, start: float) -> float:
    """Best correlation of ``cropped``'s crop box against all of ``full`` (coordinate descent)."""
    target = _view(full, None, detail)
    margins, best = [0.0, 0.0, 0.0, 0.0], start
    for step in STEPS:
        improved = True
        while improved:
            improved = False
            for side in range(4):
                for sign in (1.0, -1.0):
                    trial = list(margins)
                    trial[side] = min(MAX_CROP, max(0.0, trial[side] + sign * step))
                    if trial == margins:
                        continue
                    v = _ncc(_view(cropped, (trial[0], trial[1], trial[2], trial[3]), detail), target)
                    if v > best + 1e-6:
                        best, margins, improved = v, trial, True
    return best


def _plane_similarity(a: np.ndarray, b: np.ndarray) -> float:
    flat_a, flat_b = float(a.std()) < FLAT, float(b.std()) < FLAT
    if flat_a or flat_b:
        return 1.0 if flat_a and flat_b else 0.0  # two flat pictures: the colour check decides
    detail = min(float(_view(a, None, True).std()), float(_view(b, None, True).std())) >= DETAIL_MIN
    plain = _ncc(_view(a, None, detail), _view(b, None, detail))
    if plain < SEARCH_FROM:
        return plain
    return max(_aligned(a, b, detail, plain), _aligned(b, a, detail, plain))


def similarity(a: Signature, b: Signature) -> float:
    """How alike two pictures look, in [-1, 1]: near-copies score close to 1.

    0 when their aspect ratios or colours differ more than a small crop or a slight
    brightness change explains; otherwise the lowest, over the backgrounds, of the
    crop-aligned correlation of their detail.
    """
    if abs(math.log(max(a.aspect, 1e-6) / max(b.aspect, 1e-6))) > ASPECT_MAX:
        return 0.0
    scores = []
    for k in range(max(len(a.greys), len(b.greys))):
        ka, kb = min(k, len(a.greys) - 1), min(k, len(b.greys) - 1)
        if float(np.abs(a.colours[ka] - b.colours[kb]).max()) > COLOUR_MAX:
            return 0.0
        scores.append(_plane_similarity(a.greys[ka], b.greys[kb]))
    return min(scores)
