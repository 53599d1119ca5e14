"""Which files are images, and opening the formats Pillow does not read by itself.

HEIC / HEIF go through pillow-heif, AVIF through Pillow's own plugin (or
pillow-avif-plugin on a Pillow built without it), camera RAW through the JPEG preview
the camera embeds (rawpy), demosaicked at half size only when a file has no preview.
Each optional decoder is imported on the first file that needs it; when it is missing
the file fails with "needs pillow-heif" and the like, never with a traceback.
SVG is a vector format: scans count it and say it is not indexed.
"""

from __future__ import annotations

import io
import logging
import threading

from PIL import Image

log = logging.getLogger(__name__)

#: Formats Pillow reads itself.
PILLOW_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
HEIF_EXTENSIONS = (".heic", ".heif", ".hif")
AVIF_EXTENSIONS = (".avif",)
#: Camera RAW files LibRaw reads (their embedded preview is what gets indexed).
RAW_EXTENSIONS = (".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf",
                  ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".rwl", ".erf", ".mrw")
IMAGE_EXTENSIONS = PILLOW_EXTENSIONS + HEIF_EXTENSIONS + AVIF_EXTENSIONS + RAW_EXTENSIONS
#: Vector images: counted by the scan, not indexed.
VECTOR_EXTENSIONS = (".svg", ".svgz")

# ISO-BMFF brands (the ftyp box) of HEIF stills and sequences, and of AVIF
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_heif_lock = threading.Lock()
_heif_registered = False


def looked_for() -> str:
    """The extensions a scan looks for, as one readable line (for "no images found")."""
    raw = ", ".join(e[1:] for e in RAW_EXTENSIONS[:6])
    return (", ".join(e[1:] for e in PILLOW_EXTENSIONS + HEIF_EXTENSIONS[:2] + AVIF_EXTENSIONS)
            + f", camera RAW ({raw}, ...)")


def is_raw_name(name: str) -> bool:
    return name.lower().endswith(RAW_EXTENSIONS)


def is_vector_name(name: str) -> bool:
    return name.lower().endswith(VECTOR_EXTENSIONS)


def _brands(data: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF file (empty when it is not one)."""
    if len(data) < 16 or data[4:8] != b"ftyp":
        return set()
    size = min(int.from_bytes(data[:4], "big"), len(data), 256)
    return {data[8:12]} | {data[i : i + 4] for i in range(16, size - 3, 4)}


def _ensure_heif() -> None:
    global _heif_registered
    with _heif_lock:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError:
            raise MissingDecoder("needs pillow-heif (pip install pillow-heif)") from None
        pillow_heif.register_heif_opener()
        _heif_registered = True


def _ensure_avif() -> None:
    from PIL import features

    if features.check_module("avif"):
        return
    try:
        import pillow_avif  # noqa: F401  (registers the plugin on import)
    except ImportError:
        raise MissingDecoder("needs Pillow built with AVIF (Pillow >= 11.3) or pillow-avif-plugin") from None


class MissingDecoder(Exception):
    """An optional decoder this file needs is not installed; the message names the package."""


def open_image(data: bytes, path: str) -> tuple[Image.Image, int | None]:
    """``(image, orientation)`` of a file's bytes: the image as ``Image.open`` returns it
    (header read, pixels not yet decoded) and, for a RAW, the EXIF orientation the camera
    recorded outside its preview (None: read it from the image itself).

    Raises :class:`MissingDecoder`, or what ``Image.open`` / rawpy raise for a bad file.
    """
    if is_raw_name(path):
        return _open_raw(data)
    brands = _brands(data)
    if brands & _AVIF_BRANDS:
        _ensure_avif()
    elif brands & _HEIF_BRANDS:
        _ensure_heif()
    return Image.open(io.BytesIO(data)), None


# LibRaw's flip (sizes.flip) -> the EXIF orientation that undoes it
_FLIP_TO_EXIF = {0: 1, 3: 3, 5: 8, 6: 6}


def _open_raw(data: bytes) -> tuple[Image.Image, int | None]:
    try:
        import rawpy
    except ImportError:
        raise MissingDecoder("needs rawpy for camera RAW (pip install rawpy)") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            flip = _FLIP_TO_EXIF.get(int(raw.sizes.flip), 1)
            try:
                thumb = raw.extract_thumb()
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                thumb = None
            if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
                img = Image.open(io.BytesIO(bytes(thumb.data)))
                # a preview with its own orientation says it; otherwise the RAW's applies
                return img, None if _has_orientation(img) else flip
            if thumb is not None and thumb.format == rawpy.ThumbFormat.BITMAP:
                return Image.fromarray(thumb.data), flip
            log.debug("camera RAW without an embedded preview: demosaicking at half size")
            rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
            # postprocess already turned the picture upright
            return Image.fromarray(rgb), 1
    except rawpy.LibRawError as err:
        said = err.args[0] if err.args else ""
        said = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
        raise OSError(f"camera RAW: {said.strip() or type(err).__name__}") from None


def _has_orientation(img: Image.Image) -> bool:
    try:
        return int(img.getexif().get(0x0112, 1)) != 1
    except Exception:  # unreadable EXIF in a preview: the RAW's own flip decides
        return False
