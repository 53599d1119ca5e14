"""The nuisances of real image files, applied to composed scenes.

People's folders hold photographs saved as JPEG at every quality, resized, a little blurred or
noisy, with a colour cast; objects cast shadows and are sometimes cut by the frame. None of that
is a relation, so the corpus draws all of it at random, from a generator of its own: turning
realism on never changes which relation, objects or layout a scene shows.
"""

from __future__ import annotations

import contextvars
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

#: JPEG quality range of realistic scenes (phone cameras and web re-saves sit at 70-90; forum
#: thumbnails far lower).
JPEG_QUALITY_RANGE = (35, 95)


@dataclass(frozen=True)
class Style:
    """Per-scene drawing style that renderers consult while pasting objects."""

    shadow: tuple[float, float, float, float] | None = None  # dx, dy (share of size), blur, opacity
    overflow: float = 0.0  # share of a layout's extent that may leave the frame (where allowed)


_PLAIN = Style()
_STYLE: contextvars.ContextVar[Style | None] = contextvars.ContextVar("relsearch_corpus_style", default=None)


def current_style() -> Style:
    """The style of the scene being drawn (plain: no shadow, nothing out of frame)."""
    return _STYLE.get() or _PLAIN


@contextmanager
def drawing_style(style: Style) -> Iterator[None]:
    """Use ``style`` for the scenes drawn inside the block."""
    token = _STYLE.set(style)
    try:
        yield
    finally:
        _STYLE.reset(token)


def draw_style(rng: np.random.Generator) -> Style:
    """A random realistic style: usually a soft drop shadow, sometimes an object cut by the frame."""
    shadow = None
    if rng.random() < 0.7:
        angle = float(rng.uniform(0, 2 * np.pi))
        dist = float(rng.uniform(0.02, 0.07))
        shadow = (
            dist * float(np.cos(angle)),
            dist * float(np.sin(angle)),
            float(rng.uniform(0.01, 0.04)),
            float(rng.uniform(0.3, 0.65)),
        )
    overflow = float(rng.uniform(0.05, 0.2)) if rng.random() < 0.4 else 0.0
    return Style(shadow=shadow, overflow=overflow)


def shadow_of(im: Image.Image, style: Style) -> tuple[Image.Image, int, int] | None:
    """A blurred dark copy of ``im``'s silhouette and its offset, or None without a shadow."""
    if style.shadow is None:
        return None
    dx, dy, blur, opacity = style.shadow
    size = max(im.size)
    radius = max(0.5, blur * size)
    pad = int(np.ceil(2 * radius))
    alpha = im.getchannel("A")
    if pad:
        padded = Image.new("L", (im.width + 2 * pad, im.height + 2 * pad), 0)
        padded.paste(alpha, (pad, pad))
        alpha = padded.filter(ImageFilter.GaussianBlur(radius))
    alpha = alpha.point(lambda v: int(v * opacity))
    out = Image.new("RGBA", alpha.size, (0, 0, 0, 0))
    out.putalpha(alpha)
    return out, round(dx * size) - pad, round(dy * size) - pad


def degrade(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Colour cast, blur, noise and a resize round trip, each drawn at random (RGB in and out)."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    if rng.random() < 0.5:
        # A resize round trip: a picture saved small and viewed larger (or the reverse).
        f = float(rng.uniform(0.45, 0.85))
        small = rgb.resize((max(16, round(w * f)), max(16, round(h * f))), Image.BILINEAR)
        rgb = small.resize((w, h), Image.BICUBIC if rng.random() < 0.5 else Image.BILINEAR)
    if rng.random() < 0.3:
        rgb = rgb.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.3))))
    arr = np.asarray(rgb, np.float32)
    if rng.random() < 0.5:
        # A colour cast: white balance off, as indoor light or an old print.
        gains = 1.0 + rng.uniform(-0.12, 0.12, size=3).astype(np.float32)
        arr = arr * gains + float(rng.uniform(-15, 15))
    if rng.random() < 0.4:
        arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * float(rng.uniform(2, 8))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def jpeg_bytes(image: Image.Image, rng: np.random.Generator) -> bytes:
    """``image`` saved as JPEG at a random quality in :data:`JPEG_QUALITY_RANGE`."""
    lo, hi = JPEG_QUALITY_RANGE
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=int(rng.integers(lo, hi + 1)))
    return buf.getvalue()
