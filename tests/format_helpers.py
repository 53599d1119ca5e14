"""Real files in the formats users have, made here from a real photograph.

HEIC through pillow-heif's encoder, AVIF through Pillow's, and a camera RAW as a minimal
DNG: a Bayer mosaic of the photograph (the raw data) with a JPEG of it embedded as the
preview, written tag by tag (LibRaw reads it like a camera's DNG).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = Path("/usr/share/backgrounds")
#: Photographs (not drawings) among the system's wallpapers, in the order tests take them.
_PREFERRED = ("Fossa_by_Jasper_Roks.jpg", "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg",
              "Wine_by_Jakkub_Mede.jpg", "Kleiber_by_Lukas_Baubkus.jpg", "friends_by_Aitzol_Berasategi.jpg",
              "aitzgorri_by_Aitzol_Berasategi.jpg", "life_by_Aitzol_Berasategi.jpg")


def photographs(n: int) -> list[Path]:
    """``n`` real photographs shipped with the system (skip the test when there are too few)."""
    import pytest

    found = sorted(p for p in PHOTOS.glob("*.jpg") if p.is_file()) if PHOTOS.is_dir() else []
    found = [p for p in found if p.name in _PREFERRED] + [p for p in found if p.name not in _PREFERRED]
    found.sort(key=lambda p: _PREFERRED.index(p.name) if p.name in _PREFERRED else len(_PREFERRED))
    if len(found) < n:
        pytest.skip(f"needs {n} photographs in {PHOTOS}")
    return found[:n]


def photo_image(path: Path, side: int = 640) -> Image.Image:
    with Image.open(path) as src:
        src.draft("RGB", (side, side))  # a reduced-size decode: the files are wallpapers
        img = src.convert("RGB")
    img.thumbnail((side, side))
    return img


def write_jpeg(src: Path, out: Path, side: int = 320) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    photo_image(src, side).save(out, format="JPEG", quality=88)
    return out


def write_heic(src: Path, out: Path, side: int = 640) -> Path:
    import pillow_heif

    heif = pillow_heif.from_pillow(photo_image(src, side))
    heif.save(out, quality=80)
    return out


def write_avif(src: Path, out: Path, side: int = 640) -> Path:
    photo_image(src, side).save(out, format="AVIF", quality=70)
    return out


#: ColorMatrix1 (XYZ -> camera): the camera is taken to see linear sRGB under D65
_XYZ_TO_SRGB = (32406, -15372, -4986, -9689, 18758, 415, 557, -2040, 10570)

# TIFF field types
_SHORT, _LONG, _RATIONAL, _SRATIONAL, _BYTE, _ASCII = 3, 4, 5, 10, 1, 2
_SIZES = {_SHORT: 2, _LONG: 4, _RATIONAL: 8, _SRATIONAL: 8, _BYTE: 1, _ASCII: 1}
_FMT = {_SHORT: "H", _LONG: "I", _BYTE: "B"}


def _ifd(entries: list[tuple[int, int, list]], at: int, next_ifd: int) -> tuple[bytes, bytes]:
    """(IFD bytes, out-of-line data) for an IFD written at offset ``at``."""
    entries = sorted(entries, key=lambda e: e[0])
    head = 2 + 12 * len(entries) + 4
    extra = b""
    body = struct.pack("<H", len(entries))
    for tag, typ, values in entries:
        if typ == _ASCII:
            raw = values.encode() + b"\0"
            count = len(raw)
        elif typ in (_RATIONAL, _SRATIONAL):
            raw = b"".join(struct.pack("<ii" if typ == _SRATIONAL else "<II", *v) for v in values)
            count = len(values)
        else:
            raw = struct.pack("<" + _FMT[typ] * len(values), *values)
            count = len(values)
        if len(raw) <= 4:
            body += struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\0")
        else:
            off = at + head + len(extra)
            body += struct.pack("<HHI", tag, typ, count) + struct.pack("<I", off)
            extra += raw + (b"\0" if len(raw) % 2 else b"")
    body += struct.pack("<I", next_ifd)
    return body, extra


def write_dng(src: Path, out: Path, side: int = 480, preview: bool = True, orientation: int = 1) -> Path:
    """A minimal DNG of the photograph: 16-bit RGGB mosaic + (optionally) a JPEG preview."""
    img = photo_image(src, side)
    w, h = (img.width // 2) * 2, (img.height // 2) * 2
    # raw sensor data is linear light: undo the sRGB curve of the photograph
    rgb = np.rint((np.asarray(img, dtype=np.float64)[:h, :w] / 255.0) ** 2.2 * 65535).astype(np.uint16)
    cfa = np.empty((h, w), dtype=np.uint16)
    cfa[0::2, 0::2] = rgb[0::2, 0::2, 0]
    cfa[0::2, 1::2] = rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2] = rgb[1::2, 0::2, 1]
    cfa[1::2, 1::2] = rgb[1::2, 1::2, 2]
    raw = cfa.astype("<u2").tobytes()
    buf = io.BytesIO()
    img.crop((0, 0, w, h)).save(buf, format="JPEG", quality=85)
    jpeg = buf.getvalue() if preview else b""

    ifd0_at, sub_at = 8, 4096
    data_at = 8192
    raw_at = data_at
    jpeg_at = raw_at + len(raw)
    ident = [(50706, _BYTE, [1, 4, 0, 0]), (50707, _BYTE, [1, 1, 0, 0]),
             (271, _ASCII, "relsearch"), (272, _ASCII, "test DNG"), (50708, _ASCII, "relsearch test DNG"),
             (274, _SHORT, [orientation]),
             (50721, _SRATIONAL, [(v, 10000) for v in _XYZ_TO_SRGB]),
             (50778, _SHORT, [21]), (50728, _RATIONAL, [(1, 1), (1, 1), (1, 1)])]
    if preview:
        # IFD0 is the preview (NewSubFileType 1), a baseline JPEG in one strip
        ifd0 = ident + [(254, _LONG, [1]), (256, _LONG, [w]), (257, _LONG, [h]), (258, _SHORT, [8, 8, 8]),
                        (259, _SHORT, [7]), (262, _SHORT, [6]), (277, _SHORT, [3]), (273, _LONG, [jpeg_at]),
                        (278, _LONG, [h]), (279, _LONG, [len(jpeg)]), (330, _LONG, [sub_at])]
    else:
        ifd0 = ident + [(254, _LONG, [1]), (256, _LONG, [1]), (257, _LONG, [1]), (330, _LONG, [sub_at])]
    sub = [(254, _LONG, [0]), (256, _LONG, [w]), (257, _LONG, [h]), (258, _SHORT, [16]), (259, _SHORT, [1]),
           (262, _SHORT, [32803]), (277, _SHORT, [1]), (273, _LONG, [raw_at]), (278, _LONG, [h]),
           (279, _LONG, [len(raw)]), (33421, _SHORT, [2, 2]), (33422, _BYTE, [0, 1, 1, 2]),
           (50717, _LONG, [65535]), (50714, _LONG, [0])]
    b0, e0 = _ifd(ifd0, ifd0_at, 0)
    b1, e1 = _ifd(sub, sub_at, 0)
    assert 8 + len(b0) + len(e0) <= sub_at and sub_at + len(b1) + len(e1) <= data_at
    blob = bytearray(b"II*\0" + struct.pack("<I", ifd0_at))
    blob += b0 + e0
    blob = blob.ljust(sub_at, b"\0") + b1 + e1
    blob = blob.ljust(data_at, b"\0") + raw + jpeg
    out.write_bytes(bytes(blob))
    return out
