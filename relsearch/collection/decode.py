"""Decode image files into RGB PIL images, alone or streamed through a worker pool.

Every decode failure becomes a :class:`DecodeError` with a short reason, so a
build can list the bad file and carry on.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from relsearch.collection.formats import MissingDecoder, open_image
from relsearch.safe_io import FileTooLarge, NotRegularFile, open_regular, read_fd

log = logging.getLogger(__name__)

# PIL warns (a raw line on stderr) about an image between its MAX_IMAGE_PIXELS and twice
# that, then decodes it anyway. The decoder's own bounds decide instead, silently: PIL's
# error beyond twice (a DecodeError here) and ``max_pixels`` where a caller sets one.
_QUIET_BOMB = ("ignore", None, Image.DecompressionBombWarning, None, 0)


def _quiet_bomb_warning() -> None:
    # checked on every decode: warnings.catch_warnings() (pytest, a caller) restores the
    # filters it found, dropping one added meanwhile
    if _QUIET_BOMB not in warnings.filters:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that shows the image upright (same table as
# ImageOps.exif_transpose, applied to the already downscaled image because
# rotating a small image is cheaper than rotating the full-size one).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_GRAY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_MAX_REASON = 160
#: Larger files are refused unread: each decode worker holds its file's bytes in memory.
MAX_IMAGE_BYTES = 512 << 20


class DecodeError(Exception):
    """A file could not be decoded; ``reason`` is short enough for a table cell."""

    def __init__(self, reason: str) -> None:
        reason = " ".join(str(reason).split())
        if len(reason) > _MAX_REASON:
            reason = reason[: _MAX_REASON - 3] + "..."
        super().__init__(reason)
        self.reason = reason


class TooManyPixels(DecodeError):
    """The image would decode to more pixels than allowed (``max_pixels``, or PIL's bomb limit)."""


def _orientation(img: Image.Image) -> int:
    try:
        if img.format == "PNG":
            # PngImageFile.getexif() decodes the whole image to look for an eXIf
            # chunk after the pixel data; the one before it is already in info.
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = img.getexif()
        value = int(exif.get(_ORIENTATION_TAG, 1))
    except Exception as exc:  # broken EXIF must not cost the picture
        log.debug("ignoring unreadable EXIF orientation: %s: %s", type(exc).__name__, exc)
        return 1
    return value if value in _TRANSPOSE else 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    w, h = size
    return (h, w) if orientation in _SWAPS_AXES else (w, h)


def _target_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    w, h = size
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _wide_gray_to_l(img: Image.Image) -> Image.Image:
    # PIL's own I;16 -> L conversion clips at 255 (a mid-grey 16-bit picture
    # turns white), so rescale the value range by hand.
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        arr = np.nan_to_num(arr)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        out = np.clip(arr, 0, 255)
    else:
        arr = arr.astype(np.int64)
        lo = int(arr.min()) if arr.size else 0
        hi = int(arr.max()) if arr.size else 0
        if lo >= 0 and hi <= 65535:
            out = arr / 257.0  # 65535 -> 255 exactly
        else:  # 32-bit data of unknown range: stretch what is there
            out = (arr - lo) * (255.0 / max(hi - lo, 1))
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="L")


def _normalise_mode(img: Image.Image) -> Image.Image:
    """Return an ``RGB`` or ``RGBA`` image (RGBA only when there is transparency)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _WIDE_GRAY_MODES:
        return _wide_gray_to_l(img).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        # palette / grey / RGB colour-key transparency all become a real alpha
        return img.convert("RGBA")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV ...


def _on_white(img: Image.Image) -> Image.Image:
    if img.mode != "RGBA":
        return img
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert("RGB")


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file, read once: a regular file (a FIFO or device is refused
    without blocking) of at most :data:`MAX_IMAGE_BYTES`. Raises :class:`DecodeError`."""
    try:
        fd, st = open_regular(path)
        try:
            data = read_fd(fd, st.st_size, os.fspath(path), MAX_IMAGE_BYTES)
        finally:
            os.close(fd)
    except (NotRegularFile, FileTooLarge) as err:
        raise DecodeError(err.strerror) from None
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except OSError as err:
        raise DecodeError(f"unreadable: {err.strerror or err}") from None
    if not data:
        raise DecodeError("empty file")
    return data


def _decode(path: str | Path, max_side: int | None,
            max_pixels: int | None = None) -> tuple[Image.Image, int, int, str]:
    """Image, upright size and the sha256 of the very bytes that were decoded."""
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side!r}")
    _quiet_bomb_warning()
    data = read_image_bytes(path)
    # hashed and decoded from one buffer: a file rewritten meanwhile cannot pair
    # one picture's hash with another picture's pixels
    digest = hashlib.sha256(data).hexdigest()
    try:
        opened, forced_orientation = open_image(data, os.fspath(path))
        with opened as img:
            # Image.open only read the header; a GIF opens on its first frame
            # and we never seek, so animations give frame 0.
            stored = img.size
            # JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale,
            # never below the requested size: far cheaper than a full decode.
            # Called for every format because camera files often open as MPO
            # (a JPEG subclass); for the others draft() does nothing.
            if max_side is not None:
                want = _target_size(stored, max_side)
                if want != stored:
                    img.draft("RGB", want)
            if max_pixels is not None and img.size[0] * img.size[1] > max_pixels:  # size after draft
                raise TooManyPixels(f"{stored[0]} x {stored[1]} pixels, more than the "
                                    f"{max_pixels / 1e6:.0f} million allowed")
            img.load()  # truncated or corrupt data fails here, not later
            orientation = forced_orientation if forced_orientation is not None else _orientation(img)
            out = _normalise_mode(img)
            # Resize before compositing and rotating: both are cheaper on the
            # small image, and PIL resizes RGBA with premultiplied alpha.
            target = _target_size(out.size, max_side)
            if target != out.size:
                out = out.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
            if orientation in _TRANSPOSE:
                out = out.transpose(_TRANSPOSE[orientation])
            out = _on_white(out)
            if out is img:
                # detach from the file object the with-block is about to close
                out = img.copy()
    except DecodeError:
        raise
    except MissingDecoder as err:
        raise DecodeError(str(err)) from None
    except Image.DecompressionBombError as err:
        raise TooManyPixels(f"decompression bomb: {err}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image") from None
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except PermissionError:
        raise DecodeError("permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as err:
        # PIL reports broken data through many exception types; these are the
        # ones its plugins raise for bad files.
        text = str(err) or type(err).__name__
        if "truncated" in text.lower() or isinstance(err, EOFError):
            raise DecodeError("truncated image") from None
        raise DecodeError(f"corrupt image: {text}") from None
    width, height = _upright_size(stored, orientation)
    return out, width, height, digest


def load_image(path: str | Path, max_side: int | None = None, max_pixels: int | None = None) -> Image.Image:
    """Decode ``path`` to an upright RGB image.

    EXIF orientation is applied; transparency is composited on white; an
    animation gives its first frame; 16-bit, CMYK and grey images are converted.
    With ``max_side`` the image is downscaled (never upscaled) so its longer
    side is at most ``max_side``. With ``max_pixels``, an image that would decode to more
    pixels (after JPEG's reduced-size decoding) raises :class:`TooManyPixels` before any
    pixel is decoded. Raises :class:`DecodeError` on any failure.
    """
    return _decode(path, max_side, max_pixels)[0]


@dataclass
class Decoded:
    """One decoded file; ``image`` is None exactly when ``error`` says why.

    ``width`` and ``height`` are the original size after EXIF orientation (0 on error),
    not the size of the possibly downscaled ``image``; ``sha256`` is the hash of the bytes
    ``image`` was decoded from.
    """

    index: int
    path: str
    image: Image.Image | None
    error: str | None
    width: int = 0
    height: int = 0
    sha256: str | None = None  # of the bytes decoded (None where the decoder did not say)

    @property
    def ok(self) -> bool:
        return self.error is None


def decode_one(index: int, path: str, max_side: int | None) -> Decoded:
    """Decode one file for a pool; never raises for a bad file."""
    try:
        image, width, height, digest = _decode(path, max_side)
    except DecodeError as err:
        return Decoded(index, path, None, err.reason)
    except Exception as err:  # a PIL plugin bug must not stop a 100k-file build
        return Decoded(index, path, None, f"decoder failed: {type(err).__name__}: {err}")
    return Decoded(index, path, image, None, width, height, digest)


def default_workers() -> int:
    """Decode workers to use: the CPUs this process may run on, capped at 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _make_pool(backend: str, workers: int) -> Executor:
    if backend == "thread":
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
    if backend == "process":
        # spawn, not fork: the caller usually has torch's thread pools running,
        # and forking a multi-threaded process can deadlock the child.
        ctx = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    raise ValueError(f"backend must be 'thread' or 'process', got {backend!r}")


def iter_decoded(
    paths: Iterable[str],
    max_side: int | None = 512,
    workers: int | None = None,
    prefetch: int = 64,
    backend: Literal["thread", "process"] = "thread",
) -> Iterator[Decoded]:
    """Decode ``paths`` in a worker pool and yield one :class:`Decoded` per path, in order.

    At most ``prefetch`` decodes are queued or finished-but-not-consumed at any
    time, so memory stays flat however many paths stream in (``paths`` may be a
    generator). Bad files come back as ``Decoded(error=...)``; nothing raises.

    Threads are the default: PIL releases the GIL while decoding, converting and
    resizing (most of the decode time), so threads get most of the parallelism
    without pickling each image back to the parent or paying a process
    start-up; they spend less CPU per image than a process pool, and that CPU
    is what the encoder needs.
    ``backend="process"`` is there for decoders that hold the GIL; like any
    spawned pool it needs the ``if __name__ == "__main__":`` guard in scripts.

    Without ``max_side`` each image is full size, so ``prefetch`` is capped at
    twice the worker count to keep memory bounded on large photos.
    """
    if prefetch < 1:
        raise ValueError(f"prefetch must be >= 1, got {prefetch!r}")
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be >= 1 or None, got {max_side!r}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    if max_side is None:
        prefetch = min(prefetch, 2 * workers)
    prefetch = max(prefetch, workers)  # fewer in flight than workers leaves cores idle

    source = enumerate(paths)
    pool = _make_pool(backend, workers)
    pending: deque[Future[Decoded]] = deque()
    try:
        for index, path in source:
            pending.append(pool.submit(decode_one, index, os.fspath(path), max_side))
            if len(pending) >= prefetch:
                break
        while pending:
            done = pending.popleft().result()
            nxt = next(source, None)
            if nxt is not None:
                pending.append(pool.submit(decode_one, nxt[0], os.fspath(nxt[1]), max_side))
            yield done
    finally:
        # Also reached when the consumer stops early: drop queued work, wait
        # only for the decodes already running.
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def iter_batches(decoded: Iterable[Decoded], batch_size: int) -> Iterator[list[Decoded]]:
    """Group a decoded stream into batches of ``batch_size`` *successful* images.

    Failures are not dropped and not counted: each one travels in the batch that
    is being filled when it arrives, flagged by ``error``, so every input appears
    exactly once and in input order. A consumer embeds
    ``[d.image for d in batch if d.ok]`` and records the rest. Every batch but the
    last holds exactly ``batch_size`` successes; the last holds the remainder and
    may hold only failures. Nothing is yielded for an empty stream.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    batch: list[Decoded] = []
    good = 0
    for item in decoded:
        batch.append(item)
        if item.ok:
            good += 1
            if good == batch_size:
                yield batch
                batch, good = [], 0
    if batch:
        yield batch
