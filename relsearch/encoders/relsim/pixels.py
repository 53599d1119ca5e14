"""How relsim sizes an image before the model sees it.

The released inference script (``relsim/relsim_score.py``) converts the image to RGB,
optionally caps its longer side (``max_image_size``, LANCZOS thumbnail), and passes it
through ``qwen_vl_utils.process_vision_info``, which resizes it (PIL bicubic) to the
nearest sides that are multiples of 28 within its own token budget (4 to 16384 tokens
of 28 x 28 px). The checkpoint's processor then resizes it once more if it falls
outside the checkpoint's ``min_pixels`` / ``max_pixels``. :func:`native_fit` is the
first two steps; the processor's step stays with the processor (:func:`processor_size`
predicts its result so images can be grouped by grid before it runs). The aspect ratio
is kept throughout: nothing is cropped.

:func:`square_crop` is the other sizing: the released training data loader's crop (centre
square, LANCZOS to 448 px), one grid for every image (``RelsimOptions.square``), which is
not what the released inference does.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from relsearch.errors import RelsearchError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: qwen_vl_utils' budget for one image, in tokens of (patch x merge)^2 pixels.
FETCH_MIN_TOKENS = 4
FETCH_MAX_TOKENS = 16384
#: Longer over shorter side beyond which Qwen's resizers refuse an image.
MAX_RATIO = 200


def grid_factor(image_processor: Any) -> int:
    """Side of one merged visual token in pixels (28 for Qwen2.5-VL)."""
    return int(image_processor.patch_size) * int(image_processor.merge_size)


def pixel_budget(image_processor: Any) -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` of a Qwen2-VL image processor, old or new config layout."""
    size = image_processor.size
    min_px = getattr(size, "shortest_edge", None) or getattr(image_processor, "min_pixels", None)
    max_px = getattr(size, "longest_edge", None) or getattr(image_processor, "max_pixels", None)
    if isinstance(size, dict):
        min_px = min_px or size.get("shortest_edge")
        max_px = max_px or size.get("longest_edge")
    if not min_px or not max_px:
        raise RelsearchError("relsim: the image processor states no pixel budget (min/max pixels)")
    return int(min_px), int(max_px)


def _check_ratio(height: int, width: int) -> None:
    if min(height, width) < 1 or max(height, width) / min(height, width) > MAX_RATIO:
        raise RelsearchError(f"relsim: cannot use a {width}x{height} image: sides must be within 1:{MAX_RATIO}")


def fetch_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """``(height, width)`` that ``process_vision_info`` resizes an image to, before the processor."""
    _check_ratio(height, width)
    lo, hi = FETCH_MIN_TOKENS * factor**2, FETCH_MAX_TOKENS * factor**2
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > hi:
        beta = math.sqrt(height * width / hi)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < lo:
        beta = math.sqrt(lo / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def processor_size(image_processor: Any, height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` the checkpoint's processor resizes a ``width`` x ``height`` image to."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    _check_ratio(height, width)
    min_px, max_px = pixel_budget(image_processor)
    try:
        h, w = smart_resize(height, width, factor=grid_factor(image_processor), min_pixels=min_px, max_pixels=max_px)
    except ValueError as exc:
        raise RelsearchError(f"relsim: cannot use a {width}x{height} image: {exc}") from exc
    return int(h), int(w)


def native_fit(img: Image.Image, image_processor: Any, cap: int | None = None) -> Image.Image:
    """RGB, the optional longer-side cap, then ``process_vision_info``'s resize (aspect kept)."""
    from PIL import Image

    img = img.convert("RGB")
    if cap is not None and max(img.size) > cap:
        img = img.copy()
        img.thumbnail((cap, cap), Image.LANCZOS)
    h, w = fetch_size(img.height, img.width, grid_factor(image_processor))
    if (w, h) != img.size:
        img = img.resize((w, h), Image.BICUBIC)
    return img


def fixed_side(image_processor: Any, requested: int) -> int:
    """The square side the processor would keep for a ``requested`` x ``requested`` image.

    A multiple of patch x merge (28 px for Qwen2.5-VL) within the processor's pixel
    budget: 448 stays 448 with the released processor; a tiny test processor with a
    small budget gets a smaller square.
    """
    h, w = processor_size(image_processor, requested, requested)
    if h != w:  # pragma: no cover - smart_resize scales both sides alike
        raise RelsearchError(f"relsim: the processor turns a square into {w}x{h}")
    return h


def square_crop(img: Image.Image, side: int) -> Image.Image:
    """RGB, centre crop to a square of the shorter side, LANCZOS resize to ``side``: the released training crop."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    short = min(w, h)
    left, top = (w - short) // 2, (h - short) // 2
    if (w, h) != (short, short):
        img = img.crop((left, top, left + short, top + short))
    if short != side:
        img = img.resize((side, side), Image.LANCZOS)
    return img
